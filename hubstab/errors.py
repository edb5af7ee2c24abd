"""Exceptions for problems with the user's input, each with a message that says what to do."""

from __future__ import annotations


class HubstabError(Exception):
    """Base class of hubstab's user-facing errors (the CLI prints the message and exits with code 2)."""


class ModelNotFoundError(HubstabError):
    """A model id, name or path that cannot be resolved."""


class DatasetError(HubstabError):
    """A dataset that cannot be loaded or used (unknown id, no image column, no labels where needed...)."""


class LabelSpaceError(HubstabError):
    """Model and dataset label spaces that cannot be matched."""


class ResultsValidationError(HubstabError):
    """A results file that does not follow the schema."""


class ArgumentError(HubstabError, ValueError):
    """An invalid argument or setting of a measurement (also a ValueError, so Python callers can catch either)."""
