"""The settings of an evaluation run, filled by the CLI or by :func:`hubstab.evaluate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hubstab.results.io import DEFAULT_RESULTS_DIR

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run.

    Attributes mirror the options of ``hubstab eval`` (see ``hubstab eval --help``): model and dataset ids
    (with revisions, split, columns), the protocol (delta or temperature, extra sweep temperatures, cut,
    interpolation, estimator, draws per image, seed), how many images, and how to run (batch size, dtype,
    device, workers, output folder, resume, push).
    """

    model: str = ""
    model_name: str | None = None  # the name results are recorded under (default: the model's own)
    dataset: str | None = None
    split: str | None = None
    dataset_config: str | None = None
    dataset_revision: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    num_images: int = 500
    num_error_images: int | None = None
    delta: float | None = 1.0
    temperature: float | None = None
    temperatures: list[float] | str = field(default_factory=list)  # or "paper": 30 in [T1/15, 2 T2]
    cut: int = 3
    interp: str = "linear"
    estimator: str = "mean"
    repeats: int = 1
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95
    batchnorm: str = "eval"
    noise_space: str = "pixel"
    denominator: str = "distinct"
    layers: list[str] | None = None
    metrics: list[str] = field(
        default_factory=list
    )  # "equivariance:TRANSFORM[:MODE[:METRIC]]", "class-manifold[:CLASS]"
    metric_images: int = 32
    batch_size: int | str = "auto"
    dtype: str = "float32"
    device: str | None = None
    num_workers: int = 2
    channels_last: bool | None = None
    compile: bool = False
    pretrained: bool | None = None  # None: trained weights for an id, "unknown" for a module object
    trust_remote_code: bool = False
    streaming: bool = False
    label_map: dict[int, int] | str | None = None  # or "identity"
    output_dir: str | None = DEFAULT_RESULTS_DIR
    per_sample: bool = False
    push_to_hub: str | None = None
    push_pr: bool = False  # with push_to_hub: open a pull request instead of committing to main
    overwrite: bool = False
    resume: bool = True
    checkpoint_every_s: float = 60.0
    checkpoint_every_batches: int = 8  # save after this many batches or checkpoint_every_s, first wins
    nonfinite: str = "error"  # NaN/Inf outputs: "error", or "exclude" those probe images (with a note)
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`hubstab.errors.HubstabError` with a clear message for impossible settings."""
        from hubstab.errors import HubstabError
        from hubstab.metrics.stability import ESTIMATORS
        from hubstab.perturbations.diffeo import INTERPOLATIONS
        from hubstab.runner.preflight import value_problems

        problems = value_problems(self)  # every number finite and in range
        if isinstance(self.temperatures, str) and self.temperatures != "paper":
            problems.append("temperatures must be a list of numbers or 'paper'")
        if self.interp not in INTERPOLATIONS:
            problems.append(f"--interp must be one of {', '.join(INTERPOLATIONS)}")
        if self.estimator not in ESTIMATORS:
            problems.append(f"--estimator must be one of {', '.join(ESTIMATORS)}")
        if self.estimator == "median" and self.layers:
            problems.append(
                "the median estimator is defined on the output only: use --estimator mean with --layers"
            )
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)}")
        if self.batchnorm not in ("eval", "batch"):
            problems.append("--batchnorm must be 'eval' or 'batch'")
        if self.noise_space not in ("pixel", "normalized"):
            problems.append("--noise-space must be 'pixel' or 'normalized'")
        if self.denominator not in ("distinct", "all-pairs"):
            problems.append("--denominator must be 'distinct' or 'all-pairs'")
        if self.push_pr and not self.push_to_hub:
            problems.append("--pr needs --push-to-hub ORG/NAME (the repo to open the pull request on)")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 3) and self.batch_size != "auto":
            problems.append(
                "--batch-size must be 'auto' or an integer >= 3 (clean, deformed and noisy inputs)"
            )
        for spec in self.metrics:
            kind, *parts = spec.split(":")
            if kind not in ("equivariance", "class-manifold"):
                problems.append(
                    f"unknown --metric {spec!r}: use equivariance:TRANSFORM[:MODE[:METRIC]] or class-manifold[:CLASS]"
                )
            elif kind == "class-manifold" and parts and not parts[0].isdigit():
                problems.append(f"--metric {spec!r}: the class is an index (class-manifold:3)")
            elif kind == "equivariance":
                problems += _equivariance_problems(spec, parts)
        kinds = [spec.split(":")[0] for spec in self.metrics]
        for kind in sorted({k for k in kinds if kinds.count(k) > 1}):
            problems.append(
                f"--metric {kind} is given {kinds.count(kind)} times: a results file holds one of each kind "
                "(run the others separately)"
            )
        if problems:
            raise HubstabError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _equivariance_problems(spec: str, parts: list[str]) -> list[str]:
    """What is wrong with ``--metric equivariance:TRANSFORM[:MODE[:METRIC]]`` (checked before any loading)."""
    from hubstab.errors import ArgumentError
    from hubstab.metrics.equivariance import METRICS, MODES
    from hubstab.perturbations.groups import get_transform

    if not parts or not parts[0]:
        return [f"--metric {spec!r} needs a transformation, e.g. equivariance:rotation90"]
    problems = []
    try:
        get_transform(parts[0])
    except ArgumentError as err:
        problems.append(f"--metric {spec!r}: {err}")
    if len(parts) > 1 and parts[1] not in MODES:
        problems.append(f"--metric {spec!r}: the mode is one of {', '.join(MODES)}, got {parts[1]!r}")
    if len(parts) > 2 and parts[2] not in METRICS:
        problems.append(f"--metric {spec!r}: the metric is one of {', '.join(METRICS)}, got {parts[2]!r}")
    if len(parts) > 3:
        problems.append(f"--metric {spec!r}: at most equivariance:TRANSFORM:MODE:METRIC")
    return problems
