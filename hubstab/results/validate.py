"""Validation of untrusted results records (files people submit to the leaderboard).

:func:`validate_record` checks a parsed record against the schema of :mod:`hubstab.results.record`: types
(numbers are JSON numbers, never strings), ranges (stabilities >= 0, errors in [0, 1], interval low <= high),
the required settings of the protocol, the schema version and size limits. :func:`load_record` reads a file
with a byte limit first. Both raise :class:`~hubstab.errors.ResultsValidationError` with a message naming the
offending field. Nothing in a record is ever executed; strings are returned as they are and must be shown as
plain text.

This module imports neither torch nor timm, so the leaderboard can use it cheaply.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubstab.errors import ResultsValidationError

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
MAX_RECORD_BYTES = 2_000_000
"""Largest results file accepted (bytes)."""
MAX_STRING_CHARS = 4_000
"""Longest string accepted anywhere in a record."""
MAX_NAME_CHARS = 300
"""Longest model or dataset name accepted."""
MAX_LIST_ITEMS = 10_000
"""Longest list accepted anywhere in a record (sweep, layers, temperatures, ...)."""
MAX_DEPTH = 24
"""Deepest nesting of lists and objects accepted."""
MAX_INTEGER = 2**63
"""Largest magnitude of an integer accepted."""

INTERPOLATIONS: tuple[str, ...] = ("linear", "nearest", "gaussian")
ESTIMATORS: tuple[str, ...] = ("mean", "median")
BATCHNORM_MODES: tuple[str, ...] = ("eval", "batch")
EQUIVARIANCE_MODES: tuple[str, ...] = ("invariance", "equivariance")

_PROBABILITY_SLACK = 1e-6  # float32 averages of softmax outputs may exceed 1 by rounding
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

Check = Callable[[Any, str], None]


def _fail(path: str, message: str) -> None:
    raise ResultsValidationError(f"{path}: {message}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(
    value: Any,
    path: str,
    *,
    nullable: bool = False,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
) -> None:
    if value is None:
        if nullable:
            return
        _fail(path, "is required and must be a number, got null")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (numbers are JSON numbers, not strings)" if isinstance(value, str) else ""
        _fail(path, f"must be a number, got {_kind(value)}{hint}")
    if not math.isfinite(value):
        _fail(path, f"must be a finite number, got {value!r} (write null for a value that was not measured)")
    if positive and value <= 0:
        _fail(path, f"must be > 0, got {value!r}")
    if low is not None and value < low:
        _fail(path, f"must be >= {low:g}, got {value!r}")
    if high is not None and value > high:
        _fail(path, f"must be <= {high:g}, got {value!r}")


def _integer(value: Any, path: str, *, nullable: bool = False, low: int | None = None) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"must be an integer, got {_kind(value)}")
    if low is not None and value < low:
        _fail(path, f"must be >= {low}, got {value!r}")


def _string(
    value: Any,
    path: str,
    *,
    nullable: bool = False,
    choices: tuple[str, ...] | None = None,
    max_chars: int = MAX_STRING_CHARS,
    nonempty: bool = False,
) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        _fail(path, f"must be a string, got {_kind(value)}")
    if choices is not None and value not in choices:
        _fail(path, f"must be one of {', '.join(choices)}; got {_kind(value)}")
    if nonempty and not value.strip():
        _fail(path, "must not be empty")
    if len(value) > max_chars:
        _fail(path, f"is longer than {max_chars} characters")
    if _CONTROL.search(value):
        _fail(path, "contains control characters")


def _boolean(value: Any, path: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, bool):
        _fail(path, f"must be true or false, got {_kind(value)}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"must be an object, got {_kind(value)}")
    return value


def _list(value: Any, path: str, *, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        _fail(path, f"must have {length} entries, got {len(value)}")
    return value


def _required(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        _fail(f"{path}.{key}", "is required but missing")
    return obj[key]


def _fields(obj: dict[str, Any], path: str, required: dict[str, Check], optional: dict[str, Check]) -> None:
    for key, check in required.items():
        check(_required(obj, key, path), f"{path}.{key}")
    for key, check in optional.items():
        if key in obj:
            check(obj[key], f"{path}.{key}")


def _interval(value: Any, path: str) -> None:
    lo, hi = _list(value, path, length=2)
    _number(lo, f"{path}[0]", nullable=True, low=0.0)
    _number(hi, f"{path}[1]", nullable=True, low=0.0)
    if (lo is None) != (hi is None):
        _fail(path, "give both ends of the interval or neither (null, null)")
    if lo is not None and lo > hi:
        _fail(path, f"low end {lo!r} is above high end {hi!r}")


def _stability(value: Any, path: str) -> None:
    _number(value, path, nullable=True, low=0.0)


def _generic(value: Any, path: str, depth: int = 0) -> None:
    """Limits that hold everywhere: depth, list and string sizes, finite numbers, string keys."""
    if depth > MAX_DEPTH:
        _fail(path, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_LIST_ITEMS:
            _fail(path, f"has more than {MAX_LIST_ITEMS} keys")
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"has a key that is not a string: {key!r}")
            _string(key, f"{path} (key)", max_chars=MAX_NAME_CHARS)
            _generic(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            _fail(path, f"has more than {MAX_LIST_ITEMS} entries")
        for i, item in enumerate(value):
            _generic(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            _fail(path, f"is longer than {MAX_STRING_CHARS} characters")
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_INTEGER:
            _fail(path, f"is an integer beyond +-{MAX_INTEGER}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            _fail(
                path, f"must be a finite number, got {value!r} (write null for a value that was not measured)"
            )
    elif value is not None and not isinstance(value, (bool, int)):
        _fail(path, f"holds a {type(value).__name__}, which is not a JSON value")


def _created_at(value: Any, path: str) -> None:
    _string(value, path, max_chars=64)
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        _fail(
            path, f"must be an ISO 8601 date and time such as 2026-01-31T12:00:00+00:00, got {_kind(value)}"
        )


def parse_created_at(value: str) -> _dt.datetime:
    """The time of a record's ``created_at`` as an aware UTC datetime (a naive time is taken as UTC)."""
    when = _dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


def _protocol(value: Any, path: str) -> None:
    protocol = _object(value, path)
    _fields(
        protocol,
        path,
        required={
            "temperature": lambda v, p: _number(v, p, positive=True),
            "delta": lambda v, p: _number(v, p, nullable=True, low=0.0),
            "cut": lambda v, p: _integer(v, p, low=1),
            "interp": lambda v, p: _string(v, p, choices=INTERPOLATIONS),
            "estimator": lambda v, p: _string(v, p, choices=ESTIMATORS),
            "seed": lambda v, p: _integer(v, p),
            "repeats": lambda v, p: _integer(v, p, low=1),
            "image_size": _image_size,
            "num_images": lambda v, p: _integer(v, p, low=2),
            "bootstrap": lambda v, p: _integer(v, p, low=0),
            "confidence": lambda v, p: _number(v, p, positive=True, high=1.0),
            "batchnorm": lambda v, p: _string(v, p, choices=BATCHNORM_MODES),
        },
        optional={
            "effective_side": lambda v, p: _number(v, p, positive=True),
            "amp_dtype": lambda v, p: _string(v, p, nullable=True, max_chars=32),
            "temperatures": lambda v, p: [
                _number(t, f"{p}[{i}]", positive=True) for i, t in enumerate(_list(v, p))
            ],
            "num_error_images": lambda v, p: _integer(v, p, low=0),
            "hubstab_version": lambda v, p: _string(v, p, max_chars=64),
            **{
                key: lambda v, p: _string(v, p)
                for key in ("noise", "perturbation_space", "field_scaling", "random_numbers", "denominator")
            },
        },
    )
    if protocol["confidence"] >= 1.0:
        _fail(f"{path}.confidence", f"must be below 1, got {protocol['confidence']!r}")


def _image_size(value: Any, path: str) -> None:
    for i, side in enumerate(_list(value, path, length=2)):
        _integer(side, f"{path}[{i}]", low=1)


def _config(value: Any, path: str) -> None:
    config = _object(value, path)
    name = lambda v, p: _string(v, p, max_chars=MAX_NAME_CHARS, nonempty=True)  # noqa: E731
    short = lambda v, p: _string(v, p, nullable=True, max_chars=MAX_NAME_CHARS)  # noqa: E731
    _fields(
        config,
        path,
        required={"model_name": name, "dataset": name, "protocol": _protocol, "protocol_id": name},
        optional={
            "model_revision": short,
            "model_sha": short,
            "adapter": short,
            "model_dtype": short,
            "num_parameters": lambda v, p: _integer(v, p, nullable=True, low=0),
            "pretrained": lambda v, p: _boolean(v, p, nullable=True),
            "dataset_config": short,
            "split": short,
            "dataset_revision": short,
            "image_column": short,
            "label_column": short,
            "num_images": lambda v, p: _integer(v, p, nullable=True, low=0),
            "indices_sha256": short,
            "selection_seed": lambda v, p: _integer(v, p, nullable=True),
        },
    )


def _sweep_point(value: Any, path: str) -> None:
    point = _object(value, path)
    _fields(
        point,
        path,
        required={
            "temperature": lambda v, p: _number(v, p, positive=True),
            "relative_stability": _stability,
            "diffeo_stability": _stability,
            "noise_stability": _stability,
        },
        optional={
            "delta": lambda v, p: _number(v, p, nullable=True, low=0.0),
            "relative_stability_ci": _interval,
        },
    )


def _layer(value: Any, path: str) -> None:
    layer = _object(value, path)
    temps = _list(_required(layer, "temperatures", path), f"{path}.temperatures")
    for i, t in enumerate(temps):
        _number(t, f"{path}.temperatures[{i}]", positive=True)
    for key in ("relative_stability", "diffeo_stability", "noise_stability"):
        values = _list(_required(layer, key, path), f"{path}.{key}", length=len(temps))
        for i, v in enumerate(values):
            _stability(v, f"{path}.{key}[{i}]")
    if "relative_stability_ci" in layer:
        cis = _list(layer["relative_stability_ci"], f"{path}.relative_stability_ci", length=len(temps))
        for i, ci in enumerate(cis):
            _interval(ci, f"{path}.relative_stability_ci[{i}]")


def _equivariance(value: Any, path: str) -> None:
    eq = _object(value, path)
    _fields(
        eq,
        path,
        required={
            "transform": lambda v, p: _string(v, p, max_chars=MAX_NAME_CHARS, nonempty=True),
            "mode": lambda v, p: _string(v, p, choices=EQUIVARIANCE_MODES),
            "metric": lambda v, p: _string(v, p, max_chars=MAX_NAME_CHARS, nonempty=True),
            "output": lambda v, p: _number(v, p, nullable=True),
        },
        optional={
            "num_samples": lambda v, p: _integer(v, p, low=1),
            "layers": lambda v, p: [_number(x, f"{p}.{k}", nullable=True) for k, x in _object(v, p).items()],
        },
    )


def _class_manifold(value: Any, path: str) -> None:
    cm = _object(value, path)
    _fields(
        cm,
        path,
        required={
            "target_class": lambda v, p: _integer(v, p, low=0),
            "d_star": lambda v, p: _number(v, p, nullable=True, low=0.0),
            "effective_dimension": lambda v, p: _number(v, p, nullable=True),
        },
        optional={
            "dims": lambda v, p: [_integer(d, f"{p}[{i}]", low=1) for i, d in enumerate(_list(v, p))],
            "probabilities": lambda v, p: [
                _number(x, f"{p}[{i}]", nullable=True, low=0.0, high=1.0 + _PROBABILITY_SLACK)
                for i, x in enumerate(_list(v, p))
            ],
            "input_dim": lambda v, p: _integer(v, p, low=1),
            "threshold": lambda v, p: _number(v, p, low=0.0, high=1.0),
        },
    )
    if "dims" in cm and "probabilities" in cm and len(cm["dims"]) != len(cm["probabilities"]):
        _fail(path, "dims and probabilities must have the same length")


def _results(value: Any, path: str) -> None:
    results = _object(value, path)
    _fields(
        results,
        path,
        required={
            "relative_stability": _stability,
            "relative_stability_ci": _interval,
            "diffeo_stability": _stability,
            "noise_stability": _stability,
            "test_error": lambda v, p: _number(v, p, nullable=True, low=0.0, high=1.0),
        },
        optional={
            "num_error_images": lambda v, p: _integer(v, p, low=0),
            "sweep": lambda v, p: [_sweep_point(x, f"{p}[{i}]") for i, x in enumerate(_list(v, p))],
            "layers": lambda v, p: [_layer(x, f"{p}.{k}") for k, x in _object(v, p).items()],
            "equivariance": _equivariance,
            "class_manifold": _class_manifold,
        },
    )


def validate_record(obj: Any) -> dict[str, Any]:
    """Check an untrusted results record and return a deep copy of it.

    Args:
        obj: the parsed JSON document (a dict).

    Returns:
        A copy of the record, unchanged in content.

    Raises:
        ResultsValidationError: the first problem found, as ``field.path: what is wrong``.
    """
    record = _object(obj, "record")
    _generic(record, "record")
    version = _required(record, "schema_version", "record")
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        _fail(
            "record.schema_version",
            f"unknown schema version {_kind(version)}; this hubstab reads versions "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))} (upgrade hubstab or re-run hubstab eval)",
        )
    _fields(
        record,
        "record",
        required={
            "run_id": _run_id,
            "config": _config,
            "results": _results,
            "created_at": _created_at,
        },
        optional={
            "higher_is_better": lambda v, p: [_boolean(x, f"{p}.{k}") for k, x in _object(v, p).items()],
            "notes": lambda v, p: [_string(x, f"{p}[{i}]") for i, x in enumerate(_list(v, p))],
            "environment": _object,
            "wall_time_s": lambda v, p: _number(v, p, nullable=True, low=0.0),
        },
    )
    return copy.deepcopy(record)


def _run_id(value: Any, path: str) -> None:
    _string(value, path, max_chars=64)
    if not _HEX64.fullmatch(value):
        _fail(path, "must be the 64 lower-case hex digits of a SHA-256 (as hubstab eval writes it)")


def _reject_constant(name: str) -> float:
    raise ResultsValidationError(
        f"the file contains {name}, which is not valid JSON; write null for a value that was not measured"
    )


def parse_record(text: str | bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Parse and validate a results record from JSON text (``NaN``/``Infinity`` literals are rejected)."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise ResultsValidationError(f"the file has {size} bytes, more than the limit of {max_bytes}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ResultsValidationError(f"the file is not UTF-8 text ({err.reason})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ResultsValidationError(
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except RecursionError:
        raise ResultsValidationError(f"the JSON is nested too deeply (limit {MAX_DEPTH} levels)") from None
    return validate_record(obj)


def load_record(path: str | Path, *, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Read, parse and validate a results file, refusing files larger than ``max_bytes``.

    Raises:
        ResultsValidationError: the file is too large, not JSON or not a valid record (the message says why).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ResultsValidationError(f"the file has {size} bytes, more than the limit of {max_bytes}")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ResultsValidationError(f"cannot read {path.name}: {err.strerror or err}") from None
    return parse_record(data, max_bytes=max_bytes)
