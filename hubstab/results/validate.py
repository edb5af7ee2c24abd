"""Validation of untrusted results records (files people submit to the leaderboard).

The contract is :class:`hubstab.results.schema.Record` (pydantic; also published as a JSON Schema).
:func:`validate_record` checks a parsed record against it after :func:`check_bounds` (nesting, sizes, finite
numbers, bounded integers, which hold for every key, named or not); :func:`parse_record` parses JSON text
with the same bounds (no ``NaN``/``Infinity``, no integer of more than 20 digits, no number that overflows);
:func:`load_record` reads a file, refusing anything that is not a regular file and checking its size before
reading. Every problem raises one :class:`~hubstab.errors.ResultsValidationError` whose message is
``field.path: what is wrong``. Nothing in a record is ever executed; strings are returned as they are and
must be shown as plain text.

This module imports neither torch nor timm (only pydantic), so the leaderboard can use it cheaply.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from hubstab.errors import ResultsValidationError
from hubstab.results.schema import (
    BATCHNORM_MODES,
    EQUIVARIANCE_MODES,
    ESTIMATORS,
    HEX64,
    INTERPOLATIONS,
    MAX_DEPTH,
    MAX_INTEGER,
    MAX_LIST_ITEMS,
    MAX_NAME_CHARS,
    MAX_RECORD_BYTES,
    MAX_STRING_CHARS,
    NO_CONTROL,
    SUPPORTED_SCHEMA_VERSIONS,
    Record,
    parse_created_at,
)

__all__ = [
    "BATCHNORM_MODES",
    "EQUIVARIANCE_MODES",
    "ESTIMATORS",
    "INTERPOLATIONS",
    "MAX_DEPTH",
    "MAX_INTEGER",
    "MAX_INTEGER_DIGITS",
    "MAX_LIST_ITEMS",
    "MAX_NAME_CHARS",
    "MAX_RECORD_BYTES",
    "MAX_STRING_CHARS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ResultsValidationError",
    "check_bounds",
    "load_record",
    "parse_created_at",
    "parse_record",
    "validate_record",
]

MAX_INTEGER_DIGITS = 20
"""Longest integer literal parsed (digits); longer ones are refused before Python converts them."""

_PATTERN_MESSAGES = {
    NO_CONTROL: "contains control characters",
    HEX64: "must be the 64 lower-case hex digits of a SHA-256 (as hubstab eval writes it)",
}
_TYPE_NAMES = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


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


def check_bounds(value: Any, path: str = "record", depth: int = 0) -> None:
    """Limits that hold for every value of a record: depth, list and string sizes, finite bounded numbers.

    Raises:
        ResultsValidationError: the first value beyond a limit, with its path.
    """
    if depth > MAX_DEPTH:
        _fail(path, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_LIST_ITEMS:
            _fail(path, f"has more than {MAX_LIST_ITEMS} keys")
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"has a key that is not a string: {_kind(key)}")
            if len(key) > MAX_NAME_CHARS:
                _fail(f"{path} (key)", f"is longer than {MAX_NAME_CHARS} characters")
            check_bounds(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            _fail(path, f"has more than {MAX_LIST_ITEMS} entries")
        for i, item in enumerate(value):
            check_bounds(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            _fail(path, f"is longer than {MAX_STRING_CHARS} characters")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > MAX_INTEGER:
            _fail(path, f"is an integer beyond +-{MAX_INTEGER}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            _fail(
                path, f"must be a finite number, got {value!r} (write null for a value that was not measured)"
            )
    else:
        _fail(path, f"holds a {type(value).__name__}, which is not a JSON value")


def _path(loc: tuple[Any, ...]) -> str:
    text = "record"
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _message(error: dict[str, Any]) -> str:
    """A pydantic error as ``what is wrong`` in hubstab's words."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind in _TYPE_NAMES:
        hint = (
            " (numbers are JSON numbers, not strings)"
            if kind == "float_type" and isinstance(value, str)
            else ""
        )
        return f"must be {_TYPE_NAMES[kind]}, got {_kind(value)}{hint}"
    if kind == "finite_number":
        return f"must be a finite number, got {value!r} (write null for a value that was not measured)"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        word = "below" if kind == "less_than" else bounds[kind]
        return f"must be {word} {limit:g}, got {value!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {', '.join(choices)}; got {_kind(value)}"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return _PATTERN_MESSAGES.get(ctx.get("pattern"), f"must match {ctx.get('pattern')}")
    if kind in ("too_short", "too_long"):
        actual = ctx.get("actual_length")
        if kind == "too_long":
            return f"must have at most {ctx.get('max_length')} entries, got {actual}"
        return f"must have at least {ctx.get('min_length')} entries, got {actual}"
    return str(error.get("msg", kind)).removeprefix("Value error, ")


def _fixed_length(error: dict[str, Any]) -> str | None:
    """``must have N entries`` for the lists of fixed length (intervals, image sizes)."""
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if error["type"] in ("too_short", "too_long") and isinstance(value, list):
        bound = ctx.get("min_length") if error["type"] == "too_short" else ctx.get("max_length")
        loc = error["loc"]
        fixed = loc and (
            loc[-1] in ("relative_stability_ci", "image_size")
            or (len(loc) > 1 and loc[-2] == "relative_stability_ci" and isinstance(loc[-1], int))
        )
        if fixed and bound == 2:
            return f"must have 2 entries, got {len(value)}"
    return None


def validate_record(obj: Any) -> dict[str, Any]:
    """Check an untrusted results record and return a deep copy of it.

    Args:
        obj: the parsed JSON document (a dict).

    Returns:
        A copy of the record, unchanged in content.

    Raises:
        ResultsValidationError: the first problem found, as ``record.field.path: what is wrong``.
    """
    from pydantic import ValidationError

    if not isinstance(obj, dict):
        _fail("record", f"must be an object, got {_kind(obj)}")
    check_bounds(obj)
    if "schema_version" not in obj:
        _fail("record.schema_version", "is required but missing")
    version = obj["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        _fail(
            "record.schema_version",
            f"unknown schema version {_kind(version)}; this hubstab reads versions "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))} (upgrade hubstab or re-run hubstab eval)",
        )
    try:
        Record.model_validate(obj)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        message = _fixed_length(first) or _message(first)
        raise ResultsValidationError(f"{_path(first['loc'])}: {message}{more}") from None
    except (RecursionError, ValueError, TypeError) as err:  # not expected after check_bounds; never leak
        raise ResultsValidationError(f"record: cannot be validated ({type(err).__name__})") from None
    return copy.deepcopy(obj)


def _reject_constant(name: str) -> float:
    raise ResultsValidationError(
        f"the file contains {name}, which is not valid JSON; write null for a value that was not measured"
    )


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise ResultsValidationError(
            f"the file contains an integer of {digits} digits; at most {MAX_INTEGER_DIGITS} are accepted"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ResultsValidationError(f"the file contains the number {shown}, which overflows a float")
    return value


def parse_record(text: str | bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """Parse and validate a results record from JSON text (``NaN``/``Infinity`` literals are rejected).

    Raises:
        ResultsValidationError: too large, not UTF-8, not JSON, or not a valid record (the message says why).
    """
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise ResultsValidationError(f"the file has {size} bytes, more than the limit of {max_bytes}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ResultsValidationError(f"the file is not UTF-8 text ({err.reason})") from None
    try:
        obj = json.loads(
            text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float
        )
    except json.JSONDecodeError as err:
        raise ResultsValidationError(
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except RecursionError:
        raise ResultsValidationError(f"the JSON is nested too deeply (limit {MAX_DEPTH} levels)") from None
    except ValueError as err:  # anything else json or int() refuses
        raise ResultsValidationError(f"not valid JSON: {err}") from None
    return validate_record(obj)


def _describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_bytes(path: str | os.PathLike[str], *, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked before anything is read.

    FIFOs, devices, sockets and folders are refused without being opened; the file is opened non-blocking
    (and without following a final symlink when ``follow_symlinks`` is False) and checked again once open.

    Raises:
        ResultsValidationError: not a regular file, too large, or unreadable.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        info = path.stat() if follow_symlinks else path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise ResultsValidationError(f"{path.name} is a symbolic link; it is not followed")
        if not stat.S_ISREG(info.st_mode):
            raise ResultsValidationError(f"{path.name} is {_describe_mode(info.st_mode)}, not a results file")
        if info.st_size > max_bytes:
            raise ResultsValidationError(
                f"the file has {info.st_size} bytes, more than the limit of {max_bytes}"
            )
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            opened = os.fstat(f.fileno())
            if not stat.S_ISREG(opened.st_mode):
                raise ResultsValidationError(
                    f"{path.name} is {_describe_mode(opened.st_mode)}, not a results file"
                )
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ResultsValidationError(f"cannot read {path.name}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise ResultsValidationError(f"the file has more than the limit of {max_bytes} bytes")
    return data


def load_record(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, follow_symlinks: bool = True
) -> dict[str, Any]:
    """Read, parse and validate a results file, refusing files larger than ``max_bytes``.

    Only regular files are read (never a FIFO or a device); the size is checked before reading.

    Raises:
        ResultsValidationError: the file is too large, not a regular file, not JSON or not a valid record.
    """
    data = read_bytes(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks)
    return parse_record(data, max_bytes=max_bytes)
