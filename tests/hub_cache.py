"""Lay out model and dataset repos in a temporary Hugging Face cache, in the hub's own layout.

``hub/{models,datasets}--ORG--NAME/snapshots/<40-hex commit>/<files>`` plus ``refs/<branch>`` holding the
commit: what ``huggingface_hub`` leaves behind after a download, so code that resolves repo ids from the cache
(``HF_HUB_OFFLINE=1``) takes its normal path.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def add_repo(
    hf_home: Path,
    repo_id: str,
    source: Path,
    *,
    repo_type: str = "model",
    ref: str = "main",
    commit: str | None = None,
) -> str:
    """Copy the files of folder ``source`` into the cache as ``repo_id`` at ``ref``; returns the commit sha."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if commit is None:
        digest = hashlib.sha1(repo_id.encode())
        for p in files:
            digest.update(p.relative_to(source).as_posix().encode())
            digest.update(p.read_bytes())
        commit = digest.hexdigest()
    repo = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for p in files:
        blob = blobs / hashlib.sha256(p.read_bytes()).hexdigest()
        shutil.copyfile(p, blob)
        target = snapshot / p.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
