"""A real ``artstore serve`` (gunicorn, several workers) driven over HTTP."""

from __future__ import annotations

import http.client
import io
import json
import multiprocessing
import os
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from artstore.catalog import Registry

from .conftest import ADMIN, AUTH, Server, start_server, stored_projects, write_config

README = Path(__file__).resolve().parent.parent / "README.md"


def raw_request(server: Server, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Send ``path`` exactly as given: no client-side normalisation of dots or escapes."""
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else {})
    finally:
        conn.close()


@pytest.fixture
def embedded(tmp_path: Path) -> Any:
    if Path("/etc/artstore/artstore.json").exists():
        pytest.skip("/etc/artstore/artstore.json exists, so serve would not embed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTSTORE_")}
    srv = start_server(tmp_path, [], {}, tmp_path / "serve.log", api_prefix="/artstore")
    srv.env = env
    yield srv
    srv.stop()


def test_serve_without_configuration_embeds_a_default_store(embedded: Server,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "artstore-data"
    token_file = data / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    told = (tmp_path / "serve.log").read_text()
    assert f"created the admin token in {token_file}" in told
    assert f"admin token: from {token_file}" in told
    token = token_file.read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{embedded.url}/demo", json={"items": {"report": {"type": "html"}}},
                      headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{embedded.url}/demo"
    r = requests.put(f"{embedded.url}/demo/report", data=b"<h1>Report</h1>", headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["url"] == f"{embedded.root}/demo/report/"
    page = requests.get(r.json()["url"])
    assert page.status_code == 200 and page.text == "<h1>Report</h1>"
    assert "demo" in requests.get(embedded.root + "/").text
    # Bookkeeping is never served, like the nginx setup's dot-path rule.
    assert requests.get(f"{embedded.root}/demo/.artstore/").status_code == 404
    assert (data / "public" / "demo" / "report").is_symlink()


def test_a_second_start_reuses_the_embedded_token(embedded: Server, tmp_path: Path) -> None:
    token = (tmp_path / "artstore-data" / "admin.token").read_text()
    srv = embedded.restart()
    try:
        assert (tmp_path / "artstore-data" / "admin.token").read_text() == token
    finally:
        srv.stop()


def test_two_instances_with_one_home_both_serve_and_leave_home_alone(tmp_path: Path) -> None:
    """gunicorn 27 would open its control socket in $HOME/.gunicorn/, shared by both."""
    home = tmp_path / "home"
    home.mkdir()
    servers = []
    try:
        for name in ("one", "two"):
            config = write_config(tmp_path / name)
            servers.append(start_server(
                tmp_path, ["--config", str(config), "--workers", "1"],
                {"ARTSTORE_ADMIN_TOKEN": ADMIN, "HOME": str(home), "XDG_RUNTIME_DIR": ""},
                tmp_path / f"{name}.log"))
        for srv in servers:
            assert requests.post(f"{srv.url}/demo", json={"items": {}},
                                 headers=AUTH).status_code == 201
    finally:
        for srv in servers:
            srv.stop()
    assert list(home.iterdir()) == []
    for name in ("one", "two"):
        assert "control socket" not in (tmp_path / f"{name}.log").read_text().lower()


def test_project_endpoints_over_http(server: Server) -> None:
    items = {"docs": {"type": "tgz"}, "builds": {"type": "collection"}}
    assert requests.get(server.url + "/").json() == {"projects": []}
    assert requests.post(server.url + "/demo", json={"items": items},
                         headers=AUTH).status_code == 201
    assert requests.post(server.url + "/demo", json={"items": items},
                         headers=AUTH).status_code == 409
    assert requests.get(server.url + "/demo").json()["items"]["docs"]["live"] is None
    r = requests.put(server.url + "/demo", json={"items": {"docs": items["docs"]}},
                     headers=AUTH)
    assert r.status_code == 409 and r.json()["items"] == ["builds"]
    assert requests.put(server.url + "/demo?prune=true", json={"items": {}},
                        headers=AUTH).status_code == 200
    assert requests.post(server.url + "/demo", json=[], headers=AUTH).status_code == 400
    assert requests.delete(server.url + "/demo").status_code == 401
    assert requests.delete(server.url + "/demo", headers=AUTH).status_code == 204
    assert requests.get(server.url + "/demo").status_code == 404
    r = requests.patch(server.url + "/demo", headers=AUTH)
    assert r.status_code == 405
    assert r.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/..", "/%2e%2e", "/a%2Fb", "/.hidden", "/" + "x" * 65,
                                  "/caf%C3%A9", "/%2e", "/a%00b", "/%20"])
def test_hostile_project_names_over_http_create_nothing(server: Server, path: str,
                                                        tmp_path: Path) -> None:
    status, body = raw_request(server, "POST", path, b'{"items": {}}',
                               {"Content-Type": "application/json"})
    assert status in (400, 404), (status, body)
    assert body["status"] == status
    assert requests.get(server.url + "/").json() == {"projects": []}
    public = tmp_path / "state" / "public"
    assert sorted(p.name for p in public.iterdir()) == [".artstore", "index.html"]


def _create_projects(url: str, names: list[str]) -> list[int]:
    return [requests.post(f"{url}/{n}", json={"items": {"docs": {"type": "tgz"}}},
                          headers=AUTH).status_code for n in names]


def test_fifty_projects_created_concurrently_by_several_processes_are_all_kept(
        server: Server, tmp_path: Path) -> None:
    names = [f"p{i:02d}" for i in range(50)]
    with multiprocessing.get_context("spawn").Pool(5) as pool:
        codes = pool.starmap(_create_projects, [(server.url, names[i::5]) for i in range(5)])
    assert sorted(c for group in codes for c in group) == [201] * 50
    assert sorted(stored_projects(tmp_path / "state")) == names
    assert [p["name"] for p in requests.get(server.url + "/").json()["projects"]] == names


WRITER = """
import sys
from artstore.catalog import Project, Registry
Registry.LOG_LIMIT = 7  # kills land in appends to projects.log and in folds alike
reg = Registry(sys.argv[1])
i = 0
while True:
    i += 1
    def grow(projects, i=i):
        projects[f"p{i % 300}"] = Project(f"p{i % 300}", "x" * (i % 500), "", {})
    reg.change(grow)
"""


def test_a_killed_writer_never_leaves_projects_json_truncated(tmp_path: Path) -> None:
    for round_ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
        deadline = time.monotonic() + 30
        while not (tmp_path / "projects.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a slow start on a busy machine must not end the test early
        time.sleep((round_ % 5) * 0.03)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        projects = Registry(tmp_path).load()  # raises if the file is broken
        assert projects, "the writer should have written something"
    # The dead writer's lock died with it: a new change goes through at once.
    Registry(tmp_path).change(lambda projects: projects.clear())
    assert Registry(tmp_path).load() == {}


def test_a_reader_never_applies_a_line_of_one_log_at_an_offset_of_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker looks at the files; before it reads them, another folds the log and begins
    it anew, longer than the first. The reader must not apply a piece of a line (every
    request of that worker answered 500) but the new log, on the folded file."""
    from artstore.catalog import Project

    def add(name: str, description: str) -> Any:
        return lambda projects: projects.__setitem__(name, Project(name, description, "", {}))

    reader, writer = Registry(tmp_path), Registry(tmp_path)
    writer.change(add("a", ""))
    assert list(reader.load()) == ["a"]
    real_stat, fired = os.stat, []

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(writer.log_path) and not fired:
            fired.append(path)  # the reader is preempted right here
            writer.fold()
            writer.change(add("b", "x" * 200))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert list(reader.load()) == ["a", "b"]
    assert fired


def test_the_projects_after_a_change_elsewhere_are_in_name_order_and_reuse_the_rest(
        tmp_path: Path) -> None:
    """Another worker adds, changes and removes projects: the projects this one lists are
    in name order, and each project nobody changed is the record it had before."""
    from artstore.catalog import Project

    def put(name: str, description: str = "") -> Any:
        return lambda projects: projects.__setitem__(name, Project(name, description, "",
                                                                   {}))

    reader, writer = Registry(tmp_path), Registry(tmp_path)
    for name in ("b", "d", "f"):
        writer.change(put(name))
    before = reader.load()
    cursor, _ = reader.changed_since(None)
    writer.change(put("a"))
    writer.change(put("d", "changed"))
    writer.change(lambda projects: projects.pop("f"))
    after = reader.load()
    assert list(after) == ["a", "b", "d"]
    assert after["b"] is before["b"] and after["d"].description == "changed"
    assert reader.changed_since(cursor)[1] == {"a", "d", "f"}
    assert list(before) == ["b", "d", "f"], "the list handed out before stays as it was"


def test_a_change_torn_by_a_crash_is_never_read_and_is_cut_off_by_the_next(
        tmp_path: Path) -> None:
    from artstore.catalog import Project

    registry = Registry(tmp_path)
    registry.change(lambda projects: projects.__setitem__("a", Project("a", "", "", {})))
    with open(tmp_path / "projects.log", "ab") as log:
        log.write(b'{"name": "b", "project": {"descrip')  # a crash in the middle of a line
    assert list(Registry(tmp_path).load()) == ["a"]
    Registry(tmp_path).change(lambda projects: projects.__setitem__("c", Project("c", "", "",
                                                                                  {})))
    assert list(Registry(tmp_path).load()) == ["a", "c"]
    Registry(tmp_path).fold()
    assert json.loads((tmp_path / "projects.json").read_text()) == {
        "a": {"created": "", "description": "", "items": {}},
        "c": {"created": "", "description": "", "items": {}}}
    assert (tmp_path / "projects.log").read_bytes() == b""


def test_a_hand_broken_projects_json_stops_start_up_with_a_clear_error(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "state")
    (tmp_path / "state" / "projects.json").write_text('{"demo": {"items": ')
    proc = subprocess.run(
        [sys.executable, "-m", "artstore.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ,
                                                          "ARTSTORE_ADMIN_TOKEN": ADMIN})
    assert proc.returncode != 0
    assert "projects.json is broken" in proc.stderr
    assert (tmp_path / "state" / "projects.json").read_text() == '{"demo": {"items": '


def test_readme_curl_examples_work_as_written(embedded: Server, tmp_path: Path) -> None:
    """They run in the folder where ``artstore serve`` runs and leave nothing in it; the
    server's URL is set once, so that is the one line a reader changes."""
    text = README.read_text()
    section = text[text.index("### With curl"):text.index("## Settings")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 4
    script = "\n".join(blocks)
    assert script.count("127.0.0.1:8080") == 1, "the URL is set in one place only"
    script = "set -euo pipefail\n" + script.replace("127.0.0.1:8080",
                                                    embedded.root.split("//", 1)[1])
    temp = tmp_path / "temp"
    temp.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**embedded.env, "TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "<h1>Hello</h1>" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "files left in the folder"
    r = requests.get(f"{embedded.url}/demo/builds").json()
    assert [f["name"] for f in r["files"]] == ["tool-1.0.bin"]
    assert requests.get(f"{embedded.root}/demo/report/report.html").text == "<p>all green</p>\n"
    # The project page links the item's URL, which shows the report too.
    assert 'href="report/"' in requests.get(f"{embedded.root}/demo/").text
    assert requests.get(f"{embedded.root}/demo/report/").text == "<p>all green</p>\n"
    docs = requests.get(f"{embedded.url}/demo/docs").json()
    assert len(docs["releases"]) == 2 and docs["live"] == docs["releases"][1]["release"]
    assert requests.get(f"{embedded.root}/demo/docs/").text == "<h1>Hello</h1>\n"


def test_embedded_file_server_redirects_a_directory_with_an_encoded_location(
        embedded: Server, tmp_path: Path) -> None:
    token = (tmp_path / "artstore-data" / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    requests.post(f"{embedded.url}/demo", json={"items": {"builds": {"type": "collection"}}},
                  headers=auth).raise_for_status()
    requests.put(f"{embedded.url}/demo/builds", params={"filename": "a b.bin"}, data=b"x",
                 headers=auth).raise_for_status()
    r = requests.get(f"{embedded.root}/demo/builds", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"].endswith("/demo/builds/")
    assert requests.get(f"{embedded.root}/demo/builds/a%20b.bin").content == b"x"
    assert requests.get(f"{embedded.root}/demo/.artstore").status_code == 404


def test_the_embedded_file_server_has_every_published_file_revalidated(
        embedded: Server, tmp_path: Path) -> None:
    """Like the sample nginx: no max-age, validators, the new bytes after a republish."""
    token = (tmp_path / "artstore-data" / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    requests.post(f"{embedded.url}/demo", json={"items": {"docs": {"type": "tgz"}}},
                  headers=auth).raise_for_status()
    url = f"{embedded.root}/demo/docs/_static/searchindex.js"
    seen: list[requests.Response] = []
    for body in (b"Search.setIndex({a: 1})", b"Search.setIndex({a: 1, b: 2})"):
        site = io.BytesIO()
        with tarfile.open(fileobj=site, mode="w:gz") as tar:
            for name, data in {"index.html": b"<h1>docs</h1>",
                               "_static/searchindex.js": body}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        requests.put(f"{embedded.url}/demo/docs", data=site.getvalue(),
                     headers=auth).raise_for_status()
        if seen:
            again = requests.get(url, headers={
                "If-None-Match": seen[-1].headers["ETag"],
                "If-Modified-Since": seen[-1].headers["Last-Modified"]})
            assert again.status_code == 200 and again.content == body
        got = requests.get(url)
        assert got.content == body
        assert got.headers["Cache-Control"] == "no-cache" and "Expires" not in got.headers
        assert got.headers["ETag"] and got.headers["Last-Modified"]
        assert requests.get(url, headers={"If-None-Match": got.headers["ETag"]}
                            ).status_code == 304
        seen.append(got)


def test_a_change_to_one_project_appends_one_line_and_a_stop_folds_them_into_projects_json(
        tmp_path: Path) -> None:
    """The cost of a change does not grow with the number of projects: projects.json is not
    rewritten for it, one line is appended to projects.log; a stopped service leaves every
    project in projects.json, for a human to edit."""
    state = tmp_path / "state"
    write_config(state)
    (state / "projects.json").write_text(json.dumps({"one": {"items": {}}, "two": {}}))
    before = (state / "projects.json").stat()
    # One worker: its start-up sweep is over before it answers.
    server = start_server(tmp_path, ["--config", str(state / "artstore.json"), "--workers",
                                     "1"], {"ARTSTORE_ADMIN_TOKEN": ADMIN},
                          tmp_path / "server.log")
    try:
        r = requests.put(f"{server.url}/one", json={"description": "new", "items": {}},
                         headers=AUTH, timeout=30)
        assert r.status_code == 200
        assert (state / "projects.json").stat().st_mtime_ns == before.st_mtime_ns
        lines = (state / "projects.log").read_bytes().splitlines()
        assert json.loads(lines[-1])["name"] == "one"
        assert json.loads(lines[-1])["project"]["description"] == "new"
    finally:
        server.stop()
    assert (state / "projects.log").read_bytes() == b""
    stored = json.loads((state / "projects.json").read_text())
    assert sorted(stored) == ["one", "two"] and stored["one"]["description"] == "new"
