"""Every JSON body (projects, rollback, tokens) is read with a limit counted while reading, so a
huge body costs the worker no memory, chunked or not."""

from __future__ import annotations

import io
import select
import socket
from typing import Any

import pytest
import requests
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Response

from artstore.api import MAX_JSON_BYTES

from .archives import site_tgz
from .conftest import ADMIN, AUTH, Server

ITEMS = {"docs": {"type": "tgz"}}
ROUTES = [("POST", "/new"), ("PUT", "/demo"), ("POST", "/demo/docs/rollback"),
          ("POST", "/demo/_tokens")]
SLACK = 64 * 1024  # one read past the limit


class EndlessBody(io.RawIOBase):
    """A request body that never ends, counting what the server read of it."""

    def __init__(self) -> None:
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        buffer[:n] = b" " * n
        self.consumed += n
        return n


def send_endless(client: Any, method: str, path: str, body: EndlessBody,
                 length: int | None) -> Response:
    """``body`` as the request's body: chunked (``length`` None), or said to be ``length``
    bytes long (Werkzeug's test client wants a body it can seek to the end of)."""
    environ = EnvironBuilder(path=path, method=method, content_type="application/json",
                             headers=AUTH).get_environ()
    environ["wsgi.input"] = body
    if length is None:
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(length)
    app_iter, status, headers = run_wsgi_app(client.application, environ)
    return Response(b"".join(app_iter), status, headers)


@pytest.fixture
def demo(client: Any, make_project: Any) -> Any:
    make_project("demo", ITEMS)
    for text in (b"one", b"two"):
        assert client.put("/demo/docs", data=site_tgz({"index.html": text}),
                          headers=AUTH).status_code == 201
    return client


def state_of(client: Any) -> Any:
    return (client.get("/").get_json(), client.get("/demo").get_json(),
            client.get("/demo/docs").get_json(),
            client.get("/demo/_tokens", headers=AUTH).get_json())


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_chunked_json_body_over_the_limit_is_refused_before_it_is_all_read(
        demo: Any, method: str, path: str) -> None:
    before = state_of(demo)
    body = EndlessBody()
    r = send_endless(demo, method, path, body, None)
    assert r.status_code == 413, r.get_json()
    assert r.mimetype == "application/problem+json"
    assert str(MAX_JSON_BYTES) in r.get_json()["detail"]
    assert body.consumed <= MAX_JSON_BYTES + SLACK
    assert state_of(demo) == before


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_json_body_whose_length_is_over_the_limit_is_refused_unread(
        demo: Any, method: str, path: str) -> None:
    before = state_of(demo)
    body = EndlessBody()
    r = send_endless(demo, method, path, body, MAX_JSON_BYTES + 1)
    assert r.status_code == 413 and r.mimetype == "application/problem+json"
    assert body.consumed == 0
    assert state_of(demo) == before


def test_json_bodies_under_the_limit_still_work(demo: Any) -> None:
    releases = demo.get("/demo/docs").get_json()["releases"]
    assert demo.post("/demo/docs/rollback", json={"release": releases[1]["release"]},
                     headers=AUTH).status_code == 200
    assert demo.post("/demo/docs/rollback", data="", headers=AUTH).status_code == 409
    assert demo.post("/demo/_tokens", headers=AUTH).status_code == 201
    assert demo.post("/demo/_tokens", json={}, headers=AUTH).status_code == 201
    r = demo.post("/demo/_tokens", json={"name": "ci"}, headers=AUTH)
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert demo.post("/demo/_tokens", data="x", content_type="text/plain",
                     headers=AUTH).status_code == 415
    # Read in several pieces: over 64 KiB.
    big = {"items": {f"item-{n:04d}-{'x' * 40}": {"type": "tgz"} for n in range(1500)}}
    assert demo.post("/big", json=big, headers=AUTH).status_code == 201
    assert len(demo.get("/big").get_json()["items"]) == 1500


def test_a_worker_answers_413_to_an_endless_chunked_rollback_body_while_it_streams(
        server: Server) -> None:
    """Over real HTTP: the answer comes while the client is still sending, long before the
    (bounded) body would end, and the client has sent little more than the limit."""
    requests.post(f"{server.url}/demo", json={"items": ITEMS}, headers=AUTH).raise_for_status()
    host, port = server.url.split("//")[1].split(":")
    total = 256 * 1024 * 1024
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b" " * (1024 * 1024))
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /demo/docs/rollback HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        while b"\r\n\r\n" not in answer and sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                answer += sock.recv(65536)
            elif writable:
                sent += sock.send(chunk)
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert sent < 64 * 1024 * 1024  # the limit, plus what the sockets' buffers held
