"""Downloader against a local HTTP server with Range support (no external network)."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
from functools import partial

import pytest

from atomnet.data import download as dl
from atomnet.errors import DownloadError

PAYLOAD = os.urandom(300_000)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus ``Range: bytes=N-`` (206 Partial Content); logs the Range headers."""

    ranges: list = []

    def send_head(self):
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        start = int(match.group(1))
        size = os.path.getsize(path)
        if start >= size:
            self.send_error(416, "Range Not Satisfiable")
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    handler = type("Handler", (RangeHandler,), {"ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def test_full_download(server, tmp_path):
    url, handler = server
    out = dl.download_file(f"{url}/data.bin", tmp_path / "dl" / "data.bin", SHA, len(PAYLOAD), progress=False)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "dl" / "data.bin.part").exists()
    assert handler.ranges == [None]
    # present and verified: no second request
    dl.download_file(f"{url}/data.bin", out, SHA, progress=False)
    assert handler.ranges == [None]
    # md5 and a 12-digit sha256 prefix (as published by load-atoms) are accepted
    assert dl.checksum_matches(out, "md5:" + hashlib.md5(PAYLOAD).hexdigest())
    assert dl.checksum_matches(out, SHA[:19]) and not dl.checksum_matches(out, "sha256:000000000000")


def test_resume_from_part(server, tmp_path):
    url, handler = server
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:123_456])
    dl.download_file(f"{url}/data.bin", dest, SHA, progress=False)
    assert handler.ranges == ["bytes=123456-"]  # only the remaining bytes were requested
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished(server, tmp_path):
    url, handler = server
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    dl.download_file(f"{url}/data.bin", tmp_path / "data.bin", SHA, progress=False)  # server answers 416
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch(server, tmp_path):
    url, _ = server
    with pytest.raises(
        DownloadError, match=r"data\.bin checksum mismatch \(expected sha256:0+, got [0-9a-f]{64}\)"
    ):
        dl.download_file(f"{url}/data.bin", tmp_path / "data.bin", "sha256:" + "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]  # no final file, no .part


def test_unreachable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends
    url = f"http://127.0.0.1:{port}/qm9.tar.bz2"
    with pytest.raises(
        DownloadError, match=rf"download failed: {re.escape(url)} unreachable \(.+\); pass --path"
    ):
        dl.download(url, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_http_404(server, tmp_path):
    url, _ = server
    with pytest.raises(DownloadError, match=r"missing\.bin unreachable \(HTTP 404"):
        dl.download(f"{url}/missing.bin", tmp_path / "out", progress=False)


def test_registry(server, tmp_path, monkeypatch):
    assert {"qm9", "rmd17", "qm7", "md17_ethanol", "md17_aspirin", "md17_ethanol_ccsd_t"} <= set(dl.DATASETS)
    qm9 = {r.filename: r for r in dl.DATASETS["qm9"]}
    assert qm9["dsgdb9nsd.xyz.tar.bz2"].url.endswith("/3195389")
    for resources in dl.DATASETS.values():
        for r in resources:
            assert r.url.startswith("http") and (
                r.checksum is None or re.fullmatch(r"(sha256|md5):[0-9a-f]{12,}", r.checksum)
            )
    url, _ = server
    monkeypatch.setitem(dl.DATASETS, "toy", [dl.Resource(f"{url}/data.bin", "toy.bin", SHA, len(PAYLOAD))])
    assert dl.download("toy", tmp_path / "d", progress=False) == [tmp_path / "d" / "toy.bin"]
    with pytest.raises(DownloadError, match="unknown dataset 'nope'"):
        dl.download("nope", tmp_path)
