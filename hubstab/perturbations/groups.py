"""Groups of transformations of images, with their action on spatial feature maps (Kvinge et al., 2022).

Every transformation has the same interface. Group elements are parameter tensors (sampling parameters is
separate from applying them, so a measurement can be replayed exactly):

* :meth:`Transform.elements` enumerates a finite group or samples ``num_samples`` elements with a seeded
  ``torch.Generator``; shape (G, p), one element shared by every image. Diffeomorphisms are drawn per image
  from :mod:`hubstab.perturbations.rng` keyed by (seed, global image index): shape (G, B, p).
* :meth:`Transform.apply` transforms input images (B, C, H, W) with one element, given as (p,) for all
  images or (B, p) per image.
* :meth:`Transform.act` applies the same element to a spatial representation (B, C, h, w) computed from
  H x W inputs, where the transformation has an action there; :meth:`Transform.action_error` says why not
  otherwise.

:func:`get_transform` builds a transformation from its registry name (``"rotation90"``, ``"rotation"``,
``"translation"``, ``"flip"``, ``"diffeo"``), with "did you mean" errors.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hubstab.errors import ArgumentError
from hubstab.perturbations.diffeo import (
    INTERPOLATIONS,
    apply_coefficients,
    apply_displacement,
    diffeo_modes,
    displacement_field,
    effective_side,
    sample_coefficients,
    temperature_for_displacement,
)

Size = tuple[int, int]


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ArgumentError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")


def _per_image(params: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """Params as (B, p): a (p,) element is shared by every image."""
    params = torch.as_tensor(params)
    if params.ndim == 1:
        params = params.unsqueeze(0).expand(batch, -1)
    if params.shape != (batch, dim):
        raise ArgumentError(
            f"element parameters must have shape ({dim},) or ({batch}, {dim}), got {tuple(params.shape)}"
        )
    return params


def _apply_grouped(x: torch.Tensor, params: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn(x_subset, row)`` to the images sharing each distinct row of ``params`` (B, p)."""
    rows, inverse = torch.unique(params.detach().cpu(), dim=0, return_inverse=True)
    if rows.shape[0] == 1:
        return fn(x, rows[0])
    out = None
    for r in range(rows.shape[0]):
        idx = (inverse == r).nonzero().flatten().to(x.device)
        part = fn(x.index_select(0, idx), rows[r])
        if out is None:
            out = x.new_empty((x.shape[0], *part.shape[1:]))
        out[idx] = part
    return out


class Transform(ABC):
    """A group (or sampled family) of transformations of images.

    Attributes:
        name: registry name.
        param_dim: length p of an element's parameter vector.
        per_image: True when elements are drawn per image (diffeomorphisms), so :meth:`elements` needs indices.
    """

    name: ClassVar[str]
    param_dim: ClassVar[int]
    per_image: ClassVar[bool] = False

    def order(self, size: Size) -> int | None:
        """Number of elements of the finite group acting on H x W images; None for a sampled family."""
        return None

    def enumerate(self, size: Size) -> torch.Tensor:
        """All elements of a finite group, (order, p); the identity first."""
        raise ArgumentError(f"{self.name!r} is not a finite group: sample its elements with num_samples")

    def sample(self, num: int, size: Size, generator: torch.Generator) -> torch.Tensor:
        """``num`` elements drawn with ``generator`` (uniformly from a finite group, without replacement)."""
        order = self.order(size)
        if order is None:
            raise NotImplementedError
        if num > order:
            raise ArgumentError(
                f"cannot sample {num} distinct elements of {self.name!r}: its order is {order}"
            )
        return self.enumerate(size)[torch.randperm(order, generator=generator)[:num]]

    def elements(
        self,
        size: Size,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The elements a measurement averages over.

        Args:
            size: (H, W) of the input images.
            num_samples: how many elements; None enumerates a finite group (sampled families need a number).
            seed: seed of the ``torch.Generator`` (or of the per-image draws).
            indices: (B,) global image indices, needed by per-image families.

        Returns:
            (G, p) elements shared by all images, or (G, B, p) per image when ``per_image``.
        """
        if num_samples is not None and (isinstance(num_samples, bool) or int(num_samples) < 1):
            raise ArgumentError(f"num_samples must be a positive integer, got {num_samples!r}")
        order = self.order(size)
        if num_samples is None:
            if order is None:
                raise ArgumentError(f"{self.name!r} is sampled: give num_samples (e.g. 32)")
            return self.enumerate(size)
        if order is not None and int(num_samples) >= order:
            return self.enumerate(size)
        generator = torch.Generator().manual_seed(int(seed))
        return self.sample(int(num_samples), size, generator)

    @abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Transform images (B, C, H, W) with one element, (p,) for all images or (B, p) per image."""

    def action_error(self, params: torch.Tensor, input_size: Size, rep_shape: tuple[int, ...]) -> str | None:
        """Why the element(s) ``params`` have no action on a representation of this shape; None if they do."""
        if len(rep_shape) != 4:
            return f"not a spatial map (shape {tuple(rep_shape[1:])}), {self.name} has no action on it"
        return None

    def act(self, rep: torch.Tensor, params: torch.Tensor, input_size: Size) -> torch.Tensor:
        """Apply the element to a spatial representation (B, C, h, w) of H x W inputs."""
        error = self.action_error(params, input_size, tuple(rep.shape))
        if error is not None:
            raise ArgumentError(error)
        return self._act(rep, params, input_size)

    def _act(self, rep: torch.Tensor, params: torch.Tensor, input_size: Size) -> torch.Tensor:
        return self.apply(rep, params)

    def settings(self) -> dict[str, Any]:
        """The transformation's name and parameters, as results files record them."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Rotation90(Transform):
    """Rotations by multiples of 90 degrees (C4, or C2 with ``n=2``), exact on the pixel grid.

    Element: (k,), the rotation by k * 90 degrees counter-clockwise. Odd k needs square images.
    """

    name = "rotation90"
    param_dim = 1

    def __init__(self, n: int = 4):
        if n not in (2, 4):
            raise ArgumentError(
                f"rotation90 supports n=4 (C4) or n=2 (C2), got {n!r}; use 'rotation' with n=... otherwise"
            )
        self.n = n

    def order(self, size: Size) -> int:
        return self.n

    def enumerate(self, size: Size) -> torch.Tensor:
        step = 4 // self.n
        return torch.arange(0, 4, step, dtype=torch.float32).unsqueeze(1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        params = _per_image(params, images.shape[0], 1)
        h, w = images.shape[-2:]

        def rot(x, row):
            k = round(float(row[0])) % 4
            if k % 2 and h != w:
                raise ArgumentError(f"a 90-degree rotation of a {h} x {w} image changes its shape: use n=2")
            return torch.rot90(x, k, dims=(-2, -1))

        return _apply_grouped(images, params, rot)

    def action_error(self, params, input_size, rep_shape):
        error = super().action_error(params, input_size, rep_shape)
        if (
            error is None
            and rep_shape[-1] != rep_shape[-2]
            and bool((torch.as_tensor(params) % 2 == 1).any())
        ):
            error = f"a 90-degree rotation does not map a {rep_shape[-2]} x {rep_shape[-1]} map onto itself"
        return error

    def settings(self):
        return {"name": self.name, "n": self.n}


class Rotation(Transform):
    """Rotations about the image centre by any angle (bilinear interpolation).

    Element: (angle,) in degrees, counter-clockwise. ``n`` gives the finite group C_n (angles 360 k / n);
    otherwise angles are sampled uniformly in [-max_angle, max_angle]. Pixels that come from outside the image
    take the value of ``padding`` (``"zeros"``: black, as torchvision's rotate; ``"border"``, ``"reflection"``).
    The action on a feature map rotates it by the same angle, which needs the map to have the input's aspect ratio.
    """

    name = "rotation"
    param_dim = 1

    def __init__(self, n: int | None = None, max_angle: float = 180.0, padding: str = "zeros"):
        if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
            raise ArgumentError(f"n must be a positive integer (C_n), got {n!r}")
        if not 0 < max_angle <= 180:
            raise ArgumentError(f"max_angle must be in (0, 180] degrees, got {max_angle!r}")
        if padding not in ("zeros", "border", "reflection"):
            raise ArgumentError(f"padding must be 'zeros', 'border' or 'reflection', got {padding!r}")
        self.n = None if n is None else int(n)
        self.max_angle = float(max_angle)
        self.padding = padding

    def order(self, size: Size) -> int | None:
        return self.n

    def enumerate(self, size: Size) -> torch.Tensor:
        if self.n is None:
            return super().enumerate(size)
        return (torch.arange(self.n, dtype=torch.float32) * (360.0 / self.n)).unsqueeze(1)

    def sample(self, num: int, size: Size, generator: torch.Generator) -> torch.Tensor:
        if self.n is not None:
            return super().sample(num, size, generator)
        u = torch.rand((num, 1), generator=generator)
        return (2.0 * u - 1.0) * self.max_angle

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        b, _, h, w = images.shape
        angle = _per_image(params, b, 1)[:, 0].to(images.device, torch.float32) * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output pixel p (pixel units from the centre) samples the source at R(-angle) p; in grid_sample's
        # normalised coordinates that is the matrix below (exact rotation for any aspect ratio).
        theta = torch.zeros((b, 2, 3), device=images.device, dtype=torch.float32)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * (h / w)
        theta[:, 1, 0] = sin * (w / h)
        theta[:, 1, 1] = cos
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        out = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode=self.padding, align_corners=False
        )
        return out.to(images.dtype)

    def action_error(self, params, input_size, rep_shape):
        error = super().action_error(params, input_size, rep_shape)
        if error is None and rep_shape[-2] * input_size[1] != rep_shape[-1] * input_size[0]:
            error = (
                f"a {rep_shape[-2]} x {rep_shape[-1]} map does not have the aspect ratio of the "
                f"{input_size[0]} x {input_size[1]} input, so a rotation has no action on it"
            )
        return error

    def settings(self):
        return {"name": self.name, "n": self.n, "max_angle": self.max_angle, "padding": self.padding}


class Translation(Transform):
    """Cyclic translations (pixels wrap around), the group Z_H x Z_W or a subgroup.

    Element: (dy, dx) in input pixels, multiples of ``step``. ``axes`` is ``"both"``, ``"horizontal"`` or
    ``"vertical"``. On an h x w feature map of H x W inputs the action is the cyclic shift (dy h / H, dx w / W),
    defined when h divides H, w divides W and the shift is a multiple of the map's stride (use ``step`` equal
    to the largest stride of interest to measure deep layers).
    """

    name = "translation"
    param_dim = 2

    def __init__(self, step: int = 1, axes: str = "both"):
        if isinstance(step, bool) or int(step) != step or step < 1:
            raise ArgumentError(f"step must be a positive integer number of pixels, got {step!r}")
        if axes not in ("both", "horizontal", "vertical"):
            raise ArgumentError(f"axes must be 'both', 'horizontal' or 'vertical', got {axes!r}")
        self.step = int(step)
        self.axes = axes

    def _shifts(self, size: Size) -> tuple[range, range]:
        h, w = size
        ys = range(0, h, self.step) if self.axes in ("both", "vertical") else range(1)
        xs = range(0, w, self.step) if self.axes in ("both", "horizontal") else range(1)
        return ys, xs

    def order(self, size: Size) -> int:
        ys, xs = self._shifts(size)
        return len(ys) * len(xs)

    def enumerate(self, size: Size) -> torch.Tensor:
        ys, xs = self._shifts(size)
        return torch.tensor([(dy, dx) for dy in ys for dx in xs], dtype=torch.float32)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        params = _per_image(params, images.shape[0], 2)
        return _apply_grouped(
            images,
            params,
            lambda x, row: torch.roll(x, (round(float(row[0])), round(float(row[1]))), dims=(-2, -1)),
        )

    def action_error(self, params, input_size, rep_shape):
        error = super().action_error(params, input_size, rep_shape)
        if error is not None:
            return error
        (big_h, big_w), (h, w) = input_size, rep_shape[-2:]
        if big_h % h or big_w % w:
            return f"the {h} x {w} map size does not divide the {big_h} x {big_w} input size"
        stride = torch.tensor([big_h // h, big_w // w], dtype=torch.float32)
        shifts = torch.as_tensor(params, dtype=torch.float32).reshape(-1, 2).round()
        # along an axis of size 1 (global pooling) every shift acts trivially
        wide = torch.tensor([h > 1, w > 1])
        if bool(((shifts % stride != 0) & wide).any()):
            return (
                f"shifts that are not multiples of the map's stride {tuple(stride.long().tolist())} "
                f"(use step={int(stride.max())})"
            )
        return None

    def _act(self, rep, params, input_size):
        h, w = rep.shape[-2:]
        stride = torch.tensor([input_size[0] // h, input_size[1] // w], dtype=torch.float32)
        shifts = torch.as_tensor(params, dtype=torch.float32).cpu().round() / stride
        return self.apply(rep, shifts * torch.tensor([h > 1, w > 1], dtype=torch.float32))

    def settings(self):
        return {"name": self.name, "step": self.step, "axes": self.axes}


class Flip(Transform):
    """Reflections: ``axis="horizontal"`` (left-right, Z2), ``"vertical"`` (up-down, Z2) or ``"both"`` (Z2 x Z2).

    Element: (flip_up_down, flip_left_right), each 0 or 1. Acts on any feature map by the same flip.
    """

    name = "flip"
    param_dim = 2

    def __init__(self, axis: str = "horizontal"):
        if axis not in ("horizontal", "vertical", "both"):
            raise ArgumentError(f"axis must be 'horizontal', 'vertical' or 'both', got {axis!r}")
        self.axis = axis

    def order(self, size: Size) -> int:
        return 4 if self.axis == "both" else 2

    def enumerate(self, size: Size) -> torch.Tensor:
        if self.axis == "horizontal":
            rows = [(0, 0), (0, 1)]
        elif self.axis == "vertical":
            rows = [(0, 0), (1, 0)]
        else:
            rows = [(0, 0), (0, 1), (1, 0), (1, 1)]
        return torch.tensor(rows, dtype=torch.float32)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        params = _per_image(params, images.shape[0], 2)

        def flip(x, row):
            dims = [d for d, on in ((-2, row[0]), (-1, row[1])) if float(on) > 0.5]
            return torch.flip(x, dims) if dims else x

        return _apply_grouped(images, params, flip)

    def settings(self):
        return {"name": self.name, "axis": self.axis}


class Diffeo(Transform):
    """Max-entropy diffeomorphisms (Petrini et al.), a sampled family, one field per image and draw.

    Element of image i, draw k: the coefficients (2 K values, u then v) of ``sample_coefficients`` at the
    temperature of ``delta`` pixels (or ``temperature``), keyed by (seed, stream ``equivariance/diffeo/k``, i),
    so results do not depend on batching. The action on an h x w feature map resamples the same smooth field
    on the map's grid (displacements scale with the map size): an approximation, exact only in the continuum.
    """

    name = "diffeo"
    param_dim = 0  # set per instance from the cut-off
    per_image = True

    def __init__(
        self,
        delta: float | None = 1.0,
        temperature: float | None = None,
        cut: int = 3,
        interp: str = "linear",
    ):
        if interp not in INTERPOLATIONS:
            raise ArgumentError(f"interp must be one of {INTERPOLATIONS}, got {interp!r}")
        if temperature is None and delta is None:
            raise ArgumentError("give delta (typical displacement in pixels) or temperature")
        if (temperature is not None and temperature < 0) or (delta is not None and delta < 0):
            raise ArgumentError("delta and temperature must be >= 0")
        self.delta = None if temperature is not None else float(delta)
        self.temperature_ = None if temperature is None else float(temperature)
        self.cut = int(cut)
        self.interp = interp
        self.param_dim = 2 * int(diffeo_modes(self.cut).shape[0])  # type: ignore[misc]

    def temperature(self, size: Size) -> float:
        """The temperature T used for H x W images."""
        if self.temperature_ is not None:
            return self.temperature_
        return temperature_for_displacement(self.delta, self.cut, effective_side(*size))

    def elements(self, size, num_samples=None, *, seed=0, indices=None):
        if num_samples is None or isinstance(num_samples, bool) or int(num_samples) < 1:
            raise ArgumentError(
                f"diffeo is sampled: give num_samples as a positive integer, got {num_samples!r}"
            )
        if indices is None:
            raise ArgumentError("diffeo draws a field per image: give the images' global indices")
        indices = torch.as_tensor(indices, dtype=torch.int64)
        t = self.temperature(size)
        draws = [
            sample_coefficients(t, self.cut, indices=indices, seed=seed, stream=f"equivariance/diffeo/{k}")
            for k in range(int(num_samples))
        ]
        return torch.stack(draws).flatten(2)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        coefficients = _per_image(params, images.shape[0], self.param_dim).reshape(images.shape[0], 2, -1)
        return apply_coefficients(images, coefficients.to(images.device), self.cut, self.interp)

    def action_error(self, params, input_size, rep_shape):
        error = super().action_error(params, input_size, rep_shape)
        if error is None and min(rep_shape[-2:]) < 2 and tuple(rep_shape[-2:]) != (1, 1):
            error = f"a {rep_shape[-2]} x {rep_shape[-1]} map is too thin to deform"
        return error

    def _act(self, rep, params, input_size):
        b, _, h, w = rep.shape
        if (h, w) == (1, 1):  # a single point: every field is the identity there
            return rep
        coefficients = _per_image(params, b, self.param_dim).reshape(b, 2, -1).to(rep.device)
        dx, dy = displacement_field(coefficients, self.cut, h, w)
        return apply_displacement(rep, dx, dy, self.interp)

    def settings(self):
        return {
            "name": self.name,
            "delta": self.delta,
            "temperature": self.temperature_,
            "cut": self.cut,
            "interp": self.interp,
        }


TRANSFORMS: dict[str, type[Transform]] = {
    "rotation90": Rotation90,
    "rotation": Rotation,
    "translation": Translation,
    "flip": Flip,
    "diffeo": Diffeo,
}
"""Registry of transformation names."""

_ALIASES = {"rot90": "rotation90", "c4": "rotation90", "shift": "translation", "reflection": "flip"}


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def get_transform(name: str | Transform, **kwargs: Any) -> Transform:
    """Build a transformation from its registry name.

    Args:
        name: ``"rotation90"``, ``"rotation"``, ``"translation"``, ``"flip"`` or ``"diffeo"``; a spec such as
            ``"translation:step=4"`` or ``"diffeo:delta=2,cut=5"`` (as the CLI passes it) sets parameters too.
            A :class:`Transform` is returned as is.
        **kwargs: parameters of the transformation's class (e.g. ``n=8`` for ``rotation``).
    """
    if isinstance(name, Transform):
        if kwargs:
            raise ArgumentError("give parameters either to the Transform or to get_transform, not both")
        return name
    if not isinstance(name, str):
        raise TypeError(f"a transformation is a name or a Transform, got {type(name).__name__}")
    text = name.strip()
    if text.endswith(")") and "(" in text:  # "translation(step=4)", the same as "translation:step=4"
        text = text[:-1].replace("(", ":", 1)
    key, _, spec = text.partition(":")
    key = key.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TRANSFORMS:
        close = difflib.get_close_matches(key, [*TRANSFORMS, *_ALIASES], n=1)
        hint = f" Did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
        raise ArgumentError(f"unknown transformation {name!r}; choose one of {sorted(TRANSFORMS)}.{hint}")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise ArgumentError(f"transformation parameters look like 'name(key=value,...)', got {name!r}")
        params[k.strip()] = _parse_value(v)
    params.update(kwargs)
    cls = TRANSFORMS[key]
    try:
        return cls(**params)
    except TypeError as exc:
        raise ArgumentError(f"bad parameters for {key!r}: {exc}") from None
