"""schemathesis against ``/_openapi.json`` of a live server: the document tells the truth.

Every operation the document lists is called with requests schemathesis generates from it, valid
ones and (separately) ones that break the document's own rules, with the admin token. No answer
may be a 5xx, and every answer of the app must be one the document lists for that operation,
with its content type, headers and body schema. (Requests whose headers no HTTP server accepts
are refused by gunicorn itself, with its own 400 page: those are only checked to be a 400.)
Half of the valid requests are pointed at a project and items that exist, so the calls reach
past the 404s into the code that does the work.

``ARTSTORE_SCHEMA_EXAMPLES`` raises the number of requests per operation for a long run.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks

from artstore.openapi import document

from .conftest import AUTH, Server, start_server, write_config
from .test_auth_matrix import EXPECTED, OPEN, READ

EXAMPLES = int(os.environ.get("ARTSTORE_SCHEMA_EXAMPLES", "12"))
CHECKS = [not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_headers_conformance,
          checks.response_schema_conformance]
ITEMS = {"docs": {"type": "tgz", "keep": 2}, "site": {"type": "zip"},
         "report": {"type": "html"}, "builds": {"type": "collection", "depth": 3}}

def _cases() -> list[Any]:
    """(path, method, mode) for each operation; invalid requests only where the operation
    takes something that can be invalid."""
    found = []
    for path, ops in sorted(document()["paths"].items()):
        for method, op in sorted(ops.items()):
            if method == "parameters":
                continue
            found.append(pytest.param(path, method, GenerationMode.POSITIVE,
                                      id=f"{method.upper()} {path} valid"))
            if ops.get("parameters") or op.get("parameters") or op.get("requestBody"):
                found.append(pytest.param(path, method, GenerationMode.NEGATIVE,
                                          id=f"{method.upper()} {path} invalid"))
    return found


def site() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("index.html")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def ensure_demo(url: str) -> None:
    """The project the requests are steered to; a generated DELETE may have removed it."""
    r = requests.post(f"{url}/demo", json={"items": ITEMS}, headers=AUTH, timeout=30)
    if r.status_code == 201:
        for n in (1, 2):
            requests.put(f"{url}/demo/docs", data=site(), params={"n": str(n)}, headers=AUTH,
                         timeout=30).raise_for_status()
        requests.put(f"{url}/demo/builds", params={"filename": "a.bin"}, data=b"a",
                     headers=AUTH, timeout=30).raise_for_status()
    else:
        assert r.status_code == 409, r.text


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("schema")
    config = write_config(folder / "state", max_upload_bytes=64 * 1024)
    srv = start_server(folder, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": AUTH["Authorization"].split()[1]},
                       folder / "server.log")
    ensure_demo(srv.url)
    yield srv
    srv.stop()
    log = (folder / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def api_schema(live: Server) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/_openapi.json")


def steer(case: Any, data: st.DataObject) -> None:
    """Point a generated request at the existing project and items now and then."""
    params = case.path_parameters or {}
    if "project" in params and data.draw(st.booleans(), label="existing project"):
        params["project"] = "demo"
        if "item" in params and data.draw(st.booleans(), label="existing item"):
            params["item"] = data.draw(st.sampled_from(sorted(ITEMS)), label="item")
            if "filename" in params and data.draw(st.booleans(), label="existing file"):
                params["filename"] = "a.bin"


@pytest.mark.parametrize("path,method,mode", _cases())
def test_operation_answers_as_the_openapi_document_says(
        live: Server, api_schema: Any, path: str, method: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method.upper()]
    session = requests.Session()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
        if mode == GenerationMode.POSITIVE:
            steer(case, data)
        ensure_demo(live.url)
        response = case.call(base_url=live.url, session=session, headers=AUTH, timeout=30,
                             allow_redirects=False)
        event(f"HTTP {response.status_code}")
        if "x-request-id" not in {name.lower() for name in response.headers}:
            # Refused by gunicorn's HTTP parser before the app saw it (header names or
            # values no HTTP server accepts): its own page, never a 5xx.
            assert response.status_code == 400, response.status_code
            return
        case.validate_response(response, checks=CHECKS, headers=AUTH,
                               transport_kwargs={"base_url": live.url, "session": session,
                                                 "allow_redirects": False})

    run()


def test_document_says_which_operations_need_a_token(live: Server) -> None:
    """Each operation's ``security`` matches who may call it: writes need the bearer token,
    reads are public by default (their security must allow no token at all)."""
    doc = requests.get(f"{live.url}/_openapi.json", timeout=30).json()
    wrong = []
    for (rule, method), expect in EXPECTED.items():
        path = rule.replace("<", "{").replace(">", "}")
        security = doc["paths"][path][method.lower()].get("security", doc["security"])
        optional = security == [] or {} in security
        if optional != (expect.access in (OPEN, READ)):
            wrong.append(f"{method} {path}: security {security}")
    assert wrong == []


SERVICE_PATHS = {"/_health": {"GET"}, "/_metrics": {"GET"}, "/_openapi.json": {"GET"},
                 "/_whoami": {"GET"}, "/demo/_tokens": {"GET", "POST"}}


@pytest.mark.parametrize("path", sorted(SERVICE_PATHS))
def test_undocumented_methods_on_the_services_own_paths_answer_405(live: Server,
                                                                   path: str) -> None:
    """Paths starting with ``_`` belong to the service: a method it does not document there is
    a 405 naming the allowed ones, never a project or item call on a name like ``_health``."""
    for method in sorted({"GET", "POST", "PUT", "DELETE"} - SERVICE_PATHS[path]):
        r = requests.request(method, live.url + path, headers=AUTH, json={"items": {}},
                             timeout=30)
        assert r.status_code == 405, (method, path, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/problem+json"
        assert set(r.headers["Allow"].replace(" ", "").split(",")) >= SERVICE_PATHS[path]
