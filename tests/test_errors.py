"""Every error is application/problem+json, rendered in one place."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from .conftest import AUTH


def assert_problem(r: Any, status: int) -> dict:
    assert r.status_code == status
    assert r.mimetype == "application/problem+json"
    body = r.get_json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert "Traceback" not in r.get_data(as_text=True)
    return body


def test_unknown_route_is_a_404_problem(client: Any) -> None:
    assert_problem(client.get("/a/b/c/d"), 404)


def test_wrong_method_is_a_405_problem_with_allow(client: Any) -> None:
    r = client.patch("/demo")
    assert_problem(r, 405)
    assert "GET" in r.headers["Allow"]


def test_oversize_body_is_a_413_problem_before_reading(client: Any, make_project: Any,
                                                       settings: Any) -> None:
    make_project("demo")
    r = client.put("/demo/docs", data=b"x", headers=AUTH, environ_overrides={
        "CONTENT_LENGTH": str(settings.max_upload_bytes + 1)})
    body = assert_problem(r, 413)
    assert str(settings.max_upload_bytes) in body["detail"]
    assert list(settings.temp_path.iterdir()) == []


def test_an_unavailable_object_store_is_a_503_problem_saying_so(
        client: Any, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from artstore.errors import ServiceUnavailable

    def unavailable() -> None:
        raise ServiceUnavailable("the object store is unavailable: could not list blobs: "
                                 "cannot connect")

    monkeypatch.setattr(app.extensions["artstore"].store, "list_projects", unavailable)
    body = assert_problem(client.get("/"), 503)
    assert body["title"] == "Service Unavailable"
    assert "object store is unavailable" in body["detail"]


def test_unexpected_exception_is_a_500_problem_with_request_id_and_no_traceback(
        client: Any, app: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    store = app.extensions["artstore"].store

    def explode() -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(store, "list_projects", explode)
    with caplog.at_level(logging.ERROR, logger="artstore"):
        r = client.get("/", headers={"X-Request-Id": "req-123"})
    body = assert_problem(r, 500)
    assert "secret internal detail" not in r.get_data(as_text=True)
    assert body["request_id"] == "req-123" and r.headers["X-Request-Id"] == "req-123"
    assert "req-123" in caplog.text and "secret internal detail" in caplog.text
