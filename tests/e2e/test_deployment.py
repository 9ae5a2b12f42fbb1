"""Through nginx only: publish with curl, read what nginx serves, and what it refuses."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from ..conftest import free_port
from .conftest import (
    APP_LIMIT,
    WORKERS,
    Stack,
    buildah,
    image_config,
    needs_nginx,
    start_gunicorn,
    start_nginx,
    stop,
)

PROBLEM = "application/problem+json"
# What every API answer carries, nginx's own errors too: nothing in it runs, is framed,
# embedded by another site's page or sniffed into something else.
API_HARDENING = {"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
                 "Cross-Origin-Resource-Policy": "same-origin",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def hardened(headers: Any) -> bool:
    headers = CaseInsensitiveDict(headers)
    return all(headers.get(name) == value for name, value in API_HARDENING.items())
SITE = {
    "index.html": b"<!doctype html><title>Docs</title><h1>Docs v1</h1>",
    "style.css": b"h1 { color: teal }",
    "guide/intro.html": b"<p>intro</p>",
    ".buildinfo": b"config: 1234",
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


def curl(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> Answer:
    """Run curl as CI would: the status, the final response's headers and the body."""
    with tempfile.TemporaryDirectory() as tmp:
        head, body = Path(tmp) / "head", Path(tmp) / "body"
        proc = subprocess.run(["curl", "-sS", "-D", str(head), "-o", str(body), *args],
                              cwd=cwd, input=stdin, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        # The last block: curl also records a "100 Continue" before the answer.
        block = head.read_bytes().decode("latin-1").strip().split("\r\n\r\n")[-1]
        status_line, *lines = block.split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Answer(int(status_line.split()[1]), headers,
                      body.read_bytes() if body.exists() else b"")


def make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def create_project(stack: Stack, name: str) -> Answer:
    body = {"description": "end to end", "items": {
        "docs": {"type": "tgz", "keep": 3}, "site": {"type": "zip"},
        "report": {"type": "html"}, "builds": {"type": "collection", "depth": 5}}}
    return curl("-X", "POST", f"{stack.api}/{name}", "-H", f"Authorization: Bearer {stack.token}",
                "-H", "Content-Type: application/json", "-d", json.dumps(body))


@pytest.fixture
def project(stack: Stack, request: pytest.FixtureRequest) -> str:
    """A fresh project per test: the deployment is shared by the tests of a module."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-40:]
    assert create_project(stack, name).status == 201
    return name


def test_the_readmes_nginx_step_on_a_fresh_debian_nginx_reaches_the_service(stack: Stack
                                                                          ) -> None:
    """The stack's nginx is Debian's /etc/nginx with the README's step done to it."""
    assert "warn" not in stack.nginx.checked(), stack.nginx.checked()
    r = requests.get(stack.api + "/_health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # Another host name is Debian's default site's, never artstore's.
    other = {"Host": "other.example"}
    r = requests.get(stack.api + "/_health", headers=other)
    assert r.status_code == 404 and "X-Request-Id" not in r.headers
    assert "Welcome to nginx" in requests.get(stack.url + "/", headers=other).text


def test_a_project_is_created_through_nginx_with_urls_under_the_prefix(stack: Stack) -> None:
    r = create_project(stack, "demo")
    assert r.status == 201, r.body
    assert r.headers["location"] == f"{stack.api}/demo"
    assert r.json()["items"]["docs"]["live"] is None
    assert create_project(stack, "demo").status == 409
    listed = requests.get(stack.api + "/").json()["projects"]
    assert "demo" in [p["name"] for p in listed]
    # The service's own documents know where they are served.
    assert requests.get(stack.api + "/_openapi.json").json()["servers"] == [{"url": "/artstore"}]
    assert requests.get(stack.api + "/_health").json() == {"status": "ok"}


def test_a_tgz_site_uploaded_with_curl_is_served_by_nginx(stack: Stack, project: str,
                                                          tmp_path: Path) -> None:
    make_tgz(tmp_path / "site.tgz", SITE)
    r = curl("-X", "POST", f"{stack.api}/{project}/docs", "-H",
             f"Authorization: Bearer {stack.token}", "-F", "item=@site.tgz", "-F",
             "commit=abc123", cwd=tmp_path)
    assert r.status == 201, r.body
    assert r.headers["location"] == f"{stack.api}/{project}/docs"
    assert r.headers["content-type"] == "application/json"
    upload = r.json()
    assert upload["url"] == f"{stack.url}/{project}/docs/"
    assert upload["metadata"] == {"commit": "abc123"}

    page = requests.get(upload["url"])
    assert page.status_code == 200 and page.content == SITE["index.html"]
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    css = requests.get(upload["url"] + "style.css")
    assert css.content == SITE["style.css"]
    assert css.headers["Content-Type"].startswith("text/css")
    assert css.headers["Cache-Control"] == "no-cache"
    assert requests.get(upload["url"] + "guide/intro.html").content == SITE["guide/intro.html"]
    # Revalidation works: nginx sends validators and answers 304.
    again = requests.get(upload["url"], headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304
    # A directory without its slash is redirected, relative, so any host and port stay.
    r = requests.get(f"{stack.url}/{project}/docs", allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == f"/{project}/docs/"
    # The generated indexes link the project and the item.
    assert f'href="{project}/' in requests.get(stack.url + "/").text
    assert "docs/" in requests.get(f"{stack.url}/{project}/").text

    item = requests.get(f"{stack.api}/{project}/docs").json()
    assert item["live"] == upload["release"]
    assert item["url"] == f"{stack.url}/{project}/docs/"


def test_a_republished_file_is_revalidated_and_comes_back_new(stack: Stack, project: str,
                                                              tmp_path: Path) -> None:
    """Sphinx loads searchindex.js without a version query: a cached copy must not outlive
    a publish, so every published file is revalidated (ETag, Last-Modified) each time."""
    auth = f"Authorization: Bearer {stack.token}"
    old = b"Search.setIndex({docnames: ['index']})"
    new = b"Search.setIndex({docnames: ['index', 'changes']})"
    url = f"{stack.url}/{project}/docs/_static/searchindex.js"
    seen = []
    for body in (old, new):
        make_tgz(tmp_path / "site.tgz", {"index.html": b"<h1>docs</h1>",
                                         "_static/searchindex.js": body})
        r = curl("-T", "site.tgz", f"{stack.api}/{project}/docs", "-H", auth, cwd=tmp_path)
        assert r.status == 201, r.body
        if seen:
            # What a browser holding the old copy asks: it gets the new bytes.
            again = requests.get(url, headers={
                "If-None-Match": seen[-1].headers["ETag"],
                "If-Modified-Since": seen[-1].headers["Last-Modified"]})
            assert again.status_code == 200 and again.content == body
        got = requests.get(url)
        assert got.content == body
        assert got.headers["Cache-Control"] == "no-cache"
        assert "max-age" not in got.headers["Cache-Control"] and "Expires" not in got.headers
        assert got.headers["ETag"] and got.headers["Last-Modified"]
        assert requests.get(url, headers={"If-None-Match": got.headers["ETag"]}
                            ).status_code == 304
        seen.append(got)


def test_api_answers_are_hardened_and_published_files_get_only_what_costs_them_nothing(
        stack: Stack, project: str, tmp_path: Path) -> None:
    make_tgz(tmp_path / "site.tgz", SITE)
    r = curl("-T", "site.tgz", f"{stack.api}/{project}/docs", "-H",
             f"Authorization: Bearer {stack.token}", cwd=tmp_path)
    assert r.status == 201 and hardened(r.headers), r.headers
    for url in (f"{stack.api}/", f"{stack.api}/{project}", f"{stack.api}/{project}/nothing",
                f"{stack.api}/_openapi.json"):
        answer = requests.get(url)
        assert hardened(answer.headers), (url, answer.headers)
        assert len(answer.headers["Content-Security-Policy"].split(",")) == 1  # sent once
    for path in ("/", f"/{project}/", f"/{project}/docs/", f"/{project}/docs/style.css"):
        answer = requests.get(stack.url + path)
        assert answer.status_code == 200, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        # What would break a published site: its scripts, its frames, its embedding.
        for costly in ("Content-Security-Policy", "X-Frame-Options",
                       "Cross-Origin-Resource-Policy", "Cross-Origin-Embedder-Policy"):
            assert costly not in answer.headers, (path, costly)


def test_a_zip_site_put_with_curl_replaces_the_live_one(stack: Stack, project: str,
                                                        tmp_path: Path) -> None:
    auth = f"Authorization: Bearer {stack.token}"
    for version in (1, 2):
        make_zip(tmp_path / "site.zip", {"index.html": f"<h1>v{version}</h1>".encode(),
                                         "js/app.js": b"console.log(1)"})
        r = curl("-T", "site.zip", f"{stack.api}/{project}/site", "-H", auth, cwd=tmp_path)
        assert r.status == 201, r.body
        assert r.json()["url"] == f"{stack.url}/{project}/site/"
        assert requests.get(r.json()["url"]).text == f"<h1>v{version}</h1>"
    js = requests.get(f"{stack.url}/{project}/site/js/app.js")
    assert js.headers["Content-Type"].split(";")[0] in ("application/javascript",
                                                        "text/javascript")
    # Roll back through nginx: the first release is live again.
    r = curl("-X", "POST", f"{stack.api}/{project}/site/rollback", "-H", auth)
    assert r.status == 200, r.body
    assert requests.get(f"{stack.url}/{project}/site/").text == "<h1>v1</h1>"


def test_an_html_report_and_collection_files_are_served(stack: Stack, project: str,
                                                        tmp_path: Path) -> None:
    auth = f"Authorization: Bearer {stack.token}"
    (tmp_path / "report.html").write_text("<p>all green</p>")
    r = curl("-T", "report.html", f"{stack.api}/{project}/report?filename=report.html",
             "-H", auth, cwd=tmp_path)
    assert r.status == 201, r.body
    assert r.json()["url"] == f"{stack.url}/{project}/report/report.html"
    assert requests.get(r.json()["url"]).text == "<p>all green</p>"

    names = ["tool-1.0.tar.gz", "tool 1.1 (beta).bin", "café-1.2.bin"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 100)
        r = curl("-X", "POST", f"{stack.api}/{project}/builds", "-H", auth,
                 "-F", f"item=@{name}", cwd=tmp_path)
        assert r.status == 201, r.body
    r = curl("-T", names[0], f"{stack.api}/{project}/builds?filename={names[0]}", "-H", auth,
             cwd=tmp_path)
    assert r.status == 409 and r.headers["content-type"] == "application/problem+json"

    files = requests.get(f"{stack.api}/{project}/builds").json()["files"]
    assert [f["name"] for f in files] == names[::-1]
    for f in files:
        assert f["url"].startswith(f"{stack.url}/{project}/builds/")
        served = requests.get(f["url"])
        assert served.status_code == 200 and served.content == f["name"].encode() * 100
    listing = requests.get(f"{stack.url}/{project}/builds/")
    assert listing.headers["Content-Type"] == "text/html; charset=utf-8"
    assert json.loads(requests.get(f"{stack.url}/{project}/builds/index.json").text)
    latest = requests.get(f"{stack.api}/{project}/builds/latest", allow_redirects=False)
    assert latest.status_code == 302 and latest.headers["Location"] == files[0]["url"]
    # A name that needs escaping survives nginx's rewrite of the path to the service.
    r = curl("-X", "DELETE", files[1]["url"].replace(stack.url, stack.api), "-H", auth)
    assert r.status == 204, r.body
    assert requests.get(files[1]["url"]).status_code == 404


def test_an_html_report_not_named_index_html_is_shown_at_its_item_url(
        stack: Stack, project: str, tmp_path: Path) -> None:
    (tmp_path / "results.html").write_text("<p>all green</p>")
    r = curl("-X", "POST", f"{stack.api}/{project}/report", "-H",
             f"Authorization: Bearer {stack.token}", "-F", "item=@results.html", cwd=tmp_path)
    assert r.status == 201, r.body
    assert requests.get(r.json()["url"]).text == "<p>all green</p>"
    # The project page links the item's directory: nginx shows the report there.
    page = requests.get(f"{stack.url}/{project}/").text
    link = re.search(r'href="(report[^"]*)"', page)
    assert link, page
    shown = requests.get(f"{stack.url}/{project}/{link.group(1)}")
    assert shown.status_code == 200 and shown.text == "<p>all green</p>"
    assert shown.headers["Content-Type"] == "text/html; charset=utf-8"


def test_dot_paths_are_never_served(stack: Stack, project: str, tmp_path: Path) -> None:
    make_tgz(tmp_path / "site.tgz", SITE)
    r = curl("-T", "site.tgz", f"{stack.api}/{project}/docs", "-H",
             f"Authorization: Bearer {stack.token}", cwd=tmp_path)
    assert r.status == 201, r.body
    release = r.json()["release"]
    kept = stack.public / project / ".artstore" / "docs" / release / "index.html"
    assert kept.is_file() and (stack.public / project / "docs" / ".buildinfo").is_file()
    for path in (f"/{project}/.artstore/", f"/{project}/.artstore/docs/{release}/index.html",
                 f"/{project}/%2eartstore/docs/{release}/index.html",
                 f"/{project}/docs/.buildinfo", f"/{project}/docs/%2Ebuildinfo",
                 f"/{project}/docs/guide/../.buildinfo"):
        answer = curl("--path-as-is", stack.url + path)
        assert answer.status == 404, path
        assert b"config" not in answer.body and b"Docs" not in answer.body
    # Nothing of the state directory is under base_path.
    assert not any(p.name in ("projects.json", "admin.token", "metrics")
                   for p in stack.public.rglob("*"))


def test_oversize_uploads_get_413_problem_json_and_leave_the_live_release(
        stack: Stack, project: str, tmp_path: Path) -> None:
    """nginx's client_max_body_size matches max_upload_bytes, as in deploy/default.conf."""
    auth = f"Authorization: Bearer {stack.token}"
    (tmp_path / "report.html").write_text("<p>v1</p>")
    assert curl("-T", "report.html", f"{stack.api}/{project}/report", "-H", auth,
                cwd=tmp_path).status == 201
    big = b"<p>" + b"x" * APP_LIMIT + b"</p>"
    (tmp_path / "big.html").write_bytes(big)
    answers = {
        "PUT with Content-Length": curl("-T", "big.html", f"{stack.api}/{project}/report",
                                        "-H", auth, cwd=tmp_path),
        "PUT chunked": curl("-T", "-", f"{stack.api}/{project}/report", "-H", auth,
                            stdin=big),
        "POST multipart": curl("-X", "POST", f"{stack.api}/{project}/report", "-H", auth,
                               "-F", "item=@big.html", cwd=tmp_path),
    }
    for how, r in answers.items():
        assert r.status == 413, (how, r.status, r.body[:300])
        assert r.headers["content-type"] == PROBLEM, how
        problem = r.json()
        assert problem["status"] == 413 and problem["title"], how
        assert "limit" in problem["detail"] and problem["request_id"], how
        assert hardened(r.headers), how
    assert requests.get(f"{stack.url}/{project}/report/").text == "<p>v1</p>"
    assert curl("-T", "report.html", f"{stack.api}/{project}/report", "-H", auth,
                cwd=tmp_path).status == 201


def test_metrics_count_the_uploads_of_every_worker(stack: Stack, project: str,
                                                   tmp_path: Path) -> None:
    def scrape() -> dict[str, float]:
        r = requests.get(stack.api + "/_metrics")
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return {m[0]: float(m[1]) for m in re.findall(r"^(\S+) (\S+)$", r.text, re.M)}

    before = scrape()
    auth = f"Authorization: Bearer {stack.token}"
    bodies = [f"<p>{i}</p>".encode() * (i + 1) for i in range(12)]

    def put(body: bytes) -> int:
        path = tmp_path / hashlib.sha256(body).hexdigest()
        path.write_bytes(body)
        return curl("-T", str(path), f"{stack.api}/{project}/report", "-H", auth).status

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(put, bodies)) == [201] * len(bodies)
    assert put(b"\0 not html") == 415

    # Whichever worker answers a scrape, it reports what all of them counted.
    scrapes = [scrape() for _ in range(3 * WORKERS)]
    for after in scrapes:
        def delta(name: str, after: dict[str, float] = after) -> float:
            return after[name] - before.get(name, 0)
        assert delta('artstore_uploads_total{result="published"}') == len(bodies)
        assert delta('artstore_uploads_total{result="refused"}') == 1
        assert delta('artstore_upload_failures_total{status="415"}') == 1
        assert delta("artstore_upload_published_bytes_total") == sum(map(len, bodies))
        assert delta("artstore_upload_received_bytes_total") == sum(map(len, bodies)) + 10
        assert delta("artstore_upload_duration_seconds_count") == len(bodies) + 1
        assert delta('artstore_upload_duration_seconds_bucket{le="+Inf"}') == len(bodies) + 1
        assert after['artstore_disk_free_bytes{path="base_path"}'] > 0
    time.sleep(0.5)  # the access log line follows the answer
    pids = {e["pid"] for e in stack.service_access_log()
            if e["method"] == "PUT" and e["path"] == f"/artstore/{project}/report"}
    assert len(pids) > 1, "the uploads all went to one worker; the test proves nothing"


def test_the_service_logs_the_client_and_request_id_nginx_passes(stack: Stack, project: str
                                                                ) -> None:
    # The client's own X-Forwarded-For is not trusted: nginx appends the real peer, and
    # trusted_proxies 1 takes only that.
    r = requests.get(f"{stack.api}/{project}", headers={"X-Request-Id": "e2e-trace-1",
                                                        "X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "e2e-trace-1"
    r = requests.get(f"{stack.api}/{project}/nothing-here")
    assert r.status_code == 404 and r.headers["Content-Type"] == PROBLEM
    generated = r.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)  # nginx's $request_id
    log = logged(stack.service_access_log, {"e2e-trace-1", generated})
    assert log["e2e-trace-1"]["remote"] == "127.0.0.1"
    assert log["e2e-trace-1"]["path"] == f"/artstore/{project}"
    assert log[generated]["status"] == 404
    assert logged(stack.nginx.access_log, {generated})[generated]["status"] == 404


# Every header some part of the service could take a host, port, scheme or prefix from
# (werkzeug's ProxyFix, gunicorn's secure scheme and forwarder headers), as a client
# would make them up.
FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "6666",
          "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/evil",
          "X-Forwarded-Ssl": "on", "X-Forwarded-Protocol": "ssl",
          "Forwarded": "for=203.0.113.9;host=evil.example;proto=https",
          "X-Forwarded-Server": "evil.example", "SCRIPT_NAME": "/evil"}


def test_urls_the_service_returns_never_take_a_host_or_port_from_the_client(
        stack: Stack, project: str) -> None:
    # A Host that nginx matches to artstore's server_name, with a port of the client's
    # choosing, and every forwarded header made up.
    forged = {**FORGED, "Host": "127.0.0.1:6666"}
    auth = {**stack.auth, **forged}
    r = requests.post(f"{stack.api}/{project}x", json={"items": {}}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{stack.api}/{project}x"
    r = requests.put(f"{stack.api}/{project}/report", data=b"<p>r</p>", headers=auth)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{stack.api}/{project}/report"
    assert r.json()["url"] == f"{stack.url}/{project}/report/"
    r = requests.put(f"{stack.api}/{project}/builds", params={"filename": "a.bin"}, data=b"a",
                     headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["url"] == f"{stack.url}/{project}/builds/a.bin"
    r = requests.get(f"{stack.api}/{project}/builds/latest", headers=forged,
                     allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == f"{stack.url}/{project}/builds/a.bin"
    assert requests.get(f"{stack.api}/{project}/report", headers=forged
                        ).json()["url"] == f"{stack.url}/{project}/report/"
    # A host name that is not artstore's never reaches the service at all.
    r = requests.post(f"{stack.api}/{project}y", json={"items": {}},
                      headers={**auth, "Host": "evil.example"})
    assert r.status_code in (404, 405) and "X-Request-Id" not in r.headers
    assert requests.get(f"{stack.api}/{project}y").status_code == 404


def logged(read: Callable[[], list[dict[str, Any]]], ids: set[str]
           ) -> dict[str, dict[str, Any]]:
    """Access log entries by request id; a line is written just after its answer."""
    deadline = time.monotonic() + 10
    while True:
        entries = {e["request_id"]: e for e in read()}
        if ids <= set(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


@pytest.mark.parametrize("stack", ["container"], indirect=True)
def test_the_image_runs_unprivileged_with_a_health_check(stack: Stack, project: str,
                                                         tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("<p>in the image</p>")
    assert curl("-T", "report.html", f"{stack.api}/{project}/report", "-H",
                f"Authorization: Bearer {stack.token}", cwd=tmp_path).status == 201
    config = image_config(stack.image)
    assert config["User"] not in ("", "root", "0")
    assert set(config["Volumes"]) >= {"/etc/artstore", "/srv/artstore"}
    probe = config["Healthcheck"]["Test"]
    assert probe[0] == "CMD" and "/_health" in " ".join(probe)
    # The health check passes inside the running container, as the engine would run it.
    checked = buildah("run", "--isolation", "chroot", "--network", "host", "--env",
                      f"GUNICORN_BIND=127.0.0.1:{stack.service_port}", stack.container,
                      "--", *probe[1:])
    assert checked.returncode == 0, checked.stderr
    # The state lives in the state volume, owned by the image's user.
    # (The project's creation is in projects.log until it is folded into projects.json.)
    assert (stack.state / "projects.log").is_file()
    assert (stack.state / "metrics" / "counters.json").is_file()
    assert (stack.state / "projects.log").stat().st_uid != 0
    assert (stack.public / project / "report" / "index.html").stat().st_uid != 0


def test_the_first_start_logs_where_the_admin_token_is_as_a_json_line(tmp_path: Path) -> None:
    proc, _, log = start_gunicorn(tmp_path, admin_token=None)
    stop(proc)
    token_file = tmp_path / "state" / "admin.token"
    lines = log.read_text().splitlines()
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == [], not_json
    entries = [json.loads(line) for line in lines]
    told = [e for e in entries if str(token_file) in e.get("message", "")]
    assert len(told) == 1, entries  # one worker made it; the others read it
    assert told[0]["logger"] == "artstore" and told[0]["level"] == "warning"
    assert token_file.read_text().startswith("ast_admin_")


@needs_nginx
def test_nginx_answers_502_as_problem_json_when_the_service_is_down(tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    nginx = start_nginx(tmp_path / "nginx", free_port(), tmp_path / "public")
    try:
        r = requests.get(nginx.url + "/artstore/")
        assert r.status_code == 502
        assert r.headers["Content-Type"] == PROBLEM
        assert r.json()["title"] == "Bad Gateway" and r.json()["request_id"]
        assert hardened(r.headers)
        # Published files do not depend on the service.
        (tmp_path / "public" / "index.html").write_text("<h1>files</h1>")
        assert requests.get(nginx.url + "/").text == "<h1>files</h1>"
    finally:
        stop(nginx.proc)
