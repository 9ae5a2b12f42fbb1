"""The archive rules of the contract: what extracts, what is refused, and how."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from artstore.archive import NO_INDEX, Extracted, Limits, extract, sniff
from artstore.errors import InsufficientStorage, TooLarge, Unprocessable

from .archives import (
    RawEntry,
    corrupt_gzip_crc,
    deflate,
    directory,
    gzip_bomb_tgz,
    gzip_with_zeros,
    many_empty_members_tgz,
    member,
    overlapping_zip_bomb,
    raw_header,
    raw_tar,
    raw_zip,
    shared_data_zip,
    streamed_zip_bytes,
    tar_bytes,
    tgz_bytes,
    unicode_path_extra,
    with_checksum,
    zip_bytes,
    zip_info,
)


class Staging:
    """An empty ``dest`` with a sibling ``sentinel`` directory that must stay untouched."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.parent = tmp_path / "parent"
        self.dest = self.parent / "dest"
        self.sentinel = self.parent / "sentinel"
        self.dest.mkdir(parents=True)
        self.sentinel.mkdir()

    def upload(self, kind: str, data: bytes) -> str:
        path = self.tmp / f"upload.{kind}"
        path.write_bytes(data)
        return str(path)

    def extract(self, kind: str, data: bytes, limits: Limits | None = None) -> Extracted:
        return extract(kind, self.upload(kind, data), str(self.dest), limits or Limits())

    def refuse(
        self, kind: str, data: bytes, error: type = Unprocessable, limits: Limits | None = None
    ):
        with pytest.raises(error) as caught:
            self.extract(kind, data, limits)
        self.assert_nothing_outside()
        return caught.value

    def assert_nothing_outside(self) -> None:
        assert sorted(os.listdir(self.parent)) == ["dest", "sentinel"]
        assert os.listdir(self.sentinel) == []
        assert sorted(os.listdir(self.tmp)) in (["parent"], ["parent", "upload.tgz"],
                                                 ["parent", "upload.zip"])  # fmt: skip
        for root, dirs, files in os.walk(self.dest):
            for name in dirs + files:
                assert not os.path.islink(os.path.join(root, name))

    def tree(self) -> dict[str, bytes | None]:
        """Everything below dest: relative path -> file content, or None for a directory."""
        found: dict[str, bytes | None] = {}
        for root, dirs, files in os.walk(self.dest):
            rel = os.path.relpath(root, self.dest)
            for name in dirs:
                found[os.path.normpath(os.path.join(rel, name))] = None
            for name in files:
                found[os.path.normpath(os.path.join(rel, name))] = Path(root, name).read_bytes()
        return found


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return Staging(tmp_path)


@pytest.fixture
def fast_staging(tmp_path: Path) -> Iterator[Staging]:
    """Staging on tmpfs where there is one: tests that create many thousands of files measure
    the extraction, not a shared disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield Staging(tmp_path)
        return
    base = Path(tempfile.mkdtemp(prefix="artstore-test-", dir=shm))
    try:
        yield Staging(base)
    finally:
        shutil.rmtree(base)


def listed(error: Unprocessable) -> dict[str, str]:
    """The offending members of a refusal, name -> reason."""
    return {entry["name"]: entry["reason"] for entry in error.extra["members"]}


SITE = [
    ("index.html", b"<h1>home</h1>"),
    ("css/site.css", b"body {}"),
    ("docs/api/v1/index.html", b"<p>api</p>"),
]


def site(kind: str, entries: list) -> bytes:
    return tgz_bytes(entries) if kind == "tgz" else zip_bytes(entries)


# -- what extracts --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_archive_with_nested_dirs_extracts_every_file(staging: Staging, kind: str) -> None:
    result = staging.extract(kind, site(kind, SITE))
    manifest = {path: (hashlib.sha256(data).hexdigest(), len(data)) for path, data in SITE}
    assert result == Extracted(files=3, bytes=30, root="", warnings=[], manifest=manifest)
    assert staging.tree() == {
        "index.html": b"<h1>home</h1>",
        "css": None,
        "css/site.css": b"body {}",
        "docs": None,
        "docs/api": None,
        "docs/api/v1": None,
        "docs/api/v1/index.html": b"<p>api</p>",
    }
    staging.assert_nothing_outside()


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_unicode_names_are_kept(staging: Staging, kind: str) -> None:
    entries = [("index.html", b"x"), ("café/naïve résumé.html", b"y"), ("日本語.txt", b"z")]
    staging.extract(kind, site(kind, entries))
    tree = staging.tree()
    assert tree["café/naïve résumé.html"] == b"y"
    assert tree["日本語.txt"] == b"z"


def test_zip_utf8_name_without_the_utf8_flag_is_read_as_utf8(staging: Staging) -> None:
    name = "café.html".encode()
    staging.extract("zip", raw_zip([RawEntry(b"index.html", b"i"), RawEntry(name, b"c")]))
    assert staging.tree()["café.html"] == b"c"


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_empty_directories_are_kept(staging: Staging, kind: str) -> None:
    if kind == "tgz":
        data = tgz_bytes([("index.html", b"x"), directory("empty"), directory("a/b/c")])
    else:
        data = zip_bytes([("index.html", b"x"), ("empty/", b""), ("a/b/c/", b"")])
    staging.extract(kind, data)
    assert staging.tree() == {
        "index.html": b"x", "empty": None, "a": None, "a/b": None, "a/b/c": None,
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_5000_files_extract(fast_staging: Staging, kind: str) -> None:
    staging = fast_staging
    entries = [("index.html", b"home")] + [
        (f"d{i % 40}/page{i}.html", b"%d" % i) for i in range(4999)
    ]
    result = staging.extract(kind, site(kind, entries))
    assert result.files == 5000
    assert (staging.dest / "d3" / "page4003.html").read_bytes() == b"4003"
    assert sum(len(files) for _, _, files in os.walk(staging.dest)) == 5000


def test_tgz_made_with_dot_prefixes_extracts_at_the_top(staging: Staging) -> None:
    # What "tar -czf site.tgz -C build ." produces.
    data = tgz_bytes(
        [directory("."), ("./index.html", b"home"), directory("./css"), ("./css/a.css", b"a")]
    )
    result = staging.extract("tgz", data)
    assert result.root == ""
    assert staging.tree() == {"index.html": b"home", "css": None, "css/a.css": b"a"}


def test_single_wrapped_directory_is_unwrapped(staging: Staging) -> None:
    data = tgz_bytes([directory("site"), ("site/index.html", b"home"), ("site/css/a.css", b"a")])
    result = staging.extract("tgz", data)
    assert result.root == "site"
    assert result.warnings == []
    assert staging.tree() == {"index.html": b"home", "css": None, "css/a.css": b"a"}
    assert result.manifest == {"index.html": (hashlib.sha256(b"home").hexdigest(), 4),
                               "css/a.css": (hashlib.sha256(b"a").hexdigest(), 1)}


def test_wrapped_directory_holding_a_namesake_is_unwrapped(staging: Staging) -> None:
    data = zip_bytes([("site/index.html", b"home"), ("site/site/index.html", b"inner")])
    result = staging.extract("zip", data)
    assert result.root == "site"
    assert staging.tree() == {"index.html": b"home", "site": None, "site/index.html": b"inner"}


def test_wrapped_directory_without_index_is_not_unwrapped(staging: Staging) -> None:
    result = staging.extract("tgz", tgz_bytes([("report/summary.html", b"s")]))
    assert result.root == ""
    assert result.warnings == [NO_INDEX]
    assert staging.tree() == {"report": None, "report/summary.html": b"s"}


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_missing_index_gives_a_warning(staging: Staging, kind: str) -> None:
    result = staging.extract(kind, site(kind, [("a.html", b"a"), ("b/c.html", b"c")]))
    assert result.warnings == [NO_INDEX]
    assert result.root == ""


def test_permissions_are_normalised_whatever_the_archive_and_umask_say(staging: Staging) -> None:
    tgz = tgz_bytes(
        [
            directory("open", mode=0o777),
            directory("closed", mode=0o700),
            member("index.html", b"x", mode=0o777),
            member("closed/secret.html", b"s", mode=0o600),
            member("open/run.sh", b"#!", mode=0o4755),
        ]
    )
    old = os.umask(0o077)
    try:
        staging.extract("tgz", tgz)
    finally:
        os.umask(old)
    modes = {path: stat.S_IMODE(os.lstat(staging.dest / path).st_mode) for path in staging.tree()}
    assert modes == {
        "open": 0o755, "closed": 0o755,
        "index.html": 0o644, "closed/secret.html": 0o644, "open/run.sh": 0o644,
    }  # fmt: skip


def test_zip_permissions_are_normalised(staging: Staging) -> None:
    data = zip_bytes(
        [
            (zip_info("index.html", 0o100777), b"x"),
            (zip_info("private/", 0o40700), b""),
            (zip_info("private/a.html", 0o100600), b"a"),
        ]
    )
    staging.extract("zip", data)
    assert stat.S_IMODE(os.lstat(staging.dest / "index.html").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(staging.dest / "private").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(staging.dest / "private/a.html").st_mode) == 0o644


def test_stored_and_empty_zip_entries_extract(staging: Staging) -> None:
    data = zip_bytes([("index.html", b"x" * 5000), ("empty.txt", b"")], zipfile.ZIP_STORED)
    assert staging.extract("zip", data).files == 2
    assert staging.tree()["empty.txt"] == b""


def test_tgz_with_several_gzip_members_and_zero_padding_extracts(staging: Staging) -> None:
    tar = tar_bytes([("index.html", b"home"), ("a.html", b"a")])
    data = gzip.compress(tar[:1024]) + gzip.compress(tar[1024:]) + bytes(300)
    assert staging.extract("tgz", data).files == 2


def test_zip_written_as_a_stream_with_data_descriptors_extracts(staging: Staging) -> None:
    data = streamed_zip_bytes(SITE + [("big.bin", os.urandom(300_000))])
    assert zipfile.ZipFile(io.BytesIO(data)).infolist()[0].flag_bits & 0x8
    assert staging.extract("zip", data).files == 4


def test_gnu_and_ustar_formats_extract(staging: Staging) -> None:
    long_name = "deep/" + "d" * 120 + "/index.html"
    data = tgz_bytes([("index.html", b"x"), (long_name, b"y")], fmt=tarfile.GNU_FORMAT)
    staging.extract("tgz", data)
    assert staging.tree()[long_name] == b"y"


def test_sniff_checks_content_not_name(tmp_path: Path) -> None:
    cases = {
        "site.tgz": tgz_bytes(SITE),
        "site.zip": zip_bytes(SITE),
        "empty.zip": zip_bytes([]),
        "page.html": b"<html></html>",
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    assert sniff("tgz", str(paths["site.tgz"]))
    assert not sniff("tgz", str(paths["site.zip"]))
    assert sniff("zip", str(paths["site.zip"]))
    assert sniff("zip", str(paths["empty.zip"]))
    assert not sniff("zip", str(paths["site.tgz"]))
    assert not sniff("tgz", str(paths["page.html"]))
    assert not sniff("zip", str(paths["page.html"]))


# -- hostile names --------------------------------------------------------------------------------

PARENT_REFERENCES = ["../evil.html", "a/../../evil.html", "a/b/../../../evil.html", "./../evil"]


@pytest.mark.parametrize("kind", ["tgz", "zip"])
@pytest.mark.parametrize("name", PARENT_REFERENCES)
def test_parent_reference_is_refused_and_nothing_written_outside(
    staging: Staging, kind: str, name: str
) -> None:
    error = staging.refuse(kind, site(kind, [("index.html", b"x"), (name, b"evil")]))
    assert listed(error) == {name: "parent reference"}
    assert error.status == 422
    assert "1 offending member" in error.detail and name in error.detail


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_all_parent_references_are_listed_in_one_error(staging: Staging, kind: str) -> None:
    entries = [("index.html", b"x")] + [(name, b"evil") for name in PARENT_REFERENCES]
    error = staging.refuse(kind, site(kind, entries))
    assert listed(error) == {name: "parent reference" for name in PARENT_REFERENCES}


@pytest.mark.parametrize("kind", ["tgz", "zip"])
@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "/tmp/evil.html", "//evil.html"])
def test_absolute_path_is_refused(staging: Staging, kind: str, name: str) -> None:
    if kind == "tgz":
        data = tgz_bytes([("index.html", b"x"), member(name, b"evil")])
    else:
        data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(name.encode(), b"evil")])
    error = staging.refuse(kind, data)
    assert listed(error) == {name: "absolute path"}


@pytest.mark.parametrize(
    "name, reason",
    [
        ("..\\evil.html", "backslash in name"),
        ("a\\b.html", "backslash in name"),
        ("C:/evil.html", "drive letter in name"),
        ("c:evil.html", "drive letter in name"),
    ],
)
def test_zip_backslash_and_drive_letter_names_are_refused(
    staging: Staging, name: str, reason: str
) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(name.encode(), b"evil")])
    error = staging.refuse("zip", data)
    assert listed(error) == {name: reason}


def test_tgz_backslash_name_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", tgz_bytes([("index.html", b"x"), ("..\\evil", b"e")]))
    assert listed(error) == {"..\\evil": "backslash in name"}


@pytest.mark.parametrize("kind", ["tgz", "zip"])
@pytest.mark.parametrize("name", ["a\nb.html", "tab\there.html", "evil\u202egnp.html", "\x7f.html"])
def test_control_and_format_characters_are_refused(staging: Staging, kind: str, name: str) -> None:
    error = staging.refuse(kind, site(kind, [("index.html", b"x"), (name, b"e")]))
    [(shown, reason)] = listed(error).items()
    assert reason == "control or format character in name"
    assert "\n" not in shown and "\u202e" not in shown  # escaped for display


def test_tgz_name_that_is_not_utf8_is_refused(staging: Staging) -> None:
    data = gzip.compress(
        raw_tar([raw_header(b"index.html", 1), b"x", raw_header(b"caf\xe9.html", 1), b"y"])
    )
    error = staging.refuse("tgz", data)
    assert listed(error) == {"caf\\xe9.html": "name is not valid UTF-8"}


def test_zip_name_that_is_not_utf8_is_refused(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"caf\xe9.html", b"y")])
    error = staging.refuse("zip", data)
    assert listed(error) == {"caf\\xe9.html": "name is not valid UTF-8"}


def test_zip_name_flagged_utf8_that_is_not_is_refused(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"caf\xe9.html", b"y", flags=0x800)])
    error = staging.refuse("zip", data)
    assert listed(error) == {"caf\\xe9.html": "name is not valid UTF-8"}


@pytest.mark.parametrize("kind", ["tgz", "zip"])
@pytest.mark.parametrize("name", ["\uff0e\uff0e/evil.html", "a/\uff0e\uff0e/../x", "a\uff0fb.html",
                                  "a\uff3cb.html", "\u2025/evil"])  # fmt: skip
def test_names_that_normalise_into_paths_are_refused(
    staging: Staging, kind: str, name: str
) -> None:
    error = staging.refuse(kind, site(kind, [("index.html", b"x"), (name, b"e")]))
    assert list(listed(error)) == [name]


def test_five_thousand_character_path_is_refused(staging: Staging) -> None:
    name = "/".join(["d" * 99] * 50) + ".html"
    error = staging.refuse("tgz", tgz_bytes([("index.html", b"x"), (name, b"e")]))
    [(shown, reason)] = listed(error).items()
    assert reason == "path longer than 1024 bytes"
    assert len(shown) < 300  # shortened for display


def test_too_long_component_and_too_deep_paths_are_refused(staging: Staging) -> None:
    deep = "/".join(["d"] * 33) + "/index.html"
    entries = [("index.html", b"x"), ("n" * 256 + ".html", b"e"), (deep, b"e")]
    error = staging.refuse("zip", zip_bytes(entries))
    assert sorted(listed(error).values()) == [
        "a name component is longer than 255 bytes",
        "more than 32 directories deep",
    ]


def test_path_limits_are_configurable(staging: Staging) -> None:
    limits = Limits(max_depth=1, max_path_bytes=20, max_component_bytes=10)
    entries = [("index.html", b"x"), ("a/b/c.html", b"e"), ("abcdefghijk", b"e"),
               ("abcdefghij/abcdefghij", b"e")]  # fmt: skip
    error = staging.refuse("tgz", tgz_bytes(entries), limits=limits)
    assert listed(error) == {
        "a/b/c.html": "more than 1 directories deep",
        "abcdefghijk": "a name component is longer than 10 bytes",
        "abcdefghij/abcdefghij": "path longer than 20 bytes",
    }


# -- member types ---------------------------------------------------------------------------------


def test_tgz_symlink_then_write_through_it_is_refused(staging: Staging) -> None:
    data = tgz_bytes(
        [
            ("index.html", b"x"),
            member("link", type=tarfile.SYMTYPE, linkname=str(staging.sentinel)),
            ("link/file", b"evil"),
        ]
    )
    error = staging.refuse("tgz", data)
    assert listed(error) == {
        "link": "symbolic link",
        "link/file": "its parent is the non-directory member link",
    }
    assert not os.path.lexists(staging.dest / "link")


def test_tgz_hard_link_to_a_file_outside_is_refused(staging: Staging) -> None:
    outside = staging.sentinel / "target"
    data = tgz_bytes(
        [("index.html", b"x"), member("passwd", type=tarfile.LNKTYPE, linkname=str(outside))]
    )
    error = staging.refuse("tgz", data)
    assert listed(error) == {"passwd": "hard link"}


@pytest.mark.parametrize(
    "type, reason",
    [
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "fifo"),
        (b"V", "unsupported member type b'V'"),
    ],
)
def test_tgz_devices_and_fifos_are_refused(staging: Staging, type: bytes, reason: str) -> None:
    data = tgz_bytes([("index.html", b"x"), member("dev", type=type, devmajor=1, devminor=3)])
    error = staging.refuse("tgz", data)
    assert listed(error) == {"dev": reason}


def gnu_sparse_header(name: bytes, extended: bool = False) -> bytes:
    header = bytearray(raw_header(name, 0, tarfile.GNUTYPE_SPARSE))
    header[257:265] = b"ustar  \0"
    header[482] = int(extended)
    return with_checksum(bytes(header))


def test_tgz_sparse_members_are_refused(staging: Staging) -> None:
    map_and_data = b"1\n0\n0\n".ljust(512, b"\0")
    pax_sparse = member("pax-holes", map_and_data, pax_headers={
        "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
        "GNU.sparse.name": "pax-holes", "GNU.sparse.realsize": "0",
    })  # fmt: skip
    pax_sparse_01 = member("holes-01", b"", pax_headers={
        "GNU.sparse.map": "0,0", "GNU.sparse.size": "0",
    })  # fmt: skip
    tar = raw_tar([raw_header(b"index.html", 1), b"x", gnu_sparse_header(b"holes")])[:-1024]
    data = gzip.compress(tar + tar_bytes([pax_sparse, pax_sparse_01, ("after.html", b"a")]))
    error = staging.refuse("tgz", data)
    assert listed(error) == {
        "holes": "sparse file", "pax-holes": "sparse file", "holes-01": "sparse file",
    }  # fmt: skip


def test_tgz_sparse_member_with_an_extended_map_is_refused(staging: Staging) -> None:
    tar = raw_tar([raw_header(b"index.html", 1), b"x", gnu_sparse_header(b"holes", True)])
    error = staging.refuse("tgz", gzip.compress(tar + bytes(512)))
    assert listed(error) == {"holes": "sparse file"}


@pytest.mark.parametrize(
    "mode, reason",
    [
        (stat.S_IFLNK | 0o777, "symbolic link"),
        (stat.S_IFCHR | 0o644, "character device"),
        (stat.S_IFIFO | 0o644, "fifo"),
        (stat.S_IFSOCK | 0o644, "socket"),
    ],
)
def test_zip_symlinks_and_special_files_are_refused(
    staging: Staging, mode: int, reason: str
) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"link", b"/etc/passwd", mode=mode)])
    error = staging.refuse("zip", data)
    assert listed(error) == {"link": reason}


def test_zip_encrypted_entry_is_refused(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"secret.html", b"s" * 12, flags=1)])
    error = staging.refuse("zip", data)
    assert listed(error) == {"secret.html": "encrypted"}


def test_zip_unsupported_compression_method_is_refused(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"a.html", b"a", method=9)])
    error = staging.refuse("zip", data)
    assert listed(error) == {"a.html": "unsupported compression method 9"}


# -- duplicates and collisions --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_duplicate_members_are_refused(staging: Staging, kind: str) -> None:
    entries = [("index.html", b"x"), ("a.html", b"1"), ("a.html", b"2")]
    if kind == "tgz":
        data = tgz_bytes(entries)
    else:  # zipfile warns about duplicates it writes
        data = raw_zip([RawEntry(name.encode(), content) for name, content in entries])
    error = staging.refuse(kind, data)
    assert listed(error) == {"a.html": "listed twice"}


def test_tgz_same_path_spelled_two_ways_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", tgz_bytes([("index.html", b"x"), ("./index.html", b"y")]))
    assert listed(error) == {"./index.html": "same path as index.html"}


def test_directory_listed_twice_is_refused(staging: Staging) -> None:
    data = tgz_bytes([("index.html", b"x"), directory("css"), directory("css")])
    error = staging.refuse("tgz", data)
    assert listed(error) == {"css": "listed twice"}


def test_file_and_directory_at_one_path_are_refused(staging: Staging) -> None:
    data = tgz_bytes([("index.html", b"x"), ("a", b"file"), directory("a")])
    error = staging.refuse("tgz", data)
    assert listed(error) == {"a": "both a file and a directory (see a)"}


def test_file_used_as_a_directory_later_is_refused(staging: Staging) -> None:
    data = zip_bytes([("index.html", b"x"), ("docs", b"file"), ("docs/a.html", b"a")])
    error = staging.refuse("zip", data)
    assert listed(error) == {"docs/a.html": "its parent is the non-directory member docs"}


def test_directory_made_implicitly_then_listed_as_file_is_refused(staging: Staging) -> None:
    data = zip_bytes([("index.html", b"x"), ("docs/a.html", b"a"), ("docs", b"file")])
    error = staging.refuse("zip", data)
    assert listed(error) == {"docs": "both a file and a directory (see docs/a.html)"}


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_case_collisions_are_refused_listing_both(staging: Staging, kind: str) -> None:
    entries = [("index.html", b"x"), ("A.html", b"1"), ("a.html", b"2")]
    error = staging.refuse(kind, site(kind, entries))
    reasons = listed(error)
    assert set(reasons) == {"A.html", "a.html"}
    assert "A.html" in reasons["a.html"] and "a.html" in reasons["A.html"]


def test_case_collision_between_directories_is_refused(staging: Staging) -> None:
    entries = [("index.html", b"x"), ("Docs/a.html", b"1"), ("docs/b.html", b"2")]
    error = staging.refuse("tgz", tgz_bytes(entries))
    assert set(listed(error)) == {"Docs/a.html", "docs/b.html"}


@pytest.mark.parametrize("first, second", [("file.html", "\ufb01le.html"),
                                           ("cafe\u0301.html", "caf\u00e9.html"),
                                           ("x.html", "\uff58.html")])  # fmt: skip
def test_nfkc_collisions_are_refused(staging: Staging, first: str, second: str) -> None:
    entries = [("index.html", b"x"), (first, b"1"), (second, b"2")]
    error = staging.refuse("zip", zip_bytes(entries))
    assert set(listed(error)) == {first, second}


# -- zip structure --------------------------------------------------------------------------------


def test_zip_entries_sharing_one_local_header_are_refused(staging: Staging) -> None:
    data = shared_data_zip([b"index.html", b"a.html", b"b.html"], bytes(1 << 20))
    error = staging.refuse("zip", data)
    reasons = listed(error)
    assert any("overlaps" in reason for reason in reasons.values())
    assert "a.html" in reasons and "b.html" in reasons


def test_zip_bomb_with_overlapping_entries_is_refused_before_writing(staging: Staging) -> None:
    data = overlapping_zip_bomb(count=20, kernel_size=8 << 20)
    error = staging.refuse("zip", data)
    assert error.status == 422
    assert len(error.extra["members"]) == 19
    assert all("overlaps" in entry["reason"] for entry in error.extra["members"])
    assert staging.tree() == {}


def test_zip_bomb_by_compression_ratio_is_refused_before_writing(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", bytes(64 << 20), method=8)])
    error = staging.refuse("zip", data, TooLarge)
    assert "200:1" in error.detail
    assert staging.tree() == {}


def test_zip_local_and_central_names_that_disagree_are_refused(staging: Staging) -> None:
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"a.html", b"a", local_name=b"../a")])
    error = staging.refuse("zip", data)
    assert listed(error) == {"a.html": "its local header names it ../a"}


def test_zip_lying_unicode_path_extra_field_is_refused(staging: Staging) -> None:
    extra = unicode_path_extra(b"a.html", "../../evil.html")
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry(b"a.html", b"a", extra=extra)])
    error = staging.refuse("zip", data)
    assert listed(error) == {"a.html": "its Unicode path extra field names it ../../evil.html"}


def test_zip_agreeing_unicode_path_extra_field_is_accepted(staging: Staging) -> None:
    extra = unicode_path_extra("é.html".encode(), "é.html")
    data = raw_zip([RawEntry(b"index.html", b"x"), RawEntry("é.html".encode(), b"e", extra=extra)])
    staging.extract("zip", data)
    assert staging.tree()["é.html"] == b"e"


def test_zip_with_a_bad_crc_is_refused(staging: Staging) -> None:
    data = bytearray(zip_bytes(SITE, zipfile.ZIP_STORED))
    at = data.index(b"<h1>home")
    data[at] ^= 0xFF
    error = staging.refuse("zip", bytes(data))
    assert "CRC" in error.detail


# -- corrupt and non-archives ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_truncated_archive_is_refused(staging: Staging, kind: str) -> None:
    entries = [(f"page{i}.html", os.urandom(2000)) for i in range(20)]
    data = site(kind, [("index.html", b"x")] + entries)
    error = staging.refuse(kind, data[: len(data) // 2])
    assert error.status == 422


def test_tgz_cut_at_the_gzip_trailer_is_refused(staging: Staging) -> None:
    data = tgz_bytes(SITE)
    error = staging.refuse("tgz", data[:-4])
    assert "corrupt gzip data" in error.detail


def test_tgz_with_a_bad_crc_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", corrupt_gzip_crc(tgz_bytes(SITE)))
    assert "corrupt gzip data" in error.detail


def test_tar_with_a_corrupt_header_in_the_middle_is_refused(staging: Staging) -> None:
    tar = bytearray(tar_bytes([("index.html", b"x"), ("b.html", b"b"), ("c.html", b"c")]))
    second = tar.index(b"b.html") // 512 * 512
    tar[second + 100] ^= 0x55  # the mode field: the checksum no longer matches
    error = staging.refuse("tgz", gzip.compress(bytes(tar)))
    assert "corrupt tar archive" in error.detail


def test_tar_with_data_after_the_end_marker_is_refused(staging: Staging) -> None:
    tar = tar_bytes([("index.html", b"x")]) + tar_bytes([("hidden.html", b"h")])
    error = staging.refuse("tgz", gzip.compress(tar))
    assert "after the end of the archive" in error.detail


def test_gzip_with_trailing_garbage_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", tgz_bytes(SITE) + b"garbage")
    assert "corrupt gzip data" in error.detail


def test_tar_member_with_a_negative_size_is_refused(staging: Staging) -> None:
    header = bytearray(raw_header(b"neg.html"))
    header[124:136] = b"-0000000001\0"
    tar = raw_tar([raw_header(b"index.html", 1), b"x", with_checksum(bytes(header))])
    error = staging.refuse("tgz", gzip.compress(tar))
    assert "negative size" in error.detail


def test_zero_padding_bomb_after_the_archive_is_stopped(staging: Staging) -> None:
    # Zeros after the end marker are padding, read only to check them: 1 GiB of them.
    data = gzip_with_zeros(tar_bytes([("index.html", b"x")]), 1 << 30)
    started = time.monotonic()
    error = staging.refuse("tgz", data, TooLarge)
    assert time.monotonic() - started < 5
    assert "200:1" in error.detail


def test_tar_with_a_huge_extended_header_is_refused(staging: Staging) -> None:
    pax = raw_header(b"././@PaxHeader", 64 << 20, tarfile.XHDTYPE)
    data = gzip.compress(raw_tar([pax, b"0" * 512]))
    error = staging.refuse("tgz", data)
    assert "extended header" in error.detail


@pytest.mark.parametrize("kind, expected", [("tgz", "not a gzip-compressed tar archive"),
                                            ("zip", "not a zip archive")])  # fmt: skip
def test_non_archive_with_the_right_name_is_refused(
    staging: Staging, kind: str, expected: str
) -> None:
    error = staging.refuse(kind, b"<html><body>not an archive</body></html>\n" * 10)
    assert error.detail.startswith(expected)


def test_gzip_of_something_else_than_tar_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", gzip.compress(b"<html>just a page</html>\n" * 100))
    assert error.detail.startswith("not a gzip-compressed tar archive")


def test_empty_gzip_is_refused(staging: Staging) -> None:
    error = staging.refuse("tgz", gzip.compress(b""))
    assert error.detail.startswith("not a gzip-compressed tar archive")


def test_zip_with_a_broken_central_directory_is_refused(staging: Staging) -> None:
    data = bytearray(zip_bytes(SITE))
    data[data.rindex(b"PK\x01\x02")] = ord("X")
    error = staging.refuse("zip", bytes(data))
    assert "corrupt zip archive" in error.detail


def test_zip_with_another_file_prepended_is_refused(staging: Staging) -> None:
    error = staging.refuse("zip", b"MZ-stub" * 100 + zip_bytes(SITE))
    assert error.detail.startswith("not a zip archive")


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_archive_with_only_directories_is_refused(staging: Staging, kind: str) -> None:
    if kind == "tgz":
        data = tgz_bytes([directory("a"), directory("a/b")])
    else:
        data = zip_bytes([("a/", b""), ("a/b/", b"")])
    error = staging.refuse(kind, data)
    assert error.detail == "archive refused: it holds no regular file"


def test_empty_zip_is_refused(staging: Staging) -> None:
    error = staging.refuse("zip", zip_bytes([]))
    assert error.detail == "archive refused: it holds no regular file"


# -- quantity limits ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gzip_bomb() -> bytes:
    return gzip_bomb_tgz(2 << 30)


def test_gzip_bomb_is_stopped_after_little_output(staging: Staging, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 3 << 20  # 2 GiB of zeros in about 2 MB
    started = time.monotonic()
    error = staging.refuse("tgz", gzip_bomb, TooLarge)
    assert time.monotonic() - started < 5
    assert error.status == 413
    assert "200:1" in error.detail
    assert sum(len(data or b"") for data in staging.tree().values()) < 16 << 20


def test_gzip_bomb_is_stopped_even_after_an_offence(staging: Staging, gzip_bomb: bytes) -> None:
    # Once a member is refused, data is only skipped; the ratio still has to stop the bomb.
    tar = tar_bytes([member("link", type=tarfile.SYMTYPE, linkname="/")])[:-1024]
    data = gzip.compress(tar) + gzip_bomb
    staging.refuse("tgz", data, TooLarge)


def test_gzip_bomb_builder_makes_a_valid_archive() -> None:
    with tarfile.open(fileobj=io.BytesIO(gzip_bomb_tgz(4 << 20))) as tar:
        [info] = tar.getmembers()
        extracted = tar.extractfile(info)
        assert extracted is not None
        assert extracted.read() == bytes(4 << 20)


def test_compressible_member_within_the_grace_is_accepted(staging: Staging) -> None:
    entries = [("index.html", os.urandom(2 << 20)), ("zeros.bin", bytes(900 << 10))]
    assert staging.extract("tgz", tgz_bytes(entries)).bytes == (2 << 20) + (900 << 10)


def test_one_member_over_the_ratio_is_refused_though_the_whole_is_not(staging: Staging) -> None:
    entries = [("index.html", os.urandom(4 << 20)), ("zeros.bin", bytes(2 << 20))]
    error = staging.refuse("tgz", tgz_bytes(entries), TooLarge)
    assert "member zeros.bin expands more than 200:1" in error.detail


def test_compression_ratio_limit_is_configurable(staging: Staging) -> None:
    entries = [("index.html", b"abc" * 100_000)]
    staging.refuse("tgz", tgz_bytes(entries), TooLarge,
                   Limits(max_ratio=10, ratio_grace=1000))  # fmt: skip


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_total_extracted_bytes_limit(staging: Staging, kind: str) -> None:
    entries = [("index.html", os.urandom(600)), ("b.html", os.urandom(600))]
    error = staging.refuse(kind, site(kind, entries), TooLarge, Limits(max_bytes=1000))
    assert "1000 bytes" in error.detail


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_member_limit(staging: Staging, kind: str) -> None:
    entries = [(f"{i}.html", b"x") for i in range(11)]
    error = staging.refuse(kind, site(kind, entries), TooLarge, Limits(max_members=10))
    assert "more than 10 members" in error.detail


@pytest.fixture(scope="session")
def empty_members_200k() -> bytes:
    return many_empty_members_tgz(200_000)


def test_200k_empty_members_stop_early_at_a_small_limit(
    fast_staging: Staging, empty_members_200k: bytes
) -> None:
    staging = fast_staging
    started = time.monotonic()
    staging.refuse("tgz", empty_members_200k, TooLarge, Limits(max_members=1000))
    assert time.monotonic() - started < 3
    assert len(os.listdir(staging.dest)) <= 1000


@pytest.mark.slow
def test_200k_empty_members_are_refused_by_the_default_member_limit(
    fast_staging: Staging, empty_members_200k: bytes
) -> None:
    staging = fast_staging
    started = time.monotonic()
    error = staging.refuse("tgz", empty_members_200k, TooLarge)
    assert time.monotonic() - started < 20
    assert "more than 100000 members" in error.detail


def test_zip_with_too_many_entries_is_refused_before_reading_them(staging: Staging) -> None:
    data = zip_bytes([(f"{i}.html", b"") for i in range(3000)], zipfile.ZIP_STORED)
    error = staging.refuse("zip", data, TooLarge, Limits(max_members=2000))
    assert staging.tree() == {}
    assert "2000" in error.detail


# -- error shape ----------------------------------------------------------------------------------


def test_refusal_lists_twenty_members_and_counts_the_rest(staging: Staging) -> None:
    entries = [("index.html", b"x")] + [(f"../{i}.html", b"e") for i in range(25)]
    error = staging.refuse("zip", zip_bytes(entries))
    assert len(error.extra["members"]) == 20
    assert error.extra["members"][0] == {"name": "../0.html", "reason": "parent reference"}
    assert error.detail.startswith("archive refused: 25 offending members: ../0.html (parent ")
    assert error.detail.endswith(", and 5 more")


def test_disk_full_is_reported_as_insufficient_storage(
    staging: Staging, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(InsufficientStorage):
        staging.extract("tgz", tgz_bytes(SITE))


def test_compressed_zip_member_is_read_in_full(staging: Staging) -> None:
    big = os.urandom(3 << 20)
    data = raw_zip([RawEntry(b"index.html", big, method=8)])
    assert len(deflate(big)) > len(big)  # incompressible
    staging.extract("zip", data)
    assert staging.tree()["index.html"] == big


# -- the fast header parser -----------------------------------------------------------------------

HEADER_FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
                 "uname", "gname", "devmajor", "devminor")  # fmt: skip


def header_blocks() -> Iterator[bytes]:
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for name, type in [
            ("index.html", tarfile.REGTYPE),
            ("dir/", tarfile.DIRTYPE),
            ("dir", tarfile.DIRTYPE),
            ("v7dir/", tarfile.AREGTYPE),
            ("caf\u00e9/na\u00efve.html", tarfile.REGTYPE),
            ("p" * 90 + "/" + "n" * 90 + ".html", tarfile.REGTYPE),  # ustar prefix
            ("link", tarfile.SYMTYPE),
        ]:
            info = tarfile.TarInfo(name)
            info.type = type
            info.size = 12345 if type == tarfile.REGTYPE else 0
            info.mode, info.uid, info.gid, info.mtime = 0o4755, 1000, 1001, 1_700_000_000
            info.uname, info.gname = "builder", "staff"
            if type == tarfile.SYMTYPE:
                info.linkname = "target"
            block = info.tobuf(fmt, "utf-8", "surrogateescape")
            yield block[-512:]  # the member's own header, after any extended header
    yield raw_header(b"caf\xe9.html", 7)
    yield raw_header(b"spaces.html", mode=b" 644   \0")


@pytest.mark.parametrize("block", list(header_blocks()), ids=lambda block: block[:40].decode(
    "utf-8", "replace").rstrip("\0"))  # fmt: skip
def test_fast_header_parser_agrees_with_tarfile(block: bytes) -> None:
    from artstore.archive import _plain_header, _StrictTarInfo

    expected = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    fast = _plain_header(_StrictTarInfo, block, "utf-8", "surrogateescape")
    if fast is None:
        assert expected.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
        return
    assert {f: getattr(fast, f) for f in HEADER_FIELDS} == {
        f: getattr(expected, f) for f in HEADER_FIELDS
    }


@pytest.mark.parametrize("field", [slice(124, 136), slice(148, 156), slice(100, 108)])
def test_fast_header_parser_leaves_odd_numbers_to_tarfile(field: slice) -> None:
    from artstore.archive import _plain_header, _StrictTarInfo

    block = bytearray(raw_header(b"index.html", 10))
    block[field] = b"\x80" + bytes(field.stop - field.start - 1)  # base-256, or a bad checksum
    assert _plain_header(_StrictTarInfo, bytes(block), "utf-8", "surrogateescape") is None
