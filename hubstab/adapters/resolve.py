"""Model ids: prefixes, ``@revision``, hub access (online or from the local cache) and "did you mean".

Accepted forms (see README, "Models and datasets"):

* ``resnet50.a1_in1k`` / ``resnet50``: a timm registry name (with or without a pretrained tag);
* ``org/name`` or ``hf-hub:org/name``: a hub repo; the adapter is chosen from its ``config.json``;
* ``timm:...`` / ``transformers:...``: force an adapter (the rest is any of the other forms);
* ``local-dir:PATH`` or an existing directory: a folder in timm's or transformers' hub layout;
* ``...@rev``: a branch, tag or commit of a hub repo.

All hub I/O goes through :func:`fetch_repo`: when the hub cannot be reached (``HF_HUB_OFFLINE=1`` or no
network), only the local cache is read, so an id that is not cached fails in seconds.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hubstab.errors import DatasetError, HubstabError, ModelNotFoundError

logger = logging.getLogger("hubstab")

PREFIXES: dict[str, str | None] = {
    "timm": "timm",
    "transformers": "transformers",
    "hf": None,
    "hf-hub": None,
    "hf_hub": None,
    "local-dir": None,
}
"""Source prefixes: the adapter each one forces (None: chosen from the repo's config.json)."""

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

KNOWN_MODEL_IDS: tuple[str, ...] = (
    "facebook/deit-tiny-patch16-224",
    "facebook/deit-small-patch16-224",
    "facebook/deit-base-patch16-224",
    "facebook/deit-tiny-distilled-patch16-224",
    "facebook/deit-small-distilled-patch16-224",
    "facebook/deit-base-distilled-patch16-224",
    "facebook/convnext-tiny-224",
    "facebook/convnext-small-224",
    "facebook/convnext-base-224",
    "facebook/convnextv2-tiny-1k-224",
    "facebook/regnet-y-040",
    "google/vit-base-patch16-224",
    "google/vit-large-patch16-224",
    "google/vit-base-patch32-384",
    "google/efficientnet-b0",
    "google/mobilenet_v2_1.0_224",
    "google/mobilenet_v1_1.0_224",
    "microsoft/resnet-18",
    "microsoft/resnet-50",
    "microsoft/resnet-101",
    "microsoft/beit-base-patch16-224",
    "microsoft/swin-tiny-patch4-window7-224",
    "microsoft/swinv2-tiny-patch4-window8-256",
    "microsoft/cvt-13",
    "apple/mobilevit-small",
    "nvidia/mit-b0",
)
"""Popular transformers image classifiers, used for shorthand ids and "did you mean" suggestions."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model id.

    Attributes:
        kind: ``"registry"`` (timm name), ``"hub"`` (hub repo id) or ``"local"`` (directory).
        target: the timm name, repo id or directory path (without prefix and revision).
        adapter: the adapter forced by a prefix, or None to choose automatically.
        revision: the requested hub revision, if any.
    """

    kind: str
    target: str
    adapter: str | None = None
    revision: str | None = None


def parse_model_spec(spec: str, revision: str | None = None) -> ModelSpec:
    """Parse a model id string into a :class:`ModelSpec` (no I/O beyond checking for a local directory).

    Raises:
        ModelNotFoundError: for an empty id, an unknown prefix or two different revisions.
    """
    text = spec.strip()
    if not text:
        raise ModelNotFoundError("empty model id: give a timm name, a hub id (org/name) or a directory")
    adapter: str | None = None
    forced_local = False
    while True:
        head, sep, rest = text.partition(":")
        if not sep or len(head) < 2 or os.path.exists(text):
            break
        key = head.lower()
        if key not in PREFIXES:
            raise ModelNotFoundError(
                f"unknown prefix {head!r} in model id {spec!r}; known prefixes: "
                + ", ".join(f"{p}:" for p in PREFIXES)
            )
        if PREFIXES[key] is not None:
            adapter = PREFIXES[key]
        forced_local = forced_local or key == "local-dir"
        text = rest
        if not text:
            raise ModelNotFoundError(f"model id {spec!r} has nothing after its prefix")
    if forced_local or Path(text).expanduser().is_dir():
        path = Path(text).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {str(path)!r} does not exist")
        return ModelSpec("local", str(path.resolve()), adapter, None)
    target, at, rev = text.partition("@")
    if at:
        if not rev:
            raise ModelNotFoundError(f"model id {spec!r} has an empty revision after '@'")
        if revision is not None and revision != rev:
            raise ModelNotFoundError(f"model id {spec!r} pins revision {rev!r} but revision={revision!r}")
        revision = rev
    if "/" in target:
        if not _REPO_ID.match(target):
            raise ModelNotFoundError(
                f"{target!r} is neither an existing directory nor a hub id of the form org/name"
            )
        return ModelSpec("hub", target, adapter, revision)
    if revision is not None:
        raise ModelNotFoundError(
            f"a revision needs a hub id (org/name@rev); {target!r} is a timm name: use 'timm/{target}@{revision}'"
        )
    return ModelSpec("registry", target, adapter or "timm", None)


def hub_offline() -> bool:
    """True when hub downloads are switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The hub URL in use (``HF_ENDPOINT``, default https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def _reachable(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub can be used: not offline and its host accepts a connection within ``timeout`` s.

    Checked once per process and endpoint, so an unreachable hub costs at most one timeout.
    """
    return not hub_offline() and _reachable(hub_endpoint(), timeout)


def hub_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time (``HF_HUB_CACHE`` or ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_folder(repo_id: str, repo_type: str) -> Path:
    return hub_cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_snapshot(repo_id: str, revision: str | None = None, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit), or None."""
    folder = _repo_folder(repo_id, repo_type)
    rev = revision or "main"
    commit = rev if _COMMIT.match(rev) else None
    if commit is None:
        ref = folder / "refs" / rev
        if ref.is_file():
            commit = ref.read_text().strip()
    if commit is None:
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def cached_repo_ids(repo_type: str = "model") -> list[str]:
    """Repo ids present in the local hub cache."""
    root = hub_cache_dir()
    if not root.is_dir():
        return []
    prefix = f"{repo_type}s--"
    return sorted(
        p.name[len(prefix) :].replace("--", "/", 1)
        for p in root.iterdir()
        if p.name.startswith(prefix) and (p / "snapshots").is_dir()
    )


MODEL_FILES: tuple[str, ...] = ("*.json", "*.safetensors")
"""Files fetched from a model repo (configs and safetensors weights); pickled weights only as a fallback."""


def fetch_repo(
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str = "model",
    allow_patterns: tuple[str, ...] = MODEL_FILES,
) -> tuple[Path, str]:
    """Local snapshot folder of a hub repo and its commit sha, downloading what is missing when online.

    Raises:
        ModelNotFoundError (models) / DatasetError (datasets): unknown, private, gated, bad revision, or
            not cached while the hub is unreachable.
    """
    error = ModelNotFoundError if repo_type == "model" else DatasetError
    what = "model" if repo_type == "model" else "dataset"
    at = f"@{revision}" if revision else ""
    if not hub_reachable():
        snapshot = cached_snapshot(repo_id, revision, repo_type)
        if snapshot is None:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{hub_endpoint()} cannot be reached"
            if repo_type == "model" and _is_known_model(repo_id):
                raise error(
                    f"{what} {repo_id}{at} exists on the hub but is not in the local hub cache "
                    f"({hub_cache_dir()}) and {why}: download it once with network access "
                    f"(`hf download {repo_id}{' --revision ' + revision if revision else ''}`, or run once "
                    "without HF_HUB_OFFLINE), then it loads offline"
                )
            raise error(
                f"{what} {repo_id}{at} is not in the local hub cache ({hub_cache_dir()}) and {why}; "
                f"download it once with network access, or check the id"
            )
        return snapshot, snapshot.name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=list(allow_patterns),
                cache_dir=str(hub_cache_dir()),
            )
        )
        if repo_type == "model" and not any(path.glob("*.safetensors")):
            path = Path(
                snapshot_download(
                    repo_id,
                    repo_type=repo_type,
                    revision=revision,
                    allow_patterns=["*.bin", "*.pth"],
                    cache_dir=str(hub_cache_dir()),
                )
            )
    except GatedRepoError as exc:
        raise error(
            f"{what} {repo_id} is gated: accept its terms on {hub_endpoint()}/{_url_part(repo_type)}{repo_id} "
            "and log in (`hf auth login` or HF_TOKEN)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise error(
            f"{what} {repo_id} does not exist on the hub or is private (log in with `hf auth login` "
            "if it is yours)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise error(f"{what} {repo_id} has no revision {revision!r}") from exc
    except LocalEntryNotFoundError as exc:
        raise error(f"{what} {repo_id}{at} could not be downloaded and is not cached: {exc}") from exc
    return path, path.name


def _url_part(repo_type: str) -> str:
    return "" if repo_type == "model" else f"{repo_type}s/"


def repo_exists(repo_id: str, revision: str | None = None, repo_type: str = "model") -> bool | None:
    """Whether a hub repo exists (True/False), or None when that cannot be told (offline and not cached)."""
    if cached_snapshot(repo_id, revision, repo_type) is not None:
        return True
    if not hub_reachable():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=10)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:
        return None
    return True


def _timm_pretrained_ids() -> list[str]:
    import timm

    return [f"timm/{name}" for name in timm.list_pretrained()]


def model_candidates() -> list[str]:
    """Known model ids for suggestions: the local cache, popular transformers ids and timm's hub ids."""
    seen: dict[str, None] = {}
    for name in (*cached_repo_ids("model"), *KNOWN_MODEL_IDS, *_timm_pretrained_ids()):
        seen.setdefault(name, None)
    return list(seen)


def _is_known_model(repo_id: str) -> bool:
    """Whether ``repo_id`` is a model id hubstab knows to exist (popular transformers ids, timm's hub ids)."""
    try:
        return repo_id in KNOWN_MODEL_IDS or repo_id in _timm_pretrained_ids()
    except ImportError:  # pragma: no cover - timm is a dependency
        return repo_id in KNOWN_MODEL_IDS


def did_you_mean(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates close to ``name`` and different from it: ids extending it first, then similar
    spellings."""
    low = name.lower()
    candidates = [c for c in candidates if c.lower() != low]
    extending = [c for c in candidates if c.lower().startswith(low) and c.lower() != low]
    extending.sort(key=lambda c: (len(c), c))
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    out: list[str] = []
    for c in (*extending, *close):
        if c not in out:
            out.append(c)
    return out[:n]


def expand_shorthand(repo_id: str) -> str | None:
    """The obvious full id of a shorthand (``facebook/deit-small`` -> ``facebook/deit-small-patch16-224``).

    The candidates are known ids that extend ``repo_id`` with ``-...``; the shortest one is chosen when it is
    unique. When the hub cannot be reached only cached repos are considered. None when there is no clear
    choice.
    """
    pool = cached_repo_ids("model") if not hub_reachable() else model_candidates()
    ext = [c for c in pool if c.lower().startswith(repo_id.lower() + "-")]
    if not ext:
        return None
    ext.sort(key=len)
    if len(ext) > 1 and len(ext[0]) == len(ext[1]):
        return None
    return ext[0]


def not_found(spec: str, detail: str) -> ModelNotFoundError:
    """A :class:`ModelNotFoundError` for ``spec`` with a "did you mean" list when there are close ids."""
    name = spec.split(":", 1)[-1] if ":" in spec and not os.path.exists(spec) else spec
    if "is not in the local hub cache" in detail and _is_known_model(name):
        return ModelNotFoundError(detail)  # the id is right; the message says how to fetch it
    suggestions = did_you_mean(name, model_candidates())
    if "/" not in name:
        import timm

        suggestions += [s for s in did_you_mean(name, timm.list_models()) if s not in suggestions]
    msg = detail
    if suggestions:
        msg += "; did you mean: " + ", ".join(suggestions[:6]) + "?"
    return ModelNotFoundError(msg)


def note(message: str) -> None:
    """A note for the user (logged as a warning, so the CLI shows it)."""
    logger.warning(message)


class UnsupportedModelError(HubstabError):
    """A model that exists but that no adapter can load."""
