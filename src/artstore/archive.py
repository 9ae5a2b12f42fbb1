"""Extraction of uploaded tgz and zip archives into a staging directory, safely.

Every archive rule of the contract is enforced here by our own code. ``tarfile`` and ``zipfile``
only parse headers and decompress; nothing is extracted through their extract methods, so safety
does not depend on the interpreter's tar filter (the interpreters we run on predate the 2025
tarfile fixes). Names are validated before any path is built, no link is ever created, and every
file is opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` below ``dest``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import re
import stat
import struct
import tarfile
import threading
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Protocol

from .errors import InsufficientStorage, TooLarge, Unprocessable
from .names import has_control_or_format

CHUNK = 1024 * 1024  # file data is copied in pieces of this size
MAX_LISTED = 20  # offending members listed in an error; the rest are counted
MAX_SHOWN_NAME = 200  # characters of a member name shown in an error
# Pax and GNU long-name headers are read whole into memory by tarfile; real ones are tiny.
MAX_EXTENDED_HEADER = 256 * 1024

NOT_TGZ = "not a gzip-compressed tar archive"
NOT_ZIP = "not a zip archive"
NO_INDEX = "no index.html at the top of the archive; the site has no start page"

GZIP_MAGIC = b"\x1f\x8b"
# A local file header, or the end record of an empty zip.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_DRIVE = re.compile(r"[A-Za-z]:")
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 8 * 1024**3  # total extracted bytes -> 413
    max_members: int = 100_000  # -> 413
    max_path_bytes: int = 1024  # per member -> offending, 422
    max_depth: int = 32  # directories in a member path -> offending, 422
    max_component_bytes: int = 255  # -> offending, 422
    max_ratio: int = 200  # compression ratio, per member and overall -> 413
    ratio_grace: int = 1024**2  # the ratio is only checked once more than this came out


@dataclass
class Extracted:
    files: int  # regular files written
    bytes: int  # bytes written
    root: str  # the single top-level directory that was unwrapped, "" if none
    warnings: list[str]
    # Every regular file written: its path below ``dest`` (after unwrapping) -> (sha256, size),
    # hashed as it was written.
    manifest: dict[str, tuple[str, int]] = field(default_factory=dict)


def sniff(kind: str, source: str) -> bool:
    """Whether ``source`` starts like an archive of ``kind`` ("tgz" or "zip")."""
    with open(source, "rb") as f:
        head = f.read(4)
    if kind == "tgz":
        return head[:2] == GZIP_MAGIC
    if kind == "zip":
        return head in ZIP_MAGICS
    raise ValueError(f"unknown archive kind {kind!r}")


def extract(kind: str, source: str, dest: str, limits: Limits) -> Extracted:
    """Extract the ``kind`` archive at ``source`` into the empty directory ``dest``.

    Raises Unprocessable (422) for a refused or corrupt archive, listing offending members in
    ``extra["members"]``; TooLarge (413) when a quantity limit is hit; InsufficientStorage (507)
    when the disk fills. On failure ``dest`` holds a partial tree the caller deletes.
    """
    if kind not in ("tgz", "zip"):
        raise ValueError(f"unknown archive kind {kind!r}")
    tree = _Tree(dest, limits)
    try:
        with open(source, "rb") as raw:
            if kind == "tgz":
                _extract_tgz(raw, tree)
            else:
                _extract_zip(raw, tree)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("no space left on the server to extract the archive") from exc
        raise
    return tree.finish()


def _display(name: str | bytes) -> str:
    """A member name as it can be shown in an error: bad bytes and control characters escaped."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    text = name.decode("utf-8", "backslashreplace")
    if not text.isascii() or _ASCII_CONTROL.search(text):
        text = "".join(
            f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text
        )
    if len(text) > MAX_SHOWN_NAME:
        text = text[:MAX_SHOWN_NAME] + "..."
    return text


def _fold(path: str) -> str:
    """The key under which two names count as the same: NFKC and case folded."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", path).casefold())


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: always set modes explicitly


class _Tree:
    """The tree being extracted: checks member names and clashes, and writes below ``dest``.

    Offences are collected so one error lists many of them; once there is one, nothing more is
    written. Paths are kept normalised: relative, "/"-separated, no empty or "." components.
    """

    def __init__(self, dest: str, limits: Limits) -> None:
        self.dest = dest
        self.limits = limits
        # path -> (kind, member name as listed); kind is file, dir, implied (a parent directory
        # no member listed, so far) or other (a refused member, kept so paths through it clash).
        self.kinds: dict[str, tuple[str, str]] = {}
        self.folded: dict[str, str] = {}  # _fold(path) -> path
        self.created: set[str] = {""}
        self.offences: list[dict[str, str]] = []
        self.offence_count = 0
        self.files = 0
        self.bytes = 0
        self.manifest: dict[str, tuple[str, int]] = {}
        # Modes are set explicitly only where the umask would change them: one syscall
        # fewer per member in the usual case (umask 022 or 0).
        umask = _current_umask()
        self.fix_file_mode = umask & 0o644 != 0
        self.fix_dir_mode = umask & 0o755 != 0

    def offend(self, name: str | bytes, reason: str) -> None:
        self.offence_count += 1
        if len(self.offences) < MAX_LISTED:
            self.offences.append({"name": _display(name), "reason": reason})

    def raise_if_refused(self) -> None:
        count = self.offence_count
        if not count:
            return
        shown = ", ".join(f"{o['name']} ({o['reason']})" for o in self.offences)
        more = count - len(self.offences)
        tail = f", and {more} more" if more else ""
        plural = "s" if count != 1 else ""
        raise Unprocessable(
            f"archive refused: {count} offending member{plural}: {shown}{tail}",
            members=list(self.offences),
        )

    def check(self, name: str, kind: str, refusal: str | None = None) -> str | None:
        """Validate and register a member; return its path if it is to be written, else None.

        ``kind`` is "file" or "dir"; a member refused for its type passes ``refusal``.
        """
        parts, problem = self._split(name, kind)
        if problem:
            self.offend(name, problem)
            return None
        if not parts:
            if kind != "dir":
                self.offend(name, "empty name")
            return None  # "." or "./": the root itself
        path = "/".join(parts)
        if len(parts) > 1 and not self._register_parents(name, parts):
            return None
        if not self._register(name, path, "other" if refusal else kind):
            return None
        if refusal:
            self.offend(name, refusal)
            return None
        return None if self.offence_count else path

    def _split(self, name: str, kind: str) -> tuple[list[str], str | None]:
        """The member name's path components, or why the name is refused."""
        limits = self.limits
        if "\\" in name:
            return [], "backslash in name"
        if name.startswith("/"):
            return [], "absolute path"
        if _DRIVE.match(name):
            return [], "drive letter in name"
        parts = [p for p in name.split("/") if p and p != "."]
        if ".." in parts:
            return [], "parent reference"
        if name.isascii():
            if _ASCII_CONTROL.search(name):
                return [], "control or format character in name"
            longest = max(map(len, parts), default=0)
            path_bytes = len(parts) - 1 + sum(map(len, parts))
        else:
            try:
                encoded = [p.encode("utf-8") for p in parts]
            except UnicodeEncodeError:
                return [], "name is not valid UTF-8"
            if has_control_or_format(name):
                return [], "control or format character in name"
            for part in parts:
                folded = unicodedata.normalize("NFKC", part)
                if folded in (".", "..") or "/" in folded or "\\" in folded:
                    return [], "a name component that Unicode normalisation turns into a path"
            longest = max(map(len, encoded), default=0)
            path_bytes = len(parts) - 1 + sum(map(len, encoded))
        if longest > limits.max_component_bytes:
            return [], f"a name component is longer than {limits.max_component_bytes} bytes"
        if path_bytes > limits.max_path_bytes:
            return [], f"path longer than {limits.max_path_bytes} bytes"
        if (len(parts) if kind == "dir" else len(parts) - 1) > limits.max_depth:
            return [], f"more than {limits.max_depth} directories deep"
        return parts, None

    def _register_parents(self, name: str, parts: list[str]) -> bool:
        parent = "/".join(parts[:-1])
        known = self.kinds.get(parent)
        if known is not None and known[0] in ("dir", "implied"):
            return True  # its own parents were registered with it
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            known = self.kinds.get(prefix)
            if known is None:
                if not self._claim(name, prefix, ("implied", name)):
                    return False
            elif known[0] not in ("dir", "implied"):
                self.offend(name, f"its parent is the non-directory member {_display(known[1])}")
                return False
        return True

    def _register(self, name: str, path: str, kind: str) -> bool:
        known = self.kinds.get(path)
        if known is None:
            return self._claim(name, path, (kind, name))
        if kind == "dir" and known[0] == "implied":
            self.kinds[path] = (kind, name)
            return True
        if known[0] == "implied" or (kind == "dir") != (known[0] == "dir"):
            reason = f"both a file and a directory (see {_display(known[1])})"
        elif known[1] == name:
            reason = "listed twice"
        else:
            reason = f"same path as {_display(known[1])}"
        self.offend(name, reason)
        return False

    def _claim(self, name: str, path: str, entry: tuple[str, str]) -> bool:
        key = _fold(path)
        other = self.folded.get(key)
        if other is not None:
            first = self.kinds[other][1]
            self.offend(name, f"collides with {_display(first)} ignoring case and normalisation")
            self.offend(first, f"collides with {_display(name)} ignoring case and normalisation")
            return False
        self.folded[key] = path
        self.kinds[path] = entry
        return True

    def make_dir(self, path: str) -> None:
        if path not in self.created:
            parent = path.rpartition("/")[0]
            if parent not in self.created:
                self.make_dir(parent)
            full = f"{self.dest}/{path}"
            os.mkdir(full, 0o755)
            if self.fix_dir_mode:
                os.chmod(full, 0o755)  # only we write below dest, and never a link
            self.created.add(path)

    def write_file(self, path: str, chunks: Iterable[bytes]) -> None:
        parent = path.rpartition("/")[0]
        if parent not in self.created:
            self.make_dir(parent)
        fd = os.open(f"{self.dest}/{path}", _FILE_FLAGS, 0o644)
        digest = hashlib.sha256()
        size = 0
        try:
            if self.fix_file_mode:
                os.fchmod(fd, 0o644)
            for chunk in chunks:
                digest.update(chunk)
                written = os.write(fd, chunk)
                if written < len(chunk):
                    view = memoryview(chunk)
                    while written < len(chunk):
                        written += os.write(fd, view[written:])
                size += len(chunk)
        finally:
            os.close(fd)
        self.bytes += size
        self.files += 1
        self.manifest[path] = (digest.hexdigest(), size)

    def finish(self) -> Extracted:
        self.raise_if_refused()
        if not self.files:
            raise Unprocessable("archive refused: it holds no regular file")
        root = ""
        warnings = []
        if self.kinds.get("index.html", ("",))[0] != "file":
            tops = [path for path in self.kinds if "/" not in path]
            if (
                len(tops) == 1
                and self.kinds[tops[0]][0] in ("dir", "implied")
                and self.kinds.get(tops[0] + "/index.html", ("",))[0] == "file"
            ):
                root = tops[0]
                self._unwrap(root)
            else:
                warnings.append(NO_INDEX)
        return Extracted(files=self.files, bytes=self.bytes, root=root, warnings=warnings,
                         manifest=self.manifest)

    def _unwrap(self, top: str) -> None:
        """Move the contents of the single top-level directory ``top`` up into ``dest``."""
        children = os.listdir(os.path.join(self.dest, top))
        # Park the directory under a name none of its children has, so a child named like the
        # directory itself can move up too.
        parked = ".unwrap"
        while parked in children:
            parked += "_"
        os.rename(os.path.join(self.dest, top), os.path.join(self.dest, parked))
        for child in children:
            os.rename(os.path.join(self.dest, parked, child), os.path.join(self.dest, child))
        os.rmdir(os.path.join(self.dest, parked))
        cut = len(top) + 1
        self.manifest = {path[cut:]: entry for path, entry in self.manifest.items()}


def _too_many_bytes(limits: Limits) -> TooLarge:
    return TooLarge(
        f"archive refused: it holds more than {limits.max_bytes} bytes (the extracted size limit)"
    )


# -- tgz ------------------------------------------------------------------------------------------


class _CorruptTar(Exception):
    """A damaged header. Deliberately no tarfile.HeaderError, which TarFile.next() swallows."""


_EXTENDED_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_TAR_FILE_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_TAR_REFUSALS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_PLAIN_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE})


def _octal(field: bytes) -> int | None:
    """tarfile.nti() for an octal field; None for base-256 and anything nti would refuse."""
    if field[0] in (0o200, 0o377):
        return None
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None


def _plain_header(
    cls: type[tarfile.TarInfo], buf: bytes, encoding: str, errors: str
) -> tarfile.TarInfo | None:
    """TarInfo.frombuf() for the common header: a file or directory with octal numbers and an
    unsigned checksum. It is a third of the cost per member; anything else returns None and goes
    to tarfile's own parser, whose result this matches field for field (the tests compare).
    """
    if len(buf) != tarfile.BLOCKSIZE or buf[156:157] not in _PLAIN_TYPES:
        return None
    (name, mode, uid, gid, size, mtime, chksum, type_, linkname, _, uname, gname, devmajor,
     devminor, prefix) = _HEADER.unpack(buf)  # fmt: skip
    parsed = [_octal(field) for field in (mode, uid, gid, size, mtime, chksum, devmajor, devminor)]
    numbers = [number for number in parsed if number is not None]
    if len(numbers) != len(parsed) or numbers[5] != 256 + sum(buf) - sum(chksum):
        return None
    info = cls()
    info.name = name.split(b"\0", 1)[0].decode(encoding, errors)
    (info.mode, info.uid, info.gid, info.size, info.mtime, info.chksum, info.devmajor,
     info.devminor) = numbers  # fmt: skip
    info.type = type_
    info.linkname = linkname.split(b"\0", 1)[0].decode(encoding, errors)
    info.uname = uname.split(b"\0", 1)[0].decode(encoding, errors)
    info.gname = gname.split(b"\0", 1)[0].decode(encoding, errors)
    if type_ == tarfile.AREGTYPE and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE  # old V7 tar
    if info.type == tarfile.DIRTYPE:
        info.name = info.name.rstrip("/")
    prefix_name = prefix.split(b"\0", 1)[0].decode(encoding, errors)
    if prefix_name:
        info.name = prefix_name + "/" + info.name
    return info


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo that stops at damaged headers and never reads unbounded metadata.

    TarFile.next() treats an invalid or truncated header after the first as the end of the
    archive, silently dropping the rest of it. And tarfile reads extended headers and sparse
    maps whole into memory before we see the member.
    """

    __slots__ = ()

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        info = _plain_header(cls, buf, encoding, errors)
        if info is not None:
            return info
        try:
            info = super().frombuf(buf, encoding, errors)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            raise _CorruptTar(str(exc)) from None
        if info.type in _EXTENDED_TYPES and info.size > MAX_EXTENDED_HEADER:
            raise _CorruptTar(f"an extended header of {info.size} bytes")
        if info.type == tarfile.GNUTYPE_SPARSE and buf[482]:
            # Old GNU sparse map continued in blocks of its own, which tarfile would collect.
            raise Unprocessable(
                f"archive refused: 1 offending member: {_display(info.name)} (sparse file)",
                members=[{"name": _display(info.name), "reason": "sparse file"}],
            )
        return info

    def _proc_gnusparse_10(self, next: Any, pax_headers: dict[str, str], tar: object) -> None:
        # A GNU 1.0 sparse map sits at the start of the member's data, of any length. The member
        # is refused anyway, so mark it sparse and leave the map to be skipped with the data.
        next.sparse = []


class _Gunzip:
    """The decompressed tar stream, read by tarfile, with the limits checked as it comes out.

    zlib checks each gzip member's CRC32 and length. Counting the compressed bytes zlib has
    consumed (not what a reader happened to buffer ahead) makes the ratio of each window of the
    stream exact, so a gzip bomb is stopped after little output even while its data is skipped.

    A thread inflates a few pieces ahead while the caller parses and writes: zlib releases the
    GIL, so this runs in parallel like ``gzip -d | tar -x``. The queue bounds how far it gets.
    """

    IN_CHUNK = 64 * 1024
    OUT_CHUNK = 256 * 1024
    AHEAD = 4  # pieces inflated ahead of the reader

    def __init__(self, raw: BinaryIO, limits: Limits) -> None:
        self._raw = raw
        self._limits = limits
        self._pieces: queue.Queue[tuple[bytes, int, int] | BaseException | None] = queue.Queue(
            self.AHEAD
        )
        self._stopping = False
        self._done = False
        self._buf = b""
        self._pos = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._member: str | None = ""
        self._member_in = 0
        self._member_out = 0
        self._thread = threading.Thread(target=self._produce, name="artstore-gunzip", daemon=True)
        self._thread.start()

    def __enter__(self) -> _Gunzip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the inflating thread; it must be gone before ``raw`` is closed."""
        self._stopping = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._pieces.get(timeout=0.1)  # unblock a pending put
        self._thread.join()

    def start_member(self, name: str | None) -> None:
        """Start the window of the per-member ratio: a member's, or (None) the end padding's."""
        self._member = name
        self._member_in = self.bytes_in
        self._member_out = self.bytes_out

    def read(self, size: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            if self._done:
                return b""
            piece = self._pieces.get()
            if piece is None or isinstance(piece, BaseException):
                self._done = True
                self._buf = b""
                if piece is None:
                    return b""
                raise piece
            self._buf, self.bytes_in, self.bytes_out = piece
            self._pos = 0
            self._check_ratio()
        start = self._pos
        if start == 0 and (size < 0 or size >= len(self._buf)):
            self._pos = len(self._buf)
            return self._buf
        end = len(self._buf) if size < 0 else start + size
        self._pos = min(end, len(self._buf))
        return self._buf[start:end]

    def _produce(self) -> None:
        try:
            for piece in self._inflate():
                if self._stopping:
                    return
                self._pieces.put(piece)
            self._pieces.put(None)
        except BaseException as exc:  # handed over to the reader, which raises it
            self._pieces.put(exc)

    def _inflate(self) -> Iterator[tuple[bytes, int, int]]:
        """Pieces of the tar stream, each with the input consumed and output made up to its end."""
        raw = self._raw
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw_read = 0
        bytes_out = 0
        while True:
            if inflater.eof:
                # Zero padding may follow a gzip member; anything else must be another member.
                data = inflater.unused_data.lstrip(b"\0")
                while not data:
                    data = raw.read(self.IN_CHUNK)
                    if not data:
                        return
                    raw_read += len(data)
                    data = data.lstrip(b"\0")
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif inflater.unconsumed_tail:
                data = inflater.unconsumed_tail
            else:
                data = raw.read(self.IN_CHUNK)
                if not data:
                    raise Unprocessable("archive refused: corrupt gzip data: it is truncated")
                raw_read += len(data)
            try:
                out = inflater.decompress(data, self.OUT_CHUNK)
            except zlib.error as exc:
                raise Unprocessable(f"archive refused: corrupt gzip data: {exc}") from None
            if out:
                bytes_out += len(out)
                pending = len(inflater.unconsumed_tail) + len(inflater.unused_data)
                yield out, raw_read - pending, bytes_out

    def _check_ratio(self) -> None:
        limits = self._limits
        out = self.bytes_out
        if out > limits.ratio_grace and out > limits.max_ratio * self.bytes_in:
            raise TooLarge(
                f"archive refused: it expands more than {limits.max_ratio}:1 "
                f"(the compression ratio limit)"
            )
        out -= self._member_out
        if out > limits.ratio_grace and out > limits.max_ratio * (self.bytes_in - self._member_in):
            what = "the padding after the archive"
            if self._member is not None:
                what = f"member {_display(self._member)}"
            raise TooLarge(
                f"archive refused: {what} expands more than {limits.max_ratio}:1 "
                f"(the compression ratio limit)"
            )


def _extract_tgz(raw: BinaryIO, tree: _Tree) -> None:
    if raw.read(2) != GZIP_MAGIC:
        raise Unprocessable(f"{NOT_TGZ}: the file does not start with the gzip signature")
    raw.seek(0)
    limits = tree.limits
    members = 0
    declared = 0  # bytes of all regular members, written or (after an offence) skipped
    with _Gunzip(raw, limits) as stream, _open_tar(stream) as tar:
        while True:
            member = _next_member(tar, members)
            if member is None:
                break
            tar.members.clear()  # a stream is read once; don't keep every header in memory
            members += 1
            if members > limits.max_members:
                raise TooLarge(
                    f"archive refused: more than {limits.max_members} members (the member limit)"
                )
            if member.size < 0:  # tarfile takes "-1" for a number
                raise Unprocessable("archive refused: corrupt tar archive: a negative size")
            if member.isreg():
                declared += member.size
                if declared > limits.max_bytes:
                    raise _too_many_bytes(limits)
            stream.start_member(member.name)
            _extract_tar_member(tar, member, tree)
        stream.start_member(None)
        _require_zero_padding(tar.fileobj)


# What tarfile raises on malformed input besides TarError (e.g. for a broken sparse map).
_TAR_PARSE_ERRORS = (_CorruptTar, tarfile.TarError, ValueError, IndexError, OverflowError,
                     RecursionError)  # fmt: skip


def _open_tar(stream: _Gunzip) -> tarfile.TarFile:
    try:
        return tarfile.open(
            mode="r|",
            fileobj=stream,
            tarinfo=_StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except _TAR_PARSE_ERRORS as exc:
        raise _tar_parse_error(exc, 0) from None


def _next_member(tar: tarfile.TarFile, members: int) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _TAR_PARSE_ERRORS as exc:
        raise _tar_parse_error(exc, members) from None


def _tar_parse_error(exc: Exception, members: int) -> Unprocessable:
    detail = "endless extended headers" if isinstance(exc, RecursionError) else str(exc)
    if not members:
        return Unprocessable(f"{NOT_TGZ}: the gzip data is not a tar stream ({detail})")
    return Unprocessable(f"archive refused: corrupt tar archive: {detail}")


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tree: _Tree) -> None:
    refusal = None
    if member.isdir():
        kind = "dir"
    elif member.type in _TAR_FILE_TYPES and not member.issparse():
        kind = "file"
    else:
        kind = "file"
        refusal = _TAR_REFUSALS.get(member.type, f"unsupported member type {member.type!r}")
        if member.issparse():
            refusal = "sparse file"
    path = tree.check(member.name, kind, refusal)
    if path is None:
        return  # tar.next() skips whatever data the member has
    if kind == "dir":
        tree.make_dir(path)
    elif member.size:
        # In a stream the data follows the header; reading it straight from the stream saves
        # the per-member file object extractfile() would build.
        if tar.fileobj.tell() != member.offset_data:
            raise Unprocessable("archive refused: corrupt tar archive: misplaced member data")
        tree.write_file(path, _tar_chunks(tar.fileobj, member.size))
    else:
        tree.write_file(path, ())


class _Readable(Protocol):
    def read(self, size: int) -> bytes: ...


def _tar_chunks(source: _Readable, size: int) -> Iterator[bytes]:
    while size > 0:
        chunk = source.read(min(size, CHUNK))
        if not chunk:
            raise Unprocessable("archive refused: corrupt tar archive: unexpected end of data")
        size -= len(chunk)
        yield chunk


def _require_zero_padding(stream: _Readable) -> None:
    """Read what follows the end-of-archive marker: only zeros may, up to the gzip end.

    Reading on to the end also makes zlib verify the CRC and length of the whole gzip data.
    """
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        if chunk.count(b"\0") != len(chunk):
            raise Unprocessable(
                "archive refused: corrupt tar archive: data after the end of the archive "
                "(a damaged header?)"
            )


# -- zip ------------------------------------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_EXTRA_HEADER = struct.Struct("<HH")

_ZIP_UTF8 = 0x800
_ZIP_ENCRYPTED = 0x1 | 0x40  # traditional and strong encryption
_ZIP_PATCHED = 0x20
_ZIP_DESCRIPTOR = 0x8
_ZIP_UNICODE_PATH = 0x7075
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
try:
    import bz2  # noqa: F401  (zipfile supports bzip2 only when bz2 is there)

    _ZIP_METHODS.add(zipfile.ZIP_BZIP2)
except ImportError:  # pragma: no cover - interpreters built without bz2
    pass
try:
    import lzma

    _ZIP_METHODS.add(zipfile.ZIP_LZMA)
    _DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (zlib.error, lzma.LZMAError)
except ImportError:  # pragma: no cover - interpreters built without lzma
    _DECOMPRESS_ERRORS = (zlib.error,)

# What reading an entry raises for bad data (bz2 raises OSError without an errno; see below).
_ZIP_READ_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    *_DECOMPRESS_ERRORS,
)

_ZIP_TYPE_REFUSALS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _corrupt_zip(detail: str) -> Unprocessable:
    return Unprocessable(f"archive refused: corrupt zip archive: {detail}")


def _extract_zip(raw: BinaryIO, tree: _Tree) -> None:
    limits = tree.limits
    size = os.fstat(raw.fileno()).st_size
    if raw.read(4) not in ZIP_MAGICS:
        raise Unprocessable(f"{NOT_ZIP}: the file does not start with a zip signature")
    start_dir, cd_size = _find_central_directory(raw, size)
    names = _walk_central_directory(raw, start_dir, cd_size, tree)
    tree.raise_if_refused()
    try:
        archive = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise _corrupt_zip(str(exc)) from None
    except (ValueError, struct.error) as exc:
        raise _corrupt_zip(f"unreadable central directory ({exc})") from None
    with archive:
        infos = archive.infolist()
        if [_raw_name(info) for info in infos] != names:
            raise _corrupt_zip("the central directory reads two different ways")
        plan = [(info, _scan_zip_entry(info, tree)) for info in infos]
        _check_zip_layout(raw, infos, start_dir, tree)
        tree.raise_if_refused()
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_bytes:
            raise _too_many_bytes(limits)
        if declared > limits.ratio_grace and declared > limits.max_ratio * size:
            raise TooLarge(
                f"archive refused: it expands more than {limits.max_ratio}:1 "
                f"(the compression ratio limit)"
            )
        plan.sort(key=lambda entry: entry[0].header_offset)  # read the file front to back
        for info, path in plan:
            if path is None:
                continue
            if _raw_name(info).endswith(b"/"):
                tree.make_dir(path)
            elif info.file_size:
                _check_member_ratio(info.file_size, info.compress_size, info.orig_filename, limits)
                with _open_zip_entry(archive, info) as source:
                    tree.write_file(path, _zip_chunks(source, info, limits))
            else:
                tree.write_file(path, ())


def _find_central_directory(raw: BinaryIO, size: int) -> tuple[int, int]:
    """Locate the central directory the way zipfile does: (its offset, its size)."""
    tail_size = min(size, _EOCD.size + 0xFFFF)
    raw.seek(size - tail_size)
    tail = raw.read(tail_size)
    at = tail.rfind(b"PK\x05\x06", 0, len(tail) - _EOCD.size + 4)
    if at < 0:
        raise Unprocessable(f"{NOT_ZIP}: no end of central directory record")
    _, disk, cd_disk, _, _, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    end = size - tail_size + at
    if end >= _EOCD64_LOCATOR.size:
        raw.seek(end - _EOCD64_LOCATOR.size)
        locator = raw.read(_EOCD64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07":
            end -= _EOCD64_LOCATOR.size + _EOCD64.size
            if end < 0:
                raise _corrupt_zip("broken zip64 end of central directory")
            raw.seek(end)
            record = raw.read(_EOCD64.size)
            if record[:4] != b"PK\x06\x06":
                raise _corrupt_zip("broken zip64 end of central directory")
            _, _, _, _, disk, cd_disk, _, _, cd_size, cd_offset = _EOCD64.unpack(record)
    if disk or cd_disk:
        raise Unprocessable("archive refused: multi-part zip archives are not supported")
    start = end - cd_size
    if start < 0 or cd_offset > start:
        raise _corrupt_zip("the central directory does not fit in the file")
    return start, cd_size


def _walk_central_directory(raw: BinaryIO, start: int, cd_size: int, tree: _Tree) -> list[bytes]:
    """The entries' names; stops at the member limit before zipfile loads them all.

    Also refuses what zipfile would not tell us about: names flagged UTF-8 that are not, and
    Unicode path extra fields that disagree with the name.
    """
    limit = tree.limits.max_members
    raw.seek(start)
    names: list[bytes] = []
    seen = 0
    while seen < cd_size:
        header = raw.read(_CENTRAL.size)
        if len(header) != _CENTRAL.size or header[:4] != b"PK\x01\x02":
            raise _corrupt_zip("broken central directory")
        if len(names) == limit:
            raise TooLarge(f"archive refused: more than {limit} members (the member limit)")
        fields = _CENTRAL.unpack(header)
        flags, name_size, extra_size, comment_size = fields[5], fields[12], fields[13], fields[14]
        name = raw.read(name_size)
        extra = raw.read(extra_size)
        raw.seek(comment_size, os.SEEK_CUR)
        names.append(name)
        if flags & _ZIP_UTF8:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                tree.offend(name, "name is not valid UTF-8")
        problem = _unicode_path_problem(name, extra)
        if problem:
            tree.offend(name, problem)
        seen += _CENTRAL.size + name_size + extra_size + comment_size
    return names


def _unicode_path_problem(name: bytes, extra: bytes) -> str | None:
    """Why an Unicode path extra field in ``extra`` contradicts ``name``, or None."""
    pos = 0
    while pos + _EXTRA_HEADER.size <= len(extra):
        tag, size = _EXTRA_HEADER.unpack_from(extra, pos)
        body = extra[pos + _EXTRA_HEADER.size : pos + _EXTRA_HEADER.size + size]
        if tag == _ZIP_UNICODE_PATH:
            if len(body) < 5 or body[0] != 1:
                return "malformed Unicode path extra field"
            if body[5:] != name:
                return f"its Unicode path extra field names it {_display(body[5:])}"
        pos += _EXTRA_HEADER.size + size
    return None


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The name bytes as stored in the central directory."""
    return info.orig_filename.encode("utf-8" if info.flag_bits & _ZIP_UTF8 else "cp437")


def _scan_zip_entry(info: zipfile.ZipInfo, tree: _Tree) -> str | None:
    """Check one entry's name and type; return the path to write it to, or None."""
    name = _raw_name(info).decode("utf-8", "surrogateescape")
    is_dir = name.endswith("/")
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    file_type = stat.S_IFMT(mode)
    refusal = None
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        refusal = _ZIP_TYPE_REFUSALS.get(file_type, "unsupported file type")
    elif file_type == stat.S_IFDIR and not is_dir:
        refusal = "a directory by its mode but a file by its name"
    elif info.flag_bits & _ZIP_ENCRYPTED:
        refusal = "encrypted"
    elif info.flag_bits & _ZIP_PATCHED:
        refusal = "compressed patched data"
    elif info.compress_type not in _ZIP_METHODS:
        refusal = f"unsupported compression method {info.compress_type}"
    elif is_dir and info.file_size:
        refusal = "a directory with data"
    return tree.check(name, "dir" if is_dir else "file", refusal)


def _check_zip_layout(
    raw: BinaryIO, infos: list[zipfile.ZipInfo], start_dir: int, tree: _Tree
) -> None:
    """Refuse entries whose data overlap or whose local header disagrees with the directory."""
    fd = raw.fileno()
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for i, info in enumerate(ordered):
        name = _raw_name(info)
        if info.header_offset < 0:
            raise _corrupt_zip(f"entry {_display(name)} starts before the file")
        # One small read per entry, not a buffer refill after every seek.
        header = os.pread(fd, _LOCAL.size + 512, info.header_offset)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise _corrupt_zip(f"no local header for {_display(name)}")
        fields = _LOCAL.unpack_from(header)
        name_size, extra_size = fields[10], fields[11]
        if _LOCAL.size + name_size + extra_size > len(header):
            header = os.pread(fd, _LOCAL.size + name_size + extra_size, info.header_offset)
        local_name = header[_LOCAL.size : _LOCAL.size + name_size]
        local_extra = header[_LOCAL.size + name_size : _LOCAL.size + name_size + extra_size]
        if local_name != name:
            tree.offend(name, f"its local header names it {_display(local_name)}")
        else:
            problem = _unicode_path_problem(name, local_extra)
            if problem:
                tree.offend(name, problem + " (local header)")
        end = info.header_offset + _LOCAL.size + name_size + extra_size + info.compress_size
        if info.flag_bits & _ZIP_DESCRIPTOR:
            end += 12  # the smallest data descriptor
        if i + 1 < len(ordered):
            following = ordered[i + 1]
            if end > following.header_offset:
                tree.offend(name, f"its data overlaps {_display(_raw_name(following))}")
        elif end > start_dir:
            tree.offend(name, "its data overlaps the central directory")


def _check_member_ratio(out: int, compressed: int, name: str, limits: Limits) -> None:
    if out > limits.ratio_grace and out > limits.max_ratio * compressed:
        raise TooLarge(
            f"archive refused: member {_display(name)} expands more than {limits.max_ratio}:1 "
            f"(the compression ratio limit)"
        )


def _open_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    try:
        return archive.open(info)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise _corrupt_zip(str(exc)) from None


def _zip_chunks(source: IO[bytes], info: zipfile.ZipInfo, limits: Limits) -> Iterator[bytes]:
    """The entry's data. zipfile checks the CRC once the entry has been read to its end."""
    out = 0
    while True:
        try:
            chunk = source.read(CHUNK)
        except _ZIP_READ_ERRORS as exc:
            raise _corrupt_zip(f"{_display(info.orig_filename)}: {exc}") from None
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise _corrupt_zip(f"{_display(info.orig_filename)}: {exc}") from None  # bz2
        if not chunk:
            break
        out += len(chunk)
        _check_member_ratio(out, info.compress_size, info.orig_filename, limits)
        yield chunk
    if out != info.file_size:
        raise _corrupt_zip(f"{_display(info.orig_filename)}: size differs from the directory")
