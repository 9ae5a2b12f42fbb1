"""The ``artstore`` client against a real ``artstore serve``: push, projects, tokens, exit codes.

Most tests run the CLI in-process with click's CliRunner; one runs it as a real subprocess.
One server (serving files at / and the API under /artstore) is shared by the module; each
test uses its own project.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from artstore import cli, client
from artstore.client import ArtstoreClient, Entry, PackedStream, ci_metadata

from .conftest import ADMIN, AUTH, Server, free_port, start_server, write_config

README = Path(__file__).resolve().parent.parent / "README.md"
UPLOAD_LIMIT = 4 * 1024 * 1024
CI_VARIABLES = ("GITHUB_SHA", "GITHUB_REF_NAME", "GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
                "GITHUB_RUN_ID", "CI_COMMIT_SHA", "CI_COMMIT_REF_NAME", "CI_PIPELINE_URL",
                "GIT_COMMIT", "GIT_BRANCH", "BUILD_URL")
ITEMS = {"docs": {"type": "tgz"}, "site": {"type": "zip"}, "report": {"type": "html"},
         "builds": {"type": "collection", "depth": 3}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server that also serves the published files, with a small upload limit."""
    folder = tmp_path_factory.mktemp("store")
    config = write_config(folder / "state", serve_files=True, max_upload_bytes=UPLOAD_LIMIT)
    srv = start_server(folder, ["--config", str(config), "--workers", "2"],
                       {"ARTSTORE_ADMIN_TOKEN": ADMIN}, folder / "server.log",
                       api_prefix="/artstore")
    yield srv
    srv.stop()


@pytest.fixture
def project(store: Server, request: pytest.FixtureRequest) -> str:
    """A fresh project named after the test, with one item of each type."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-60:]
    r = requests.post(f"{store.url}/{name}", json={"items": ITEMS}, headers=AUTH)
    assert r.status_code == 201, r.text
    return name


def artstore(server: Server | str, *args: str, token: str | None = ADMIN,
             env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process, configured through the environment like CI does."""
    url = server if isinstance(server, str) else server.url
    environ: dict[str, str | None] = {name: None for name in CI_VARIABLES}
    environ.update({"ARTSTORE_URL": url, "ARTSTORE_TOKEN": token, **(env or {})})
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli.main, list(args), env=environ, catch_exceptions=False)


def make_site(folder: Path, files: int) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text("<h1>Site</h1>")
    for i in range(files - 1):
        sub = folder / f"part{i % 30:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"page{i:04d}.html").write_text(f"<p>page {i}</p>")
    return folder


# ------------------------------------------------------------------- push


def test_push_a_3000_file_directory_to_a_tgz_item_publishes_it_whole(
        store: Server, project: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 3000)
    github = {"GITHUB_SHA": "abc123", "GITHUB_REF_NAME": "main",
              "GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "team/app",
              "GITHUB_RUN_ID": "42"}
    result = artstore(store, "push", f"{project}/docs", str(site), "--meta", "build=7",
                      "--json", env=github)
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["files"] == 3000
    assert answer["url"] == f"{store.root}/{project}/docs/"
    assert answer["metadata"] == {
        "commit": "abc123", "branch": "main", "build": "7",
        "pipeline": "https://github.example/team/app/actions/runs/42"}
    assert requests.get(answer["url"]).text == "<h1>Site</h1>"
    for i in (0, 1234, 2998):
        page = requests.get(f"{answer['url']}part{i % 30:02d}/page{i:04d}.html")
        assert page.status_code == 200 and page.text == f"<p>page {i}</p>"


def test_push_prints_the_url_on_stdout_and_the_sha256_the_server_received(
        store: Server, project: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 3)
    result = artstore(store, "push", f"{project}/docs", str(site))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{store.root}/{project}/docs/\n"
    release = requests.get(f"{store.url}/{project}/docs").json()["releases"][0]
    assert f"sha256 {release['sha256']}" in result.stderr
    assert f"release {release['release']}: 3 file(s)" in result.stderr


def test_push_a_directory_to_a_zip_item_publishes_its_tree(
        store: Server, project: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 40)
    (site / "café.txt").write_text("unicode names survive")
    (site / "empty").mkdir()
    result = artstore(store, "push", f"{project}/site", str(site), "--json")
    assert result.exit_code == 0, result.stderr
    url = json.loads(result.stdout)["url"]
    assert requests.get(url).text == "<h1>Site</h1>"
    assert requests.get(url + "part08/page0038.html").text == "<p>page 38</p>"
    assert requests.get(url + "caf%C3%A9.txt").text == "unicode names survive"


def test_push_a_file_to_a_collection_keeps_its_name_and_sends_its_sha256(
        store: Server, project: str, tmp_path: Path) -> None:
    build = tmp_path / "tool-1.0.tar.xz"
    build.write_bytes(os.urandom(100_000))
    result = artstore(store, "push", f"{project}/builds", str(build))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{store.root}/{project}/builds/tool-1.0.tar.xz\n"
    assert requests.get(result.stdout.strip()).content == build.read_bytes()
    files = requests.get(f"{store.url}/{project}/builds").json()["files"]
    assert [f["name"] for f in files] == ["tool-1.0.tar.xz"]
    assert result.stderr == (f"published {project}/builds file tool-1.0.tar.xz (1 file in the "
                             f"collection), 97.7 KiB, sha256 {files[0]['sha256']}\n")
    (tmp_path / "tool-1.1.bin").write_bytes(b"x")
    result = artstore(store, "push", f"{project}/builds", str(tmp_path / "tool-1.1.bin"))
    assert result.stderr.startswith(f"published {project}/builds file tool-1.1.bin (2 files "
                                    "in the collection), 1 B, sha256 ")


def test_push_a_file_to_an_html_item_publishes_that_page(
        store: Server, project: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text("<p>all green</p>")
    result = artstore(store, "push", f"{project}/report", str(report))
    assert result.exit_code == 0, result.stderr
    assert requests.get(result.stdout.strip()).text == "<p>all green</p>"


def test_push_a_prebuilt_archive_file_sends_it_as_it_is(
        store: Server, project: str, tmp_path: Path) -> None:
    archive = tmp_path / "site.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"<h1>prebuilt</h1>"
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    result = artstore(store, "push", f"{project}/docs", str(archive))
    assert result.exit_code == 0, result.stderr
    assert requests.get(result.stdout.strip()).text == "<h1>prebuilt</h1>"


# ----------------------------------------------------- failures, exit codes


def test_push_with_a_wrong_token_exits_3_and_publishes_nothing(
        store: Server, project: str, tmp_path: Path) -> None:
    result = artstore(store, "push", f"{project}/docs", str(make_site(tmp_path / "s", 200)),
                      token="not-a-token")
    assert result.exit_code == cli.EXIT_AUTH == 3
    assert result.stderr == "Error: HTTP 401: the bearer token is not valid\n"
    assert result.stdout == ""
    assert requests.get(f"{store.url}/{project}/docs").json()["live"] is None


def test_push_with_another_projects_token_exits_3(store: Server, project: str,
                                                  tmp_path: Path) -> None:
    other = artstore(store, "token", "create", project).stdout.strip()
    requests.post(f"{store.url}/{project}x", json={"items": ITEMS}, headers=AUTH)
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    result = artstore(store, "push", f"{project}x/report", str(page), token=other)
    assert result.exit_code == 3
    assert result.stderr == (f"Error: HTTP 403: this token may not change project "
                             f"'{project}x' (it is a token of project '{project}')\n")


def upload_counters(server: Server) -> list[str]:
    text = requests.get(f"{server.url}/_metrics").text
    return [line for line in text.splitlines() if line.startswith("artstore_uploads_total")]


def test_a_push_with_a_refused_token_sends_no_upload(store: Server, project: str,
                                                    tmp_path: Path) -> None:
    """The token is checked with GET /_whoami first: no upload request, so no body, is
    sent with a token the server would refuse."""
    other = artstore(store, "token", "create", project).stdout.strip()
    requests.post(f"{store.url}/{project}x", json={"items": ITEMS}, headers=AUTH)
    site = make_site(tmp_path / "site", 20)
    build = tmp_path / "tool.bin"
    build.write_bytes(os.urandom(UPLOAD_LIMIT // 2))
    before = upload_counters(store)
    for token, target, path in [("wrong", f"{project}/docs", site),
                                ("wrong", f"{project}/builds", build),
                                (None, f"{project}/builds", build),
                                (other, f"{project}x/docs", site),
                                (other, f"{project}x/builds", build)]:
        result = artstore(store, "push", target, str(path), token=token)
        assert result.exit_code == 3, result.stderr
        assert result.stderr.startswith(("Error: HTTP 401: ", "Error: HTTP 403: "))
    assert upload_counters(store) == before


def test_push_to_a_missing_project_or_item_exits_4(store: Server, project: str,
                                                   tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 2)
    result = artstore(store, "push", "no-such-project/docs", str(site))
    assert result.exit_code == cli.EXIT_NOT_FOUND == 4
    assert result.stderr == "Error: HTTP 404: project 'no-such-project' does not exist\n"
    result = artstore(store, "push", f"{project}/nothing", str(site))
    assert result.exit_code == 4
    assert result.stderr == (f"Error: HTTP 404: project '{project}' has no item 'nothing'; "
                             "its items: builds, docs, report, site\n")


def test_push_an_oversize_file_exits_6_with_the_limit(store: Server, project: str,
                                                      tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(UPLOAD_LIMIT + 1))
    result = artstore(store, "push", f"{project}/builds", str(big))
    assert result.exit_code == cli.EXIT_REFUSED == 6
    assert f"HTTP 413: the upload is larger than the limit of {UPLOAD_LIMIT} bytes" in (
        result.stderr)
    assert requests.get(f"{store.url}/{project}/builds").json()["files"] == []


def test_push_an_oversize_directory_exits_6(store: Server, project: str,
                                            tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 2)
    (site / "noise.bin").write_bytes(os.urandom(UPLOAD_LIMIT + 100_000))
    result = artstore(store, "push", f"{project}/docs", str(site))
    assert result.exit_code == 6, result.stderr
    assert "HTTP 413" in result.stderr and str(UPLOAD_LIMIT) in result.stderr
    assert requests.get(f"{store.url}/{project}/docs").json()["live"] is None


def test_push_a_file_already_in_the_collection_exits_5(store: Server, project: str,
                                                       tmp_path: Path) -> None:
    build = tmp_path / "tool.bin"
    build.write_bytes(b"one")
    assert artstore(store, "push", f"{project}/builds", str(build)).exit_code == 0
    build.write_bytes(b"two")
    result = artstore(store, "push", f"{project}/builds", str(build))
    assert result.exit_code == cli.EXIT_CONFLICT == 5
    assert "already has a file named 'tool.bin'; delete it first" in result.stderr
    assert requests.get(f"{store.root}/{project}/builds/tool.bin").content == b"one"


def test_push_a_refused_archive_exits_6_with_the_servers_detail(
        store: Server, project: str, tmp_path: Path) -> None:
    bogus = tmp_path / "site.tgz"
    bogus.write_bytes(b"this is not gzip")
    result = artstore(store, "push", f"{project}/docs", str(bogus))
    assert result.exit_code == 6
    assert result.stderr.startswith("Error: HTTP 415: item 'docs' takes a gzip-compressed tar")


def test_push_when_the_server_is_down_exits_8_after_retrying_the_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(delays.append))
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    url = f"http://127.0.0.1:{free_port()}/artstore"
    result = artstore(url, "push", "demo/report", str(page))
    assert result.exit_code == cli.EXIT_NO_CONNECTION == 8
    assert result.stderr == (f"Error: cannot connect to {url}: Connection refused "
                             "(tried 4 times)\n")
    assert delays == [0.5, 1.0, 2.0]


def test_https_against_a_plain_http_server_says_so_without_retrying(
        store: Server, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(delays.append))
    # gunicorn 23 waits for a request line instead of answering the TLS hello.
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 2.0)
    url = store.url.replace("http://", "https://")
    for args in (["project", "show", project],
                 ["push", f"{project}/docs", str(make_site(tmp_path / "site", 2))]):
        result = artstore(url, *args)
        assert result.exit_code == cli.EXIT_NO_CONNECTION == 8
        assert result.stderr.startswith(f"Error: TLS handshake with {url} failed: ")
        assert "is the server plain http://?" in result.stderr
        assert "SSLError" not in result.stderr
    assert delays == []


def test_https_to_a_server_that_never_answers_the_tls_hello_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(delays.append))
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepted by the kernel, never answered
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/artstore"
        result = artstore(url, "project", "list")
    assert result.exit_code == 8
    assert result.stderr == (f"Error: TLS handshake with {url} failed: no answer in time; "
                             "is the server plain http://?\n")
    assert delays == []


def test_push_usage_errors_exit_2_before_anything_is_sent(store: Server, project: str,
                                                          tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 2)
    result = artstore(store, "push", f"{project}/report", str(site))
    assert result.exit_code == cli.EXIT_USAGE == 2
    assert f"{project}/report is an html item, which takes one file" in result.stderr
    result = artstore(store, "push", f"{project}/builds", str(site))
    assert result.exit_code == 2 and "a collection item" in result.stderr
    assert artstore(store, "push", "just-a-project", str(site)).exit_code == 2
    assert artstore(store, "push", "../x/docs", str(site)).exit_code == 2
    assert artstore(store, "push", f"{project}/docs", str(tmp_path / "nope")).exit_code == 2
    result = artstore(store, "push", f"{project}/docs", str(site), "--meta", "filename=x")
    assert result.exit_code == 2 and "'filename' cannot be a metadata key" in result.stderr
    result = artstore("ftp://example", "push", f"{project}/docs", str(site))
    assert result.exit_code == 2 and "http:// or https://" in result.stderr


def test_a_file_that_changes_while_sent_aborts_the_upload_and_publishes_nothing(
        store: Server, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_site(tmp_path / "site", 2)
    scan = client.scan_directory

    def grown_on_disk_at_scan(root: Path) -> list[Entry]:
        return [Entry(e.path, e.name, e.is_dir, e.size + 10, e.mtime) if not e.is_dir else e
                for e in scan(root)]

    monkeypatch.setattr(client, "scan_directory", grown_on_disk_at_scan)
    result = artstore(store, "push", f"{project}/docs", str(site))
    assert result.exit_code == 2
    assert "the file shrank while it was being packed" in result.stderr
    assert requests.get(f"{store.url}/{project}/docs").json()["live"] is None

    sized = client._FileBody.__init__

    def grown_on_disk_at_open(body: Any, file: Any, size: int, on_progress: Any) -> None:
        sized(body, file, size + 10, on_progress)

    monkeypatch.setattr(client._FileBody, "__init__", grown_on_disk_at_open)
    build = tmp_path / "tool.bin"
    build.write_bytes(b"x" * 1000)
    result = artstore(store, "push", f"{project}/builds", str(build))
    assert result.exit_code == 2
    assert "the file shrank while it was being uploaded" in result.stderr
    assert requests.get(f"{store.url}/{project}/builds").json()["files"] == []


def test_push_runs_as_a_real_command_configured_by_the_environment(
        store: Server, project: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 20)
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    env.update({"ARTSTORE_URL": store.url, "ARTSTORE_TOKEN": ADMIN,
                "CI_COMMIT_SHA": "feedbeef", "CI_COMMIT_REF_NAME": "release",
                "CI_PIPELINE_URL": "https://gitlab.example/p/-/pipelines/9"})
    command = [sys.executable, "-m", "artstore.cli", "push", f"{project}/docs", str(site)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{store.root}/{project}/docs/\n"
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    release = requests.get(f"{store.url}/{project}/docs").json()["releases"][0]
    assert release["metadata"] == {"commit": "feedbeef", "branch": "release",
                                   "pipeline": "https://gitlab.example/p/-/pipelines/9"}
    env["ARTSTORE_TOKEN"] = "wrong"
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stderr == "Error: HTTP 401: the bearer token is not valid\n"


# ------------------------------------------------- projects, items, tokens


def test_project_commands_create_show_update_and_delete(store: Server,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"description": "From a file",
                                  "items": {"docs": {"type": "tgz"}}}))
    result = artstore(store, "project", "create", "cmds", "--file", str(config),
                      "--item", "builds=collection:4", "--item", "report=html:2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "cmds: From a file"
    assert re.search(r"builds\s+collection\s+depth 4", result.stdout)
    assert artstore(store, "project", "create", "cmds").exit_code == 5
    shown = json.loads(artstore(store, "project", "show", "cmds", "--json").stdout)
    assert shown["items"]["report"]["keep"] == 2
    assert "cmds" in artstore(store, "project", "list").stdout
    listed = json.loads(artstore(store, "project", "list", "--json").stdout)
    assert "cmds" in [p["name"] for p in listed["projects"]]

    result = artstore(store, "project", "update", "cmds", "--item", "site=zip",
                      "--remove-item", "report")
    assert result.exit_code == 5
    assert "items: report" in result.stderr
    result = artstore(store, "project", "update", "cmds", "--item", "site=zip",
                      "--remove-item", "report", "--prune", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(json.loads(result.stdout)["items"]) == ["builds", "docs", "site"]
    assert artstore(store, "project", "update", "cmds", "--item", "x=rar").exit_code == 2

    assert artstore(store, "project", "delete", "cmds").exit_code == 2  # needs --yes
    assert artstore(store, "project", "delete", "cmds", "--yes").exit_code == 0
    result = artstore(store, "project", "show", "cmds")
    assert result.exit_code == 4 and "project 'cmds' does not exist" in result.stderr
    assert artstore(store, "project", "create", "x", token=None).exit_code == 3


def test_item_show_and_rollback(store: Server, project: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    for text in ("one", "two"):
        page.write_text(f"<p>{text}</p>")
        assert artstore(store, "push", f"{project}/report", str(page),
                        "-m", f"v={text}").exit_code == 0
    releases = requests.get(f"{store.url}/{project}/report").json()["releases"]
    shown = artstore(store, "item", "show", f"{project}/report")
    assert shown.exit_code == 0
    assert shown.stdout.splitlines()[1].startswith(f"* {releases[0]['release']}")
    assert "v=one" in shown.stdout.splitlines()[2]

    result = artstore(store, "rollback", f"{project}/report")
    assert result.exit_code == 0, result.stderr
    assert f"release {releases[1]['release']} is live" in result.stderr
    assert requests.get(f"{store.root}/{project}/report/report.html").text == "<p>one</p>"
    result = artstore(store, "rollback", f"{project}/report", "--release",
                      releases[0]["release"], "--json")
    assert json.loads(result.stdout)["live"] == releases[0]["release"]
    assert artstore(store, "rollback", f"{project}/report", "--release", "nope").exit_code == 4
    assert artstore(store, "rollback", f"{project}/builds").exit_code == 5

    build = tmp_path / "b.bin"
    build.write_bytes(b"b")
    artstore(store, "push", f"{project}/builds", str(build))
    shown = json.loads(artstore(store, "item", "show", f"{project}/builds", "--json").stdout)
    assert [f["name"] for f in shown["files"]] == ["b.bin"]


def test_item_delete_file_removes_a_collection_file_so_it_can_be_pushed_again(
        store: Server, project: str, tmp_path: Path) -> None:
    build = tmp_path / "tool.bin"
    build.write_bytes(b"one")
    assert artstore(store, "push", f"{project}/builds", str(build)).exit_code == 0
    result = artstore(store, "item", "delete-file", f"{project}/builds", "tool.bin")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"deleted {project}/builds file tool.bin\n"
    assert requests.get(f"{store.url}/{project}/builds").json()["files"] == []
    build.write_bytes(b"two")
    assert artstore(store, "push", f"{project}/builds", str(build)).exit_code == 0
    assert requests.get(f"{store.root}/{project}/builds/tool.bin").content == b"two"

    result = artstore(store, "item", "delete-file", f"{project}/builds", "tool.bin", "--json")
    assert json.loads(result.stdout) == {"project": project, "item": "builds",
                                         "file": "tool.bin", "deleted": True}
    result = artstore(store, "item", "delete-file", f"{project}/builds", "tool.bin")
    assert result.exit_code == 4
    assert result.stderr.startswith("Error: HTTP 404: ")
    assert artstore(store, "item", "delete-file", f"{project}/builds", "..").exit_code == 2
    build.write_bytes(b"three")
    assert artstore(store, "push", f"{project}/builds", str(build)).exit_code == 0
    ci_token = artstore(store, "token", "create", project).stdout.strip()
    assert artstore(store, "item", "delete-file", f"{project}/builds", "tool.bin",
                    token=ci_token).exit_code == 0
    assert artstore(store, "item", "delete-file", f"{project}/builds", "tool.bin",
                    token="wrong").exit_code == 3


def test_json_prints_errors_on_stdout_too(store: Server, project: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(lambda s: None))
    result = artstore(store, "project", "show", "absent", "--json")
    assert result.exit_code == 4
    assert result.stderr == "Error: HTTP 404: project 'absent' does not exist\n"
    error = json.loads(result.stdout)["error"]
    assert error == {"status": 404, "message": "HTTP 404: project 'absent' does not exist",
                     "type": "about:blank", "title": "Not Found",
                     "detail": "project 'absent' does not exist",
                     "request_id": error["request_id"]}
    assert error["request_id"]

    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    result = artstore(store, "push", f"{project}/nothing", str(page), "--json")
    error = json.loads(result.stdout)["error"]
    assert (result.exit_code, error["status"], error["items"]) == (
        4, 404, ["builds", "docs", "report", "site"])
    assert error["message"] == result.stderr[len("Error: "):].rstrip("\n")

    result = artstore(store, "push", f"{project}/report", str(page), "--json", token="wrong")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["detail"] == "the bearer token is not valid"

    result = artstore(store, "push", f"{project}/report", str(tmp_path), "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["status"] is None and "is an html item" in error["message"]
    for args in (["push", "no-item-given", str(page), "--json"],
                 ["project", "update", project, "--remove-item", "nope", "--json"]):
        result = artstore(store, *args)
        assert result.exit_code == 2
        error = json.loads(result.stdout)["error"]
        assert error["status"] is None and error["message"] in result.stderr

    url = f"http://127.0.0.1:{free_port()}/artstore"
    result = artstore(url, "project", "list", "--json")
    assert result.exit_code == 8
    assert json.loads(result.stdout) == {"error": {
        "status": None, "message": result.stderr[len("Error: "):].rstrip("\n")}}


def test_token_commands_give_ci_its_own_revocable_token(store: Server, project: str,
                                                        tmp_path: Path) -> None:
    created = artstore(store, "token", "create", project)
    assert created.exit_code == 0
    ci_token = created.stdout.strip()
    token_id = re.search(r"token (\S+) for project", created.stderr).group(1)  # type: ignore
    listed = json.loads(artstore(store, "token", "list", project, "--json").stdout)
    assert [t["id"] for t in listed["tokens"]] == [token_id]
    assert ci_token not in json.dumps(listed)

    page = tmp_path / "p.html"
    page.write_text("<p>ci</p>")
    assert artstore(store, "push", f"{project}/report", str(page), token=ci_token).exit_code == 0
    assert artstore(store, "token", "list", project, token=ci_token).exit_code == 3
    assert artstore(store, "token", "revoke", project, token_id).exit_code == 0
    assert artstore(store, "token", "revoke", project, token_id).exit_code == 4
    assert artstore(store, "push", f"{project}/report", str(page), token=ci_token).exit_code == 3


# ------------------------------------------------ retries, against a fake server


class FlakyServer(BaseHTTPRequestHandler):
    """Answers GET /demo with a project, every other request with 503; counts requests."""

    calls: list[str] = []

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        self.calls.append(f"GET {self.path}")
        if self.path == "/_whoami":
            self._answer(200, {"admin": True, "project": None})
        elif self.path == "/demo":
            self._answer(200, {"name": "demo", "items": {"builds": {"type": "collection"}}})
        else:
            self._answer(503, {"status": 503, "detail": "try later"})

    def do_PUT(self) -> None:  # noqa: N802
        self.calls.append(f"{self.command} {self.path}")
        self._answer(503, {"status": 503, "detail": "try later"})

    do_POST = do_DELETE = do_PUT  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


class OlderServer(FlakyServer):
    """A server from before GET /_whoami: 404 there, and it accepts the upload."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_whoami":
            self.calls.append(f"GET {self.path}")
            self._answer(404, {"status": 404, "detail": "project '_whoami' does not exist"})
        else:
            super().do_GET()

    def do_PUT(self) -> None:  # noqa: N802
        self.calls.append(f"PUT {self.path}")
        self._answer(201, {"project": "demo", "item": "builds", "release": "b.bin",
                           "files": 1, "size": 1, "sha256": "0" * 64, "warnings": [],
                           "url": "http://files/demo/builds/b.bin"})


def serve_fake(handler: type[FlakyServer]) -> Iterator[str]:
    handler.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def flaky() -> Iterator[str]:
    yield from serve_fake(FlakyServer)


@pytest.fixture
def older() -> Iterator[str]:
    yield from serve_fake(OlderServer)


def test_push_to_a_server_without_whoami_checks_the_token_with_the_upload(
        older: str, tmp_path: Path) -> None:
    build = tmp_path / "b.bin"
    build.write_bytes(b"b")
    result = artstore(older, "push", "demo/builds", str(build))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "http://files/demo/builds/b.bin\n"
    assert [c.split("?")[0] for c in OlderServer.calls] == ["GET /_whoami", "GET /demo",
                                                            "PUT /demo/builds"]


def test_reads_and_deletes_are_retried_with_backoff_on_5xx(
        flaky: str, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(delays.append))
    result = artstore(flaky, "item", "show", "demo/builds")
    assert result.exit_code == cli.EXIT_SERVER == 7
    assert result.stderr == "Error: HTTP 503: try later\n"
    assert FlakyServer.calls == ["GET /demo/builds"] * 4 and delays == [0.5, 1.0, 2.0]
    FlakyServer.calls.clear()
    assert artstore(flaky, "token", "revoke", "demo", "abc").exit_code == 7
    assert FlakyServer.calls == ["DELETE /demo/_tokens/abc"] * 4


def test_uploads_and_other_posts_are_never_retried(flaky: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ArtstoreClient, "sleep", staticmethod(lambda s: None))
    build = tmp_path / "b.bin"
    build.write_bytes(b"b")
    result = artstore(flaky, "push", "demo/builds", str(build))
    assert result.exit_code == 7
    assert [c.split("?")[0] for c in FlakyServer.calls] == ["GET /_whoami", "GET /demo",
                                                            "PUT /demo/builds"]
    FlakyServer.calls.clear()
    assert artstore(flaky, "rollback", "demo/docs").exit_code == 7
    assert artstore(flaky, "token", "create", "demo").exit_code == 7
    assert FlakyServer.calls == ["POST /demo/docs/rollback", "POST /demo/_tokens"]


# ------------------------------------------------------------- pure parts


def test_ci_metadata_from_github_gitlab_and_jenkins() -> None:
    assert ci_metadata({"GITHUB_SHA": "a1", "GITHUB_REF_NAME": "main",
                        "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r",
                        "GITHUB_RUN_ID": "5"}) == {
        "commit": "a1", "branch": "main", "pipeline": "https://github.com/o/r/actions/runs/5"}
    assert ci_metadata({"CI_COMMIT_SHA": "b2", "CI_COMMIT_REF_NAME": "dev",
                        "CI_PIPELINE_URL": "https://gl/p/1"}) == {
        "commit": "b2", "branch": "dev", "pipeline": "https://gl/p/1"}
    assert ci_metadata({"GIT_COMMIT": "c3", "GIT_BRANCH": "origin/main",
                        "BUILD_URL": "https://jenkins/job/1/"}) == {
        "commit": "c3", "branch": "origin/main", "pipeline": "https://jenkins/job/1/"}
    assert ci_metadata({"HOME": "/root"}) == {}


def test_packed_stream_is_a_tgz_of_the_directory_with_normalised_modes(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 5)
    stream = PackedStream(client.scan_directory(site), "tgz")
    data = b"".join(stream)
    stream.close()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "index.html" in members and members["part00"].isdir()
    assert {m.mode for m in members.values()} == {0o644, 0o755}
    assert stream.sha256 == hashlib.sha256(data).hexdigest()


def test_scanning_refuses_what_cannot_be_packed(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", 2)
    (site / "loop").symlink_to(site)
    with pytest.raises(client.UsageError, match="symlink loop"):
        client.scan_directory(site)
    (site / "loop").unlink()
    os.mkfifo(site / "fifo")
    with pytest.raises(client.UsageError, match="not a regular file or directory"):
        client.scan_directory(site)


def test_progress_bar_shows_percent_and_rate_then_ends_its_line() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 1.0, 1.05, 2.0])
    bar = cli.ProgressBar(out, "demo/docs", clock=lambda: next(ticks))
    bar(512 * 1024, 2 * 1024 * 1024)
    bar(600 * 1024, 2 * 1024 * 1024)  # too soon after the last redraw: skipped
    bar(2 * 1024 * 1024, 2 * 1024 * 1024)
    bar.close()
    lines = out.getvalue().split("\r")[1:]
    assert len(lines) == 2
    assert lines[0].startswith("demo/docs [#######-----------------------]  25% 512.0 KiB of")
    assert lines[1].endswith("100% 2.0 MiB of 2.0 MiB, 1.0 MiB/s\x1b[K\n")


def test_readme_documents_every_exit_code() -> None:
    text = README.read_text()
    section = text[text.index("## The artstore client"):]
    section = section[:section.index("\n## ", 1)]
    documented = {int(code) for code in re.findall(r"^\| `(\d)` \|", section, re.M)}
    assert documented == set(cli.EXIT_CODES)
    for variable in ("ARTSTORE_URL", "ARTSTORE_TOKEN"):
        assert variable in section


def test_client_calls_can_be_used_directly(store: Server, project: str) -> None:
    with ArtstoreClient(store.url, ADMIN) as api:
        assert api.item_type(project, "docs") == "tgz"
        assert api.get_item(project, "builds")["files"] == []
        with pytest.raises(client.ClientError) as caught:
            api.get_project("absent")
        assert caught.value.status == 404
