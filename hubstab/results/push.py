"""Upload results files to a hub dataset repo (the leaderboard's source): all files in one commit.

:func:`push_files` validates every file first and refuses the whole upload, naming each bad file with its
reason, before anything reaches the hub; then it adds every record (and its per-sample file) in one
``HfApi.create_commit``, optionally as a pull request. ``hubstab push`` and ``hubstab eval --push-to-hub`` both
use it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubstab.errors import HubstabError, ResultsValidationError

RESULTS_PREFIX = "results"
"""Folder of the dataset repo that holds the records (``results/<model folder>/<run id>.json``)."""
MAX_SAMPLES_BYTES = 100_000_000
"""Largest per-sample file uploaded beside its record (larger ones are left out)."""


@dataclass(frozen=True)
class Upload:
    """One file to upload: where it is and where it goes in the repo."""

    local: Path
    path_in_repo: str


@dataclass(frozen=True)
class PushResult:
    """What a push did: the commit (or pull request) URL and the files uploaded."""

    url: str
    uploads: tuple[Upload, ...]
    pr_url: str | None = None


def path_in_repo(path: str | os.PathLike, record: dict[str, Any] | None = None) -> str:
    """Where a results file goes in the repo: ``results/<model folder>/<run id[:16]>.json``.

    With the record, the place is derived from its model name and run id (as ``hubstab eval`` lays files out),
    whatever the local file is called; without it, from the local folder and file name.
    """
    from hubstab.results.io import model_folder

    p = Path(path)
    if record is None:
        return f"{RESULTS_PREFIX}/{p.parent.name}/{p.name}"
    suffix = ".samples.json" if p.name.endswith(".samples.json") else ".json"
    return f"{RESULTS_PREFIX}/{model_folder(record['config']['model_name'])}/{record['run_id'][:16]}{suffix}"


def collect_uploads(paths: Sequence[str | os.PathLike]) -> list[Upload]:
    """Validate the results files named (files, or folders searched for them) and plan their upload.

    Per-sample files (``*.samples.json``) beside a record go with it.

    Raises:
        ResultsValidationError: any file or folder entry is bad; the message lists every one with its reason.
        HubstabError: a path does not exist, or nothing to upload.
    """
    from hubstab.results.io import SAMPLES_SUFFIX, SkippedFile, scan_results
    from hubstab.results.validate import load_record

    records: list[tuple[Path, dict[str, Any]]] = []
    bad: list[SkippedFile] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            scan = scan_results(path)
            records += scan.records
            bad += scan.skipped
        elif path.exists() or path.is_symlink():
            try:
                records.append((path, load_record(path)))
            except ResultsValidationError as err:
                bad.append(SkippedFile(path, str(err)))
        else:
            raise HubstabError(f"no such file or folder: {path}")
    if bad:
        lines = "; ".join(str(b) for b in bad[:20]) + (f"; ... {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ResultsValidationError(f"{len(bad)} file(s) refused, nothing uploaded: {lines}")
    if not records:
        raise HubstabError(f"no results files in {', '.join(map(str, paths))}")
    uploads: dict[str, Upload] = {}
    for path, record in records:
        target = path_in_repo(path, record)
        if target in uploads and uploads[target].local.resolve() != path.resolve():
            raise HubstabError(
                f"{path} and {uploads[target].local} are the same run ({target}); push one of them"
            )
        uploads[target] = Upload(path, target)
        samples = path.with_name(path.name.removesuffix(".json") + SAMPLES_SUFFIX)
        try:
            info = samples.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_SAMPLES_BYTES:  # never a link, FIFO or device
            uploads[path_in_repo(samples, record)] = Upload(samples, path_in_repo(samples, record))
    return list(uploads.values())


def push_files(
    paths: Sequence[str | os.PathLike],
    repo_id: str,
    *,
    pr: bool = False,
    token: str | None = None,
    create: bool = True,
    message: str | None = None,
    api: Any = None,
) -> PushResult:
    """Validate results files and upload them all to the dataset repo ``repo_id`` in one commit.

    Args:
        paths: results files, or folders searched for them (as ``hubstab ls`` reads them).
        repo_id: the hub dataset repo, ``org/name``.
        pr: open a pull request instead of committing to the main branch.
        token: a hub token (default: the logged-in one).
        create: create the repo when it does not exist (not with ``pr``: a PR goes to an existing repo).
        message: the commit title (default: names the models and runs).
        api: an ``HfApi``-like object (default: ``huggingface_hub.HfApi(token=token)``).

    Returns:
        The commit's URL (or the pull request's) and the files uploaded.

    Raises:
        ResultsValidationError: a file is not a valid results file (nothing is uploaded).
        HubstabError: offline, not logged in, no write access or no such repo, with what to do about it.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubstabError(f"{repo_id!r} is not a hub dataset repo id; write it as org/name")
    uploads = collect_uploads(paths)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = api if api is not None else HfApi(token=token)
    records = [u for u in uploads if not u.path_in_repo.endswith(".samples.json")]
    if message is None:
        names = sorted({u.path_in_repo.split("/")[1] for u in records})
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        message = f"hubstab results: {len(records)} run(s) of {shown}"
    operations = [
        CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=str(u.local)) for u in uploads
    ]
    try:
        if create and not pr:
            api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id,
            repo_type="dataset",
            operations=operations,
            commit_message=message,
            create_pr=pr,
        )
    except OfflineModeIsEnabled as err:
        raise HubstabError(f"cannot push to {repo_id}: the hub is offline (HF_HUB_OFFLINE is set)") from err
    except HfHubHTTPError as err:
        raise HubstabError(
            f"cannot push to {repo_id}: {err}. Log in with `hf auth login` (a token with write access)"
        ) from err
    except OSError as err:  # connection errors
        raise HubstabError(
            f"cannot push to {repo_id}: the hub is unreachable ({err.__class__.__name__})"
        ) from err
    pr_url = getattr(info, "pr_url", None)
    url = str(pr_url or getattr(info, "commit_url", None) or info)
    return PushResult(url=url, uploads=tuple(uploads), pr_url=pr_url)


def push_results(
    path: str | os.PathLike, repo_id: str, *, token: str | None = None, create: bool = True, pr: bool = False
) -> str:
    """Upload one results file (and its per-sample file if present) in one commit; used by ``--push-to-hub``.

    Returns:
        The URL of the commit (or of the pull request with ``pr``).

    Raises:
        ResultsValidationError: the file does not validate (nothing is uploaded).
        HubstabError: offline, not logged in, or no write access, with what to do about it.
    """
    return push_files([path], repo_id, token=token, create=create, pr=pr).url
