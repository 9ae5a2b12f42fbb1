"""Builders of tgz and zip archives for the tests, well-formed and hostile.

Valid archives come from tarfile and zipfile. Hostile zips are assembled from raw records, since
zipfile will not write overlapping entries, disagreeing names or lying extra fields.
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass

ZEROS_MIB = bytes(1024 * 1024)


# -- tar ------------------------------------------------------------------------------------------


def member(name: str, data: bytes = b"", *, type: bytes = tarfile.REGTYPE, **attrs) -> tuple:
    """One tar member: ``(TarInfo, data)``; attrs set TarInfo fields (mode, linkname, ...)."""
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = 0o755 if type == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    if type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def directory(name: str, **attrs) -> tuple:
    return member(name, type=tarfile.DIRTYPE, **attrs)


def tar_bytes(members: list, *, fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8") -> bytes:
    """An uncompressed tar of ``members``, given as ``(TarInfo, data)`` pairs or (name, data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding=encoding) as tar:
        for entry in members:
            info, data = entry if isinstance(entry[0], tarfile.TarInfo) else member(*entry)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tgz_bytes(members: list, **kwargs) -> bytes:
    return gzip.compress(tar_bytes(members, **kwargs), compresslevel=6, mtime=0)


def raw_header(
    name: bytes, size: int = 0, type: bytes = tarfile.REGTYPE, mode: bytes = b"0000644\0"
) -> bytes:
    """A ustar header block with exactly these name bytes (no encoding applied)."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 1_700_000_000
    block[156:157] = type
    block[257:265] = b"ustar\x0000"
    return with_checksum(bytes(block))


def with_checksum(block: bytes) -> bytes:
    """A header block with its checksum recomputed after an edit."""
    fixed = bytearray(block)
    fixed[148:156] = b" " * 8
    fixed[148:156] = b"%06o\0 " % sum(fixed)
    return bytes(fixed)


class Unseekable(io.RawIOBase):
    """A write-only stream without seek, so zipfile writes data descriptors as when streaming."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)


def streamed_zip_bytes(entries: list) -> bytes:
    """A zip written to a pipe-like stream: every entry has a data descriptor."""
    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            with archive.open(name, "w") as target:
                target.write(data)
    return bytes(sink.data)


def raw_tar(blocks: list[bytes]) -> bytes:
    """Header and data blocks as given, followed by the end-of-archive marker."""
    body = b"".join(block + bytes(-len(block) % 512) for block in blocks)
    return body + bytes(1024)


def many_empty_members_tgz(count: int) -> bytes:
    """A tgz of ``count`` empty files f0000000, f0000001, ... built block by block (fast)."""
    template = bytearray(raw_header(b"f0000000"))
    base = sum(template) - sum(template[148:156]) + 8 * ord(" ") - 7 * ord("0")
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = []
    batch = []
    for i in range(count):
        digits = b"%07d" % i
        template[1:8] = digits
        template[148:156] = b"%06o\0 " % (base + sum(digits))
        batch.append(bytes(template))
        if len(batch) == 4096:
            out.append(compressor.compress(b"".join(batch)))
            batch = []
    out.append(compressor.compress(b"".join(batch) + bytes(1024)))
    out.append(compressor.flush())
    return b"".join(out)


def gzip_with_zeros(head: bytes, size: int, tail: bytes = b"") -> bytes:
    """gzip of ``head``, ``size`` zero bytes (a multiple of 1 MiB) and ``tail``, made quickly.

    After a full flush the compressor starts afresh, so every flushed MiB of zeros deflates to
    the same bytes: one is made and repeated.
    """
    count, rest = divmod(size, len(ZEROS_MIB))
    assert not rest
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(ZEROS_MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.compress(tail) + compressor.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(ZEROS_MIB, crc)
    crc = zlib.crc32(tail, crc)
    length = len(head) + size + len(tail)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<LL", crc, length & 0xFFFFFFFF)
    return gzip_header + start + block * count + end + trailer


def gzip_bomb_tgz(size: int) -> bytes:
    """A tgz holding one file of ``size`` zero bytes (a multiple of 1 MiB), without making it."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    return gzip_with_zeros(info.tobuf(tarfile.GNU_FORMAT), size, bytes(1024))


def corrupt_gzip_crc(data: bytes) -> bytes:
    """``data`` (one gzip member) with its CRC32 trailer changed."""
    crc = struct.unpack("<L", data[-8:-4])[0]
    return data[:-8] + struct.pack("<L", crc ^ 0xFFFFFFFF) + data[-4:]


# -- zip ------------------------------------------------------------------------------------------


def zip_bytes(entries: list, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip made by zipfile; entries are ``(name or ZipInfo, data)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buf.getvalue()


def zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    """A ZipInfo made on unix with ``mode`` (type and permission bits)."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = mode << 16
    if stat.S_ISDIR(mode):
        info.external_attr |= 0x10
    return info


@dataclass
class RawEntry:
    """One zip entry written record by record, with every field under the test's control."""

    name: bytes
    data: bytes = b""
    method: int = 0  # 0 stored, 8 deflated
    flags: int = 0
    extra: bytes = b""  # in the local header and the central directory
    local_name: bytes | None = None  # when the local header should say something else
    mode: int = 0o100644
    create_system: int = 3


_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_EOCD = struct.Struct("<4s4H2LH")


def _local(name: bytes, extra: bytes, flags: int, method: int, crc: int, csize: int, size: int):
    header = _LOCAL.pack(
        b"PK\x03\x04", 20, 0, flags, method, 0, 0x5821, crc, csize, size, len(name), len(extra)
    )
    return header + name + extra


def _central(entry: RawEntry, crc: int, csize: int, size: int, offset: int) -> bytes:
    header = _CENTRAL.pack(
        b"PK\x01\x02", 20, entry.create_system, 20, 0, entry.flags, entry.method, 0, 0x5821,
        crc, csize, size, len(entry.name), len(entry.extra), 0, 0, 0, entry.mode << 16, offset,
    )  # fmt: skip
    return header + entry.name + entry.extra


def _end(count: int, central: bytes, offset: int) -> bytes:
    return _EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(central), offset, 0)


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def raw_zip(entries: list[RawEntry]) -> bytes:
    body = bytearray()
    central = bytearray()
    for entry in entries:
        payload = deflate(entry.data) if entry.method == 8 else entry.data
        crc = zlib.crc32(entry.data)
        offset = len(body)
        local_name = entry.name if entry.local_name is None else entry.local_name
        body += _local(local_name, entry.extra, entry.flags, entry.method, crc, len(payload),
                       len(entry.data))  # fmt: skip
        body += payload
        central += _central(entry, crc, len(payload), len(entry.data), offset)
    return bytes(body + central + _end(len(entries), central, len(body)))


def unicode_path_extra(name: bytes, unicode_name: str) -> bytes:
    """An Info-ZIP Unicode Path extra field (0x7075) for an entry whose header says ``name``."""
    body = struct.pack("<BL", 1, zlib.crc32(name)) + unicode_name.encode("utf-8")
    return struct.pack("<HH", 0x7075, len(body)) + body


def shared_data_zip(names: list[bytes], data: bytes) -> bytes:
    """Several central directory entries, all pointing at one local header and its data."""
    payload = deflate(data)
    crc = zlib.crc32(data)
    body = _local(names[0], b"", 0, 8, crc, len(payload), len(data)) + payload
    central = b"".join(
        _central(RawEntry(name, method=8), crc, len(payload), len(data), 0) for name in names
    )
    return body + central + _end(len(names), central, len(body))


def overlapping_zip_bomb(count: int, kernel_size: int) -> bytes:
    """A zip bomb after David Fifield's "better zip bomb": entries whose data overlap.

    Entry i's deflate stream quotes the local headers of entries i+1.. in stored blocks and ends
    in one shared kernel of ``kernel_size`` zeros, so each entry expands to the kernel (plus the
    quoted headers) while the file holds the kernel once.
    """
    kernel = deflate(bytes(kernel_size))
    names = [b"%04d.html" % i for i in range(count)]
    headers: list[bytes] = [b""] * count
    expanded = bytes(kernel_size)
    # Built from the last entry back: each entry's output holds the following local headers.
    suffix = b""
    crcs, sizes = [0] * count, [0] * count
    for i in reversed(range(count)):
        output = suffix + expanded
        crcs[i], sizes[i] = zlib.crc32(output), len(output)
        quoted_len = sum(len(h) + 5 for h in headers[i + 1 :])
        headers[i] = _local(names[i], b"", 0, 8, crcs[i], quoted_len + len(kernel), sizes[i])
        suffix = headers[i] + suffix
    body = bytearray()
    offsets = []
    for i, header in enumerate(headers):
        offsets.append(len(body))
        body += header
        if i + 1 < count:
            quoted = len(headers[i + 1])
            body += struct.pack("<BHH", 0, quoted, quoted ^ 0xFFFF)  # a stored, non-final block
    body += kernel
    central = bytearray()
    for i, name in enumerate(names):
        csize = len(body) - offsets[i] - len(headers[i])
        central += _central(RawEntry(name, method=8), crcs[i], csize, sizes[i], offsets[i])
    return bytes(body + central + _end(count, central, len(body)))


def site_tgz(files: dict[str, bytes], prefix: str = "") -> bytes:
    """A gzip'd tar of ``files`` (path -> content), each path under ``prefix``."""
    return tgz_bytes([member(prefix + name, data) for name, data in files.items()])


def site_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
