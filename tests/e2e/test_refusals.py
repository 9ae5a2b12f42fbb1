"""Through nginx: an upload refused before its body is read gets that refusal, not a 502.

The service answers a wrong token, another project's token, an unknown item, a wrong
content type or a too-large Content-Length before it reads the body. Bodies larger than
the socket buffers are what this is about, so this module runs its own deployment with
upload limits larger than the shared one's 1 MiB: gunicorn with deploy/gunicorn.conf.py
behind Debian's nginx with deploy/default.conf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ..conftest import ADMIN
from . import conftest as e2e
from .conftest import NGINX, Stack, stop
from .test_deployment import curl

PROBLEM = "application/problem+json"
APP_LIMIT = 16 * 1024 * 1024
# nginx lets larger bodies through, so that the service's own 413 (by Content-Length,
# before the body is read) is one of the refusals that must come through.
NGINX_LIMIT = "64m"
BODY = 12 * 1024 * 1024  # far more than the loopback socket buffers hold, under the limit
HUGE = 60 * 1024 * 1024  # under nginx's limit
TRIES = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx package)")
    folder = tmp_path_factory.mktemp("e2e-refusals")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(e2e, "APP_LIMIT", APP_LIMIT)
        patch.setattr(e2e, "NGINX_LIMIT", NGINX_LIMIT)
        proc, port, log = e2e.start_gunicorn(folder)
        try:
            nginx = e2e.start_nginx(folder / "nginx", port, folder / "srv" / "public")
        except BaseException:
            stop(proc)
            raise
    try:
        yield Stack(kind="gunicorn", url=nginx.url, api=nginx.url + "/artstore", token=ADMIN,
                    state=folder / "state", public=folder / "srv" / "public",
                    service_log=log, nginx=nginx, service_port=port)
    finally:
        stop(nginx.proc)
        stop(proc, timeout=40)


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, str]:
    """Projects ``demo`` and ``other``; the token of ``other`` may not change ``demo``."""
    for name in ("demo", "other"):
        r = requests.post(f"{stack.api}/{name}", headers=stack.auth, json={"items": {
            "docs": {"type": "tgz"}, "builds": {"type": "collection"}}})
        assert r.status_code == 201, r.text
    token = requests.post(f"{stack.api}/other/_tokens", headers=stack.auth).json()["token"]
    return {"other_token": token}


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bodies") / "big.bin"
    with open(path, "wb") as file:
        file.truncate(BODY)  # zeros: nginx and the service see the same bytes either way
    return path


def refusals(stack: Stack, world: dict[str, str], body: Path) -> dict[int, list[str]]:
    """curl arguments of uploads refused before their body is read, by expected status."""
    target = f"{stack.api}/demo/builds?filename=big.bin"
    return {
        401: ["-T", str(body), target, "-H", "Authorization: Bearer not-a-token"],
        403: ["-T", str(body), target, "-H", f"Authorization: Bearer {world['other_token']}"],
        404: ["-T", str(body), f"{stack.api}/demo/nothing?filename=big.bin",
              "-H", f"Authorization: Bearer {stack.token}"],
        415: ["-X", "POST", "--data-binary", f"@{body}", f"{stack.api}/demo/builds",
              "-H", "Content-Type: application/octet-stream",
              "-H", f"Authorization: Bearer {stack.token}"],
    }


def test_a_refused_upload_of_a_large_body_gets_its_refusal_through_nginx_every_time(
        stack: Stack, world: dict[str, str], big_file: Path, tmp_path: Path) -> None:
    over = tmp_path / "over.bin"
    with open(over, "wb") as file:
        file.truncate(APP_LIMIT + 1)
    calls = {**refusals(stack, world, big_file),
             413: ["-T", str(over), f"{stack.api}/demo/builds?filename=over.bin",
                   "-H", f"Authorization: Bearer {stack.token}"]}
    seen: dict[int, list[int]] = {status: [] for status in calls}
    for _ in range(TRIES):
        for status, args in calls.items():
            r = curl(*args)
            seen[status].append(r.status)
            if r.status == status:
                assert r.headers["content-type"] == PROBLEM
                assert r.json()["status"] == status
                assert r.json()["request_id"]
    assert seen == {status: [status] * TRIES for status in calls}
    # The 413 is the service's own answer, not nginx's.
    assert curl(*calls[413]).json()["detail"].endswith(f"limit of {APP_LIMIT} bytes")
    errors = stack.nginx.error_log()
    assert "while sending request to upstream" not in errors
    assert requests.get(f"{stack.api}/demo/builds").json()["files"] == []


def test_the_refusal_arrives_before_the_body_is_sent(
        stack: Stack, world: dict[str, str], tmp_path: Path) -> None:
    """The answer is not held back until the body is read: nginx stops reading once it
    has it, so curl sends only a part of a large body."""
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as file:
        file.truncate(HUGE)
    for status, args in refusals(stack, world, huge).items():
        if status == 415:
            continue  # a body this large is a 413 first
        proc = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{http_code} "
                               "%{size_upload}", *args], capture_output=True, text=True,
                              timeout=120)
        code, sent = proc.stdout.split()
        assert int(code) == status, proc.stderr
        assert int(sent) < HUGE / 2, f"{status}: {sent} bytes were sent first"


def run_client(stack: Stack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTSTORE_", "GITHUB_",
                                                                     "CI_", "GIT_"))}
    env.update({"ARTSTORE_URL": stack.api, "ARTSTORE_TOKEN": token})
    return subprocess.run([sys.executable, "-m", "artstore.cli", "push", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_push_with_a_refused_token_sends_no_body_through_nginx(
        stack: Stack, world: dict[str, str], big_file: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(os.urandom(BODY // 4))
    seen = len(stack.nginx.access_log())
    cases = [("not-a-token", ["demo/builds", str(big_file)],
              "Error: HTTP 401: the bearer token is not valid\n"),
             ("not-a-token", ["demo/docs", str(site)],
              "Error: HTTP 401: the bearer token is not valid\n"),
             (world["other_token"], ["demo/docs", str(site)],
              "Error: HTTP 403: this token may not change project 'demo' (it is a token "
              "of project 'other')\n")]
    for token, args, message in cases:
        result = run_client(stack, token, *args)
        assert (result.returncode, result.stderr, result.stdout) == (3, message, "")
    logged = stack.nginx.access_log()[seen:]
    assert logged, "the client's calls should be in nginx's access log"
    assert {e["method"] for e in logged} == {"GET"}, json.dumps(logged, indent=1)
    assert max(int(e["body_bytes"]) for e in logged) < 4096  # request_length: headers only
