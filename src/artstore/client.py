"""The artstore client: every call the ``artstore`` command makes to a server.

``ArtstoreClient`` speaks HTTP through one ``requests.Session`` and raises one error
type, ``ClientError``, carrying the HTTP status (or None when no answer came); the CLI
maps it to an exit status. Reads and deletes are retried with backoff; uploads and other
POSTs never are, because a silent double publish is worse than a failed CI step.

``push`` sends a file as it is, with its sha256. A directory is packed on the fly into a
tar.gz or a zip by a thread that hands chunks to the upload through a small bounded queue,
so memory stays flat and nothing is written to disk, whatever the size of the directory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import queue
import re
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional
from urllib.parse import quote

import requests

from . import __version__
from .errors import BadRequest
from .names import check_name

CHUNK = 1024 * 1024
QUEUED_CHUNKS = 4  # at most this many packed chunks wait for the network
RETRY_DELAYS = (0.5, 1.0, 2.0)
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
# The server checks and extracts a whole archive before it answers an upload.
UPLOAD_READ_TIMEOUT = 3600.0
RESERVED_QUERY = ("filename", "sha256")  # query parameters of a raw PUT that are not metadata
PACKABLE = ("tgz", "zip")

# (called with bytes done, total bytes or None when unknown)
Progress = Callable[[int, Optional[int]], None]


class ClientError(Exception):
    """A call that did not succeed: ``status`` is the HTTP status, None when no answer came.

    ``problem`` is the server's problem document (``type``, ``title``, ``detail``, and any
    list such as ``items``), when there was one.
    """

    def __init__(self, status: int | None, message: str,
                 problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problem = problem or {}


class UsageError(ClientError):
    """The call cannot be made as asked (a bad name, a directory for an html item, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


@dataclass(frozen=True)
class Pushed:
    """What ``push`` published: the item's type and the server's answer."""

    kind: str
    answer: dict[str, Any]


def ci_metadata(environ: Mapping[str, str]) -> dict[str, str]:
    """``commit``, ``branch`` and ``pipeline`` from GitHub Actions, GitLab CI or Jenkins."""
    github_run = ""
    if all(environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")):
        github_run = (f"{environ['GITHUB_SERVER_URL']}/{environ['GITHUB_REPOSITORY']}"
                      f"/actions/runs/{environ['GITHUB_RUN_ID']}")
    sources = {
        "commit": (environ.get("GITHUB_SHA"), environ.get("CI_COMMIT_SHA"),
                   environ.get("GIT_COMMIT")),
        "branch": (environ.get("GITHUB_REF_NAME"), environ.get("CI_COMMIT_REF_NAME"),
                   environ.get("GIT_BRANCH")),
        "pipeline": (github_run, environ.get("CI_PIPELINE_URL"), environ.get("BUILD_URL")),
    }
    found = {key: next((v for v in values if v), "") for key, values in sources.items()}
    return {key: value for key, value in found.items() if value}


def check_names(*names: str) -> None:
    """Refuse a bad project or item name here: a URL would mangle ``..`` before sending."""
    for name in names:
        try:
            check_name(name)
        except BadRequest as exc:
            raise UsageError(exc.detail) from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with _readable(path), open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ the client


class ArtstoreClient:
    """The artstore API at ``url`` (its root, e.g. ``https://ci.example.com/artstore``)."""

    retry_delays = RETRY_DELAYS

    def __init__(self, url: str, token: str | None = None, *,
                 session: requests.Session | None = None) -> None:
        if not re.match(r"https?://[^/]", url):
            raise UsageError(f"the URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"artstore-client/{__version__}"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ArtstoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ projects

    def list_projects(self) -> list[dict[str, Any]]:
        return list(self._json("GET", [])["projects"])

    def get_project(self, project: str) -> dict[str, Any]:
        return self._json("GET", [project])

    def create_project(self, project: str, config: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", [project], json=config, expect=201)

    def update_project(self, project: str, config: dict[str, Any],
                       prune: bool = False) -> dict[str, Any]:
        params = {"prune": "true"} if prune else None
        return self._json("PUT", [project], json=config, params=params)

    def delete_project(self, project: str) -> None:
        self._call("DELETE", [project], expect=204)

    # --------------------------------------------------------------- items

    def get_item(self, project: str, item: str) -> dict[str, Any]:
        return self._json("GET", [project, item])

    def item_type(self, project: str, item: str) -> str:
        items = self.get_project(project)["items"]
        if item not in items:
            names = sorted(items)
            detail = (f"project {project!r} has no item {item!r}; "
                      + (f"its items: {', '.join(names)}" if names else "it has no items"))
            raise ClientError(404, f"HTTP 404: {detail}", {
                "title": "Not Found", "status": 404, "detail": detail, "items": names})
        return str(items[item]["type"])

    def delete_file(self, project: str, item: str, filename: str) -> None:
        """Remove one file from a collection (then a file of that name can be pushed)."""
        check_names(project, item)
        if filename in ("", ".", ".."):
            raise UsageError(f"{filename!r} is not a file name")
        self._call("DELETE", [project, item, filename], expect=204)

    def rollback(self, project: str, item: str, release: str | None = None) -> dict[str, Any]:
        body = {"release": release} if release else None
        return self._json("POST", [project, item, "rollback"], json=body)

    # -------------------------------------------------------------- tokens

    def create_token(self, project: str) -> dict[str, Any]:
        return self._json("POST", [project, "_tokens"], expect=201)

    def list_tokens(self, project: str) -> list[dict[str, Any]]:
        return list(self._json("GET", [project, "_tokens"])["tokens"])

    def revoke_token(self, project: str, token_id: str) -> None:
        self._call("DELETE", [project, "_tokens", token_id], expect=204)

    def whoami(self) -> dict[str, Any]:
        """``{"admin": bool, "project": name or None}`` for this client's token."""
        return self._json("GET", ["_whoami"])

    def check_may_push(self, project: str) -> None:
        """Refuse a push the token cannot make before any body is sent.

        A server refuses a wrong token at once, but the client would still send the whole
        body (and through a proxy the refusal may even come back as a 502).
        """
        try:
            who = self.whoami()
        except ClientError as exc:
            if exc.status == 404:
                return  # a server older than /_whoami: the upload itself is checked
            raise
        if not who.get("admin") and who.get("project") != project:
            detail = (f"this token may not change project {project!r} (it is a token of "
                      f"project {who.get('project')!r})")
            raise ClientError(403, f"HTTP 403: {detail}",
                              {"title": "Forbidden", "status": 403, "detail": detail})

    # ---------------------------------------------------------------- push

    def push(self, project: str, item: str, path: Path, metadata: Mapping[str, str],
             on_progress: Progress | None = None) -> Pushed:
        """Publish ``path`` to ``project/item``: the item's type and the server's answer.

        The token is checked first, so a refused one sends nothing. A file goes as it is,
        with its sha256; a directory is packed on the fly for a tgz or zip item. The
        answer's ``sha256`` is what the server received.
        """
        check_names(project, item)
        clash = sorted(set(metadata) & set(RESERVED_QUERY))
        if clash:
            raise UsageError(f"{clash[0]!r} cannot be a metadata key: the upload uses it")
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        self.check_may_push(project)
        kind = self.item_type(project, item)
        if path.is_dir():
            if kind not in PACKABLE:
                raise UsageError(f"{project}/{item} is {'an' if kind == 'html' else 'a'} {kind} "
                                 f"item, which takes one file; {path} is a directory (only tgz "
                                 "and zip items take one)")
            return Pushed(kind, self._push_directory(project, item, path, kind, metadata,
                                                     on_progress))
        if not path.is_file():
            raise UsageError(f"{path} is not a regular file or a directory")
        return Pushed(kind, self._push_file(project, item, path, metadata, on_progress))

    def _push_file(self, project: str, item: str, path: Path, metadata: Mapping[str, str],
                   on_progress: Progress | None) -> dict[str, Any]:
        sha256 = sha256_file(path)
        with _readable(path), open(path, "rb") as file:
            body = _FileBody(file, os.fstat(file.fileno()).st_size, on_progress)
            try:
                return self._json("PUT", [project, item], data=body, expect=201,
                                  params={**metadata, "filename": path.name},
                                  headers={"X-Checksum-Sha256": sha256},
                                  timeout=UPLOAD_READ_TIMEOUT)
            except _SourceError as exc:
                raise UsageError(f"cannot send {path}: {exc.reason}") from None

    def _push_directory(self, project: str, item: str, path: Path, kind: str,
                        metadata: Mapping[str, str],
                        on_progress: Progress | None) -> dict[str, Any]:
        entries = scan_directory(path)
        if not any(not e.is_dir for e in entries):
            raise UsageError(f"{path} holds no file to publish")
        stream = PackedStream(entries, kind, on_progress)
        try:
            answer = self._json("PUT", [project, item], data=iter(stream), expect=201,
                                params=dict(metadata), timeout=UPLOAD_READ_TIMEOUT,
                                headers={"Content-Type": _ARCHIVE_TYPES[kind]})
        except _SourceError as exc:
            raise UsageError(f"cannot pack {path}: {exc.reason}") from None
        finally:
            stream.close()
        if answer.get("sha256") != stream.sha256:
            raise ClientError(201, f"the server reports sha256 {answer.get('sha256')} but "
                                   f"{stream.sha256} was sent; check {answer.get('url')}")
        return answer

    # ---------------------------------------------------------------- HTTP

    def _json(self, method: str, parts: list[str], **kwargs: Any) -> dict[str, Any]:
        response = self._call(method, parts, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ClientError(response.status_code,
                              f"{method} {response.url} answered HTTP {response.status_code} "
                              "without the expected JSON; is the URL the API root "
                              "(e.g. https://host/artstore)?")
        return body

    def _call(self, method: str, parts: list[str], *, expect: int = 200,
              timeout: float = READ_TIMEOUT, **kwargs: Any) -> requests.Response:
        """One request; GET and DELETE are retried on connection errors and 5xx answers."""
        url = self.url + "/" + "/".join(quote(p, safe="") for p in parts)
        tries = 1 + (len(self.retry_delays) if method in ("GET", "DELETE") else 0)
        for attempt in range(tries):
            try:
                response = self.session.request(method, url, allow_redirects=False,
                                                timeout=(CONNECT_TIMEOUT, timeout), **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                tls = _tls_failure(self.url, exc)
                if tls:  # not a passing failure: a retry would fail the same way
                    raise ClientError(None, tls) from None
                error = ClientError(None, _no_answer(self.url, exc, attempt + 1))
            except requests.RequestException as exc:
                raise ClientError(None, f"{method} {url} failed: {exc}") from None
            else:
                if response.status_code == expect:
                    return response
                error = _answer_error(response)
                if response.status_code < 500:
                    break
            if attempt + 1 < tries:
                self.sleep(self.retry_delays[attempt])
        raise error


def _no_answer(url: str, exc: Exception, tries: int) -> str:
    reasons = re.findall(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if isinstance(exc, requests.ReadTimeout):
        reason = "no answer in time"
    elif reasons:
        reason = reasons[-1].strip()
    else:
        reason = type(exc).__name__
    where = "cannot connect to" if isinstance(exc, requests.ConnectionError) else "no answer from"
    return f"{where} {url}: {reason}" + (f" (tried {tries} times)" if tries > 1 else "")


def _tls_failure(url: str, exc: Exception) -> str | None:
    """What went wrong in the TLS handshake, with a hint; None if it was not that."""
    seen: BaseException | None = exc
    while seen is not None:
        # requests reports a handshake that timed out as a read timeout: a plain-http
        # server may wait for a request line that never comes (gunicorn 23 does).
        if "handshake operation timed out" in str(seen):
            return (f"TLS handshake with {url} failed: no answer in time; is the server "
                    "plain http://?")
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, requests.exceptions.SSLError):
        return None
    text = str(exc)
    reasons = re.findall(r"\] ?([^\]()]+?) \(_ssl\.c", text)
    reason = reasons[-1].strip() if reasons else type(exc).__name__
    if re.search(r"wrong.version.number|record.layer.failure|packet length too long",
                 text, re.I):
        return (f"TLS handshake with {url} failed: is the server plain http://? "
                f"(the answer was not TLS: {reason})")
    return f"TLS handshake with {url} failed: {reason}"


def _answer_error(response: requests.Response) -> ClientError:
    """The server's problem+json ``detail`` (and any list it carries) as one message."""
    status = response.status_code
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        lines = [problem["detail"]]
        for key, value in problem.items():
            if isinstance(value, list) and value:
                lines += [f"  {key}: {entry}" for entry in value[:20]]
                if len(value) > 20:
                    lines.append(f"  ... and {len(value) - 20} more")
        return ClientError(status, f"HTTP {status}: " + "\n".join(lines), problem)
    if 300 <= status < 400:
        message = (f"redirected to {response.headers.get('Location')}; is the URL the API root "
                   "(e.g. https://host/artstore)?")
    elif status >= 500:
        message = f"{response.reason or 'server error'} from {response.url}"
    else:
        message = (f"{response.reason or 'unexpected answer'} from {response.url} (not an "
                   "artstore answer; is the URL the API root, e.g. https://host/artstore?)")
    return ClientError(status, f"HTTP {status}: {message}")


# ----------------------------------------------------------- upload bodies


_ARCHIVE_TYPES = {"tgz": "application/gzip", "zip": "application/zip"}


class _FileBody:
    """A file as a request body of known length, read in large chunks.

    Exactly ``size`` bytes are sent: a file that shrinks meanwhile aborts the upload
    rather than leave the server waiting for bytes that never come.
    """

    def __init__(self, file: BinaryIO, size: int, on_progress: Progress | None) -> None:
        self.file = file
        self.size = size
        self.on_progress = on_progress

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        done = 0
        while done < self.size:
            try:
                chunk = self.file.read(min(CHUNK, self.size - done))
            except OSError as exc:
                raise _SourceError(exc.strerror or str(exc)) from None
            if not chunk:
                raise _SourceError("the file shrank while it was being uploaded")
            done += len(chunk)
            if self.on_progress:
                self.on_progress(done, self.size)
            yield chunk


@dataclass(frozen=True)
class Entry:
    """One directory or file to pack: where it is, and its name in the archive."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime: float


def scan_directory(root: Path) -> list[Entry]:
    """Every directory and file below ``root``, sorted, symlinks followed.

    Checked before a byte is sent, so that a fifo, a socket, a broken link or a loop is
    a clear local error rather than an upload that hangs or fails half-way.
    """
    entries: list[Entry] = []

    def walk(folder: str, prefix: str, ancestors: frozenset[tuple[int, int]]) -> None:
        with os.scandir(folder) as listing:
            children = sorted(listing, key=lambda e: e.name)
        for child in children:
            name = prefix + child.name
            try:
                name.encode("utf-8")
                st = os.stat(child.path)
            except UnicodeEncodeError:
                raise UsageError(f"cannot pack {child.path!r}: the name is not valid "
                                 "UTF-8") from None
            except OSError as exc:
                raise UsageError(f"cannot pack {child.path}: {exc.strerror or exc}") from None
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    raise UsageError(f"cannot pack {child.path}: a symlink loop")
                entries.append(Entry(child.path, name, True, 0, st.st_mtime))
                walk(child.path, name + "/", ancestors | {key})
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(child.path, name, False, st.st_size, st.st_mtime))
            else:
                raise UsageError(f"cannot pack {child.path}: not a regular file or directory")

    try:
        top = os.stat(root)
        walk(str(root), "", frozenset({(top.st_dev, top.st_ino)}))
    except OSError as exc:
        raise UsageError(f"cannot read {root}: {exc.strerror or exc}") from None
    return entries


class _SourceError(Exception):
    """Reading the directory failed while packing; deliberately not an OSError, so the
    HTTP stack aborts the upload instead of reporting a network failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """The upload ended before the packing thread did."""


_DONE = object()


class PackedStream:
    """A tgz or zip of ``entries``, produced by a thread while it is iterated.

    At most ``QUEUED_CHUNKS`` chunks of ``CHUNK`` bytes wait in between, so memory does
    not grow with the directory. ``sha256`` is that of all the bytes iterated.
    """

    def __init__(self, entries: list[Entry], kind: str,
                 on_progress: Progress | None = None) -> None:
        self.entries = entries
        self.kind = kind
        self.on_progress = on_progress
        self.total = sum(e.size for e in entries)
        self.done = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._stop = threading.Event()
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._produce, name="artstore-pack",
                                        daemon=True)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        self._thread.start()
        while True:
            chunk = self._queue.get()
            if chunk is _DONE:
                return
            if isinstance(chunk, Exception):
                raise chunk
            self._hash.update(chunk)
            yield chunk

    def close(self) -> None:
        """Stop the packing thread (if the upload ended early) and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- the packing thread

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= CHUNK:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def flush(self) -> None:
        """Called by zipfile and gzip; chunks are handed on once they are large enough."""

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _produce(self) -> None:
        try:
            try:
                (self._write_tgz if self.kind == "tgz" else self._write_zip)()
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                self._put(_SourceError(f"{where}{exc.strerror or exc}"))
                return
            except Exception as exc:  # handed to the upload, which re-raises it
                self._put(exc)
                return
            if self._buffer:
                self._put(bytes(self._buffer))
            self._put(_DONE)
        except _Stopped:
            pass

    def _open(self, entry: Entry) -> _EntryReader:
        return _EntryReader(open(entry.path, "rb"), entry, self._count)

    def _count(self, n: int) -> None:
        self.done += n
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def _write_tgz(self) -> None:
        # gzip by hand: tarfile's own "w|gz" is fixed at level 9, slow for little gain.
        # Its stream re-slices its buffer per block: large blocks keep that linear.
        with gzip.GzipFile(fileobj=self, mode="wb", compresslevel=6, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK,
                             copybufsize=CHUNK) as tar:
            for entry in self.entries:
                info = tarfile.TarInfo(entry.name)
                info.mtime = int(entry.mtime)
                if entry.is_dir:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = entry.size, 0o644
                    with self._open(entry) as source:
                        tar.addfile(info, source)

    def _write_zip(self) -> None:
        # zipfile writes to an unseekable stream with data descriptors after each member.
        with zipfile.ZipFile(self, mode="w", compression=zipfile.ZIP_DEFLATED,
                             compresslevel=6) as archive:
            for entry in self.entries:
                stamp = time.localtime(max(entry.mtime, 315532800 + 86400))[:6]  # zip: >= 1980
                if entry.is_dir:
                    info = zipfile.ZipInfo(entry.name + "/", date_time=stamp)
                    info.external_attr = (0o40755 << 16) | 0x10
                    archive.writestr(info, b"")
                    continue
                info = zipfile.ZipInfo(entry.name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o100644 << 16
                info.file_size = entry.size  # decides whether the member needs zip64
                with self._open(entry) as source, archive.open(info, "w") as member:
                    for chunk in iter(lambda: source.read(CHUNK), b""):
                        member.write(chunk)


class _EntryReader:
    """An entry's file, read for packing: counted, and exactly ``entry.size`` bytes long
    (a file that changes size while it is packed would corrupt the archive)."""

    def __init__(self, file: BinaryIO, entry: Entry, count: Callable[[int], None]) -> None:
        self.file = file
        self.entry = entry
        self.left = entry.size
        self.count = count

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.file.read(size)
        if len(data) < size:
            raise OSError(0, "the file shrank while it was being packed", self.entry.path)
        self.left -= len(data)
        if not self.left and self.file.read(1):
            raise OSError(0, "the file grew while it was being packed", self.entry.path)
        self.count(len(data))
        return data

    def __enter__(self) -> _EntryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
