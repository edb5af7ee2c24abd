"""Columns of the leaderboard table: name shown, type, whether shown by default, what it means."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column of the table.

    Attributes:
        name: header shown in the app (also the DataFrame column name).
        kind: ``"str"``, ``"number"`` or ``"markdown"`` (markdown cells are built by the app from escaped text;
            nothing from a results file is ever interpreted as markup).
        default: shown before the user picks columns.
        optional: only present when some record carries the metric.
        help: what the value means, with units.
    """

    name: str
    kind: str
    default: bool
    help: str
    optional: bool = False


RANK = "Rank"
MODEL = "Model"
R_F = "R_f"
R_F_INTERVAL = "R_f interval"
D_F = "D_f"
G_F = "G_f"
TEST_ERROR = "Test error (%)"
TIMM_ERROR = "ImageNet top-1 error (timm)"
FAMILY = "Family"
ADAPTER = "Adapter"
DATASET = "Dataset"
PROTOCOL = "Protocol"
PARAMETERS = "Parameters (M)"
INPUT_SIZE = "Input size"
IMAGES = "Images"
ERROR_IMAGES = "Error images"
PRETRAINED = "Pretrained"
DATE = "Date"
TEMPERATURE = "T"
DELTA = "delta (px)"
RUN_ID = "Run id"
ORIGIN = "Source"
INVARIANCE = "Equivariance deviation"
INVARIANCE_SETTING = "Equivariance setting"
D_STAR = "Class manifold d*"
EFFECTIVE_DIMENSION = "Class manifold effective dim."

COLUMNS: tuple[Column, ...] = (
    Column(
        RANK,
        "number",
        True,
        "position by R_f among the trained models of the chosen dataset and protocol (1: most stable)",
    ),
    Column(
        MODEL,
        "markdown",
        True,
        "hub model id (linked to its page), or the folder name of a model evaluated from a local folder",
    ),
    Column(
        R_F,
        "number",
        True,
        "relative stability R_f = D_f / G_f (lower: more stable to diffeos than to noise)",
    ),
    Column(R_F_INTERVAL, "str", True, "bootstrap confidence interval of R_f over probe images"),
    Column(
        D_F, "number", True, "stability to diffeomorphisms (output change over the change between images)"
    ),
    Column(G_F, "number", True, "stability to noise of the same norm, same denominator"),
    Column(TEST_ERROR, "number", True, "top-1 error on hubstab's probe images, percent"),
    Column(
        TIMM_ERROR,
        "number",
        True,
        "published ImageNet-1k validation top-1 error of these timm weights, percent",
    ),
    Column(
        ORIGIN,
        "str",
        True,
        "board: run by the board's maintainers; submitted: sent by a user (pull request or this session)",
    ),
    Column(FAMILY, "str", True, "architecture family, derived from the model name"),
    Column(ADAPTER, "str", False, "how hubstab loaded the model (timm, transformers, ...)"),
    Column(DATASET, "str", True, "probe data set: hub id (and split), or the name of a local folder"),
    Column(
        PROTOCOL,
        "str",
        False,  # the group chooser above the table names it
        "named protocol (see About), or custom: typical displacement, cut-off, interpolation, estimator",
    ),
    Column(PARAMETERS, "number", True, "number of parameters, millions"),
    Column(INPUT_SIZE, "str", True, "model input H x W, pixels"),
    Column(IMAGES, "number", True, "number of probe images P"),
    Column(ERROR_IMAGES, "number", False, "probe images with a label used for the test error"),
    Column(PRETRAINED, "str", False, "trained weights (yes) or random initialisation (no)"),
    Column(DATE, "str", True, "when the run finished (UTC)"),
    Column(TEMPERATURE, "number", False, "temperature of the diffeomorphisms"),
    Column(DELTA, "number", False, "typical displacement of that temperature, pixels"),
    Column(RUN_ID, "str", False, "first 12 hex digits of the run id (hash of the settings)"),
    # optional metrics: columns exist only when a record carries them, and are then shown
    Column(INVARIANCE, "number", True, "empirical equivariance/invariance deviation on the output", True),
    Column(INVARIANCE_SETTING, "str", True, "transformation, mode and metric of that deviation", True),
    Column(D_STAR, "number", True, "dimension d* at which the target-class probability is reached", True),
    Column(
        EFFECTIVE_DIMENSION, "number", True, "effective dimension of the class manifold, about D - d*", True
    ),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
DEFAULT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.default)
ALWAYS_SHOWN: tuple[str, ...] = (RANK, MODEL, R_F)
"""Columns kept whatever the user picks (the ranking makes no sense without them)."""
