"""Shared fixtures: small synthetic CVAT exports (made once per session), a local HTTP server."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kpnb.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_export(tmp_path_factory) -> Path:
    """A 40-image skeleton-layout export (folder) with seed 0."""
    return generate(tmp_path_factory.mktemp("syn") / "skeleton", n_images=40, seed=0)


@pytest.fixture(scope="session")
def points_export(tmp_path_factory) -> Path:
    """A 12-image points-layout export (folder) with seed 0."""
    return generate(tmp_path_factory.mktemp("syn") / "points", 12, 0, layout="points")


class _Server:
    """A folder served over HTTP on 127.0.0.1 (see `http_server`)."""

    def __init__(self, root: Path):
        import http.server
        import threading
        import urllib.parse

        self.root, self.hits = root, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                name = urllib.parse.unquote(self.path.lstrip("/"))
                drop = name.startswith("drop/")
                name = name.removeprefix("drop/")
                path = root / name  # the query is part of the file name if such a file exists
                if not path.is_file():
                    path = root / name.split("?", 1)[0]
                if not path.is_file():
                    self.send_error(404, "not here")
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops half-way
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, name: str, body: bytes) -> str:
        """Serve `body` at ``/name`` (a name may hold ``?query``); returns its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return f"{self.url}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a fresh folder, for download tests (no network).

    ``server.put(name, bytes)`` adds a file and returns its URL; ``server.url`` is the base;
    ``server.hits`` lists the request paths. ``/NAME?QUERY`` serves a file named
    ``NAME?QUERY`` if there is one, else ``NAME``; ``/drop/NAME`` sends half of ``NAME``
    and hangs up, as a broken connection does.
    """
    server = _Server(tmp_path_factory.mktemp("served"))
    yield server
    server.close()


@pytest.fixture
def no_decompression(monkeypatch):
    """Fail the test if any zip member is opened: limits must be enforced from the header."""

    real = zipfile.ZipFile.open

    def refuse(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            raise AssertionError("a zip member was decompressed before the limits were checked")
        return real(self, name, mode, *args, **kwargs)  # writing the test's zips is fine

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)
