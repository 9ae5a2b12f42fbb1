"""Upload edge cases over real HTTP: chunked bodies, limits, lying or vanishing clients."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- the caller and the project are checked again at the commit point ----------------------------

UPLOAD_PATHS = {"docs": "/demo/docs", "builds": "/demo/builds?filename=late.bin"}


def half_sent_upload(server: Server, path: str, body: bytes, token: str,
                     tmp_path: Path) -> http.client.HTTPConnection:
    """A PUT whose headers and first half are sent, and which the server has begun to
    receive (its temp file exists): authenticated, but not yet published."""
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:len(body) // 2])
    deadline = time.monotonic() + 10
    while not list((tmp_path / "state" / "tmp").iterdir()):
        assert time.monotonic() < deadline, "the server never began receiving the upload"
        time.sleep(0.02)
    return conn


def send_the_rest(conn: http.client.HTTPConnection,
                  body: bytes) -> tuple[int, str | None, Any]:
    conn.send(body[len(body) // 2:])
    resp = conn.getresponse()
    answer = (resp.status, resp.getheader("Content-Type"), json.loads(resp.read()))
    conn.close()
    return answer


def items_now(server: Server) -> dict[str, Any]:
    return {item: requests.get(f"{server.url}/demo/{item}").json() for item in UPLOAD_PATHS}


@pytest.fixture
def demo(server: Server) -> Server:
    items = {"docs": {"type": "tgz"}, "builds": {"type": "collection"}}
    requests.post(f"{server.url}/demo", json={"items": items}, headers=AUTH).raise_for_status()
    requests.put(f"{server.url}/demo/docs", data=site(), headers=AUTH).raise_for_status()
    requests.put(f"{server.url}/demo/builds?filename=a.bin", data=b"a",
                 headers=AUTH).raise_for_status()
    return server


@pytest.mark.parametrize("item", sorted(UPLOAD_PATHS))
def test_a_token_revoked_mid_upload_publishes_nothing(demo: Server, tmp_path: Path,
                                                      item: str) -> None:
    token = requests.post(f"{demo.url}/demo/_tokens", headers=AUTH).json()
    before = items_now(demo)
    body = site(b"late") if item == "docs" else b"late" * 10_000
    conn = half_sent_upload(demo, UPLOAD_PATHS[item], body, token["token"], tmp_path)
    assert requests.delete(f"{demo.url}/demo/_tokens/{token['id']}",
                           headers=AUTH).status_code == 204
    assert requests.put(f"{demo.url}/demo/docs", data=site(), headers={
        "Authorization": f"Bearer {token['token']}"}).status_code == 401
    status, content_type, problem = send_the_rest(conn, body)
    assert (status, content_type) == (401, "application/problem+json"), problem
    assert items_now(demo) == before
    assert (tmp_path / "state/public/demo/docs/index.html").read_bytes() == b"live"
    assert temp_is_empty(tmp_path)


@pytest.mark.parametrize("item", sorted(UPLOAD_PATHS))
def test_an_upload_into_a_project_deleted_and_created_again_meanwhile_publishes_nothing(
        demo: Server, tmp_path: Path, item: str) -> None:
    body = site(b"late") if item == "docs" else b"late" * 10_000
    conn = half_sent_upload(demo, UPLOAD_PATHS[item], body, ADMIN, tmp_path)
    items = requests.get(f"{demo.url}/demo").json()["items"]
    old_created = requests.get(f"{demo.url}/demo").json()["created"]
    assert requests.delete(f"{demo.url}/demo", headers=AUTH).status_code == 204
    r = requests.post(f"{demo.url}/demo", json={"items": {
        name: {k: v for k, v in conf.items() if k in ("type", "keep", "depth")}
        for name, conf in items.items()}}, headers=AUTH)
    assert r.status_code == 201 and r.json()["created"] != old_created
    status, content_type, problem = send_the_rest(conn, body)
    assert (status, content_type) == (409, "application/problem+json"), problem
    new = items_now(demo)
    assert (new["docs"]["live"], new["docs"]["releases"]) == (None, [])
    assert (new["builds"]["live"], new["builds"]["files"]) == (None, [])
    assert sorted(p.name for p in (tmp_path / "state/public/demo").iterdir()) == [
        ".artstore", "index.html"]
    assert temp_is_empty(tmp_path)
