"""schemathesis against ``/_openapi.json`` of a live server: the document tells the truth.

The schemathesis command runs with every check it has (``--checks all``) and all its phases:
requests generated from the document, valid ones and ones that break its rules, boundary
values, methods the document does not list, calls without the token, and chains of calls
(create, then read, then delete). No answer may be a 5xx; every answer must be one the
document lists, with its content type, headers and body schema; a request the document calls
valid must not be refused as invalid, and one it calls invalid must be refused. About half of
the requests are pointed at a project and items that exist (tests/schema_hooks.py), so they
reach past the 404s; tests/schemathesis.toml says what else the document cannot express.

``ARTSTORE_SCHEMA_EXAMPLES`` raises the number of requests per operation for a long run; the
output ends with the seed that repeats a run: give it back in ``ARTSTORE_SCHEMA_SEED``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import ADMIN, AUTH, Server, start_server, write_config
from .schema_hooks import ensure_demo
from .test_auth_matrix import EXPECTED, OPEN, READ

EXAMPLES = int(os.environ.get("ARTSTORE_SCHEMA_EXAMPLES", "100"))
SEED = os.environ.get("ARTSTORE_SCHEMA_SEED")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("schema")
    config = write_config(folder / "state", max_upload_bytes=64 * 1024)
    srv = start_server(folder, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, folder / "server.log")
    ensure_demo(srv.url)
    yield srv
    srv.stop()
    log = (folder / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def schemathesis(live: Server, cwd: Path, *args: str) -> None:
    """Run the schemathesis command with every check; fail with its report if it finds any."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schema_hooks",
           "ARTSTORE_SCHEMA_URL": live.url,
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--no-color",
         "--config-file", str(HERE / "schemathesis.toml"), "run", f"{live.url}/_openapi.json",
         "--checks", "all", "--workers", "1", "--suppress-health-check", "all",
         "--generation-database", "none", "--request-timeout", "30",
         "--header", f"Authorization: Bearer {ADMIN}",
         *(["--seed", SEED] if SEED else []), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-30000:]


def test_every_schemathesis_check_passes_request_by_request(live: Server,
                                                           tmp_path: Path) -> None:
    schemathesis(live, tmp_path, "--phases", "examples,coverage,fuzzing",
                 "--max-examples", str(EXAMPLES))


def test_every_schemathesis_check_passes_for_chains_of_calls(live: Server,
                                                            tmp_path: Path) -> None:
    """Sequences of calls that use what earlier answers returned (a token created, then
    revoked, then revoked again), along the links schemathesis infers from the document."""
    # Fewer: each one is a chain, and schemathesis 4.4 takes far longer per example here.
    schemathesis(live, tmp_path, "--phases", "stateful",
                 "--max-examples", str(max(10, EXAMPLES // 10)))


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
