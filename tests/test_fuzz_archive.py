"""Property-based fuzzing of the archive extractor and of name validation.

Hypothesis builds tgz and zip archives from members with valid and hostile names (``..``,
absolute paths, backslashes, drive letters, NFKC look-alikes such as fullwidth dots, control and
format characters, long and deep names, case variants, bytes that are not UTF-8) and every member
type (files, directories, symbolic and hard links, fifos, devices). For each one the extractor,
called through its public interface, must either

- accept it, and then ``dest`` holds exactly the archive's regular files under their normalised
  names, in the directories they imply, with modes 0644 and 0755 and no link anywhere; or
- refuse it with Unprocessable (422) or TooLarge (413);

and in both cases nothing appears outside ``dest``. A small model says which archives are
certainly hostile (must be refused) and which are certainly clean (must be accepted); between
the two, only the invariants above are checked.

Names for projects, items and files are checked against ``names`` and through the API: a
refused name answers 400 (or never reaches a route: 404/405) and creates nothing.

``ARTSTORE_FUZZ_EXAMPLES`` raises the number of examples for a long run (default 150).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from artstore import archive
from artstore import settings as settings_mod
from artstore.api import create_app
from artstore.errors import BadRequest, TooLarge, Unprocessable
from artstore.names import RESERVED, check_filename, check_name

from .archives import RawEntry, raw_zip
from .conftest import ADMIN, AUTH, write_config

EXAMPLES = int(os.environ.get("ARTSTORE_FUZZ_EXAMPLES", "150"))
# No example database: a failure prints the example and the seed to reproduce it, and the
# working tree stays clean.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# -- members ----------------------------------------------------------------------------------

SAFE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
KINDS = ("file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev", "socket")

# Components that must get an archive refused wherever they appear in a member's path.
HOSTILE_COMPONENTS = [
    "..", "\uff0e\uff0e", "\u2025", "\uff0e", "\u2024", "\ufe52",  # .. and . after NFKC
    "a\\b", "\\", "\uff3c", "a\uff0fb", "\uff0f",  # backslashes and slashes after NFKC
    "a\nb", "\r", "\t.html", "\x7f", "\x1b[31m", "\x01",  # control characters (Cc)
    "evil\u202egnp.html", "\u200bindex.html", "\ufeff", "a\u2066b",  # format characters (Cf)
    "x" * 256,  # longer than a name component may be
]
# Unusual but acceptable components: the extractor must keep them exactly as they are.
ODD_COMPONENTS = [
    "caf\u00e9", "\u65e5\u672c\u8a9e.html", "\u0130stanbul", "stra\u00dfe", "STRASSE",
    "\ufb01le", "file", "\u212aelvin", "Kelvin", "\u2126", "\u03a9", "...", ".hidden",
    "C:", "c:x", "x" * 255, "Index.HTML", "INDEX.html", "index.html", "\U0001f600.txt",
    "a b", "a%2e%2e", "\u00e9", "e\u0301",
]
NOT_UTF8 = "\udcff\udcfe.html"  # the bytes ff fe, as surrogateescape decodes them


@dataclass
class Member:
    name: str  # as stored; lone surrogates stand for bytes that are not UTF-8
    kind: str
    data: bytes = b""
    mode: int = 0o644
    link: str = ""


@dataclass
class Case:
    kind: str  # "tgz" or "zip"
    members: list[Member]
    limits: archive.Limits
    tar_format: int = tarfile.PAX_FORMAT
    notes: list[str] = field(default_factory=list)


safe_components = st.one_of(
    st.text(SAFE_CHARS, min_size=1, max_size=10).filter(lambda c: c not in (".", "..")),
    st.sampled_from(["index.html", "a", "b", "docs", "css", "site", "img.png"]),
)
odd_components = st.one_of(safe_components, st.sampled_from(ODD_COMPONENTS),
                           st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf"),
                                                 blacklist_characters="/\\"),
                                   min_size=1, max_size=6))
hostile_components = st.one_of(
    odd_components,
    st.sampled_from(HOSTILE_COMPONENTS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
            min_size=1, max_size=6),
)
# How hostile a generated archive is: clean ones must be accepted, so they must be common.
FLAVOURS = {"clean": safe_components, "odd": odd_components, "hostile": hostile_components}


@st.composite
def member_names(draw: Any, flavour: str) -> str:
    parts = draw(st.lists(FLAVOURS[flavour], min_size=1, max_size=4))
    name = "/".join(parts)
    prefixes = ["", "", "", "./", "././"]
    if flavour == "hostile":
        prefixes += ["/", "//", "C:/", "c:\\"]
    if draw(st.booleans()) and len(parts) > 1:
        name = name.replace("/", draw(st.sampled_from(["//", "/./"])), 1)
    return draw(st.sampled_from(prefixes)) + name


BIG = [bytes(3 * 1024 * 1024), os.urandom(70_000)]  # a ratio bomb, and incompressible data
DATAS = st.one_of(st.binary(max_size=64), st.just(b""),
                  st.integers(0, 9).flatmap(lambda n: st.just(BIG[n % 2]) if n < 2
                                            else st.binary(max_size=64)))


@st.composite
def members(draw: Any, flavour: str) -> Member:
    hostile = flavour == "hostile"
    kind = draw(st.sampled_from(KINDS[:2] * 6 + KINDS[2:] if hostile else KINDS[:2] * 3
                                + KINDS[:1] * 2))
    name = draw(member_names(flavour))
    if hostile and draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(["", "/", "a/" + NOT_UTF8, NOT_UTF8]))
    data = draw(DATAS) if kind == "file" else b""
    mode = draw(st.sampled_from([0o644, 0o755, 0o777, 0o4755, 0o6777, 0o1777, 0o000, 0o200]))
    link = draw(st.sampled_from(["../../../etc/passwd", "/etc/passwd", "index.html", "a", ".."]))
    return Member(name, kind, data, mode, link)


@st.composite
def cases(draw: Any, kind: str) -> Case:
    flavour = draw(st.sampled_from(["clean", "clean", "odd", "hostile", "hostile"]))
    found = draw(st.lists(members(flavour), min_size=1, max_size=8,
                          unique_by=lambda m: "/".join(parts_of(m.name)).lower()))
    # A classic: a link, then a file written "through" it.
    for m in list(found):
        if m.kind in ("symlink", "hardlink") and draw(st.booleans()):
            found.append(Member(m.name.rstrip("/") + "/pwned.html", "file", b"pwned"))
    # Case and normalisation twins of an existing member, or the same member twice.
    if flavour != "clean" and draw(st.booleans()):
        m = draw(st.sampled_from(found))
        twin = draw(st.sampled_from([m.name.upper(), m.name.lower(), m.name.swapcase(),
                                     unicodedata.normalize("NFKD", m.name), m.name]))
        found.append(Member(twin, draw(st.sampled_from(["file", "dir"])), b"twin"))
    if draw(st.booleans()):
        found.insert(draw(st.integers(0, len(found))), Member("index.html", "file", b"<h1>"))
    small = draw(st.integers(0, 9)) == 0  # now and then, tight limits
    limits = archive.Limits(
        max_bytes=draw(st.sampled_from([100, 8 * 1024**3])) if small else 8 * 1024**3,
        max_members=draw(st.sampled_from([3, 100_000])) if small else 100_000,
        max_path_bytes=draw(st.sampled_from([40, 1024])) if small else 1024,
        max_depth=draw(st.sampled_from([1, 32])) if small else 32,
        max_component_bytes=255,
    )
    fmt = tarfile.PAX_FORMAT
    if any(has_surrogate(m.name) for m in found):
        fmt = tarfile.GNU_FORMAT  # PAX headers must be UTF-8; GNU names are raw bytes
    elif draw(st.booleans()):
        fmt = tarfile.GNU_FORMAT
    return Case(kind, found, limits, fmt)


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


# -- building the archives ----------------------------------------------------------------------

TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
             "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE}
ZIP_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
             "hardlink": stat.S_IFREG, "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR,
             "blockdev": stat.S_IFBLK, "socket": stat.S_IFSOCK}


def tar_members(case: Case) -> list[Member]:
    # Tar has no sockets, and a NUL byte ends a tar name: both are left to the zip side.
    return [m for m in case.members if m.kind != "socket" and "\x00" not in m.name]


def zip_members(case: Case) -> list[Member]:
    # A zip has no hard links; one is written as a plain file there.
    return [Member(m.name, "file", m.data, m.mode) if m.kind == "hardlink" else m
            for m in case.members]


def build_tgz(case: Case) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=case.tar_format, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for m in tar_members(case):
            info = tarfile.TarInfo(m.name)
            info.type = TAR_TYPES[m.kind]
            info.mode = m.mode
            info.mtime = 1_700_000_000
            info.linkname = m.link if m.kind in ("symlink", "hardlink") else ""
            if m.kind == "file":
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def zip_name(m: Member) -> bytes:
    name = m.name + ("/" if m.kind == "dir" and not m.name.endswith("/") else "")
    return name.encode("utf-8", "surrogateescape")


def build_zip(case: Case) -> bytes:
    entries = []
    for m in zip_members(case):
        name = zip_name(m)
        flags = 0x800 if not name.isascii() and not has_surrogate(m.name) else 0
        data = m.link.encode() if m.kind == "symlink" else m.data
        method = 8 if len(data) > 16 else 0
        entries.append(RawEntry(name, data, method=method, flags=flags,
                                mode=ZIP_TYPES[m.kind] | m.mode))
    return raw_zip(entries)


def effective_members(case: Case) -> list[Member]:
    if case.kind == "tgz":
        return tar_members(case)
    return [Member(zip_name(m).decode("utf-8", "surrogateescape"), m.kind, m.data, m.mode)
            for m in zip_members(case)]


# -- the model ----------------------------------------------------------------------------------

DRIVE = re.compile(r"[A-Za-z]:")


def parts_of(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def component_is_hostile(part: str, limits: archive.Limits) -> bool:
    if part == ".." or "\\" in part:
        return True
    if has_surrogate(part):
        return True
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in part):
        return True
    folded = unicodedata.normalize("NFKC", part)
    if folded in (".", "..") or "/" in folded or "\\" in folded:
        return True
    return len(part.encode("utf-8")) > limits.max_component_bytes


def member_is_hostile(m: Member, limits: archive.Limits) -> bool:
    """True if this member alone must get the archive refused."""
    if m.kind not in ("file", "dir"):
        return True
    name = m.name
    if name.startswith("/") or "\\" in name or DRIVE.match(name):
        return True
    parts = parts_of(name)
    if not parts:
        return m.kind == "file"
    if any(component_is_hostile(p, limits) for p in parts):
        return True
    if len("/".join(parts).encode("utf-8")) > limits.max_path_bytes:
        return True
    depth = len(parts) if m.kind == "dir" else len(parts) - 1
    return depth > limits.max_depth


def expected_tree(found: list[Member]) -> tuple[dict[str, bytes], set[str]] | None:
    """Files and directories a clean archive of plain ASCII names extracts to, or None if the
    members clash (duplicates, a file used as a directory, case twins)."""
    files: dict[str, bytes] = {}
    listed_dirs: set[str] = set()
    implied: set[str] = set()
    for m in found:
        parts = parts_of(m.name)
        if not parts:
            continue
        path = "/".join(parts)
        for i in range(1, len(parts)):
            implied.add("/".join(parts[:i]))
        if m.kind == "file":
            if path in files:
                return None
            files[path] = m.data
        else:
            if path in listed_dirs:
                return None
            listed_dirs.add(path)
    dirs = listed_dirs | implied
    if set(files) & dirs:
        return None
    every = set(files) | dirs
    if len({p.lower() for p in every}) != len(every):
        return None
    return files, dirs


def unwrap(files: dict[str, bytes], dirs: set[str]) -> tuple[dict[str, bytes], set[str]]:
    """The extractor's rule: no index.html at the top but one directory holding one."""
    if "index.html" in files:
        return files, dirs
    tops = {p for p in set(files) | dirs if "/" not in p}
    if len(tops) != 1:
        return files, dirs
    top = tops.pop()
    if top not in dirs or f"{top}/index.html" not in files:
        return files, dirs
    cut = len(top) + 1
    return ({p[cut:]: d for p, d in files.items()},
            {p[cut:] for p in dirs if p.startswith(top + "/")})


def is_clean(case: Case, found: list[Member]) -> bool:
    def plain(m: Member) -> bool:
        return m.kind in ("file", "dir") and all(
            set(p) <= set(SAFE_CHARS) and p != ".." for p in parts_of(m.name)) and not (
            m.name.startswith("/") or (m.kind == "file" and not parts_of(m.name)))
    return all(plain(m) for m in found) and not any(
        member_is_hostile(m, case.limits) for m in found)


def over_quantity_limit(found: list[Member], limits: archive.Limits) -> bool:
    if len(found) > limits.max_members:
        return True
    total = sum(len(m.data) for m in found if m.kind == "file")
    if total > limits.max_bytes:
        return True
    # Megabytes of zeros expand far beyond the ratio limit once past the grace.
    return any(m.kind == "file" and len(m.data) > limits.ratio_grace and not any(m.data)
               for m in found)


# -- running it ---------------------------------------------------------------------------------


@dataclass
class Sandbox:
    """``parent/dest`` to extract into, beside ``parent/sentinel`` that must stay empty."""

    root: Path

    @property
    def dest(self) -> Path:
        return self.root / "parent" / "dest"

    def assert_nothing_outside(self) -> None:
        parent = self.root / "parent"
        assert sorted(os.listdir(parent)) == ["dest", "sentinel"]
        assert os.listdir(parent / "sentinel") == []
        assert sorted(os.listdir(self.root)) == ["parent", "upload"]
        for folder, dirs, files in os.walk(self.dest):
            for name in dirs + files:
                path = os.path.join(folder, name)
                assert not os.path.islink(path), f"a link was created: {path}"
                mode = os.lstat(path).st_mode
                assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), f"not a file: {path}"

    def tree(self) -> tuple[dict[str, bytes], set[str]]:
        files: dict[str, bytes] = {}
        dirs: set[str] = set()
        for folder, subdirs, names in os.walk(self.dest):
            rel = os.path.relpath(folder, self.dest)
            for name in subdirs:
                path = os.path.join(folder, name)
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755, path
                dirs.add(os.path.normpath(os.path.join(rel, name)))
            for name in names:
                path = os.path.join(folder, name)
                assert stat.S_IMODE(os.lstat(path).st_mode) == 0o644, path
                files[os.path.normpath(os.path.join(rel, name))] = Path(path).read_bytes()
        return files, dirs


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Fuzzing makes thousands of small trees: on tmpfs where there is one."""
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    base = Path(tempfile.mkdtemp(prefix="artstore-fuzz-", dir=where))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run_case(scratch: Path, case: Case) -> None:
    found = effective_members(case)
    assume(found)
    data = build_tgz(case) if case.kind == "tgz" else build_zip(case)
    box = Sandbox(Path(tempfile.mkdtemp(dir=scratch)))
    try:
        box.dest.mkdir(parents=True)
        (box.root / "parent" / "sentinel").mkdir()
        (box.root / "upload").write_bytes(data)
        assert archive.sniff(case.kind, str(box.root / "upload"))
        try:
            result = archive.extract(case.kind, str(box.root / "upload"), str(box.dest),
                                     case.limits)
        except (Unprocessable, TooLarge) as exc:
            event(f"refused ({type(exc).__name__})")
            box.assert_nothing_outside()
            assert exc.detail
            clean = is_clean(case, found) and expected_tree(found) is not None
            assert not (clean and any(m.kind == "file" for m in found)
                        and not over_quantity_limit(found, case.limits)), (
                f"a clean archive was refused: {exc.detail}")
            if clean and isinstance(exc, Unprocessable) and any(
                    m.kind == "file" for m in found):
                pytest.fail(f"a clean archive over a limit must be a 413: {exc.detail}")
            return
        event("accepted")
        box.assert_nothing_outside()
        assert not any(member_is_hostile(m, case.limits) for m in found), (
            "a hostile archive was accepted")
        assert not over_quantity_limit(found, case.limits), "a limit was not enforced"
        expected = expected_tree(found)
        assert expected is not None, "clashing members were accepted"
        files, dirs = unwrap(*expected)
        assert box.tree() == (files, dirs)
        assert result.files == len(files) > 0
        assert result.bytes == sum(map(len, files.values()))
        folded = [unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", p).casefold())
                  for p in set(files) | dirs]
        assert len(folded) == len(set(folded)), "names that collide after folding"
    finally:
        shutil.rmtree(box.root, ignore_errors=True)


@FUZZ
@given(case=cases("tgz"))
@example(case=Case("tgz", [Member("index.html", "file", b"x"),
                           Member("lnk", "symlink", link="/etc"),
                           Member("lnk/pwned.html", "file", b"p")], archive.Limits()))
@example(case=Case("tgz", [Member("site/index.html", "file", b"x"),
                           Member("site", "dir")], archive.Limits()))
def test_fuzzed_tgz_is_extracted_exactly_or_refused_without_writing_outside(
        scratch: Path, case: Case) -> None:
    run_case(scratch, case)


@FUZZ
@given(case=cases("zip"))
@example(case=Case("zip", [Member("a/\uff0e\uff0e/x", "file", b"x")], archive.Limits()))
@example(case=Case("zip", [Member("Docs/index.html", "file", b"x"),
                           Member("docs/", "dir")], archive.Limits()))
def test_fuzzed_zip_is_extracted_exactly_or_refused_without_writing_outside(
        scratch: Path, case: Case) -> None:
    run_case(scratch, case)


@FUZZ
@given(data=st.binary(min_size=0, max_size=2048), kind=st.sampled_from(["tgz", "zip"]),
       cut=st.integers(0, 4096), flip=st.integers(0, 4095))
def test_damaged_archives_are_refused_cleanly_never_with_another_error(
        scratch: Path, data: bytes, kind: str, cut: int, flip: int) -> None:
    """A valid archive, cut short or with one byte changed, or random bytes with the right
    magic: refused with a 4xx, or (if the damage hit nothing that matters) extracted."""
    good = Case(kind, [Member("index.html", "file", b"<h1>hello</h1>" * 20),
                       Member("css/site.css", "file", data)], archive.Limits())
    raw = bytearray(build_tgz(good) if kind == "tgz" else build_zip(good))
    if flip < len(raw):
        raw[flip] ^= 0xFF
    raw = raw[:max(4, len(raw) - cut % 64)] if cut % 2 else raw
    box = Sandbox(Path(tempfile.mkdtemp(dir=scratch)))
    try:
        box.dest.mkdir(parents=True)
        (box.root / "parent" / "sentinel").mkdir()
        (box.root / "upload").write_bytes(bytes(raw))
        with contextlib.suppress(Unprocessable, TooLarge):
            archive.extract(kind, str(box.root / "upload"), str(box.dest), archive.Limits())
        box.assert_nothing_outside()
    finally:
        shutil.rmtree(box.root, ignore_errors=True)


# -- names ----------------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

name_texts = st.one_of(
    st.text(max_size=70),
    st.text(SAFE_CHARS, min_size=1, max_size=70),
    st.sampled_from(["..", ".", "%2e%2e", "a%2Fb", "_tokens", "_health", "index.html",
                     "index.json", "a/b", "a\\b", "\uff0e\uff0e", "a\x00b", "x" * 64, "x" * 65,
                     "-a", "a-", "A.b_c-9", " a", "a ", "caf\u00e9", "\u212a"]),
    st.sampled_from(HOSTILE_COMPONENTS + ODD_COMPONENTS),
)


def name_is_valid(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and name not in RESERVED


def filename_is_valid(name: str) -> bool:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    folded = unicodedata.normalize("NFKC", name)
    return (0 < size <= 255 and "/" not in name and "\\" not in name
            and not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name)
            and not name.startswith(".") and folded not in (".", "..")
            and "/" not in folded and "\\" not in folded and name not in RESERVED)


@FUZZ
@given(name=name_texts)
def test_project_and_item_names_are_exactly_the_contracts(name: str) -> None:
    if name_is_valid(name):
        assert check_name(name) == name
        # Safe as one path component, whatever the platform.
        assert os.path.basename(os.path.join("/base", name)) == name
        assert not name.startswith(".") and "/" not in name and "\\" not in name
    else:
        with pytest.raises(BadRequest):
            check_name(name)


@FUZZ
@given(name=st.one_of(name_texts, st.text(min_size=200, max_size=300),
                      st.text(st.characters(), max_size=10).map(lambda t: t + "\udcff")))
def test_file_names_are_plain_base_names(name: str) -> None:
    if filename_is_valid(name):
        assert check_filename(name) == name
        target = os.path.normpath(os.path.join("/base/item", name))
        assert os.path.dirname(target) == "/base/item", "a file name escaped its directory"
    else:
        with pytest.raises(BadRequest):
            check_filename(name)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("fuzz-api") / "state"
    config = write_config(folder)
    settings_obj = settings_mod.load(config, environ={})
    app = create_app(settings_obj, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    client = app.test_client()
    r = client.post("/demo", json={"items": {"builds": {"type": "collection", "depth": 1000},
                                             "report": {"type": "html"}}}, headers=AUTH)
    assert r.status_code == 201
    return client, settings_obj


def listing(root: Path) -> set[str]:
    """Every path under ``root`` except temp entries (old generations are deleted in the
    background, so they come and go, and with them the blobs only they held) and lock
    files."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".tmp-")
                   and os.path.join(folder, d) != str(root / ".artstore" / "blobs")]
        rel = os.path.relpath(folder, root)
        found |= {os.path.normpath(os.path.join(rel, name)) for name in dirs + files
                  if not name.startswith(".tmp-") and not name.endswith(".lock")}
    return found


# A name with a leading "/" (sent as %2F) is left to its own test below: Werkzeug strips it.
url_names = name_texts.filter(lambda n: not has_surrogate(n) and n not in ("", ".", "..")
                              and not n.startswith("/"))


@FUZZ
@given(name=url_names)
def test_project_names_through_the_api_create_exactly_valid_projects(api: Any,
                                                                     name: str) -> None:
    client, conf = api
    before = listing(conf.base_path)
    projects = client.get("/").get_json()["projects"]
    r = client.post("/" + quote(name, safe=""), json={"items": {}}, headers=AUTH)
    if name_is_valid(name) and name not in [p["name"] for p in projects]:
        assert r.status_code == 201, r.get_json()
        assert (conf.base_path / name).is_dir()
        assert client.delete("/" + quote(name, safe=""), headers=AUTH).status_code == 204
    elif name_is_valid(name):
        assert r.status_code == 409
    else:
        assert r.status_code in (400, 404, 405), (r.status_code, r.get_json())
        assert r.mimetype == "application/problem+json"
    assert listing(conf.base_path) == before
    assert client.get("/").get_json()["projects"] == projects


@FUZZ
@given(name=url_names)
def test_item_names_in_a_project_configuration_are_checked(api: Any, name: str) -> None:
    client, conf = api
    r = client.post("/items-fuzz", json={"items": {name: {"type": "tgz"}}}, headers=AUTH)
    if name_is_valid(name):
        assert r.status_code == 201, r.get_json()
        assert list(r.get_json()["items"]) == [name]
        assert client.delete("/items-fuzz", headers=AUTH).status_code == 204
    else:
        assert r.status_code == 400, r.get_json()
        assert client.get("/items-fuzz").status_code == 404
    assert not (conf.base_path / "items-fuzz").exists()


@FUZZ
@given(name=st.one_of(url_names, st.text(st.characters(blacklist_categories=("Cs",)),
                                         min_size=1, max_size=300)))
def test_collection_file_names_through_the_api_store_exactly_valid_files(api: Any,
                                                                          name: str) -> None:
    client, conf = api
    before = client.get("/demo/builds").get_json()["files"]
    on_disk = listing(conf.base_path)
    r = client.put("/demo/builds", query_string={"filename": name}, data=b"payload",
                   headers=AUTH)
    if filename_is_valid(name) and name not in [f["name"] for f in before]:
        assert r.status_code == 201, r.get_json()
        live = conf.base_path / "demo" / "builds"
        assert (live / name).read_bytes() == b"payload"
        assert client.delete("/demo/builds/" + quote(name, safe=""),
                             headers=AUTH).status_code == 204
        assert not (live / name).exists()
    elif filename_is_valid(name):
        assert r.status_code == 409
    else:
        assert r.status_code == 400, (r.status_code, r.get_json())
        assert client.get("/demo/builds").get_json()["files"] == before
        assert listing(conf.base_path) == on_disk
    assert list(conf.temp_path.iterdir()) == []


def test_a_percent_encoded_slash_before_a_name_is_refused_not_stripped(api: Any) -> None:
    """The contract: ``%2f`` in a name is a name like any other, and refused."""
    client, conf = api
    r = client.post("/%2Fzz", json={"items": {}}, headers=AUTH)
    assert r.status_code in (400, 404), r.get_json()
    assert not (conf.base_path / "zz").exists()
    r = client.delete("/%2Fdemo", headers=AUTH)
    assert r.status_code in (400, 404), r.get_json()
    assert client.get("/demo").status_code == 200


@pytest.mark.parametrize("how", ["multipart", "query"])
def test_an_html_item_takes_a_file_named_index_html(api: Any, how: str) -> None:
    """The reserved names protect a collection's generated index; an html item's release holds
    only its one file, and index.html is what a raw PUT without a name publishes anyway."""
    client, conf = api
    if how == "multipart":
        r = client.post("/demo/report", data={"item": (io.BytesIO(b"<p>1</p>"), "index.html")},
                        headers=AUTH)
    else:
        r = client.put("/demo/report?filename=index.html", data=b"<p>1</p>", headers=AUTH)
    assert r.status_code == 201, r.get_json()
    assert (conf.base_path / "demo/report/index.html").read_bytes() == b"<p>1</p>"
