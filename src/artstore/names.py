"""Validation of every name that comes from a request or an archive.

Pure functions, no I/O: a name is checked before any file is touched.
"""

from __future__ import annotations

import functools
import re
import sys
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


# ----------------------------------------------------- the rules as JSON Schema patterns
# For the OpenAPI document, so it describes exactly what these functions accept (schemathesis
# sends what the patterns allow and expects it accepted, and the rest refused).


def _not_reserved() -> str:
    return "|".join(re.escape(name) for name in sorted(RESERVED))


def name_pattern() -> str:
    """check_name's rules as an anchored regular expression."""
    return f"^(?!(?:{_not_reserved()})$){NAME_RE.pattern}$"


def _char_class(code_points: list[int]) -> str:
    """A regex class body for ``code_points`` that Python's re and ECMA-262 (with the "u"
    flag, as JSON Schema asks) read alike: escapes in the BMP, the characters themselves
    above it (no escape of those is written the same way in both)."""
    def one(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)

    ranges: list[list[int]] = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


@functools.cache
def filename_pattern() -> str:
    """check_filename's rules as an anchored regular expression, all but two: the limit of
    MAX_FILENAME_BYTES, which a pattern cannot count (say ``maxLength`` beside it), and
    valid UTF-8, which a URL or form field always is once decoded (and a lone surrogate in a
    pattern is an error for some regex engines)."""
    refused, dot, dots = [], [ord(".")], []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if unicodedata.category(ch) in ("Cc", "Cf") or ch in "/\\":
            refused.append(cp)
        elif unicodedata.decomposition(ch):
            folded = unicodedata.normalize("NFKC", ch)
            if "/" in folded or "\\" in folded:
                refused.append(cp)
            elif folded in (".", ".."):
                (dot if folded == "." else dots).append(cp)
    refused_class, dot_class = _char_class(refused), _char_class(sorted(dot))
    # Whole names that NFKC turns into "." or "..": one or two dot-likes, or one double one.
    path = f"[{dot_class}]{{1,2}}|[{_char_class(dots)}]"
    return (f"^(?!(?:{_not_reserved()}|{path})$)"
            f"[^.{refused_class}][^{refused_class}]*$")
