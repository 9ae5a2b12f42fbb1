"""deploy/two-hosts.conf: the published files on one host name, the API on another, so a
published page's scripts run in an origin that is not the API's. Through Debian's nginx,
set up as the README says, and headless Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from ..archives import site_tgz
from ..conftest import AUTH, free_port
from ..test_browser import CHROMEDRIVER, CHROMIUM, chromium
from .conftest import DEPLOY, NGINX, Nginx, start_gunicorn, start_nginx, stop

FILES, API = "files.test", "api.test"  # both resolve to loopback, for Chromium by a rule
# A published page that reads the API URL it is given, as any site's script could.
READER = b"""<!doctype html><title>waiting</title><script>
fetch(new URLSearchParams(location.search).get("api"))
  .then(r => r.json())
  .then(j => { document.title = "read " + j.name; },
        e => { document.title = "refused " + e.name; });
</script>"""


@dataclass
class Hosts:
    port: int  # nginx with two-hosts.conf: both names on this port
    two: Nginx
    one: Nginx  # the one-host default.conf, in front of the same service

    def get(self, host: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(kwargs.pop("method", "GET"), f"http://127.0.0.1:{self.port}{path}",
                                headers={"Host": f"{host}:{self.port}",
                                         **kwargs.pop("headers", {})},
                                allow_redirects=False, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx package)")
    folder = tmp_path_factory.mktemp("two-hosts")
    port = free_port()
    # As two-hosts.conf says: public_url names the files host.
    proc, upstream, _log = start_gunicorn(folder, public_url=f"http://{FILES}:{port}")
    root = folder / "srv" / "public"
    started: list[Nginx] = []
    try:
        started.append(start_nginx(
            folder / "nginx", upstream, root, port=port, site=DEPLOY / "two-hosts.conf",
            names={"files.example.com": FILES, "ci.example.com": API},
            edits={"//files.example.com$request_uri": f"//{FILES}:{port}$request_uri"}))
        started.append(start_nginx(folder / "nginx-one", upstream, root))
        hosts = Hosts(port, *started)
        r = hosts.get(API, "/artstore/demo", method="POST", headers=AUTH,
                      json={"items": {"site": {"type": "tgz"}}})
        assert r.status_code == 201, r.text
        r = hosts.get(API, "/artstore/demo/site", method="PUT", headers=AUTH,
                      data=site_tgz({"index.html": READER}))
        assert r.status_code == 201, r.text
        yield hosts
    finally:
        for nginx in started:
            stop(nginx.proc)
        stop(proc, timeout=40)


def test_the_files_host_serves_only_files_and_the_api_host_only_the_api(hosts: Hosts) -> None:
    r = hosts.get(API, "/artstore/demo/site")
    assert r.status_code == 200
    assert r.json()["url"] == f"http://{FILES}:{hosts.port}/demo/site/"
    page = hosts.get(FILES, "/demo/site/")
    assert page.status_code == 200 and page.content == READER
    # The API is not on the files host: /artstore/ there is a path like any other.
    assert hosts.get(FILES, "/artstore/_health").status_code == 404
    assert hosts.get(FILES, "/demo/.artstore/").status_code == 404
    # A published page asked for on the API host is sent to the files host.
    r = hosts.get(API, "/demo/site/")
    assert r.status_code == 301
    assert r.headers["Location"] == f"http://{FILES}:{hosts.port}/demo/site/"
    assert hosts.get(API, "/artstore/_health").json() == {"status": "ok"}


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs the Debian packages chromium and chromium-driver; .ci/run installs them")


@needs_chromium
def test_a_published_pages_script_reads_the_api_on_one_host_but_is_refused_across_two(
        hosts: Hosts, tmp_path: Path) -> None:
    rules = f"MAP {FILES} 127.0.0.1, MAP {API} 127.0.0.1"
    with chromium(tmp_path, f"--host-resolver-rules={rules}") as browser:
        def title_after(url: str) -> str:
            browser.get(url)
            deadline = time.monotonic() + 15
            while browser.title == "waiting":
                assert time.monotonic() < deadline, f"the page's fetch never ended: {url}"
                time.sleep(0.05)
            return str(browser.title)

        # One host (default.conf): the page and the API share an origin; the page reads it.
        assert title_after(f"{hosts.one.url}/demo/site/?api=/artstore/demo") == "read demo"
        # Two hosts: the API answered the page's request, and the browser kept the answer
        # from the page (same-origin policy; the API sends no CORS headers).
        api = f"http://{API}:{hosts.port}/artstore/demo"
        url = f"http://{FILES}:{hosts.port}/demo/site/?api={quote(api, safe='')}"
        assert title_after(url) == "refused TypeError"
        answered = [e for e in hosts.two.access_log() if e["uri"] == "/artstore/demo"
                    and e["method"] == "GET"]
        assert answered and answered[-1]["status"] == 200


def server_blocks(text: str) -> list[dict[str, str]]:
    """Each server block's locations, by what follows the word ``location``."""
    blocks = []
    for server in text.split("\nserver {")[1:]:
        found = {}
        for m in re.finditer(r"^    location ([^{]+)\{", server, re.M):
            depth = 0
            for end in range(m.end() - 1, len(server)):
                depth += {"{": 1, "}": -1}.get(server[end], 0)
                if depth == 0:
                    break
            found[m.group(1).strip()] = server[m.start():end + 1]
        blocks.append(found)
    return blocks


def test_two_hosts_conf_keeps_default_confs_locations_word_for_word() -> None:
    one = (DEPLOY / "default.conf").read_text()
    two = (DEPLOY / "two-hosts.conf").read_text()
    [both] = server_blocks(one)
    files, api = server_blocks(two)
    assert set(files) == {"/", "~ /\\."}
    assert set(api) == {"/", "^~ /artstore/", "@artstore_413", "@artstore_502",
                        "@artstore_504"}
    for name, block in files.items():
        assert block == both[name], name
    for name, block in api.items():
        if name != "/":
            assert block == both[name], name

    def preamble(text: str) -> str:  # the map and the log format, at the http level
        return text[text.index("map $http_x_request_id"):text.index("\"}';") + 4]
    assert preamble(two) == preamble(one)
