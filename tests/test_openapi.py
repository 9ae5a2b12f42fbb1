"""/_openapi.json describes exactly the routes the app has."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from artstore.errors import BadRequest
from artstore.names import MAX_FILENAME_BYTES, check_filename, check_name
from artstore.openapi import document

from .conftest import AUTH


def test_openapi_document_matches_the_apps_routes(client: Any, app: Any) -> None:
    doc = client.get("/_openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items()
                  for method in ops if method != "parameters"}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routed.add((path, method.lower()))
    # A fixed path (.../latest) is also a URL the route ending in any name (.../{filename})
    # answers: what that route allows there is the fixed path's too.
    adapter = app.url_map.bind("localhost")
    for path in doc["paths"]:
        for method in ("GET", "POST", "PUT", "DELETE"):
            with contextlib.suppress(HTTPException):
                adapter.match(re.sub(r"{\w+}", "x", path), method=method)
                routed.add((path, method.lower()))
    assert documented == routed


def test_every_documented_parameter_is_in_its_path(client: Any) -> None:
    doc = client.get("/_openapi.json").get_json()
    for path, ops in doc["paths"].items():
        names = {p["name"] for p in ops.get("parameters", []) if p["in"] == "path"}
        assert names == set(re.findall(r"{(\w+)}", path)), path


def test_readme_api_table_lists_every_route(app: Any) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## API"):readme.index("### With curl")]
    listed = set(re.findall(r"^\| `([A-Z]+) (/[^`]*)`", table, re.M))
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            # The table names the token id <id> and the collection file <filename>.
            assert (method, path.replace("<token_id>", "<id>")) in listed, (method, path)


TRICKY = [".", "..", "/", "\\", "\uff0e", "\u2025", "\uff0f", "\u2100", "\u200b", "\u202e",
          "\x00", "\n", "\x85", "\ufeff", "\U000e0001", "a", "Z", "0", "-", "_", "é", "\u4e00",
          "\U0001f600", "index.html", "index.json"]
NAMES = st.one_of(st.lists(st.sampled_from(TRICKY), max_size=4).map("".join), st.text(),
                  st.sampled_from(TRICKY))


def _accepts(check: Any, name: str) -> bool:
    try:
        check(name)
    except BadRequest:
        return False
    return True


def _patterns(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The patterns the document gives project and item names, and file names."""
    params = [p for ops in doc["paths"].values() for p in ops.get("parameters", [])]
    params += [p for ops in doc["paths"].values() for op in ops.values()
               if isinstance(op, dict) for p in op.get("parameters", [])]
    items = doc["components"]["schemas"]["ProjectConfig"]["properties"]["items"]
    names = {p["schema"]["pattern"] for p in params if p["name"] in ("project", "item")}
    files = {p["schema"]["pattern"] for p in params if p["name"] == "filename"}
    return names | {items["propertyNames"]["pattern"]}, files


@settings(max_examples=500, deadline=None, database=None)
@given(name=NAMES)
def test_the_documents_name_patterns_accept_exactly_the_names_the_service_does(
        name: str) -> None:
    """schemathesis sends what the patterns allow and expects it accepted (and the rest
    refused), so they must be the service's own rules: reserved names, NFKC tricks, format
    characters and all. (The 255-byte limit of a file name is the document's maxLength.)"""
    names, files = _patterns(document())
    assert len(names) == 1 and len(files) == 1
    assert bool(re.fullmatch(names.pop(), name)) == _accepts(check_name, name)
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        assert bool(re.fullmatch(files.pop(), name)) == _accepts(check_filename, name)


def test_a_name_starting_with_an_underscore_gets_an_answer_the_document_lists(
        client: Any) -> None:
    """``/_x`` is a path of the service's own, never a project: whatever every operation on
    a project answers for it, the document must list."""
    doc = client.get("/_openapi.json").get_json()
    unlisted = []
    for path, ops in doc["paths"].items():
        if not path.startswith("/{project}"):
            continue
        url = path.replace("{project}", "_x").replace("{item}", "docs").replace(
            "{filename}", "a.bin").replace("{token_id}", "t")
        for method in set(ops) - {"parameters"}:
            r = client.open(url, method=method.upper(), headers=AUTH, json={})
            if str(r.status_code) not in ops[method]["responses"]:
                unlisted.append(f"{method.upper()} {url}: {r.status_code}")
    assert unlisted == []
