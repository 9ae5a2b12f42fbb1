"""Upload edge cases over real HTTP: chunked bodies, limits, lying or vanishing clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .archives import site_tgz
from .conftest import ADMIN, AUTH, Server, start_server, write_config

LIMIT = 256 * 1024


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Server]:
    config = write_config(tmp_path / "state", max_upload_bytes=LIMIT)
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    requests.post(f"{srv.url}/demo", json={"items": {"docs": {"type": "tgz"},
                                                     "builds": {"type": "collection"}}},
                  headers=AUTH).raise_for_status()
    yield srv
    srv.stop()


def site(text: bytes = b"live") -> bytes:
    return site_tgz({"index.html": text})


def temp_is_empty(tmp_path: Path) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not list((tmp_path / "state" / "tmp").iterdir()):
            return True
        time.sleep(0.05)
    return False


def send_raw(server: Server, head: str, body: bytes = b"", close_early: bool = False) -> str:
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if close_early:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks).decode("latin-1")


def test_chunked_upload_is_accepted(small: Server, tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        data = site(b"chunked")
        yield data[:10]
        yield data[10:]

    r = requests.put(f"{small.url}/demo/docs", data=chunks(), headers=AUTH)
    assert r.status_code == 201, r.text
    assert (tmp_path / "state/public/demo/docs/index.html").read_bytes() == b"chunked"


def test_chunked_upload_over_the_limit_is_stopped_while_streaming(small: Server,
                                                                  tmp_path: Path) -> None:
    requests.put(f"{small.url}/demo/docs", data=site(), headers=AUTH).raise_for_status()

    def endless() -> Iterator[bytes]:
        for _ in range(64):
            yield b"\0" * 65536

    try:
        r = requests.put(f"{small.url}/demo/docs", data=endless(), headers=AUTH)
    except requests.ConnectionError:
        pass  # the server may close the connection while we are still sending
    else:
        assert r.status_code == 413
        assert r.headers["Content-Type"] == "application/problem+json"
    assert (tmp_path / "state/public/demo/docs/index.html").read_bytes() == b"live"
    assert temp_is_empty(tmp_path)


def test_multipart_over_the_limit_answers_413(small: Server, tmp_path: Path) -> None:
    files = {"item": ("big.bin", b"\0" * (LIMIT + 10))}
    r = requests.post(f"{small.url}/demo/builds", files=files, headers=AUTH)
    assert r.status_code == 413
    assert r.json()["status"] == 413
    assert temp_is_empty(tmp_path)


def test_put_without_length_or_chunking_answers_411(small: Server) -> None:
    reply = send_raw(small, "PUT /demo/docs HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n")
    assert reply.startswith("HTTP/1.1 411"), reply[:200]
    assert "application/problem+json" in reply


def test_client_sending_less_than_its_content_length_publishes_nothing(
        small: Server, tmp_path: Path) -> None:
    requests.put(f"{small.url}/demo/docs", data=site(), headers=AUTH).raise_for_status()
    body = site(b"never")
    send_raw(small, "PUT /demo/docs HTTP/1.1\r\nHost: x\r\n"
             f"Authorization: Bearer {ADMIN}\r\nContent-Length: {len(body) + 1000}\r\n\r\n",
             body, close_early=True)
    assert temp_is_empty(tmp_path)
    assert (tmp_path / "state/public/demo/docs/index.html").read_bytes() == b"live"
    info = requests.get(f"{small.url}/demo/docs").json()
    assert len(info["releases"]) == 1


def test_upload_is_refused_before_the_body_when_unauthorised(small: Server,
                                                             tmp_path: Path) -> None:
    r = requests.put(f"{small.url}/demo/docs", data=site(), headers={
        "Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert temp_is_empty(tmp_path)



def test_truncated_multipart_body_publishes_nothing(small: Server, tmp_path: Path) -> None:
    requests.post(f"{small.url}/demo/builds", files={"item": ("a.bin", b"a")},
                  headers=AUTH).raise_for_status()
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"item\"; "
            "filename=\"b.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += b"b" * 5000
    send_raw(small, "POST /demo/builds HTTP/1.1\r\nHost: x\r\n"
             f"Authorization: Bearer {ADMIN}\r\n"
             f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
             f"Content-Length: {len(body) + 5000}\r\n\r\n", body, close_early=True)
    assert temp_is_empty(tmp_path)
    names = [f["name"] for f in requests.get(f"{small.url}/demo/builds").json()["files"]]
    assert names == ["a.bin"]
