"""/_openapi.json describes exactly the routes the app has."""

from __future__ import annotations

import re
from typing import Any


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
