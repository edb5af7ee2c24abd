"""Partial results of an interrupted run (safetensors, no pickle) and the lock that keeps a run single.

The probe set is cut into fixed blocks of consecutive positions; a block is measured in one piece by
whichever process and session gets it, so its statistics do not depend on how the work was split or
interrupted, and merging the blocks in block order gives the same numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from hubstab.metrics.stability import StabilityStats

FORMAT = "hubstab-blocks-1"


@dataclass
class Block:
    """The measurement of one block of probe positions.

    Attributes:
        number: the block's number (positions ``number * size`` to ``(number + 1) * size - 1``).
        stats: statistics of its measured images (None when none could be measured).
        skipped: images of the block that could not be decoded.
        nonfinite: global indices of its images with NaN or infinite outputs.
    """

    number: int
    stats: StabilityStats | None
    skipped: int = 0
    nonfinite: list[int] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return 0 if self.stats is None else self.stats.num_images


def _to_tensors(blocks: Iterable[Block]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for b in blocks:
        out[f"{b.number}|skipped"] = torch.tensor([b.skipped], dtype=torch.int64)
        if b.nonfinite:
            out[f"{b.number}|nonfinite"] = torch.tensor(b.nonfinite, dtype=torch.int64)
        if b.stats is not None:
            for key, value in b.stats.to_tensors().items():
                out[f"{b.number}|{key}"] = value
    return out


def _from_tensors(tensors: dict[str, torch.Tensor]) -> list[Block]:
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        number, _, name = key.partition("|")
        grouped.setdefault(int(number), {})[name] = value
    blocks = []
    for number, values in sorted(grouped.items()):
        skipped = int(values.pop("skipped")[0])
        nonfinite = values.pop("nonfinite", torch.empty(0, dtype=torch.int64)).tolist()
        stats = StabilityStats.from_tensors(values) if "indices" in values else None
        blocks.append(Block(number, stats, skipped, nonfinite))
    return blocks


class Checkpoint:
    """Per-run folder of partial statistics: every save of every process writes a new file.

    Files are ``<output_dir>/.partial/<run_id>/part-<session>-r<rank>-<n>.safetensors``, each holding the
    blocks finished since the previous save, written atomically (temporary file, then rename). On resume
    every file with the same block size is loaded and its blocks are skipped; the folder (and ``.partial``
    when it is left empty) is removed once the results file is written.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        run_id: str,
        rank: int,
        session: str | None = None,
        block_size: int = 1,
    ):
        self.root = Path(output_dir) / ".partial"
        self.folder = self.root / run_id
        self.rank = rank
        self.session = session or uuid.uuid4().hex[:12]
        self.block_size = int(block_size)
        self.saved = 0
        self.ignored: list[str] = []

    def _mine(self, path: Path) -> bool:
        return path.name.startswith(f"part-{self.session}-r{self.rank}-")

    def load(self) -> list[Block]:
        """Blocks saved by earlier sessions with the same block size (unreadable files are measured again)."""
        blocks: dict[int, Block] = {}
        for path in sorted(self.folder.glob("part-*.safetensors")):
            if self._mine(path) or not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("block_size") != str(self.block_size):
                    self.ignored.append(f"{path.name} (another batch size)")
                    continue
                for block in _from_tensors(load_file(path)):
                    blocks.setdefault(block.number, block)
            except Exception:  # a file cut short by a crash: its images are simply measured again
                self.ignored.append(f"{path.name} (unreadable)")
                continue
        return [blocks[n] for n in sorted(blocks)]

    def save(self, blocks: list[Block]) -> Path | None:
        """Atomically write ``blocks`` to a new file of this process (nothing when the list is empty)."""
        if not blocks:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{self.session}-r{self.rank}-{self.saved:05d}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(
                _to_tensors(blocks),
                str(tmp),
                metadata={"format": FORMAT, "block_size": str(self.block_size)},
            )
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.saved += 1
        return path

    def clear(self) -> None:
        """Remove the partial files of this run, and ``.partial`` itself when nothing else is in it."""
        if self.folder.exists():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only succeeds when empty: other runs' files stay


class RunLock:
    """An exclusive claim on one run id, so two identical runs never both measure.

    The lock is an ``flock`` on ``<output_dir>/.partial/<run_id>.lock``: the kernel releases it when the
    holder exits in any way (SIGKILL included), so a crashed run never leaves a stale claim. Where ``fcntl``
    is missing (Windows) the lock does nothing.
    """

    def __init__(self, output_dir: str | os.PathLike, run_id: str):
        self.root = Path(output_dir) / ".partial"
        self.path = self.root / f"{run_id}.lock"
        self._fd: int | None = None

    def _open_locked(self, blocking: bool) -> bool:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as we locked it: lock the new one instead
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """Host and process id written by the current holder (for messages)."""
        try:
            host, pid, _ = self.path.read_text().split()
            return f"process {pid} on {host}"
        except (OSError, ValueError):
            return "another process"

    def acquire(self, on_wait: Callable[[str], None] | None = None, poll_s: float = 0.5) -> bool:
        """Take the lock, waiting while another process holds it; returns whether we had to wait."""
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover (Windows)
            return False
        waited = False
        while not self._open_locked(blocking=False):
            if not waited and on_wait is not None:
                on_wait(self.holder())
            waited = True
            time.sleep(poll_s)
        return waited

    def release(self) -> None:
        """Release the lock and remove its file (and ``.partial`` when it is left empty)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(OSError):
            self.root.rmdir()

    @contextlib.contextmanager
    def held(self, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        waited = self.acquire(on_wait)
        try:
            yield waited
        finally:
            self.release()
