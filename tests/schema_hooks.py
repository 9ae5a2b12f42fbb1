"""schemathesis hooks for tests/test_api_schema.py: steer requests to a project that exists.

Loaded by the schemathesis command through ``SCHEMATHESIS_HOOKS=tests.schema_hooks``, with
the server's URL in ``ARTSTORE_SCHEMA_URL``. The ``demo`` project (ITEMS, with releases and a
file) is made again whenever a call may have removed or replaced it, and about half of the
requests whose path is valid are pointed at it and its items, so they reach past the 404s
into the code that does the work.
"""

from __future__ import annotations

import io
import os
import random
import re
import tarfile
from typing import Any

import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation

from .conftest import AUTH

ITEMS = {"docs": {"type": "tgz", "keep": 2}, "site": {"type": "zip"},
         "report": {"type": "html"}, "builds": {"type": "collection", "depth": 3}}
NOT_COLLECTIONS = sorted(name for name, conf in ITEMS.items() if conf["type"] != "collection")

rng = random.Random(0)  # the same choices in the same order: --seed repeats a whole run
# HTTP's header syntax (RFC 9110): a name of token characters, a value without controls.
# gunicorn refuses anything else with its own HTML 400 before the app sees the request; such
# requests (schemathesis 4.4 makes them) test nothing this document can describe.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def site() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("index.html")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def ensure_demo(url: str) -> None:
    """The project the requests are steered to, with the items of ITEMS: a generated DELETE
    may have removed it, a generated PUT replaced its items."""
    r = requests.get(f"{url}/demo", headers=AUTH, timeout=30)
    if r.status_code == 200:
        types = {name: item["type"] for name, item in r.json()["items"].items()}
        if types == {name: conf["type"] for name, conf in ITEMS.items()}:
            return
        requests.delete(f"{url}/demo", headers=AUTH, timeout=30).raise_for_status()
    else:
        assert r.status_code == 404, r.text
    requests.post(f"{url}/demo", json={"items": ITEMS}, headers=AUTH,
                  timeout=30).raise_for_status()
    for n in (1, 2):
        requests.put(f"{url}/demo/docs", data=site(), params={"n": str(n)}, headers=AUTH,
                     timeout=30).raise_for_status()
    requests.put(f"{url}/demo/builds", params={"filename": "a.bin"}, data=b"a", headers=AUTH,
                 timeout=30).raise_for_status()


def _items_for(case: Any) -> list[str]:
    if case.method.upper() == "PUT" and "filename" not in (case.query or {}):
        # A raw PUT to a collection must name its file, and the document cannot say which
        # items are collections.
        return NOT_COLLECTIONS
    if case.method.upper() == "GET" and case.path.endswith("/latest"):
        # Its redirect leads to the published files, and schemathesis 4.4 follows it and
        # judges the file as if the API had answered.
        return NOT_COLLECTIONS
    return sorted(ITEMS)


def steer(case: Any) -> None:
    """Point a request at the existing project and items now and then, unless its path is
    the part meant to be invalid."""
    meta = getattr(case, "meta", None)
    path = meta.components.get(ParameterLocation.PATH) if meta is not None else None
    params = case.path_parameters or {}
    if (path is not None and path.mode.is_negative) or "project" not in params:
        return
    if rng.random() < 0.5:
        params["project"] = "demo"
        if "item" in params and rng.random() < 0.7:
            params["item"] = rng.choice(sorted(ITEMS))
            if "filename" in params and rng.random() < 0.5:
                params["filename"] = "a.bin"
    # schemathesis also reuses names it saw in answers, so it may arrive here by itself.
    item = params.get("item")
    if params.get("project") == "demo" and item in ITEMS and item not in _items_for(case):
        params["item"] = rng.choice(_items_for(case))


@schemathesis.hook
def filter_headers(context: Any, headers: Any) -> bool:
    headers = getattr(headers, "value", headers)  # schemathesis 4.4 wraps what it generated
    return all(HEADER_NAME.fullmatch(str(name)) and HEADER_VALUE.fullmatch(str(value))
               for name, value in (headers or {}).items())


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """Drop a multipart body made invalid by giving a field a value that is not a string: a
    form field is text on the wire, so ``true`` or ``5`` arrives as the string it is
    serialised to, which the document allows. Nothing the server can refuse remains."""
    body = case.body
    if not (getattr(case, "media_type", None) == "multipart/form-data"
            and isinstance(body, dict)):
        return True
    return all(isinstance(value, (str, bytes)) for value in body.values())


changed = True  # whether the last call may have removed or replaced the project


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    global changed
    if changed:
        ensure_demo(os.environ["ARTSTORE_SCHEMA_URL"])
    steer(case)
    changed = (case.path == "/{project}" and case.method.upper() in ("PUT", "DELETE")
               and (case.path_parameters or {}).get("project") == "demo")
