"""Who may do what: every route of the app x every kind of caller, with reads public and not.

The routes come from the app's ``url_map``, so a new route without an expectation here fails
the suite instead of going untested. Every call is made with a request that would succeed for
the right caller, so a 401/403 is the authorisation speaking, not a bad request; and every
refused call must leave the state directory and the served tree exactly as they were.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from artstore import settings as settings_mod
from artstore.api import create_app

from .archives import site_tgz
from .conftest import ADMIN, write_config

CALLERS = ("none", "bad", "other", "own", "admin")
ITEMS = {"docs": {"type": "tgz", "keep": 3}, "builds": {"type": "collection", "depth": 3}}


def tgz(text: bytes) -> bytes:
    return site_tgz({"index.html": text})


@dataclass
class World:
    """A fresh store: projects ``demo`` and ``other``, a token for each, two docs releases and
    one collection file in ``demo``."""

    client: Any
    root: Path
    tokens: dict[str, str]
    token_id: str

    def headers(self, caller: str) -> dict[str, str]:
        token = {"none": None, "bad": "ast_demo_forged-" + "x" * 40, "admin": ADMIN,
                 "own": self.tokens["demo"], "other": self.tokens["other"]}[caller]
        return {} if token is None else {"Authorization": f"Bearer {token}"}


def open_app(folder: Path, read_requires_token: bool) -> Any:
    config = write_config(folder, read_requires_token=read_requires_token)
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    return app.test_client()


def make_world(folder: Path) -> World:
    client = open_app(folder, False)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tokens = {}
    for project in ("demo", "other"):
        assert client.post(f"/{project}", json={"items": ITEMS}, headers=admin).status_code == 201
        tokens[project] = client.post(f"/{project}/_tokens", headers=admin).get_json()["token"]
    token_id = client.get("/demo/_tokens", headers=admin).get_json()["tokens"][0]["id"]
    for n in (1, 2):
        assert client.put("/demo/docs", data=tgz(b"release %d" % n),
                          headers=admin).status_code == 201
    assert client.put("/demo/builds?filename=a.bin", data=b"a", headers=admin).status_code == 201
    return World(client, folder, tokens, token_id)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One world built once; each test gets a copy (building it costs more than a test)."""
    return make_world(tmp_path_factory.mktemp("auth-matrix") / "state")


def copy_world(template: World, folder: Path, read_requires_token: bool) -> World:
    shutil.copytree(template.root, folder, symlinks=True)
    return World(open_app(folder, read_requires_token), folder, template.tokens,
                 template.token_id)


# How each route is called: (path, keyword arguments of the test client's call).
Call = Callable[[World], "tuple[str, dict[str, Any]]"]

OPEN, READ, ADMIN_ONLY, PROJECT_WRITE = "open", "read", "admin", "project write"
ANY_TOKEN = "any valid token"


@dataclass(frozen=True)
class Expect:
    access: str  # OPEN, READ, ADMIN_ONLY or PROJECT_WRITE
    ok: int  # the status of the call when the caller is allowed
    call: Call


EXPECTED: dict[tuple[str, str], Expect] = {
    ("/_health", "GET"): Expect(OPEN, 200, lambda w: ("/_health", {})),
    ("/_openapi.json", "GET"): Expect(OPEN, 200, lambda w: ("/_openapi.json", {})),
    ("/_metrics", "GET"): Expect(READ, 200, lambda w: ("/_metrics", {})),
    ("/_whoami", "GET"): Expect(ANY_TOKEN, 200, lambda w: ("/_whoami", {})),
    ("/", "GET"): Expect(READ, 200, lambda w: ("/", {})),
    ("/<project>", "GET"): Expect(READ, 200, lambda w: ("/demo", {})),
    ("/<project>", "POST"): Expect(ADMIN_ONLY, 201, lambda w: (
        "/fresh", {"json": {"items": ITEMS}})),
    ("/<project>", "PUT"): Expect(ADMIN_ONLY, 200, lambda w: (
        "/demo", {"json": {"items": {**ITEMS, "more": {"type": "zip"}}}})),
    ("/<project>", "DELETE"): Expect(ADMIN_ONLY, 204, lambda w: ("/demo", {})),
    ("/<project>/_tokens", "GET"): Expect(ADMIN_ONLY, 200, lambda w: ("/demo/_tokens", {})),
    ("/<project>/_tokens", "POST"): Expect(ADMIN_ONLY, 201, lambda w: ("/demo/_tokens", {})),
    ("/<project>/_tokens/<token_id>", "DELETE"): Expect(ADMIN_ONLY, 204, lambda w: (
        f"/demo/_tokens/{w.token_id}", {})),
    ("/<project>/<item>", "GET"): Expect(READ, 200, lambda w: ("/demo/docs", {})),
    ("/<project>/<item>", "POST"): Expect(PROJECT_WRITE, 201, lambda w: (
        "/demo/builds", {"data": {"item": (io.BytesIO(b"b"), "b.bin")}})),
    ("/<project>/<item>", "PUT"): Expect(PROJECT_WRITE, 201, lambda w: (
        "/demo/docs", {"data": tgz(b"release 3")})),
    ("/<project>/<item>/latest", "GET"): Expect(READ, 302, lambda w: (
        "/demo/builds/latest", {})),
    ("/<project>/<item>/rollback", "POST"): Expect(PROJECT_WRITE, 200, lambda w: (
        "/demo/docs/rollback", {})),
    ("/<project>/<item>/<filename>", "DELETE"): Expect(PROJECT_WRITE, 204, lambda w: (
        "/demo/builds/a.bin", {})),
}


def expected_status(access: str, ok: int, caller: str, reads_need_token: bool) -> int:
    if access == OPEN:
        return ok
    if access == READ:
        if not reads_need_token:
            return ok  # public, whatever token is sent, like the published files themselves
        return 401 if caller in ("none", "bad") else ok
    if caller in ("none", "bad"):
        return 401
    if access == ANY_TOKEN:
        return ok
    if access == ADMIN_ONLY:
        return ok if caller == "admin" else 403
    return ok if caller in ("own", "admin") else 403


def routes(tmp_path: Path) -> set[tuple[str, str]]:
    config = write_config(tmp_path / "state")
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    # Spelled without converters (/<name:project> is /<project>), as in the API docs.
    return {(re.sub(r"<\w+:(\w+)>", r"<\1>", rule.rule), method)
            for rule in app.url_map.iter_rules()
            if rule.endpoint != "static"
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def snapshot(root: Path) -> dict[str, str]:
    """Every file, link and directory under the state dir (which holds base and temp here),
    except the upload counters and lock files, which a refused call may touch."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel.split(os.sep)[0] == "metrics":
            continue
        for name in dirs + files:
            path = os.path.join(folder, name)
            key = os.path.normpath(os.path.join(rel, name))
            if name.endswith(".lock"):
                continue
            if os.path.islink(path):
                found[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def test_every_route_of_the_app_has_an_expectation(tmp_path: Path) -> None:
    assert routes(tmp_path) == set(EXPECTED), (
        "a route was added or removed: say in EXPECTED who may call it")


@pytest.mark.parametrize("reads_need_token", [False, True], ids=["public-reads", "token-reads"])
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", sorted(EXPECTED), ids=lambda r: f"{r[1]} {r[0]}")
def test_route_answers_each_caller_as_the_contract_says(
        tmp_path: Path, template: World, route: tuple[str, str], caller: str,
        reads_need_token: bool) -> None:
    expect = EXPECTED[route]
    world = copy_world(template, tmp_path / "state", reads_need_token)
    path, kwargs = expect.call(world)
    before = snapshot(world.root)
    r = world.client.open(path, method=route[1], headers=world.headers(caller), **kwargs)
    status = expected_status(expect.access, expect.ok, caller, reads_need_token)
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:300])
    if status in (401, 403):
        assert r.mimetype == "application/problem+json"
        assert r.get_json()["status"] == status
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert snapshot(world.root) == before, "a refused call changed something"
        assert world.tokens["demo"] not in r.get_data(as_text=True)


@pytest.mark.parametrize("caller,answer", [
    ("admin", {"admin": True, "project": None}),
    ("own", {"admin": False, "project": "demo"}),
    ("other", {"admin": False, "project": "other"}),
])
def test_whoami_says_what_a_valid_token_is(template: World, caller: str,
                                           answer: dict[str, Any]) -> None:
    r = template.client.get("/_whoami", headers=template.headers(caller))
    assert r.status_code == 200 and r.get_json() == answer
