"""Big bodies over a real gunicorn: read straight from its socket, hashed while written.

Under gunicorn a Content-Length body is read from the client socket into one reused
buffer (bypassing gunicorn's copying reader) and hashed in a second thread. These tests
send bodies larger than that buffer and check every byte, the sha256, and that the
connection is left exactly where the next request starts: gunicorn must neither lose a
pipelined request nor take it for the rest of the body.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import gunicorn
import pytest
import requests

from .conftest import ADMIN, AUTH, Server, start_server, write_config

BIG = 3 * 1024 * 1024 + 12345  # more than one 1 MiB read, not a multiple of it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = write_config(tmp_path / "state")
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "1"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    requests.post(f"{srv.url}/demo", json={"items": {"builds": {"type": "collection"}}},
                  headers=AUTH).raise_for_status()
    yield srv
    srv.stop()


def published(tmp_path: Path, name: str) -> bytes:
    return (tmp_path / "state/public/demo/builds" / name).read_bytes()


def connect(server: Server) -> socket.socket:
    host, port = server.url.split("//")[1].split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_all(sock: socket.socket) -> str:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks).decode("latin-1")
        chunks.append(data)


def put_head(name: str, length: int, extra: str = "") -> bytes:
    return (f"PUT /demo/builds?filename={name} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {ADMIN}\r\nContent-Length: {length}\r\n{extra}\r\n"
            ).encode()


LIST = b"GET /demo/builds HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


OLD_GUNICORN = int(gunicorn.__version__.split(".")[0]) < 27


@pytest.mark.parametrize("size", [
    pytest.param(100, marks=pytest.mark.skipif(
        OLD_GUNICORN, reason="gunicorn 23's gthread worker never serves a request that "
        "arrived in the same read as the one before it (with or without artstore's reader)")),
    BIG])
def test_a_request_pipelined_behind_an_upload_is_answered_not_swallowed(
        server: Server, tmp_path: Path, size: int) -> None:
    # 100 bytes arrive with the headers, in gunicorn's read-ahead, together with the
    # next request; BIG takes several reads and ends exactly at the next request.
    body = os.urandom(size)
    with connect(server) as sock:
        sock.sendall(put_head("a.bin", size) + body + LIST)
        reply = read_all(sock)
    first, second = reply.split("HTTP/1.1 ")[1:]
    assert first.startswith("201"), first[:300]
    assert second.startswith("200"), second[:300]
    assert '"a.bin"' in second
    assert published(tmp_path, "a.bin") == body


def test_a_keep_alive_connection_carries_upload_after_upload(server: Server,
                                                             tmp_path: Path) -> None:
    bodies = [os.urandom(100), os.urandom(BIG), os.urandom(BIG // 3), os.urandom(100)]
    with requests.Session() as session:
        for i, body in enumerate(bodies):
            r = session.put(f"{server.url}/demo/builds?filename={i}.bin", data=body,
                            headers=AUTH)
            assert r.status_code == 201, r.text
            assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    for i, body in enumerate(bodies):
        assert published(tmp_path, f"{i}.bin") == body


def test_a_client_waiting_for_100_continue_gets_it_and_publishes(server: Server,
                                                                 tmp_path: Path) -> None:
    body = os.urandom(BIG)
    with connect(server) as sock:
        sock.sendall(put_head("c.bin", BIG, "Expect: 100-continue\r\nConnection: close\r\n"))
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        reply = read_all(sock)
    assert "HTTP/1.1 201" in reply, reply[:300]
    assert published(tmp_path, "c.bin") == body


@pytest.mark.parametrize("how", ["put", "multipart"])
def test_a_big_upload_is_stored_and_hashed_exactly(server: Server, tmp_path: Path,
                                                   how: str) -> None:
    body = os.urandom(BIG)
    digest = hashlib.sha256(body).hexdigest()
    url = f"{server.url}/demo/builds"
    if how == "put":
        r = requests.put(f"{url}?filename=big.bin", data=body,
                         headers={**AUTH, "X-Checksum-Sha256": digest})
    else:
        r = requests.post(url, files={"item": ("big.bin", body)},
                          data={"sha256": digest}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == digest and r.json()["size"] == BIG
    assert published(tmp_path, "big.bin") == body


def test_a_big_upload_with_a_wrong_checksum_publishes_nothing(server: Server,
                                                              tmp_path: Path) -> None:
    body = os.urandom(BIG)
    wrong = hashlib.sha256(body + b"x").hexdigest()
    r = requests.put(f"{server.url}/demo/builds?filename=big.bin", data=body,
                     headers={**AUTH, "X-Checksum-Sha256": wrong})
    assert r.status_code == 422, r.text
    assert not (tmp_path / "state/public/demo/builds/big.bin").exists()


def test_a_body_trickling_in_small_pieces_is_stored_exactly(server: Server,
                                                             tmp_path: Path) -> None:
    # Small reads (a slow client, TLS records) are gathered into bigger pieces.
    body = os.urandom(600 * 1024 + 7)
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(put_head("slow.bin", len(body), "Connection: close\r\n"))
        for start in range(0, len(body), 7000):
            sock.sendall(body[start:start + 7000])
            if start % (70 * 7000) == 0:
                time.sleep(0.02)
        reply = read_all(sock)
    assert "HTTP/1.1 201" in reply, reply[:300]
    assert published(tmp_path, "slow.bin") == body
