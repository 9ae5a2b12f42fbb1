"""The project endpoints, as the spec's table says, through the Flask test client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import ADMIN, AUTH, stored_projects

ITEMS = {"docs": {"type": "tgz", "keep": 2}, "builds": {"type": "collection", "depth": 3},
         "report": {"type": "html"}}


def test_list_projects_is_empty_on_a_fresh_store(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.get_json() == {"projects": []}


def test_create_project_answers_201_with_its_configuration(client: Any, settings: Any) -> None:
    r = client.post("/demo", json={"description": "Demo", "items": ITEMS}, headers=AUTH)
    assert r.status_code == 201
    body = r.get_json()
    assert body["name"] == "demo" and body["description"] == "Demo"
    assert body["items"]["docs"] == {"type": "tgz", "keep": 2, "live": None,
                                     "last_publish": None, "stored_bytes": 0}
    assert body["items"]["builds"]["depth"] == 3
    assert body["items"]["report"]["keep"] == settings.default_keep
    assert r.headers["Location"].endswith("/demo")
    stored = stored_projects(settings.state_dir)
    assert stored["demo"]["items"]["docs"] == {"type": "tgz", "keep": 2}
    listed = client.get("/").get_json()["projects"]
    assert [(p["name"], p["items"]) for p in listed] == [("demo", ["builds", "docs", "report"])]


def test_create_existing_project_answers_409(client: Any, make_project: Any) -> None:
    make_project("demo")
    r = client.post("/demo", json={"items": {}}, headers=AUTH)
    assert r.status_code == 409
    assert r.mimetype == "application/problem+json"


@pytest.mark.parametrize("body", [
    [], {"items": []}, {"items": {"x": {"type": "rar"}}}, {"items": {"x": {}}},
    {"items": {"x": {"type": "tgz", "depth": 3}}}, {"items": {"x": {"type": "tgz", "keep": 0}}},
    {"items": {"x": {"type": "collection", "depth": "3"}}}, {"colour": "red"},
    {"items": {"../x": {"type": "tgz"}}}, {"items": {"index.html": {"type": "html"}}},
    {"description": 5},
])
def test_invalid_project_configuration_answers_400(client: Any, settings: Any,
                                                  body: Any) -> None:
    r = client.post("/demo", json=body, headers=AUTH)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["detail"]
    assert client.get("/demo").status_code == 404
    assert stored_projects(settings.state_dir) == {}


def test_project_body_that_is_not_json_is_refused(client: Any) -> None:
    assert client.post("/demo", data="{", content_type="application/json",
                       headers=AUTH).status_code == 400
    assert client.post("/demo", data="items=1", headers=AUTH).status_code == 415


HOSTILE = ["..", "%2e%2e", "a%2Fb", ".hidden", "x" * 65, "caf%C3%A9", "-dash", "_tokens",
           "index.html", "a%00b", "a%20b"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_project_names_are_refused_with_400_and_nothing_created(
        client: Any, settings: Any, name: str) -> None:
    before = sorted(p.name for p in settings.base_path.iterdir())
    r = client.post(f"/{name}", json={"items": {}}, headers=AUTH)
    assert r.status_code in (400, 404, 405), r.data
    if r.status_code != 400:
        # The URL never reached a project route (e.g. '..' was resolved by the client,
        # or a '/' made it another route): still nothing may have been created.
        assert r.mimetype == "application/problem+json"
    assert sorted(p.name for p in settings.base_path.iterdir()) == before
    assert stored_projects(settings.state_dir) == {}


def test_empty_and_slash_names_never_create_anything(client: Any, settings: Any) -> None:
    assert client.post("/", json={"items": {}}, headers=AUTH).status_code == 405
    assert client.post("/a/b/c/d", json={}, headers=AUTH).status_code == 404
    assert stored_projects(settings.state_dir) == {}


def test_get_unknown_project_answers_404_problem(client: Any) -> None:
    r = client.get("/nothing")
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
    assert "nothing" in r.get_json()["detail"]


def test_put_adds_items_and_lowers_keep_freely(client: Any, make_project: Any) -> None:
    make_project("demo", ITEMS)
    new = {"items": {**ITEMS, "docs": {"type": "tgz", "keep": 1}, "more": {"type": "zip"}}}
    r = client.put("/demo", json=new, headers=AUTH)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["items"]["docs"]["keep"] == 1
    assert "more" in r.get_json()["items"]


def test_put_that_removes_or_retypes_items_answers_409_naming_them(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project("demo", ITEMS)
    new = {"items": {"docs": {"type": "zip"}, "builds": ITEMS["builds"]}}
    r = client.put("/demo", json=new, headers=AUTH)
    assert r.status_code == 409
    problem = r.get_json()
    assert problem["items"] == ["docs", "report"]
    assert "'docs'" in problem["detail"] and "'report'" in problem["detail"]
    assert client.get("/demo").get_json()["items"]["docs"]["type"] == "tgz"
    r = client.put("/demo?prune=true", json=new, headers=AUTH)
    assert r.status_code == 200
    assert sorted(r.get_json()["items"]) == ["builds", "docs"]
    assert r.get_json()["items"]["docs"]["type"] == "zip"


@pytest.mark.parametrize("value", ["1", "yes", "0", "no", ""])
def test_prune_takes_true_or_false_only(client: Any, make_project: Any, value: str) -> None:
    """The OpenAPI document says boolean: anything else is refused, not guessed at."""
    make_project("demo", ITEMS)
    r = client.put(f"/demo?prune={value}", json={"items": {}}, headers=AUTH)
    assert r.status_code == 400 and "prune" in r.get_json()["detail"]
    assert sorted(client.get("/demo").get_json()["items"]) == sorted(ITEMS)
    assert client.put("/demo?prune=True", json={"items": {}}, headers=AUTH).status_code == 200


def test_a_whole_number_written_as_a_json_float_is_that_integer(client: Any) -> None:
    """JSON has one kind of number and JSON Schema calls 5.0 an integer; so does artstore."""
    r = client.post("/demo", json={"items": {"docs": {"type": "tgz", "keep": 5.0}}},
                    headers=AUTH)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["items"]["docs"]["keep"] == 5
    body = {"items": {"docs": {"type": "tgz", "keep": 5.5}}}
    assert client.put("/demo", json=body, headers=AUTH).status_code == 400


def test_put_unknown_project_answers_404(client: Any) -> None:
    assert client.put("/ghost", json={"items": {}}, headers=AUTH).status_code == 404


def test_delete_project_removes_files_state_and_tokens(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project("demo", ITEMS)
    token = client.post("/demo/_tokens", headers=AUTH).get_json()["token"]
    r = client.put("/demo/report?filename=r.html", data=b"<p>hi</p>",
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201
    assert (settings.base_path / "demo" / "report" / "r.html").exists()
    assert client.delete("/demo", headers=AUTH).status_code == 204
    assert client.get("/demo").status_code == 404
    assert not (settings.base_path / "demo").exists()
    assert not (settings.state_dir / "items" / "demo").exists()
    assert sorted(p.name for p in settings.base_path.iterdir()) == [".artstore", "index.html"]
    blobs = settings.base_path / ".artstore" / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == [], "its blobs were kept"
    # The project's token died with it, even if the project comes back.
    make_project("demo", ITEMS)
    r = client.put("/demo/report", data=b"<p>hi</p>",
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert client.delete("/demo", headers=AUTH).status_code == 204
    assert client.delete("/demo", headers=AUTH).status_code == 404


WRITES = [
    ("post", "/demo2", {"json": {"items": {}}}),
    ("put", "/demo", {"json": {"items": {}}}),
    ("delete", "/demo", {}),
    ("post", "/demo/report", {"data": {"item": (b"x", "a.html")}}),
    ("put", "/demo/report", {"data": b"<p></p>"}),
    ("post", "/demo/docs/rollback", {}),
    ("delete", "/demo/builds/a.bin", {}),
    ("post", "/demo/_tokens", {}),
    ("get", "/demo/_tokens", {}),
    ("delete", "/demo/_tokens/abc", {}),
]


@pytest.mark.parametrize("method,path,kwargs", WRITES)
def test_every_write_without_a_token_answers_401(client: Any, make_project: Any,
                                                 method: str, path: str, kwargs: Any) -> None:
    make_project("demo", ITEMS)
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}, **kwargs)
    assert r.status_code == 401
    r = getattr(client, method)(path, headers={"Authorization": f"Basic {ADMIN}"}, **kwargs)
    assert r.status_code == 401
    assert client.get("/demo").get_json()["items"]["report"]["live"] is None


@pytest.mark.parametrize("method,path,kwargs", WRITES)
def test_every_write_with_another_projects_token_answers_403(
        client: Any, make_project: Any, method: str, path: str, kwargs: Any) -> None:
    make_project("demo", ITEMS)
    make_project("other", ITEMS)
    token = client.post("/other/_tokens", headers=AUTH).get_json()["token"]
    r = getattr(client, method)(path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
    assert r.status_code == 403, r.get_json()
    assert client.get("/demo").status_code == 200
    assert client.get("/demo").get_json()["items"]["report"]["live"] is None


def test_project_token_may_publish_to_its_own_project_only(
        client: Any, make_project: Any) -> None:
    make_project("demo", ITEMS)
    token = client.post("/demo/_tokens", headers=AUTH).get_json()["token"]
    own = {"Authorization": f"Bearer {token}"}
    assert client.put("/demo/report", data=b"<p>1</p>", headers=own).status_code == 201
    # ...but may not manage the project itself.
    assert client.put("/demo", json={"items": {}}, headers=own).status_code == 403
    assert client.delete("/demo", headers=own).status_code == 403
    assert client.post("/demo/_tokens", headers=own).status_code == 403


def test_tokens_are_shown_once_listed_without_secret_and_revocable(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project("demo", ITEMS)
    r = client.post("/demo/_tokens", headers=AUTH)
    assert r.status_code == 201
    new = r.get_json()
    assert set(new) >= {"id", "token"}
    stored = (settings.state_dir / "tokens" / "demo.json").read_text()
    assert new["token"] not in stored
    assert (settings.state_dir / "tokens" / "demo.json").stat().st_mode & 0o777 == 0o600
    listed = client.get("/demo/_tokens", headers=AUTH).get_json()["tokens"]
    assert [t["id"] for t in listed] == [new["id"]]
    assert new["token"] not in json.dumps(listed)
    assert client.delete(f"/demo/_tokens/{new['id']}", headers=AUTH).status_code == 204
    assert client.delete(f"/demo/_tokens/{new['id']}", headers=AUTH).status_code == 404
    r = client.put("/demo/report", data=b"<p>1</p>",
                   headers={"Authorization": f"Bearer {new['token']}"})
    assert r.status_code == 401


def test_tokens_of_a_missing_project_answer_404(client: Any) -> None:
    assert client.post("/ghost/_tokens", headers=AUTH).status_code == 404


def test_reads_can_be_made_to_need_a_token(tmp_path: Path) -> None:
    from artstore import settings as settings_mod
    from artstore.api import create_app

    from .conftest import write_config

    config = write_config(tmp_path / "s", read_requires_token=True)
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    c = app.test_client()
    assert c.get("/").status_code == 401
    assert c.get("/", headers=AUTH).status_code == 200
    assert c.get("/_health").status_code == 200


def test_project_listing_follows_changes_made_by_another_worker(
        client: Any, make_project: Any, settings: Any) -> None:
    from artstore.store import Store

    make_project("demo", ITEMS)
    assert client.get("/").get_json()["projects"][0]["last_publish"] is None
    other = Store(settings)  # another worker process, as far as the files can tell
    upload = other.receive()
    upload.write(b"<p>hi</p>")
    other.publish("demo", "report", upload, filename=None, metadata={}, sha256=None)
    upload.discard()
    assert client.get("/").get_json()["projects"][0]["last_publish"] is not None
    other.create_project("second", {"items": {}})
    assert [p["name"] for p in client.get("/").get_json()["projects"]] == ["demo", "second"]


def _listed(store: Any) -> dict[str, Any]:
    """The store's listing (in blocks), by project name."""
    return {p.name: p for block in store.list_projects() for p in block.values}


def _publish_page(store: Any, project: str, item: str) -> None:
    upload = store.receive()
    upload.write(b"<p>hi</p>")
    store.publish(project, item, upload, filename=None, metadata={}, sha256=None)
    upload.discard()


def test_the_listing_looks_again_only_at_the_projects_that_changed(settings: Any) -> None:
    """A publish in another worker changes that project's summary; every other project's
    is the one already made (with 10,000 projects, GET / after a change stays cheap)."""
    from artstore.store import Store

    worker, other = Store(settings), Store(settings)
    for name in ("a", "b", "c"):
        worker.create_project(name, {"items": {"report": {"type": "html"}}})
    before = _listed(worker)
    _publish_page(other, "b", "report")
    after = _listed(worker)
    assert after["b"].last_publish is not None and before["b"].last_publish is None
    assert after["a"] is before["a"] and after["c"] is before["c"]
    assert worker.list_projects() is worker.list_projects()  # nothing changed since


def test_the_listing_stays_in_name_order_through_adds_and_removes_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 2 to 4 projects here: adds that split blocks, removes that empty them, at
    the start, the middle and the end; only the blocks a change touched are new."""
    from artstore import store as store_mod
    from artstore.catalog import FileCatalog, Project

    monkeypatch.setattr(store_mod, "BLOCK", 2)
    worker, other = FileCatalog(tmp_path), FileCatalog(tmp_path)
    listing = store_mod.PerProject(worker, lambda name, project: name)

    def put(*names: str) -> None:
        def add(projects: Any) -> None:
            for n in names:
                projects[n] = Project(n, "", "", {})
        other.change_projects(add)

    def drop(*names: str) -> None:
        other.change_projects(lambda projects: [projects.pop(n) for n in names])

    put("b", "d", "f", "h", "j", "l")
    expected = ["b", "d", "f", "h", "j", "l"]
    assert [n for block in listing.current() for n in block.values] == expected
    for change, names in [(put, "a"), (put, "e"), (put, "e1"), (put, "e2"), (put, "z"),
                          (drop, "a"), (drop, "b"), (drop, "l"), (drop, "e"), (drop, "z"),
                          (put, "m"), (drop, "missing")]:
        before = listing.current()
        change(names)
        expected = sorted({*expected, names} if change is put else set(expected) - {names})
        after = listing.current()
        assert [n for block in after for n in block.values] == expected, (change, names)
        assert all(len(block.names) <= 4 for block in after)
        assert sum(block not in before for block in after) <= 2, "untouched blocks made again"


def test_get_root_lists_hundreds_of_projects_in_order_before_and_after_changes(
        client: Any, settings: Any) -> None:
    """Several blocks of the listing, each sent as its own part after a change."""
    from artstore.catalog import Project
    from artstore.store import Store

    names = [f"p{i:03d}" for i in range(0, 600, 2)]

    def add(projects: Any) -> None:
        for name in names:
            projects[name] = Project(name, "", "", {})

    Store(settings).catalog.change_projects(add)
    for change in (None, "p001", "p599", "p300"):
        if change == "p300":
            assert client.delete(f"/{change}", headers=AUTH).status_code == 204
            names.remove(change)
        elif change:
            assert client.post(f"/{change}", json={"items": {}}, headers=AUTH).status_code == 201
            names = sorted([*names, change])
        for _ in range(2):  # right after the change, then cached
            r = client.get("/")
            assert [p["name"] for p in json.loads(r.data)["projects"]] == names
            assert int(r.headers["Content-Length"]) == len(r.data)


def test_the_listing_follows_publishes_across_a_fresh_start_of_the_changes_log(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file of changes begins anew when it grows (here at once): a worker that
    followed the old one still sees every publish."""
    from artstore import catalog
    from artstore.store import Store

    monkeypatch.setattr(catalog, "CHANGES_LIMIT", 1)
    worker, other = Store(settings), Store(settings)
    names = [f"p{i}" for i in range(4)]
    for name in names:
        worker.create_project(name, {"items": {"report": {"type": "html"}}})
    assert all(p.last_publish is None for p in _listed(worker).values())
    for name in names:
        _publish_page(other, name, "report")
        assert _listed(worker)[name].last_publish is not None, f"{name}'s publish unseen"
    assert (settings.state_dir / "changes.log").stat().st_size <= len("p0\n")


def test_a_project_has_a_creation_id_that_only_deleting_and_creating_it_again_changes(
        client: Any, make_project: Any, settings: Any) -> None:
    created = make_project("demo", ITEMS)["created"]
    assert created and client.get("/demo").get_json()["created"] == created
    r = client.put("/demo", json={"description": "new", "items": ITEMS}, headers=AUTH)
    assert r.status_code == 200 and r.get_json()["created"] == created
    stored = stored_projects(settings.state_dir)
    assert stored["demo"]["created"] == created
    assert client.put("/demo", json={"created": "mine", "items": ITEMS},
                      headers=AUTH).status_code == 400
    assert client.post("/other", json={"created": "mine", "items": {}},
                       headers=AUTH).status_code == 400
    assert client.delete("/demo", headers=AUTH).status_code == 204
    assert make_project("demo", ITEMS)["created"] != created


def test_a_project_stored_before_creation_ids_existed_still_loads(settings: Any) -> None:
    from artstore.catalog import Project, Registry

    (settings.state_dir / "projects.json").write_text(json.dumps({"old": {"items": {}}}))
    assert Registry(settings.state_dir).get("old") == Project("old", "", "", {})


def test_behind_a_trusted_proxy_urls_follow_its_forwarded_host_but_not_a_forwarded_port(
        tmp_path: Path) -> None:
    """The sample nginx sets X-Forwarded-Host (with its port), -Proto, -For and -Prefix
    and clears X-Forwarded-Port; a proxy that passed the client's on must not change URLs."""
    from artstore import settings as settings_mod
    from artstore.api import create_app

    from .conftest import write_config

    config = write_config(tmp_path / "s", trusted_proxies=1)
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    proxy = {"X-Forwarded-Host": "ci.example.com:8443", "X-Forwarded-Proto": "https",
             "X-Forwarded-Prefix": "/artstore", "X-Forwarded-Port": "6666"}
    r = app.test_client().post("/demo", json={"items": ITEMS}, headers={**AUTH, **proxy})
    assert r.status_code == 201
    assert r.headers["Location"] == "https://ci.example.com:8443/artstore/demo"


def test_tokens_kept_in_one_file_by_an_older_artstore_still_work(tmp_path: Path) -> None:
    """artstore before the catalog kept every project's tokens in tokens.json; a start
    moves them into a file per project, and the tokens go on working."""
    from artstore import settings as settings_mod
    from artstore.api import create_app
    from artstore.auth import _digest

    from .conftest import write_config

    config = write_config(tmp_path / "s")
    token = "ast_my_app_" + "A" * 43
    (tmp_path / "s" / "tokens.json").write_text(json.dumps(
        {"my_app": [{"id": "abc", "hash": _digest(token), "created": "2026-11-25T00:00:00Z"}]}))
    (tmp_path / "s" / "projects.json").write_text(json.dumps(
        {"my_app": {"description": "", "items": {"r": {"type": "html"}}}}))
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    client = app.test_client()
    r = client.put("/my_app/r", data=b"<p>x</p>", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.get_json()
    assert not (tmp_path / "s" / "tokens.json").exists()
    assert [t["id"] for t in client.get("/my_app/_tokens", headers=AUTH).get_json()["tokens"]] \
        == ["abc"]
    wrong = "ast_my_app_" + "B" * 43
    assert client.put("/my_app/r", data=b"<p>x</p>",
                      headers={"Authorization": f"Bearer {wrong}"}).status_code == 401


def test_a_list_of_projects_too_big_to_rewrite_with_each_change_follows_soon_after(
        tmp_path: Path) -> None:
    """With thousands of projects the root page is rewritten in the background, at most
    once a second, instead of with each change (its cost grows with the projects)."""
    import threading
    import time

    from artstore import settings as settings_mod
    from artstore.api import create_app

    from .conftest import write_config

    settings = settings_mod.load(write_config(tmp_path / "s"), environ={})
    app = create_app(settings, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN}, background=True)
    store = app.extensions["artstore"].store
    written_by = []
    real_write = store.write_root_page

    def write() -> None:
        written_by.append(threading.current_thread().name)
        real_write()
        store._root_page_cost = 1.0  # as if it had taken a second

    store.write_root_page = write  # type: ignore[method-assign]
    store._root_page_cost = 1.0
    client = app.test_client()
    assert client.post("/late", json={"items": {}}, headers=AUTH).status_code == 201
    page = settings.base_path / "index.html"
    deadline = time.monotonic() + 10
    while 'href="late/"' not in page.read_text():
        assert time.monotonic() < deadline, "the list of projects never followed"
        time.sleep(0.05)
    assert written_by == ["artstore-pages"], "rewritten with the change, not after it"
