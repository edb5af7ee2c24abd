"""The results record (schema version 1) as pydantic models: the one definition of the results contract.

:class:`Record` types every key hubstab writes (see :mod:`hubstab.results.record` for what each means) and
bounds every value: numbers are finite JSON numbers within range, strings and lists have a maximum size, and
keys that other versions or other harnesses add are allowed anywhere as long as they are bounded JSON
(:data:`BoundedJson`). :func:`json_schema` gives the same contract as a JSON Schema (draft 2020-12), shipped
as ``hubstab/results/results.schema.json`` for harnesses that do not use Python;
``python -m hubstab.results.schema`` prints it.

The models only check; :mod:`hubstab.results.validate` turns their errors into one
:class:`~hubstab.errors.ResultsValidationError` naming the field. Imports pydantic only (no torch).
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
SCHEMA_ID = "urn:hubstab:results-record:1"
"""Identifier of the schema (a URN: the file ships in the package, at no fixed URL)."""

MAX_RECORD_BYTES = 2_000_000
"""Largest results file accepted (bytes)."""
MAX_STRING_CHARS = 4_000
"""Longest string accepted anywhere in a record."""
MAX_NAME_CHARS = 300
"""Longest model or dataset name (and object key) accepted."""
MAX_LIST_ITEMS = 10_000
"""Longest list (or object) accepted anywhere in a record (sweep, layers, temperatures, ...)."""
MAX_DEPTH = 24
"""Deepest nesting of lists and objects accepted."""
MAX_INTEGER = 2**63
"""Largest magnitude of an integer accepted."""

INTERPOLATIONS: tuple[str, ...] = ("linear", "nearest", "gaussian")
ESTIMATORS: tuple[str, ...] = ("mean", "median")
BATCHNORM_MODES: tuple[str, ...] = ("eval", "batch")
EQUIVARIANCE_MODES: tuple[str, ...] = ("invariance", "equivariance")

PROBABILITY_SLACK = 1e-6
"""float32 averages of softmax outputs may exceed 1 by rounding."""
NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Strings hold no control characters other than tab and line breaks."""
HEX64 = r"^[0-9a-f]{64}$"

# --- value types -------------------------------------------------------------------------------------------

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]
Integer = Annotated[int, Field(strict=True, ge=-MAX_INTEGER, le=MAX_INTEGER)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INTEGER)]
PositiveCount = Annotated[int, Field(strict=True, ge=1, le=MAX_INTEGER)]
Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_STRING_CHARS, pattern=NO_CONTROL)]
Short = Annotated[str, StringConstraints(strict=True, max_length=64, pattern=NO_CONTROL)]
Key = Annotated[str, StringConstraints(strict=True, max_length=MAX_NAME_CHARS, pattern=NO_CONTROL)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


Name = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_CONTROL),
    AfterValidator(_not_blank),
]
"""A model, dataset or transformation name: not empty, at most :data:`MAX_NAME_CHARS` characters."""

BoundedJson = TypeAliasType(
    "BoundedJson",
    Annotated[bool, Field(strict=True)]
    | Integer
    | Number
    | Annotated[str, StringConstraints(strict=True, max_length=MAX_STRING_CHARS)]
    | Annotated[list["BoundedJson"], Field(max_length=MAX_LIST_ITEMS)]
    | Annotated[dict[Key, "BoundedJson"], Field(max_length=MAX_LIST_ITEMS)]
    | None,
)
"""Any JSON value within the size limits: the type of keys this schema does not name (nesting is limited to
:data:`MAX_DEPTH` levels by :func:`hubstab.results.validate.check_bounds`)."""


def _interval(value: list[float | None]) -> list[float | None]:
    low, high = value
    if (low is None) != (high is None):
        raise PydanticCustomError("interval", "give both ends of the interval or neither (null, null)")
    if low is not None and high is not None and low > high:
        raise PydanticCustomError(
            "interval", "low end {low} is above high end {high}", {"low": low, "high": high}
        )
    return value


Interval = Annotated[list[NonNegative | None], Field(min_length=2, max_length=2), AfterValidator(_interval)]
"""A confidence interval ``[low, high]`` (both null when not measured); it need not contain the estimate."""


def parse_created_at(value: str) -> _dt.datetime:
    """The time of a record's ``created_at`` as an aware UTC datetime (a naive time is taken as UTC).

    Raises:
        ValueError: not an ISO 8601 date and time, or out of range once converted to UTC.
    """
    when = _dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    try:
        return when.astimezone(_dt.timezone.utc)
    except OverflowError as err:  # e.g. year 1 at UTC+14
        raise ValueError(f"{value!r} is out of range in UTC") from err


def _created_at(value: str) -> str:
    try:
        parse_created_at(value)
    except ValueError:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise PydanticCustomError(
            "created_at",
            "must be an ISO 8601 date and time such as 2026-01-31T12:00:00+00:00, got the string {shown}",
            {"shown": repr(shown)},
        ) from None
    return value


class _Open(BaseModel):
    """An object of the record: named keys typed, further keys allowed as bounded JSON."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    __pydantic_extra__: dict[str, BoundedJson] = Field(init=False)


# --- the record ----------------------------------------------------------------------------------------------


class Protocol(_Open):
    """``config.protocol``: every setting of the measurement (science.md, section 1)."""

    temperature: Positive = Field(description="diffeomorphism temperature T of the headline value")
    delta: NonNegative | None = Field(description="typical displacement of T in pixels (null: T given)")
    cut: PositiveCount = Field(description="high-frequency cut-off c")
    interp: Literal["linear", "nearest", "gaussian"]
    estimator: Literal["mean", "median"]
    seed: Integer
    repeats: PositiveCount = Field(description="diffeo and noise draws per image")
    image_size: Annotated[list[PositiveCount], Field(min_length=2, max_length=2)] = Field(
        description="[height, width] of the model input in pixels"
    )
    num_images: Annotated[int, Field(strict=True, ge=2, le=MAX_INTEGER)] = Field(description="probe images P")
    bootstrap: Count = Field(description="bootstrap resamples of the interval (0: none)")
    confidence: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, lt=1)]
    batchnorm: Literal["eval", "batch"]
    effective_side: Positive | None = None
    amp_dtype: Short | None = None
    temperatures: Annotated[list[Positive], Field(max_length=MAX_LIST_ITEMS)] | None = None
    num_error_images: Count | None = None
    num_error_images_requested: Count | None = None
    num_skipped_images: Count | None = None
    hubstab_version: Short | None = None
    noise: Text | None = None
    perturbation_space: Text | None = None
    field_scaling: Text | None = None
    random_numbers: Text | None = None
    denominator: Text | None = None
    noise_space: Text | None = None
    batchnorm_statistics: Text | None = None
    untrained_note: Text | None = None
    layers: Annotated[list[Key], Field(max_length=MAX_LIST_ITEMS)] | None = None
    name: Key | None = Field(None, description='named protocol followed ("in1k-v1", "paper", "custom")')
    version: Count | None = Field(None, description="version of the named protocol")


class Config(_Open):
    """``config``: the model, the dataset and the probe selection, and the protocol."""

    model_name: Name
    dataset: Name
    protocol: Protocol
    protocol_id: Name
    model_revision: Key | None = None
    model_sha: Key | None = None
    adapter: Key | None = None
    model_dtype: Key | None = None
    num_parameters: Count | None = None
    pretrained: Annotated[bool, Field(strict=True)] | None = None
    label_space: Key | None = None
    dataset_config: Key | None = None
    split: Key | None = None
    dataset_revision: Key | None = None
    image_column: Key | None = None
    label_column: Key | None = None
    num_images: Count | None = None
    indices_sha256: Key | None = None
    selection_seed: Integer | None = None


class SweepPoint(_Open):
    """D_f, G_f and R_f at one temperature of a sweep."""

    temperature: Positive
    relative_stability: NonNegative | None
    diffeo_stability: NonNegative | None
    noise_stability: NonNegative | None
    delta: NonNegative | None = None
    relative_stability_ci: Interval | None = None


def _same_length(value: list | None, info: ValidationInfo) -> list | None:
    temps = info.data.get("temperatures")
    if value is not None and temps is not None and len(value) != len(temps):
        raise PydanticCustomError(
            "length",
            "must have {n} entries (one per temperature), got {m}",
            {"n": len(temps), "m": len(value)},
        )
    return value


class Layer(_Open):
    """D_k, G_k and R_k of one layer, one entry per temperature."""

    temperatures: Annotated[list[Positive], Field(max_length=MAX_LIST_ITEMS)]
    relative_stability: Annotated[list[NonNegative | None], Field(max_length=MAX_LIST_ITEMS)]
    diffeo_stability: Annotated[list[NonNegative | None], Field(max_length=MAX_LIST_ITEMS)]
    noise_stability: Annotated[list[NonNegative | None], Field(max_length=MAX_LIST_ITEMS)]
    relative_stability_ci: Annotated[list[Interval], Field(max_length=MAX_LIST_ITEMS)] | None = None

    _lengths = field_validator(
        "relative_stability", "diffeo_stability", "noise_stability", "relative_stability_ci"
    )(_same_length)


class Equivariance(_Open):
    """``results.equivariance``: invariance or equivariance deviation (Kvinge et al. 2022)."""

    transform: Name
    mode: Literal["invariance", "equivariance"]
    metric: Name
    output: Number | None
    num_samples: PositiveCount | None = None
    layers: Annotated[dict[Key, Number | None], Field(max_length=MAX_LIST_ITEMS)] | None = None


class ClassManifold(_Open):
    """``results.class_manifold``: d* and the effective dimension D - d* (Fort et al. 2022)."""

    target_class: Count
    d_star: NonNegative | None
    effective_dimension: Number | None
    dims: Annotated[list[PositiveCount], Field(max_length=MAX_LIST_ITEMS)] | None = None
    probabilities: (
        Annotated[
            list[
                Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1 + PROBABILITY_SLACK)]
                | None
            ],
            Field(max_length=MAX_LIST_ITEMS),
        ]
        | None
    ) = None
    input_dim: PositiveCount | None = None
    threshold: Fraction | None = None

    @model_validator(mode="after")
    def _dims_match(self) -> ClassManifold:
        if (
            self.dims is not None
            and self.probabilities is not None
            and len(self.dims) != len(self.probabilities)
        ):
            raise PydanticCustomError("length", "dims and probabilities must have the same length")
        return self


class Published(_Open):
    """``results.published``: the published error of the same weights (e.g. timm's results CSV)."""

    top1_error: Fraction = Field(description="top-1 error as a fraction in [0, 1]")
    source: Text


class Results(_Open):
    """``results``: the headline numbers, the sweep, the layers and further metrics."""

    relative_stability: NonNegative | None = Field(description="R_f = D_f / G_f")
    relative_stability_ci: Interval
    diffeo_stability: NonNegative | None = Field(description="D_f")
    noise_stability: NonNegative | None = Field(description="G_f")
    test_error: Fraction | None = Field(description="fraction of misclassified images (null: no labels)")
    num_error_images: Count | None = None
    sweep: Annotated[list[SweepPoint], Field(max_length=MAX_LIST_ITEMS)] | None = None
    layers: Annotated[dict[Key, Layer], Field(max_length=MAX_LIST_ITEMS)] | None = None
    equivariance: Equivariance | None = None
    class_manifold: ClassManifold | None = None
    published: Published | None = None


class Environment(_Open):
    """``environment``: versions, machine and parallelism of the run (what changes numbers and speed)."""

    hubstab: Key | None = None
    python: Key | None = None
    torch: Key | None = None
    torchvision: Key | None = None
    timm: Key | None = None
    transformers: Key | None = None
    accelerate: Key | None = None
    datasets: Key | None = None
    numpy: Key | None = None
    platform: Key | None = None
    device: Key | None = None
    cpu: Key | None = Field(None, description="CPU model")
    gpu: Key | None = Field(None, description="GPU model (null without CUDA)")
    num_threads: PositiveCount | None = Field(None, description="torch intra-op threads")
    num_processes: PositiveCount | None = None


class Record(_Open):
    """A results record, schema version 1 (see :mod:`hubstab.results.record`)."""

    schema_version: Literal[1]
    run_id: Annotated[str, StringConstraints(strict=True, pattern=HEX64)] = Field(
        description="SHA-256 of the settings (64 lower-case hex digits)"
    )
    config: Config
    results: Results
    created_at: Annotated[str, StringConstraints(strict=True, max_length=64), AfterValidator(_created_at)] = (
        Field(description="ISO 8601 date and time (UTC when no offset is given)")
    )
    higher_is_better: (
        Annotated[dict[Key, Annotated[bool, Field(strict=True)]], Field(max_length=1000)] | None
    ) = None
    notes: Annotated[list[Text], Field(max_length=MAX_LIST_ITEMS)] | None = None
    environment: Environment | None = None
    wall_time_s: NonNegative | None = None


def json_schema() -> dict[str, Any]:
    """The results record as a JSON Schema (draft 2020-12), the content of ``results.schema.json``."""
    schema = Record.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "hubstab results record",
        "description": (
            f"A results file of hubstab (schema_version {SCHEMA_VERSION}): R_f = D_f / G_f of a vision model "
            f"and the settings that produced it. Also enforced by hubstab: nesting at most {MAX_DEPTH} levels, "
            f"files at most {MAX_RECORD_BYTES} bytes, JSON without NaN or Infinity."
        ),
    }


def json_schema_text() -> str:
    """:func:`json_schema` as the text of the shipped file (sorted keys, two-space indent)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(json_schema_text(), end="")
