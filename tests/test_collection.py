"""Collections: the newest ``depth`` files in upload order, with generated indexes."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest

from .conftest import AUTH


@pytest.fixture
def builds(make_project: Any) -> None:
    make_project("demo", {"builds": {"type": "collection", "depth": 5},
                          "docs": {"type": "tgz"}})


def put(client: Any, name: str, data: bytes = b"data", **query: str) -> Any:
    return client.put("/demo/builds", query_string={"filename": name, **query}, data=data,
                      headers=AUTH)


def on_disk(settings: Any) -> list[str]:
    return sorted(p.name for p in (settings.base_path / "demo" / "builds").iterdir())


def index_json(settings: Any) -> dict[str, Any]:
    return json.loads((settings.base_path / "demo/builds/index.json").read_text())


def test_retention_keeps_the_newest_depth_files_in_upload_order(
        client: Any, settings: Any, builds: None) -> None:
    # Names sort differently from upload order, so order by name would be caught.
    names = [f"{(i * 37) % 100:02d}-build.bin" for i in range(100)]
    for i, name in enumerate(names):
        r = put(client, name, b"%d" % i)
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["files"] == min(i + 1, 5)
    newest_first = names[::-1][:5]
    info = client.get("/demo/builds").get_json()
    assert [f["name"] for f in info["files"]] == newest_first
    assert on_disk(settings) == sorted(newest_first + ["index.html", "index.json"])
    assert [f["name"] for f in index_json(settings)["files"]] == newest_first
    generations = [p for p in (settings.base_path / "demo/.artstore/builds").iterdir()
                   if not p.name.startswith(".tmp-")]  # old ones: renamed away at once
    assert len(generations) == 1


def test_upload_answers_with_the_file_url_and_metadata(client: Any, builds: None) -> None:
    r = client.post("/demo/builds", data={"item": (io.BytesIO(b"bin"), "tool 1.0.bin"),
                                          "commit": "abc"},
                    headers=AUTH, content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["url"] == "http://localhost/demo/builds/tool%201.0.bin"
    assert body["release"] == "tool 1.0.bin" and body["metadata"] == {"commit": "abc"}
    info = client.get("/demo/builds").get_json()
    assert info["type"] == "collection" and info["depth"] == 5
    assert info["files"][0]["metadata"] == {"commit": "abc"}
    assert set(info["files"][0]) >= {"name", "size", "sha256", "created", "metadata", "url"}


def test_an_existing_name_answers_409_and_changes_nothing(client: Any, settings: Any,
                                                          builds: None) -> None:
    put(client, "a.bin", b"first")
    r = put(client, "a.bin", b"second")
    assert r.status_code == 409
    assert (settings.base_path / "demo/builds/a.bin").read_bytes() == b"first"
    assert list(settings.temp_path.iterdir()) == []


def test_deleting_a_file_lets_it_be_uploaded_again(client: Any, settings: Any,
                                                   builds: None) -> None:
    put(client, "a.bin", b"first")
    put(client, "b.bin")
    assert client.delete("/demo/builds/a.bin", headers=AUTH).status_code == 204
    assert client.delete("/demo/builds/a.bin", headers=AUTH).status_code == 404
    assert on_disk(settings) == ["b.bin", "index.html", "index.json"]
    assert put(client, "a.bin", b"second").status_code == 201
    assert (settings.base_path / "demo/builds/a.bin").read_bytes() == b"second"
    assert client.delete("/demo/docs/a.bin", headers=AUTH).status_code == 409


@pytest.mark.parametrize("name", [".hidden", "a/b", "a\\b", "..", "index.html", "index.json",
                                  "bad\nname", "rtl\u202eexe.txt", "x" * 256, ""])
def test_hostile_filenames_are_refused(client: Any, settings: Any, builds: None,
                                       name: str) -> None:
    r = put(client, name)
    assert r.status_code == 400, (name, r.get_json())
    assert not (settings.base_path / "demo" / "builds").exists()
    assert list(settings.temp_path.iterdir()) == []


def test_a_script_in_a_filename_is_listed_as_text(client: Any, settings: Any,
                                                  builds: None) -> None:
    name = "<img src=x onerror=alert(1)>.txt"
    assert put(client, name).status_code == 201
    page = (settings.base_path / "demo/builds/index.html").read_text()
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in page
    assert 'href="%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt"' in page
    assert index_json(settings)["files"][0]["name"] == name


def test_latest_redirects_to_the_newest_file(client: Any, builds: None) -> None:
    assert client.get("/demo/builds/latest").status_code == 404
    put(client, "one.bin")
    put(client, "two.bin")
    r = client.get("/demo/builds/latest")
    assert r.status_code == 302
    assert r.headers["Location"] == "http://localhost/demo/builds/two.bin"
    assert client.get("/demo/docs/latest").status_code == 404


def test_index_has_a_latest_link_and_newest_first(client: Any, settings: Any,
                                                  builds: None) -> None:
    put(client, "one.bin")
    put(client, "two.bin")
    page = (settings.base_path / "demo/builds/index.html").read_text()
    assert page.index('class="latest" href="two.bin"') < page.index('href="one.bin"')
    assert index_json(settings)["latest"]["name"] == "two.bin"


def test_lowering_depth_prunes_at_once(client: Any, settings: Any, builds: None) -> None:
    for i in range(5):
        put(client, f"{i}.bin")
    r = client.put("/demo", json={"items": {"builds": {"type": "collection", "depth": 2},
                                            "docs": {"type": "tgz"}}}, headers=AUTH)
    assert r.status_code == 200
    assert on_disk(settings) == ["3.bin", "4.bin", "index.html", "index.json"]
    assert [f["name"] for f in index_json(settings)["files"]] == ["4.bin", "3.bin"]


def test_kept_files_are_hard_links_not_copies(client: Any, settings: Any,
                                              builds: None) -> None:
    put(client, "big.bin", os.urandom(1024))
    inode = (settings.base_path / "demo/builds/big.bin").stat().st_ino
    put(client, "next.bin")
    assert (settings.base_path / "demo/builds/big.bin").stat().st_ino == inode


def test_collection_upload_needs_a_filename(client: Any, builds: None) -> None:
    r = client.put("/demo/builds", data=b"x", headers=AUTH)
    assert r.status_code == 400 and "file name" in r.get_json()["detail"]
