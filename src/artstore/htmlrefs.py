"""The files an uploaded HTML page refers to by relative URL, which an html item lacks.

An html item publishes one file: a page that needs its stylesheet, scripts or other pages
(coverage.py's ``htmlcov/index.html``) has dead links there. The upload is published
anyway, with a warning that names them. Only the first ``SCAN_BYTES`` are read, so a
large self-contained report costs bounded time.
"""

from __future__ import annotations

import codecs
import posixpath
import time
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

SCAN_BYTES = 1024 * 1024
# html.parser takes ~0.3 s for a MiB of dense markup, but seconds for some hostile inputs
# (a MiB of "<"): it is fed in pieces and stopped after this long, whatever it has read.
SCAN_SECONDS = 0.5
PIECE = 64 * 1024
MAX_FOUND = 1000  # distinct names; past this the warning says "or more"
SHOWN = 5


def relative_file(reference: str) -> str | None:
    """The path inside the item that ``reference`` needs, or None if it needs none.

    None for anchors, queries of the page itself, URLs with a scheme (``data:``,
    ``mailto:``, ``https:``...) or a host, root-relative paths, and paths that leave the
    item's directory (the project page ``../`` is not the item's to publish).
    """
    reference = reference.strip()
    if not reference or reference.startswith(("#", "/", "\\")):
        return None
    try:
        parts = urlsplit(reference)
    except ValueError:  # e.g. an unbalanced "[" in what would be a host
        return None
    if parts.scheme or parts.netloc or not parts.path:
        return None
    path = posixpath.normpath(unquote(parts.path))
    if path == "." or path == ".." or path.startswith("../"):
        return None
    return path + "/" if parts.path.endswith("/") else path


def srcset_urls(value: str) -> list[str]:
    """The URLs of a ``srcset``: candidates split by commas, each a URL and descriptors.

    A URL may itself hold commas (``data:image/png;base64,...``): the URL runs to the
    first whitespace, and only a comma after it ends the candidate.
    """
    urls, pos = [], 0
    while pos < len(value):
        while pos < len(value) and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        start = pos
        while pos < len(value) and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = value.find(",", pos)
            pos = len(value) if end < 0 else end
        if url:
            urls.append(url)
    return urls


class _References(HTMLParser):
    def __init__(self, own: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.own = own
        self.found: dict[str, None] = {}  # an ordered set: the warning names the first
        self.based = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if tag == "base" and name == "href":
                self.based = True  # relative URLs resolve against it: nothing to tell
            elif name in ("href", "src"):
                self._add(value)
            elif name == "srcset":
                for url in srcset_urls(value):
                    self._add(url)

    def _add(self, reference: str) -> None:
        path = relative_file(reference)
        if path is not None and path not in self.own and len(self.found) < MAX_FOUND:
            self.found[path] = None


def _pieces(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The first SCAN_BYTES of ``chunks``, in pieces of at most PIECE bytes."""
    budget = SCAN_BYTES
    for chunk in chunks:
        chunk = chunk[:budget]
        budget -= len(chunk)
        for start in range(0, len(chunk), PIECE):
            yield chunk[start:start + PIECE]
        if not budget:
            return


def missing_files(chunks: Iterable[bytes], name: str) -> list[str]:
    """The relative files the page ``name`` refers to, from its first SCAN_BYTES (or what
    was read of them in SCAN_SECONDS).

    The page itself is published as ``name`` and as ``index.html``.
    """
    parser = _References({name, "index.html"})
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    deadline = time.monotonic() + SCAN_SECONDS
    try:
        for piece in _pieces(chunks):
            parser.feed(decoder.decode(piece))
            if len(parser.found) >= MAX_FOUND or time.monotonic() > deadline:
                break
    except Exception:  # noqa: BLE001
        # html.parser is lenient, but this is only a warning: whatever it stumbles on in
        # a hostile page must not refuse the upload. What was found so far stands.
        pass
    return [] if parser.based else list(parser.found)


def warning(name: str, missing: list[str]) -> str | None:
    """The upload answer's warning about ``missing``, or None if nothing is missing."""
    if not missing:
        return None
    count = f"{len(missing)} or more" if len(missing) >= MAX_FOUND else str(len(missing))
    files = "file" if len(missing) == 1 else "files"
    shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    return (f"{name} refers to {count} relative {files} that an html item does not publish "
            f"({shown}): push the directory to a tgz or zip item instead")
