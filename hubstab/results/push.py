"""Upload results files to a hub dataset repo (the leaderboard's source)."""

from __future__ import annotations

import os
from pathlib import Path

from hubstab.errors import HubstabError


def path_in_repo(path: str | os.PathLike) -> str:
    """Where a local results file goes in the repo: ``results/<model folder>/<file>``."""
    p = Path(path)
    return f"results/{p.parent.name}/{p.name}"


def push_results(
    path: str | os.PathLike, repo_id: str, *, token: str | None = None, create: bool = True
) -> str:
    """Upload one results file (and its per-sample file if present) to the dataset repo ``repo_id``.

    Returns:
        The URL of the commit.

    Raises:
        HubstabError: offline, not logged in, or no write access, with what to do about it.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from hubstab.results.validate import load_record

    path = Path(path)
    record = load_record(path)  # never push a file that does not validate
    api = HfApi(token=token)
    try:
        if create:
            api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        files = [path] + [p for p in [path.with_suffix(".samples.json")] if p.exists()]
        info = None
        for f in files:
            info = api.upload_file(
                path_or_fileobj=str(f),
                path_in_repo=path_in_repo(f),
                repo_id=repo_id,
                repo_type="dataset",
                commit_message=f"hubstab results: {record['config']['model_name']} ({record['run_id'][:12]})",
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
    return str(getattr(info, "commit_url", info))
