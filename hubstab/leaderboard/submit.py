"""Submissions through the hub: results files as pull requests, evaluation requests as files in ``requests/``.

Everything here talks to the hub through one ``huggingface_hub.HfApi`` object (tests pass a fake one). The
board's results repo is ``$HUBSTAB_RESULTS``; writing needs a token with write access to it
(``$HF_TOKEN``, a secret of the Space). Nothing in a submitted file is executed: it is validated, then
uploaded byte for byte as the user sent it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from hubstab.errors import HubstabError
from hubstab.leaderboard.reading import REPO_ID, SUBMISSIONS_DIR, model_label
from hubstab.results.io import model_folder

TOKEN_ENV = "HF_TOKEN"
"""Environment variable (a Space secret) holding a token with write access to the results repo."""
REQUESTS_DIR = "requests"
"""Folder of the results repo where evaluation requests are appended."""
MAX_REVISION_CHARS = 100

_MODEL_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
_REVISION = re.compile(rf"[\w.\-/]{{1,{MAX_REVISION_CHARS}}}")


@dataclass(frozen=True)
class HubTarget:
    """Where submissions go: the results dataset repo and the token that may write to it."""

    repo_id: str | None
    token: str | None

    @classmethod
    def from_env(cls, source: str | None = None) -> HubTarget:
        """The repo of ``source`` (or ``$HUBSTAB_RESULTS``) when it is a hub repo id, and ``$HF_TOKEN``."""
        from hubstab.leaderboard.reading import RESULTS_ENV

        repo = source if source is not None else os.environ.get(RESULTS_ENV, "").strip() or None
        repo = repo if repo and REPO_ID.fullmatch(repo) and not os.path.exists(repo) else None
        return cls(repo, os.environ.get(TOKEN_ENV) or None)

    @property
    def writable(self) -> bool:
        """Whether submissions can be sent to the hub (a results repo and a token)."""
        return bool(self.repo_id and self.token)


def _api(api: Any, token: str | None) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(token=token)


def submission_path(record: dict[str, Any]) -> str:
    """Path of a submitted record in the results repo: ``submissions/<model folder>/<run id>.json``."""
    return f"{SUBMISSIONS_DIR}/{model_folder(record['config']['model_name'])}/{record['run_id'][:16]}.json"


def open_pull_request(record: dict[str, Any], content: bytes, target: HubTarget, *, api: Any = None) -> str:
    """Open a pull request adding a validated results file to the results repo.

    Args:
        record: the validated record (names the file).
        content: the file's bytes, uploaded unchanged.
        target: results repo and token.
        api: an ``HfApi``-like object (default: a new ``HfApi`` with the token).

    Returns:
        The pull request's URL.

    Raises:
        HubstabError: no repo or token configured, or the hub refused the commit.
    """
    if not target.writable:
        raise HubstabError(
            "this board has no results repo with a write token: submissions cannot be published"
        )
    from huggingface_hub import CommitOperationAdd

    path = submission_path(record)
    try:
        info = _api(api, target.token).create_commit(
            repo_id=target.repo_id,
            repo_type="dataset",
            operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=content)],
            commit_message=f"Submit results of {model_label(record['config']['model_name'])}"[:200],
            commit_description=f"Run {record['run_id']}, submitted through the leaderboard Space.",
            create_pr=True,
        )
    except Exception as err:  # network, auth, hub errors: one message for the user
        raise HubstabError(f"the hub refused the pull request ({type(err).__name__}: {err})") from None
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", ""))


def parse_model_request(model_id: str, revision: str = "") -> tuple[str, str]:
    """Check a requested model id (``org/name`` or a timm name) and revision (default ``main``).

    Raises:
        HubstabError: not a model id (paths, URLs, spaces and markup are refused).
    """
    model_id = (model_id or "").strip().removeprefix("hf-hub:")
    revision = (revision or "").strip() or "main"
    if not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise HubstabError(f"{model_id!r} is not a hub model id; write it as org/name (or a timm model name)")
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise HubstabError(f"{revision!r} is not a branch, tag or commit")
    return model_id, revision


def request_evaluation(
    model_id: str,
    target: HubTarget,
    *,
    revision: str = "",
    protocol: str | None = None,
    api: Any = None,
    now: _dt.datetime | None = None,
) -> str:
    """Append a request to evaluate a model to the results repo's ``requests/`` folder (one commit).

    A model already requested at the same revision and not yet done is not requested twice.

    Returns:
        The path of the request file in the repo.

    Raises:
        HubstabError: a bad model id, no repo or token, an open request for it, or a refused commit.
    """
    model_id, revision = parse_model_request(model_id, revision)
    if not target.writable:
        raise HubstabError("this board has no results repo with a write token: requests cannot be recorded")
    from huggingface_hub import CommitOperationAdd

    api = _api(api, target.token)
    folder = f"{REQUESTS_DIR}/{model_folder(model_id)}"
    try:
        existing = [
            f
            for f in api.list_repo_files(target.repo_id, repo_type="dataset")
            if f.startswith(folder + "/") and f.endswith(f"@{model_folder(revision)}.json")
        ]
    except Exception as err:
        raise HubstabError(f"cannot read the results repo ({type(err).__name__}: {err})") from None
    if existing:
        raise HubstabError(f"{model_id} at {revision} is already requested ({existing[0]})")
    when = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    path = f"{folder}/{when.strftime('%Y%m%dT%H%M%S')}@{model_folder(revision)}.json"
    request = {
        "model": model_id,
        "revision": revision,
        "protocol": protocol,
        "status": "PENDING",
        "submitted_at": when.isoformat(timespec="seconds"),
    }
    try:
        api.create_commit(
            repo_id=target.repo_id,
            repo_type="dataset",
            operations=[
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=json.dumps(request, indent=2).encode())
            ],
            commit_message=f"Request evaluation of {model_id}",
        )
    except Exception as err:
        raise HubstabError(f"the hub refused the request ({type(err).__name__}: {err})") from None
    return path
