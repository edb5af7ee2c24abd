"""Gaussian noise rescaled per image to the norm of a given perturbation (Petrini et al., G_f)."""

from __future__ import annotations

import torch

from hubstab.perturbations import rng


def matched_noise(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    indices: torch.Tensor | None = None,
    seed: int = 0,
    stream: str = "noise",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise eta with ||eta|| = ||perturbed - clean|| for every image (norm over C, H, W).

    The noise lives in the same pixel space as the images and is not clipped. With ``indices`` the
    direction of image ``i``'s noise is a pure function of ``(seed, stream, i)``.

    Returns:
        eta, same shape, dtype and device as ``clean``; add it to ``clean`` for the noisy input.
    """
    if clean.shape != perturbed.shape:
        raise ValueError(f"shapes differ: {tuple(clean.shape)} vs {tuple(perturbed.shape)}")
    if indices is not None:
        indices = torch.as_tensor(indices, device=clean.device)
        z = rng.normal(seed, stream, indices, clean[0].numel()).view_as(clean)
    else:
        z = torch.randn(
            clean.shape, generator=generator, device=generator.device if generator else clean.device
        )
        z = z.to(clean.device)
    return match_norm(z, clean, perturbed, in_place=True)


def match_norm(
    direction: torch.Tensor,
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    direction_norm: torch.Tensor | None = None,
    in_place: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rescale ``direction`` (float32, shape of ``clean``) per image to the L2 norm of ``perturbed - clean``.

    The step :func:`matched_noise` ends with, exposed so that a direction drawn once can serve several
    perturbations (e.g. every temperature of a sweep). ``direction_norm`` is the (B,) norm of ``direction``
    per image when already known; ``in_place`` reuses ``direction``'s memory for the result.

    ``scale`` (e.g. the per-channel std, broadcastable to the images) makes the noise isotropic in the space
    ``x / scale`` instead: there its norm matches ``||(perturbed - clean) / scale||``, and the returned eta is
    mapped back to the images' space (multiplied by ``scale``). Normalising ``(x - mean) / std`` afterwards
    then gives exactly the noise of the authors' experiments that perturbed after ``Normalize``.

    Returns:
        eta, shape of ``clean``, dtype of ``clean``.
    """
    if clean.shape != perturbed.shape or direction.shape != clean.shape:
        raise ValueError(
            f"shapes differ: {tuple(direction.shape)}, {tuple(clean.shape)}, {tuple(perturbed.shape)}"
        )
    b = clean.shape[0]
    change = perturbed.float() - clean.float()
    if scale is not None:
        change = change.div_(scale)
    target = change.reshape(b, -1).norm(dim=1)
    del change
    if direction_norm is None:
        direction_norm = direction_norms(direction)
    factor = (target / direction_norm).view(b, *([1] * (clean.ndim - 1)))
    eta = direction.mul_(factor) if in_place else direction * factor
    if scale is not None:
        eta = eta.mul_(scale)
    return eta.to(clean.dtype)


def direction_norms(direction: torch.Tensor) -> torch.Tensor:
    """(B,) per-image L2 norm of a noise direction, floored at the smallest positive float32."""
    return direction.reshape(direction.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
