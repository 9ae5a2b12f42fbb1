"""The generated HTML pages: the list of projects, a project's items, a collection.

Every piece of text is HTML-escaped and every link is relative and URL-encoded, so the
pages work under any prefix and a hostile file name is shown as text. Small inline
CSS, no external assets, no JavaScript.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any
from urllib.parse import quote

STYLE = """
:root{color-scheme:light dark;--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#fff;--link:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;--bg:#0d1117;--link:#4493f8}}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:64rem;margin:0 auto;padding:1rem}
h1{font-size:1.4rem;margin:.5rem 0 1rem;overflow-wrap:anywhere}
nav{font-size:.9rem;color:var(--muted)}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:.45rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;color:var(--muted)}
td{overflow-wrap:anywhere}
.m{color:var(--muted);font-size:.85rem}
.n{white-space:nowrap}
code{font-size:.8rem}
.latest{display:inline-block;margin:0 0 1rem;padding:.3rem .7rem;border:1px solid var(--line);
border-radius:6px;overflow-wrap:anywhere}
p.m{margin:1rem 0}
@media (max-width:40rem){thead{display:none}table,tbody{display:block}
tr{display:block;border-bottom:1px solid var(--line);padding:.5rem 0}
td{display:block;border:0;padding:.1rem .25rem}td:first-child{font-size:1.05rem}
td.m{display:inline-block;margin-right:.6rem}td.meta{display:block}td.hide,td:empty{display:none}}
"""


def _page(title: str, nav: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        # No favicon request (a 404 in every log); no external asset.
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main><nav>{nav}</nav><h1>{escape(title)}</h1>{body}</main></body></html>\n"
    ).encode()


def _table(headers: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p class=\"m\">{escape(empty)}</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _link(name: str, trailing: str = "") -> str:
    return f"<a href=\"{escape(quote(name) + trailing)}\">{escape(name)}</a>"


def _metadata(metadata: dict[str, Any]) -> str:
    return "<br>".join(f"{escape(k)}: {escape(str(v))}" for k, v in sorted(metadata.items()))


def _time(value: str | None, empty: str = "") -> str:
    """An ISO time like ``2025-11-25T15:20:32Z``, shown as ``2025-11-25 15:20:32 UTC``."""
    if not value:
        return escape(empty)
    shown = value.replace("T", " ", 1)
    shown = shown[:-1] + " UTC" if shown.endswith("Z") else shown
    return f"<time datetime=\"{escape(value)}\">{escape(shown)}</time>"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def root_row(project: dict[str, Any]) -> str:
    """One project's row of the root page: a dict with ``name``, ``description``,
    ``items`` (names). Rendered once per change of the project, not per page."""
    return (f"<tr><td>{_link(project['name'], '/')}</td><td>{escape(project['description'])}"
            f"</td><td class=\"m n\">{_count(len(project['items']), 'item')}</td></tr>")


def root_page(rows: list[str]) -> bytes:
    """The list of projects, from their ``root_row``s in order."""
    return _page("Projects", "artstore", _table(["project", "description", "items"], rows,
                                                 "No projects yet."))


def project_page(name: str, description: str, items: list[dict[str, Any]]) -> bytes:
    """``items``: dicts with ``name``, ``type``, ``published`` (time or None)."""
    rows = []
    for item in items:
        link = _link(item["name"], "/") if item["published"] else escape(item["name"])
        rows.append(
            f"<tr><td>{link}</td><td class=\"m\">{escape(item['type'])}</td>"
            f"<td class=\"m n\">{_time(item['published'], 'never published')}</td></tr>"
        )
    intro = f"<p>{escape(description)}</p>" if description else ""
    return _page(name, "<a href=\"../\">projects</a>",
                 intro + _table(["item", "type", "last publish"], rows, "No items."))


def collection_page(project: str, item: str, files: list[dict[str, Any]]) -> bytes:
    """``files``: newest first, dicts with ``name``, ``size``, ``created``, ``sha256``, ``metadata``."""
    rows = [
        f"<tr><td>{_link(f['name'])}</td><td class=\"m n\">{human_size(f['size'])}</td>"
        f"<td class=\"m n\">{_time(f['created'])}</td>"
        f"<td class=\"m n hide\"><code title=\"{escape(f['sha256'])}\">"
        f"{escape(f['sha256'][:16])}</code></td>"
        f"<td class=\"m meta\">{_metadata(f['metadata'])}</td></tr>"
        for f in files
    ]
    latest = (f"<a class=\"latest\" href=\"{escape(quote(files[0]['name']))}\">latest: "
              f"{escape(files[0]['name'])}</a>" if files else "")
    nav = f"<a href=\"../../\">projects</a> / <a href=\"../\">{escape(project)}</a>"
    return _page(f"{project} / {item}", nav,
                 latest + _table(["file", "size", "uploaded", "sha256", "metadata"], rows,
                                 "No files yet.")
                 + "<p class=\"m\">As JSON: <a href=\"index.json\">index.json</a></p>")
