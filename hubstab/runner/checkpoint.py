"""Partial results of an interrupted run, saved as safetensors (no pickle) and merged on resume."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from safetensors.torch import load_file, save_file

from hubstab.metrics.stability import StabilityStats


class Checkpoint:
    """Per-run folder of partial statistics: every process of every session writes its own file.

    Files are ``<output_dir>/.partial/<run_id>/part-<session>-r<rank>.safetensors``; each holds the
    statistics of the images that process finished in that session. On resume every file is loaded and the
    finished images are skipped; the folder is removed once the results file is written.
    """

    def __init__(self, output_dir: str | os.PathLike, run_id: str, rank: int, session: str | None = None):
        self.folder = Path(output_dir) / ".partial" / run_id
        self.rank = rank
        self.session = session or uuid.uuid4().hex[:12]
        self.path = self.folder / f"part-{self.session}-r{rank}.safetensors"

    def load(self) -> list[StabilityStats]:
        """Statistics saved by earlier sessions (unreadable files are ignored: they are recomputed)."""
        parts = []
        for path in sorted(self.folder.glob("part-*.safetensors")):
            if path == self.path:
                continue
            try:
                parts.append(StabilityStats.from_tensors(load_file(path)))
            except Exception:  # a file cut short by a crash: its images are simply measured again
                continue
        return parts

    def save(self, stats: StabilityStats) -> None:
        """Atomically replace this process's file with ``stats``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        save_file(stats.to_tensors(), str(tmp))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Remove the partial files of this run."""
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
            self.folder.rmdir()
