"""Fixtures: a fresh app per test on temp directories, and a real ``artstore serve``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from artstore import settings as settings_mod
from artstore.api import create_app

ADMIN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def stored_projects(state_dir: Path) -> dict[str, Any]:
    """The projects as the state directory records them (projects.json and the changes
    in projects.log not folded into it yet), in the file's JSON shape."""
    from artstore.catalog import Registry

    return {name: project.as_json() for name, project in Registry(state_dir).load().items()}


def write_config(folder: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"base_path": str(folder / "public"), "temp_path": str(folder / "tmp"),
              **overrides}
    path = folder / "artstore.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "state")


@pytest.fixture
def settings(config_path: Path, request: Any) -> settings_mod.Settings:
    """The settings of a fresh store; ``ARTSTORE_TEST_CATALOG=postgres`` puts its catalog
    in a fresh PostgreSQL database instead of the state directory."""
    loaded = settings_mod.load(config_path, environ={})
    if os.environ.get("ARTSTORE_TEST_CATALOG") == "postgres":
        loaded = dataclasses.replace(loaded, catalog=request.getfixturevalue("pg_url"))
    return loaded


@pytest.fixture
def app(settings: settings_mod.Settings) -> Any:
    return create_app(settings, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def make_project(client: Any) -> Any:
    def make(name: str = "demo", items: dict[str, Any] | None = None) -> dict[str, Any]:
        items = items if items is not None else {
            "docs": {"type": "tgz"}, "site": {"type": "zip"}, "report": {"type": "html"},
            "builds": {"type": "collection", "depth": 3}}
        r = client.post(f"/{name}", json={"items": items}, headers=AUTH)
        assert r.status_code == 201, r.get_json()
        return r.get_json()
    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A real ``artstore serve`` (gunicorn) in a subprocess."""

    url: str
    root: str  # where published files are served ("" when the API is at /)
    proc: subprocess.Popen[bytes]
    cwd: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    api_prefix: str = ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def restart(self) -> Server:
        self.stop()
        return start_server(self.cwd, self.args, self.env, self.log, self.api_prefix)


def start_server(cwd: Path, args: list[str], env: dict[str, str], log: Path,
                 api_prefix: str = "") -> Server:
    port = free_port()
    full_env = {**os.environ, **env}
    if "ARTSTORE_CONFIG" not in env:
        full_env.pop("ARTSTORE_CONFIG", None)
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "artstore.cli", "serve", "--port", str(port), *args],
        cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out.close()
    base = f"http://127.0.0.1:{port}"
    server = Server(url=base + api_prefix, root=base, proc=proc, cwd=cwd, log=log, env=env,
                    args=args, api_prefix=api_prefix)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"artstore serve exited:\n{log.read_text()}")
        try:
            if requests.get(server.url + "/_health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:  # not up yet, or slow on a busy machine
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"artstore serve did not come up:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real server on a configuration file, API at /, admin token from the environment."""
    config = write_config(tmp_path / "state")
    srv = start_server(tmp_path, ["--config", str(config), "--workers", "3"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, tmp_path / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server for the session (tests/pg.py); skips if there is none."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    from tests import pg

    try:
        cluster = pg.start()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """The URL of a fresh, empty database."""
    return str(postgres.new_database())


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[Any]:
    """A SeaweedFS for the session (tests/s3.py); skips if there is none."""
    pytest.importorskip("boto3", reason="boto3 is not installed (the s3 extra)")
    from tests import s3

    try:
        server = s3.start()
    except RuntimeError as exc:
        pytest.skip(f"no SeaweedFS for the tests: {exc}")
    yield server
    server.close()


@pytest.fixture
def s3_bucket(seaweedfs: Any) -> Iterator[Any]:
    """A fresh, empty bucket on the session's SeaweedFS (``tests.s3.Bucket``: ``name``,
    ``endpoint``, keys, and ``server`` to stop and start), removed after the test. The
    server is running at the start and the end of every test, whatever the test did."""
    from tests import s3

    seaweedfs.start()
    bucket = s3.Bucket(seaweedfs, seaweedfs.new_bucket())
    yield bucket
    seaweedfs.start()
    seaweedfs.remove_bucket(bucket.name)
