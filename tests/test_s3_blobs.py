"""The S3 blob store's guarantees (s3blobs.py's docstring) against a real SeaweedFS
(tests/s3.py, a fresh bucket per test): round trips, Content-Type, integrity on the wire,
``missing`` over thousands, presigned URLs on a bucket that is not public, and what the
callers see when the object store stops, hangs or fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from artstore import s3blobs
from artstore.errors import ArtstoreError, ConfigError, ServiceUnavailable
from artstore.s3blobs import S3BlobStore

pytest.importorskip("boto3", reason="boto3 is not installed (the s3 extra)")


@pytest.fixture
def open_store(s3_bucket: Any) -> Iterator[Callable[..., S3BlobStore]]:
    """Opens stores on the test's bucket (options: S3BlobStore's), closed after it."""
    opened: list[S3BlobStore] = []

    def open_(prefix: str = "", endpoint: str = "", **options: Any) -> S3BlobStore:
        options = {"access_key": s3_bucket.access_key, "secret_key": s3_bucket.secret_key,
                   "region": s3_bucket.region, **options}
        opened.append(S3BlobStore(s3_bucket.name, prefix,
                                  endpoint=endpoint or s3_bucket.endpoint, **options))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., S3BlobStore]) -> S3BlobStore:
    return open_store()


@pytest.fixture
def raw(s3_bucket: Any) -> Iterator[Any]:
    """A plain boto3 client on the test's server, to look behind the store."""
    client = s3_bucket.server.client()
    yield client
    client.close()


@pytest.fixture
def write(tmp_path: Path) -> Callable[[bytes], tuple[str, Path]]:
    """Writes bytes to a new file; its sha256 and path."""
    count = iter(range(10**9))

    def write_(data: bytes) -> tuple[str, Path]:
        path = tmp_path / f"f{next(count)}"
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest(), path

    return write_


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ round trips


def test_a_stored_file_reads_back_whole_in_ranges_and_by_size(
        store: S3BlobStore, write: Any, raw: Any, s3_bucket: Any) -> None:
    data = bytes(range(256)) * 1000
    digest, path = write(data)
    assert store.has(digest) is False
    assert store.put_file(digest, path, "application/octet-stream") is True
    assert store.has(digest) is True
    assert store.size(digest) == len(data)
    with store.open(digest) as fh:
        assert fh.read() == data
    assert store.get_range(digest, 1000, 10) == data[1000:1010]
    assert store.get_range(digest, len(data) - 3, 10) == data[-3:]
    # Content addressed, under blobs/<sha[:2]>/<sha>.
    key = f"blobs/{digest[:2]}/{digest}"
    assert raw.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read() == data


def test_a_blob_already_stored_is_not_uploaded_again(
        store: S3BlobStore, write: Any, raw: Any, s3_bucket: Any) -> None:
    digest, path = write(b"same bytes")
    assert store.put_file(digest, path, "text/plain") is True
    key = store.key(digest)
    before = raw.head_object(Bucket=s3_bucket.name, Key=key)["LastModified"]
    assert store.put_file(digest, path, "text/html") is False
    head = raw.head_object(Bucket=s3_bucket.name, Key=key)
    assert head["LastModified"] == before and head["ContentType"] == "text/plain"


def test_a_missing_blob_is_file_not_found(store: S3BlobStore) -> None:
    absent = sha(b"never stored")
    for call in (lambda: store.open(absent), lambda: store.size(absent),
                 lambda: store.get_range(absent, 0, 5)):
        with pytest.raises(FileNotFoundError):
            call()


def test_every_object_gets_the_content_type_it_was_given(
        store: S3BlobStore, write: Any, raw: Any, s3_bucket: Any) -> None:
    items = []
    for data, kind in ((b"<p>hi</p>", "text/html; charset=utf-8"), (b"\x00\x01", "image/png"),
                       (b"body{}", "text/css")):
        digest, path = write(data)
        items.append((digest, path, kind))
    assert store.put_many(items) == 3
    for digest, _, kind in items:
        assert raw.head_object(Bucket=s3_bucket.name, Key=store.key(digest))[
            "ContentType"] == kind


def test_an_object_stored_without_a_content_type_comes_back_text_plain(
        raw: Any, s3_bucket: Any) -> None:
    """Why the store sets one on every object: SeaweedFS answers text/plain otherwise (AWS
    S3 would say binary/octet-stream), which a browser would show, not run or save."""
    raw.put_object(Bucket=s3_bucket.name, Key="untyped", Body=b"\x89PNG\r\n")
    got = raw.head_object(Bucket=s3_bucket.name, Key="untyped")["ContentType"]
    assert got.startswith("text/plain")


# ------------------------------------------------------------------ integrity


def test_a_file_that_does_not_hash_to_its_name_is_refused_and_nothing_is_stored(
        open_store: Any, write: Any) -> None:
    store = open_store(retry_seconds=0.5)
    _, path = write(b"the bytes on disk")
    claimed = sha(b"what the caller thought")
    with pytest.raises(ServiceUnavailable, match="do not match their sha256"):
        store.put_file(claimed, path, "text/plain")
    assert store.has(claimed) is False
    assert list(store.iter_blobs()) == []


def test_a_file_uploaded_in_parts_is_checked_part_by_part_and_whole(
        open_store: Any, write: Any, raw: Any, s3_bucket: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3blobs, "MULTIPART_BYTES", 6 * 1024 * 1024)
    monkeypatch.setattr(s3blobs, "PART_BYTES", 5 * 1024 * 1024)
    store = open_store()
    data = bytes(range(256)) * (48 * 1024) + b"tail"  # 12 MiB and a bit: three parts
    digest, path = write(data)
    assert store.put_file(digest, path, "application/gzip") is True
    with store.open(digest) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == digest
    head = raw.head_object(Bucket=s3_bucket.name, Key=store.key(digest))
    assert head["ContentType"] == "application/gzip" and head["ContentLength"] == len(data)

    _, other = write(data[:-1] + b"X")  # every part but the last matches
    with pytest.raises(ArtstoreError, match="does not hash to"):
        store.put_file(sha(data + b"more"), other, "application/gzip")
    assert store.has(sha(data + b"more")) is False
    uploads = raw.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert uploads == []  # the refused upload's parts were aborted


class CorruptingProxy:
    """A TCP proxy to a local port that changes the bytes ``mark`` in the first chunk
    going upstream that holds it: a body corrupted on the way, once."""

    def __init__(self, upstream: int, mark: bytes) -> None:
        self.upstream, self.mark = upstream, mark
        self.corrupted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if upstream and not self.corrupted and self.mark in data:
                        data = data.replace(self.mark, self.mark.upper())
                        self.corrupted += 1
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()


def test_bytes_corrupted_on_the_way_are_refused_by_the_engine_and_sent_again(
        open_store: Any, write: Any, raw: Any, s3_bucket: Any) -> None:
    data = b"checksummed-bytes" * 4000
    digest, path = write(data)
    port = int(s3_bucket.endpoint.rsplit(":", 1)[1])
    proxy = CorruptingProxy(port, b"checksummed")
    try:
        store = open_store(endpoint=f"http://127.0.0.1:{proxy.port}")
        assert store.put_file(digest, path, "text/plain") is True
        assert proxy.corrupted == 1
    finally:
        proxy.close()
    stored = raw.get_object(Bucket=s3_bucket.name, Key=f"blobs/{digest[:2]}/{digest}")
    assert stored["Body"].read() == data


# ------------------------------------------------------------------ missing, delete, list


@pytest.mark.parametrize("heads_per_page", [s3blobs.HEADS_PER_PAGE, 3000, 10**9],
                         ids=["default", "listing-cut-short", "heads-only"])
def test_missing_names_exactly_the_absent_among_thousands(
        open_store: Any, raw: Any, s3_bucket: Any, heads_per_page: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store()
    shas = [sha(str(i).encode()) for i in range(3000)]
    present = set(shas[::3])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda s: raw.put_object(Bucket=s3_bucket.name, Key=store.key(s),
                                               Body=b"x", ContentType="text/plain"),
                      sorted(present)))
    raw.put_object(Bucket=s3_bucket.name, Key="blobs/zz-not-a-blob", Body=b"x")
    monkeypatch.setattr(s3blobs, "HEADS_PER_PAGE", heads_per_page)
    assert store.missing(shas + shas[:10]) == sorted(set(shas) - present)
    assert store.missing(sorted(present)[:7]) == []
    assert store.missing([]) == []


def test_put_many_uploads_each_missing_blob_once(store: S3BlobStore, write: Any) -> None:
    files = [write(f"file {i % 40}".encode()) for i in range(60)]  # 40 distinct contents
    first = [(digest, path, "text/plain") for digest, path in files[:10]]
    assert store.put_many(first) == 10
    assert store.put_many([(d, p, "text/plain") for d, p in files], concurrency=4) == 30
    assert store.missing(d for d, _ in files) == []
    assert store.put_many([(d, p, "text/plain") for d, p in files]) == 0


def test_delete_removes_the_given_blobs_only(store: S3BlobStore, write: Any) -> None:
    files = [write(f"blob {i}".encode()) for i in range(5)]
    store.put_many([(d, p, "text/plain") for d, p in files])
    gone = [files[0][0], files[3][0], sha(b"never stored")]
    store.delete(gone)
    store.delete([])
    assert store.missing(d for d, _ in files) == sorted([files[0][0], files[3][0]])


def test_iter_blobs_lists_every_blob_with_its_size_under_its_own_prefix(
        open_store: Any, write: Any, raw: Any, s3_bucket: Any) -> None:
    store, neighbour = open_store(), open_store(prefix="other/")
    files = [write(b"x" * i) for i in range(1, 6)]
    store.put_many([(d, p, "text/plain") for d, p in files])
    neighbour.put_many([(d, p, "text/plain") for d, p in files[:2]])
    raw.put_object(Bucket=s3_bucket.name, Key="blobs/ab/not-a-sha", Body=b"x")
    blobs = list(store.iter_blobs())
    assert [(b.sha256, b.size) for b in blobs] == sorted((d, p.stat().st_size)
                                                         for d, p in files)
    assert all(b.modified > 0 for b in blobs)
    assert sorted(b.sha256 for b in neighbour.iter_blobs()) == sorted(d for d, _ in files[:2])
    neighbour.delete(d for d, _ in files)
    assert len(list(store.iter_blobs())) == 5  # the neighbour's prefix is its own


# ------------------------------------------------------------------ serving


def test_a_presigned_url_serves_the_blob_and_the_bucket_is_not_public(
        store: S3BlobStore, write: Any, s3_bucket: Any) -> None:
    data = b"<!DOCTYPE html><p>published</p>"
    digest, path = write(data)
    store.put_file(digest, path, "text/html; charset=utf-8")
    url = store.presigned_url(digest, 60)
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Type"] == "text/html; charset=utf-8"
    part = requests.get(url, headers={"Range": "bytes=2-8"}, timeout=10)
    assert part.status_code == 206 and part.content == data[2:9]
    typed = requests.get(store.presigned_url(digest, 60, "text/plain"), timeout=10)
    assert typed.status_code == 200 and typed.headers["Content-Type"] == "text/plain"

    unsigned = url.split("?", 1)[0]
    assert requests.get(unsigned, timeout=10).status_code == 403
    assert requests.get(f"{s3_bucket.endpoint}/{s3_bucket.name}", timeout=10).status_code == 403
    other = store.presigned_url(sha(b"other"), 60).split("?", 1)[1]
    assert requests.get(f"{unsigned}?{other}", timeout=10).status_code == 403  # not its URL
    assert requests.get(store.presigned_url(sha(b"absent"), 60), timeout=10).status_code == 404


# ------------------------------------------------------------------ failures


def test_a_stopped_object_store_is_a_503_and_a_restarted_one_works_again(
        open_store: Any, write: Any, s3_bucket: Any) -> None:
    store = open_store(retry_seconds=0.5)
    digest, path = write(b"kept across the restart")
    store.put_file(digest, path, "text/plain")
    fresh, fresh_path = write(b"sent while it is down")
    calls = {
        "has": lambda: store.has(digest),
        "size": lambda: store.size(digest),
        "missing": lambda: store.missing([digest, fresh]),
        "open": lambda: store.open(digest),
        "get_range": lambda: store.get_range(digest, 0, 4),
        "put_file": lambda: store.put_file(fresh, fresh_path, "text/plain"),
        "put_many": lambda: store.put_many([(fresh, fresh_path, "text/plain")]),
        "delete": lambda: store.delete([fresh]),
        "iter_blobs": lambda: list(store.iter_blobs()),
    }
    s3_bucket.server.stop()
    for name, call in calls.items():
        with pytest.raises(ServiceUnavailable, match="unavailable") as caught:
            call()
        assert caught.value.status == 503, name
    s3_bucket.server.start()
    assert store.has(digest) and store.get_range(digest, 0, 4) == b"kept"
    assert store.put_file(fresh, fresh_path, "text/plain") is True
    assert store.missing([digest, fresh]) == []


def test_an_object_store_killed_mid_put_many_is_a_503_and_nothing_half_written(
        open_store: Any, write: Any, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(retry_seconds=0.5, concurrency=4)
    files = [write(f"file {i} ".encode() * 2000) for i in range(200)]
    done: list[str] = []
    lock = threading.Lock()
    upload = store._upload

    def upload_then_kill(sha256: str, *args: Any) -> None:
        upload(sha256, *args)
        with lock:
            done.append(sha256)
            if len(done) == 50:  # SIGKILL, with the other uploads in flight
                s3_bucket.server.stop(kill=True)

    monkeypatch.setattr(store, "_upload", upload_then_kill)
    with pytest.raises(ServiceUnavailable):
        store.put_many([(d, p, "text/plain") for d, p in files])
    monkeypatch.undo()
    s3_bucket.server.start()
    stored = {b.sha256: b.size for b in store.iter_blobs()}
    assert set(done) <= set(stored) and len(stored) < len(files)
    sizes = {d: p.stat().st_size for d, p in files}
    for digest, size in stored.items():  # whatever is there is whole
        assert size == sizes[digest]
        assert hashlib.sha256(store.get_range(digest, 0, size)).hexdigest() == digest
    assert store.put_many([(d, p, "text/plain") for d, p in files]) == len(files) - len(stored)


def test_a_hung_object_store_times_out_as_a_503(open_store: Any, s3_bucket: Any) -> None:
    store = open_store(retry_seconds=0.2, timeout=0.5)
    s3_bucket.server.pause()
    try:
        with pytest.raises(ServiceUnavailable, match="timed out"):
            store.has(sha(b"anything"))
    finally:
        s3_bucket.server.resume()
    assert store.has(sha(b"anything")) is False


class FailingEngine(http.server.ThreadingHTTPServer):
    """An HTTP server that answers each request with the next of ``statuses`` (the last
    one from then on), as an engine in trouble does; counts the requests."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.requests = statuses, 0
        super().__init__(("127.0.0.1", 0), _FailingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FailingHandler(http.server.BaseHTTPRequestHandler):
    server: FailingEngine

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        status = self.server.statuses[min(self.server.requests, len(self.server.statuses) - 1)]
        self.server.requests += 1
        self.send_response(status)
        self.send_header("Content-Length", "5")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing() -> Iterator[Callable[[list[int]], FailingEngine]]:
    servers: list[FailingEngine] = []

    def start(statuses: list[int]) -> FailingEngine:
        servers.append(FailingEngine(statuses))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_5xx_answers_are_retried_then_a_503(failing: Any) -> None:
    recovering = failing([500, 503, 200])
    store = S3BlobStore("bucket", endpoint=recovering.endpoint, access_key="k",
                        secret_key="s", retry_seconds=5)
    try:
        assert store.size(sha(b"x")) == 5
        assert recovering.requests == 3
        down = failing([503])
        store.close()
        store = S3BlobStore("bucket", endpoint=down.endpoint, access_key="k", secret_key="s",
                            retry_seconds=0.5)
        with pytest.raises(ServiceUnavailable, match="503"):
            store.has(sha(b"x"))
        assert down.requests > 1
    finally:
        store.close()


def test_refusals_that_retrying_cannot_mend_fail_at_once_and_check_names_them(
        open_store: Any, s3_bucket: Any) -> None:
    wrong_key = open_store(secret_key="not-the-secret", retry_seconds=30)
    with pytest.raises(ArtstoreError, match="refused") as caught:
        wrong_key.size(sha(b"x"))
    assert not isinstance(caught.value, ServiceUnavailable)
    with pytest.raises(ConfigError, match=s3_bucket.name):
        wrong_key.check()
    open_store().check()
    no_bucket = S3BlobStore("no-such-bucket", endpoint=s3_bucket.endpoint,
                            access_key=s3_bucket.access_key, secret_key=s3_bucket.secret_key)
    try:
        with pytest.raises(ConfigError, match="no such bucket"):
            no_bucket.check()
    finally:
        no_bucket.close()


def test_the_settings_open_the_store_they_name(s3_bucket: Any, write: Any, raw: Any,
                                              tmp_path: Path) -> None:
    from artstore import settings

    loaded = settings.from_mapping({
        "base_path": "p", "temp_path": "t", "blob_store": f"s3://{s3_bucket.name}/team/",
        "s3_endpoint": s3_bucket.endpoint, "s3_access_key": s3_bucket.access_key},
        tmp_path, environ={"ARTSTORE_S3_SECRET_KEY": s3_bucket.secret_key})
    store = S3BlobStore.from_settings(loaded)
    try:
        store.check()
        digest, path = write(b"configured")
        store.put_file(digest, path, "text/plain")
    finally:
        store.close()
    key = f"team/blobs/{digest[:2]}/{digest}"
    assert raw.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read() == b"configured"


# ------------------------------------------------------------------ installation


def test_the_default_install_never_imports_boto3() -> None:
    code = ("import sys, artstore.api, artstore.cli, artstore.store, artstore.s3blobs\n"
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
