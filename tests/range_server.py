"""A loopback HTTP server that answers ``Range`` requests (206) and counts the bytes it sends.

Python's ``http.server`` ignores ``Range`` and always sends whole files; this handler serves byte ranges the
way hub and CDN servers do, so fsspec's HTTP filesystem and pyarrow read only what they ask for.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """GET with ``Range: bytes=a-b`` (also ``a-`` and ``-n``) -> 206 with just those bytes; counts body bytes."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _target(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None

    def do_HEAD(self) -> None:
        path = self._target()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._target()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            if start > end:
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(length)
        with self.server.lock:
            self.server.requests.append((self.path, start, end))
        rate = getattr(self.server, "bytes_per_second", None)
        chunk = 1 << 16
        try:
            for i in range(0, len(data), chunk):
                self.wfile.write(data[i : i + chunk])
                with self.server.lock:  # bytes handed to the socket (a client that hangs up stops the count)
                    self.server.bytes_sent += len(data[i : i + chunk])
                if rate:
                    time.sleep(min(chunk, len(data) - i) / rate)
        except (BrokenPipeError, ConnectionResetError):
            with self.server.lock:
                self.server.aborted += 1


@contextmanager
def serve(folder: os.PathLike, bytes_per_second: float | None = None):
    """Serve ``folder`` on 127.0.0.1 (a free port), optionally at a limited rate per response.

    Yields the server: ``url``, ``bytes_sent``, ``requests`` (path, first byte, last byte), ``aborted``.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
    server.lock = threading.Lock()
    server.bytes_per_second = bytes_per_second
    server.aborted = 0
    server.bytes_sent = 0
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
