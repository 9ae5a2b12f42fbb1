"""Validation of every name that comes from a request or an archive.

Pure functions, no I/O: a name is checked before any file is touched.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import BadRequest

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Files the service generates itself; no project, item or collection file may take them.
RESERVED = frozenset({"index.html", "index.json"})
MAX_FILENAME_BYTES = 255


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid project or item name, else raise 400."""
    if not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid {what} {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    if name in RESERVED:
        raise BadRequest(f"invalid {what} {name!r}: the name is reserved")
    return name


def has_control_or_format(text: str) -> bool:
    """True if ``text`` holds a Unicode control (Cc) or format (Cf) character."""
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def filename_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable plain base name, or None if it is."""
    if not name:
        return "empty name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(encoded) > MAX_FILENAME_BYTES:
        return f"longer than {MAX_FILENAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a slash or backslash"
    if has_control_or_format(name):
        return "contains a control or format character"
    if name.startswith("."):
        return "starts with '.'"
    folded = unicodedata.normalize("NFKC", name)
    if folded in (".", "..") or "/" in folded or "\\" in folded:
        return "normalises to a path"
    return None


def check_filename(name: str) -> str:
    """Return ``name`` if it is a valid collection or html file name, else raise 400."""
    problem = filename_problem(name)
    if problem is None and name in RESERVED:
        problem = "the name is reserved"
    if problem:
        raise BadRequest(f"invalid file name {name!r}: {problem}")
    return name
