"""Named, versioned measurement protocols: the bundles of settings a result must follow to be ranked together.

A run follows a protocol when every setting below equals the protocol's value; the results file then records
``config.protocol.name`` and ``config.protocol.version``. A run that differs in any of them is recorded as
``name = "custom"`` (version 0), never under the protocol's name. The settings of a protocol:

=================  ==================================  ==================================
setting            ``in1k-v1`` (default, ImageNet-1k)   ``paper`` (Petrini et al. 2021)
=================  ==================================  ==================================
dataset            benjamin-paine/imagenet-1k           benjamin-paine/imagenet-1k
split              validation                           validation
selection          row-groups (seed 0)                  row-groups (seed 0)
num_images         500                                  500
delta / T          1 px (T from delta, c, image side)   1 px
temperatures       (none)                               the paper's 30 in [T1/15, 2 T2]
cut                3                                    3
interp             linear (bilinear)                    linear
estimator          mean                                 median
repeats            1 diffeo and noise draw per image    1
seed               0                                    0
bootstrap          1000 resamples, 95%                  1000, 95%
batchnorm          eval (running statistics)            eval
noise_space        pixel (noise isotropic in [0, 1])    pixel
denominator        distinct (pairs of distinct images)  all-pairs (P x P with self-pairs)
=================  ==================================  ==================================

``in1k-v1`` is what ``hubstab eval MODEL`` does for an ImageNet-1k classifier with no option; ``--protocol
paper`` switches to the paper's estimator and sweep. Version 1 does not pin a dataset revision: the commit
read is recorded (``config.dataset_revision``). Change a protocol only by adding a new version.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any

from hubstab.errors import HubstabError

CUSTOM = "custom"
MAX_RECORDED_ROWS = 5000
"""Selections up to this many rows (and row groups) list them in the results file; larger ones keep the hash."""


@dataclass(frozen=True)
class Protocol:
    """A named, versioned bundle of measurement settings (field names are :class:`EvalConfig` fields)."""

    name: str
    version: int
    description: str
    dataset: str
    split: str
    dataset_revision: str | None
    selection: str
    num_images: int
    delta: float
    temperatures: tuple[float, ...] | str
    cut: int
    interp: str
    estimator: str
    denominator: str
    repeats: int
    seed: int
    bootstrap: int
    confidence: float
    batchnorm: str
    noise_space: str

    def config_values(self) -> dict[str, Any]:
        """The :class:`~hubstab.runner.config.EvalConfig` fields this protocol sets."""
        skip = {"name", "version", "description", "selection"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["temperatures"] = (
            self.temperatures if isinstance(self.temperatures, str) else list(self.temperatures)
        )
        out["temperature"] = None
        return out


_IN1K = {
    "dataset": "benjamin-paine/imagenet-1k",
    "split": "validation",
    "dataset_revision": None,
    "selection": "row-groups",
    "num_images": 500,
    "delta": 1.0,
    "cut": 3,
    "interp": "linear",
    "repeats": 1,
    "seed": 0,
    "bootstrap": 1000,
    "confidence": 0.95,
    "batchnorm": "eval",
    "noise_space": "pixel",
}

PROTOCOLS: dict[str, Protocol] = {
    "in1k-v1": Protocol(
        name="in1k-v1",
        version=1,
        description="ImageNet-1k validation, 500 images (seeded row-group selection), delta 1 px, cut 3, "
        "bilinear, mean estimator, one draw per image, bootstrap 1000",
        temperatures=(),
        estimator="mean",
        denominator="distinct",
        **_IN1K,
    ),
    "paper": Protocol(
        name="paper",
        version=1,
        description="Petrini et al. 2021: in1k-v1's images and delta 1 px with the median estimator and the "
        "30-temperature sweep in [T1/15, 2 T2], denominators over all P x P pairs as the authors' code",
        temperatures="paper",
        estimator="median",
        denominator="all-pairs",
        **_IN1K,
    ),
}
"""The named protocols, by name."""

DEFAULT_PROTOCOL = "in1k-v1"
"""The protocol of ImageNet-1k classifiers when no option changes it."""

PROTOCOL_OPTIONS: dict[str, str] = {
    "--dataset": "dataset",
    "--split": "split",
    "--dataset-revision": "dataset_revision",
    "--num-images": "num_images",
    "--delta": "delta",
    "--temperature": "delta",
    "--temperatures": "temperatures",
    "--cut": "cut",
    "--interp": "interp",
    "--estimator": "estimator",
    "--repeats": "repeats",
    "--seed": "seed",
    "--bootstrap": "bootstrap",
    "--batchnorm": "batchnorm",
    "--noise-space": "noise_space",
    "--denominator": "denominator",
}
"""Command-line options that set a protocol's fields (an explicit one overrides ``--protocol``)."""


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``.

    Raises:
        HubstabError: unknown name (with the known ones and a "did you mean").
    """
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    close = difflib.get_close_matches(name, list(PROTOCOLS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise HubstabError(f"unknown protocol {name!r}: known protocols are {', '.join(PROTOCOLS)}{hint}")


def explicit_options(argv: list[str]) -> set[str]:
    """The protocol fields set explicitly on a command line (options as typed, unique abbreviations included)."""
    out = set()
    for arg in argv:
        if not arg.startswith("--") or len(arg) < 3:
            continue
        typed = arg.split("=", 1)[0]
        matches = (
            [typed] if typed in PROTOCOL_OPTIONS else [o for o in PROTOCOL_OPTIONS if o.startswith(typed)]
        )
        out.update(PROTOCOL_OPTIONS[o] for o in matches)
    return out


def apply_protocol(cfg: Any, name: str, explicit: set[str] = frozenset()) -> Protocol:
    """Set the fields of ``cfg`` (an ``EvalConfig``) to the protocol's values, except the ``explicit`` ones.

    The split and dataset revision belong to the protocol's dataset: with an explicit dataset they are left as
    given (by default the dataset's first of validation, valid, val, test, train), not forced to the protocol's.
    """
    protocol = get_protocol(name)
    if "dataset" in explicit:
        explicit = {*explicit, "split", "dataset_revision"}
    for key, value in protocol.config_values().items():
        if key not in explicit and not (key == "temperature" and "delta" in explicit):
            setattr(cfg, key, value)
    return protocol


def identify(values: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "version"}`` of the protocol a run followed, ``custom`` (version 0) when none matches.

    Args:
        values: the run's settings under the names of :class:`Protocol` (``dataset``, ``split``,
            ``dataset_revision``, ``selection``, ``num_images``, ``delta`` (None when a temperature was given),
            ``temperatures`` (list or ``"paper"``), ``cut``, ``interp``, ``estimator``, ``repeats``, ``seed``,
            ``bootstrap``, ``confidence``, ``batchnorm``, ``noise_space``, ``denominator``).
    """
    for protocol in PROTOCOLS.values():
        if _matches(protocol, values):
            return {"name": protocol.name, "version": protocol.version}
    return {"name": CUSTOM, "version": 0}


def _matches(protocol: Protocol, values: dict[str, Any]) -> bool:
    for f in fields(protocol):
        if f.name in ("name", "version", "description"):
            continue
        want, got = getattr(protocol, f.name), values.get(f.name)
        if f.name == "dataset_revision" and want is None:
            continue
        if f.name == "temperatures":
            want = want if isinstance(want, str) else sorted(float(t) for t in want)
            got = got if isinstance(got, str) else sorted(float(t) for t in (got or []))
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            if abs(float(got) - want) > 1e-12:
                return False
        elif want != got:
            return False
    return True


def protocol_settings(
    cfg: Any, info: dict[str, Any], *, num_images: int, delta: float | None
) -> dict[str, Any]:
    """What a run records in ``config.protocol`` about its protocol and its probe selection.

    Args:
        cfg: the run's ``EvalConfig``.
        info: the probe set's provenance (``ProbeSet.info``).
        num_images: probe images actually selected.
        delta: the run's delta in pixels (ignored when the run gave a temperature).

    Returns:
        ``{"name", "version", "probe_selection"}``: the protocol followed (or ``custom``) and the selection
        scheme with its seed, row groups, rows (source indices) and files (without what varies between
        identical selections, such as where the bytes came from or whether the cache was hit).
    """
    selection = dict(info.get("probe_selection") or {"scheme": info.get("selection"), "seed": cfg.seed})
    for key in ("cache", "cache_key", "source"):
        selection.pop(key, None)
    indices = list(info.get("indices") or [])
    # the rows themselves (also reproducible from the seed and row groups), within the results files' bounds
    selection["rows"] = [int(i) for i in indices] if len(indices) <= MAX_RECORDED_ROWS else None
    if len(selection.get("row_groups") or []) > MAX_RECORDED_ROWS:
        selection["row_groups"] = None
    if "files" in selection:
        selection["files"] = [str(f).split("?")[0].rstrip("/").rsplit("/", 1)[-1] for f in selection["files"]]
    values = {
        "dataset": info.get("dataset"),
        "split": info.get("split"),
        "dataset_revision": info.get("dataset_revision"),
        "selection": info.get("selection"),
        "num_images": num_images,
        "delta": delta if cfg.temperature is None else None,
        "temperatures": cfg.temperatures,
        "cut": cfg.cut,
        "interp": cfg.interp,
        "estimator": cfg.estimator,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "confidence": cfg.confidence,
        "batchnorm": cfg.batchnorm,
        "noise_space": cfg.noise_space,
        "denominator": cfg.denominator,
    }
    return {**identify(values), "probe_selection": selection}
