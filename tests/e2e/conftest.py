"""The production setup for real: Debian's nginx with ``deploy/default.conf`` in front of
gunicorn with ``deploy/gunicorn.conf.py`` (3 workers), and the same behind the image that
``Dockerfile`` builds, run with buildah.

Every test talks to nginx only. nginx and the service are the tests' own processes, on
loopback ports, with every path in a temp directory; ``.ci/run`` installs nginx, buildah
and the container base image, and these tests install nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from ..conftest import ADMIN, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The production command, as the README gives it.
APP = "artstore.api:app_from_config()"
WORKERS = 3
# The upload limit of the test's copies, matched in artstore.json and in nginx as the
# README says: small, so that going over it is quick.
APP_LIMIT = 1024 * 1024
NGINX_LIMIT = "1m"
BASE_IMAGE = os.environ.get("ARTSTORE_E2E_BASE_IMAGE", "localhost/artstore-base:bookworm")
IMAGE_REPO = "localhost/artstore-e2e"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


NGINX = find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx package)")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """End a process group the tests started (each is started in a session of its own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited:\n{log.read_text(errors='replace')}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still loading the app
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text(errors='replace')}")


def wait_for_workers(url: str, log: Path, timeout: float = 60) -> None:
    """Wait until every worker has loaded the app and answered (each sweeps as it starts)."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    with ThreadPoolExecutor(WORKERS) as pool:
        while time.monotonic() < deadline:
            list(pool.map(lambda _: requests.get(url, timeout=5), range(2 * WORKERS)))
            pids = {e["pid"] for e in access_entries(log) if e["path"] == "/_health"}
            if len(pids) >= WORKERS:
                return
            time.sleep(0.2)
    raise RuntimeError(f"only workers {sorted(pids)} answered:\n{log.read_text()}")


def ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait for the service on ``port``; stop it if it does not come up."""
    try:
        wait_for(f"http://127.0.0.1:{port}/_health", proc, log, timeout=120)
        wait_for_workers(f"http://127.0.0.1:{port}/_health", log)
    except BaseException:
        stop(proc)
        raise


def access_entries(log: Path) -> list[dict[str, Any]]:
    """The JSON access log lines of deploy/gunicorn.conf.py's logger."""
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "gunicorn.access":
                entries.append(entry)
    return entries


def write_state(state: Path, base_path: str, temp_path: str, **settings: Any) -> None:
    """The artstore.json of the README's deployment, with a small upload limit."""
    state.mkdir(parents=True, exist_ok=True)
    config = {"base_path": base_path, "temp_path": temp_path, "trusted_proxies": 1,
              "max_upload_bytes": APP_LIMIT, **settings}
    (state / "artstore.json").write_text(json.dumps(config, indent=2) + "\n")


# ------------------------------------------------------------------ nginx

DEBIAN_ETC = Path("/etc/nginx")
README = ROOT / "README.md"
# The values deploy/default.conf says to keep in step, as the test's copy sets them. The
# listen port, log and pid paths are moved by localise() like those of Debian's files.
SERVER_NAME = "127.0.0.1"


def readme_nginx_steps() -> list[list[str]]:
    """The commands of the README's nginx step, each split as the shell would split it."""
    text = README.read_text()
    section = text[text.index("### 3. nginx"):text.index("### Metrics")]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "the README's nginx step has no sh block"
    return [shlex.split(part, comments=True)
            for line in found.group(1).splitlines() for part in line.split("&&")
            if shlex.split(part, comments=True)]


def localise(text: str, folder: Path, port: int) -> str:
    """A file of /etc/nginx as it would be on this host, moved under ``folder``: port 80
    becomes ``port`` on loopback (IPv6 dropped: the loopback may have none)."""
    text = re.sub(r"^\s*listen\s+\[::\]:80\b[^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"\blisten\s+80\b", f"listen 127.0.0.1:{port}", text)
    text = text.replace("/etc/nginx/", f"{folder}/").replace("/var/log/nginx/", f"{folder}/log/")
    text = text.replace("pid /run/nginx.pid;", f"pid {folder}/nginx.pid;")
    # As root, nginx's workers would switch to www-data, who cannot enter pytest's 0700
    # temp directories; as anyone else, nginx cannot switch at all.
    user = "user root;" if os.geteuid() == 0 else ""
    return re.sub(r"^user\s+[^;]*;", user, text, flags=re.M)


def debian_nginx(folder: Path, port: int) -> None:
    """``folder`` as /etc/nginx is right after ``apt install nginx``: Debian's own nginx.conf,
    which includes conf.d/*.conf and sites-enabled/*, and sites-enabled/default."""
    shutil.copytree(DEBIAN_ETC, folder, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("conf.d", "sites-enabled"))
    (folder / "conf.d").mkdir()
    (folder / "sites-enabled").mkdir()
    (folder / "log").mkdir()
    (folder / "sites-enabled" / "default").symlink_to(folder / "sites-available" / "default")
    for name in ("nginx.conf", "sites-available/default"):
        path = folder / name
        path.write_text(localise(path.read_text(), folder, port))
    # nginx's compiled-in temp paths are under /var/lib/nginx; the test's are its own.
    temp = "".join(f"\n    {kind}_temp_path {folder}/{kind}_temp;"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = folder / "nginx.conf"
    text = main.read_text()
    assert text.count("\nhttp {") == 1, "Debian's nginx.conf no longer has one http block"
    main.write_text(text.replace("\nhttp {", "\nhttp {" + temp, 1))


def site_conf(source: Path, edits: dict[str, str], folder: Path, port: int) -> str:
    """A sample site config with the values its comments say to set replaced."""
    text = source.read_text()
    for old, new in edits.items():
        assert text.count(old) == 1, f"{source.name} no longer has {old!r} once"
        text = text.replace(old, new)
    return localise(text, folder, port)


def follow_readme(folder: Path, port: int, site: Path, edits: dict[str, str]) -> None:
    """Do the README's nginx step in ``folder``, /etc/nginx's stand-in, with ``site`` for
    deploy/default.conf; the test's nginx is started afterwards, so a reload is a no-op."""
    assert NGINX is not None
    for command in readme_nginx_steps():
        paths = [Path(a.replace("/etc/nginx/", f"{folder}/")) for a in command[1:]
                 if not a.startswith("-")]
        if command[0] == "cp" and len(paths) == 2 and command[1] == "deploy/default.conf":
            assert str(paths[1]).startswith(f"{folder}/"), command
            paths[1].write_text(site_conf(site, edits, folder, port))
        elif command[0] == "rm" and all(str(p).startswith(f"{folder}/") for p in paths):
            for path in paths:
                path.unlink(missing_ok="-f" in command)
        elif command == ["nginx", "-t"]:
            check = subprocess.run([NGINX, "-t", "-p", str(folder), "-e",
                                    str(folder / "log" / "error.log"), "-c",
                                    str(folder / "nginx.conf")], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr
            (folder / "nginx-t.out").write_text(check.stderr)
        elif command != ["nginx", "-s", "reload"]:
            raise AssertionError(f"the README's nginx step runs {command!r}; teach "
                                 f"tests/e2e/conftest.py what it does")


@dataclass
class Nginx:
    url: str
    folder: Path
    proc: subprocess.Popen[bytes]
    port: int = 0

    def access_log(self) -> list[dict[str, Any]]:
        """artstore's JSON lines (Debian's default site logs to the same file, unparsed)."""
        text = (self.folder / "log" / "access.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def error_log(self) -> str:
        return (self.folder / "log" / "error.log").read_text(errors="replace")

    def checked(self) -> str:
        """What ``nginx -t`` said about the configuration (its warnings, if any)."""
        return (self.folder / "nginx-t.out").read_text()


def start_nginx(folder: Path, upstream: int, root: Path, *, port: int | None = None,
                site: Path = DEPLOY / "default.conf", names: dict[str, str] | None = None,
                edits: dict[str, str] | None = None) -> Nginx:
    """Debian's nginx set up as the README says, ``site`` in place of default.conf, in
    front of the service on ``upstream``. ``names`` replaces its server names, ``edits``
    any other value its comments say to set."""
    assert NGINX is not None
    port = port or free_port()
    edits = {**{f"server_name {old};": f"server_name {new};"
                for old, new in (names or {"ci.example.com": SERVER_NAME}).items()},
             **(edits or {})}
    edits.update({
        "root /srv/artstore/public;": f"root {root};",
        "proxy_pass http://127.0.0.1:8080/;": f"proxy_pass http://127.0.0.1:{upstream}/;",
        "client_max_body_size 2g;": f"client_max_body_size {NGINX_LIMIT};",
    })
    debian_nginx(folder, port)
    follow_readme(folder, port, site, edits)
    log = folder / "log" / "error.log"
    out = open(folder / "nginx.out", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([NGINX, "-p", str(folder), "-e", str(log), "-c",
                             str(folder / "nginx.conf"), "-g", "daemon off;"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{log.read_text(errors='replace')}")
        try:
            requests.get(url + "/", timeout=5)
            return Nginx(url, folder, proc, port)
        except requests.RequestException:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"nginx did not come up:\n{log.read_text(errors='replace')}")


# ------------------------------------------------------------ the service


@dataclass
class Stack:
    """nginx in front of the service: what a client of the deployment sees."""

    kind: str
    url: str  # nginx: the published files
    api: str  # nginx: the API, url + /artstore
    token: str
    state: Path  # the state directory, as the host sees it
    public: Path  # base_path, as the host (and nginx) sees it
    service_log: Path
    nginx: Nginx
    service_port: int = 0  # where gunicorn listens, on loopback
    image: str = ""  # the image the service runs in, if it does
    container: str = ""  # and the working container it runs in

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def service_access_log(self) -> list[dict[str, Any]]:
        return access_entries(self.service_log)


def start_gunicorn(folder: Path, admin_token: str | None = ADMIN,
                   **settings: Any) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The README's production command, on a free loopback port; ``admin_token`` None
    lets the service make one in the state directory; ``settings`` go to artstore.json."""
    state = folder / "state"
    write_state(state, str(folder / "srv" / "public"), str(folder / "srv" / "tmp"), **settings)
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    command = ([str(gunicorn)] if gunicorn.exists() else [sys.executable, "-m", "gunicorn"])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ARTSTORE_")},
           "ARTSTORE_CONFIG": str(state / "artstore.json"),
           "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(WORKERS)}
    if admin_token is not None:
        env["ARTSTORE_ADMIN_TOKEN"] = admin_token
    log = folder / "service.log"
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([*command, "-c", str(DEPLOY / "gunicorn.conf.py"), APP],
                            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out.close()
    ready(proc, port, log)
    return proc, port, log


def buildah(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, **kwargs)


def container_unavailable() -> str | None:
    """Why the image cannot be built and run here, or None."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "buildah's chroot isolation with host networking needs root here"
    if buildah("inspect", "--type", "image", BASE_IMAGE).returncode != 0:
        return (f"no local base image {BASE_IMAGE}: no registry is reachable to pull "
                f"python:3.11-slim, so .ci/container-base makes one with debootstrap")
    return None


def image_inputs_digest() -> str:
    """A digest of everything the image is built from, to reuse an image already built."""
    base = json.loads(buildah("inspect", "--type", "image", BASE_IMAGE).stdout)
    digest = hashlib.sha256(base["FromImageID"].encode())
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT / "pyproject.toml",
             ROOT / "README.md"]
    for folder in ("src", "deploy"):
        files += sorted(p for p in (ROOT / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                        and ".egg-info" not in str(p))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def image() -> str:
    """The project's image, built by buildah from ``Dockerfile`` on the local base image."""
    reason = container_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"{IMAGE_REPO}:{image_inputs_digest()}"
    if buildah("inspect", "--type", "image", tag).returncode == 0:
        return tag
    # Builds of other versions, from more than an hour ago: vfs keeps a full copy of each.
    # (Newer ones may belong to a test run going on beside this one.)
    listed = json.loads(buildah("images", "--json").stdout or "[]")
    for entry in listed:
        names = [n for n in entry.get("names") or [] if n.startswith(IMAGE_REPO + ":")]
        if names and entry.get("created", time.time()) < time.time() - 3600:
            buildah("rmi", *names)  # refused while a container uses it: that is fine
    command = ["bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
               "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag]
    # pip in the build trusts what this machine trusts (a TLS-inspecting proxy's CA).
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if bundle and os.path.isfile(bundle):
        command += ["--volume", f"{bundle}:/run/host-ca.crt:ro",
                    "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    built = buildah(*command, str(ROOT), timeout=900)
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    return tag


def image_config(image: str) -> dict[str, Any]:
    """The image's Docker config: User, Entrypoint, Cmd, Volumes, Healthcheck, ..."""
    out = buildah("inspect", "--type", "image", image)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Docker"]["config"]  # type: ignore[no-any-return]


def start_container(image: str, folder: Path, name: str
                    ) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Run the image's entry point and command like ``docker run`` would, host network.

    The caller removes the working container ``name``, which this makes first.
    """
    state, srv = folder / "state", folder / "srv"
    made = buildah("from", "--name", name, image)
    assert made.returncode == 0, made.stderr
    config = image_config(image)
    # buildah run mounts the image's own VOLUMEs in an order of its choosing, sometimes
    # over the --volume given for the same path; a working container can drop them.
    for volume in config.get("Volumes") or {}:
        assert buildah("config", "--volume", volume + "-", name).returncode == 0
    uid = buildah("run", "--isolation", "chroot", name, "--", "id", "-u")
    assert uid.returncode == 0, uid.stderr
    # The volumes belong to the image's unprivileged user, as a named volume would.
    write_state(state, "/srv/artstore/public", "/srv/artstore/tmp")
    srv.mkdir(parents=True, exist_ok=True)
    for path in (state, state / "artstore.json", srv):
        os.chown(path, int(uid.stdout), -1)
    port = free_port()
    log = folder / "service.log"
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [*BUILDAH, "run", "--isolation", "chroot", "--network", "host",
         "--volume", f"{state}:/etc/artstore", "--volume", f"{srv}:/srv/artstore",
         "--env", f"ARTSTORE_ADMIN_TOKEN={ADMIN}", "--env", f"GUNICORN_BIND=127.0.0.1:{port}",
         "--env", f"WEB_CONCURRENCY={WORKERS}",
         name, "--", *config["Entrypoint"], *config["Cmd"]],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    ready(proc, port, log)
    return proc, port, log


@pytest.fixture(scope="module", params=["gunicorn", "container"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    """nginx (deploy/default.conf) in front of the service, run on this host by the
    production command, or in the image built from Dockerfile."""
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx package)")
    folder = tmp_path_factory.mktemp(f"e2e-{request.param}")
    image = request.getfixturevalue("image") if request.param == "container" else ""
    name = f"artstore-e2e-{uuid.uuid4().hex[:8]}" if image else ""
    proc = nginx = None
    try:
        if image:
            proc, port, log = start_container(image, folder, name)
        else:
            proc, port, log = start_gunicorn(folder)
        nginx = start_nginx(folder / "nginx", port, folder / "srv" / "public")
        yield Stack(kind=request.param, url=nginx.url, api=nginx.url + "/artstore",
                    token=ADMIN, state=folder / "state", public=folder / "srv" / "public",
                    service_log=log, nginx=nginx, service_port=port, image=image,
                    container=name)
    finally:
        if nginx is not None:
            stop(nginx.proc)
        if proc is not None:
            stop(proc, timeout=40)
        if name:
            buildah("rm", name)
