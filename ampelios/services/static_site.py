"""A folder served over HTTP on a free loopback port: a site's pages for the browser tests
and ``scripts/bench_browser.py`` (a shop on another origin than any worker's)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

from ampelios.services.processes import free_port


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no access log on the console
        pass


@contextlib.contextmanager
def static_site(root: Path) -> Iterator[str]:
    """Serve ``root`` until the block ends; yields its origin, ``http://127.0.0.1:<port>``."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
