"""The blob store's S3-compatible home (issue 17): every published file's bytes, stored once
by their sha256 as objects of one bucket, so replicas on several machines share them.

Layout, under the prefix of the ``blob_store`` URL (``s3://bucket/prefix``)::

    <prefix>blobs/<sha[:2]>/<sha>      one object per content, with a Content-Type

The bucket is never public: what nginx serves, it fetches through ``presigned_url``. This
module holds the bytes only; which blobs a release holds, and so which may be deleted, is
the catalog's, which orders everything. Nothing here relies on S3 conditional writes (engines
differ), only on what every engine gives: a PUT is atomic and read after write.

Guarantees:

- An object ``blobs/<sha>`` only ever holds bytes whose sha256 is ``sha``. Every upload sends
  that checksum (``x-amz-checksum-sha256``; uploaded in parts, each part's) and the engine
  refuses bytes that do not match it (SeaweedFS and AWS S3 do: ``BadDigest``), so bytes
  corrupted on the way are never stored, nor a file that is not what its caller hashed (an
  upload in parts is also checked whole before its parts are joined). A refused or failed
  upload stores nothing.
- ``put_file``, ``put_many``: when they return, every blob they were given is in the bucket
  (uploaded, or there already: the same sha is the same bytes, so two writers of one blob
  write the same object and either may land last). Every object gets a Content-Type.
- Failures of the engine (connection refused, timeouts, 5xx, throttling, bytes that arrived
  corrupted) are retried with backoff; every call here is idempotent. No attempt starts
  after ``retry_seconds``; then ``errors.ServiceUnavailable`` (503) says what failed, so a
  call fails within ``retry_seconds`` plus one attempt's timeouts. Other refusals
  (credentials, a missing bucket) raise ``errors.ArtstoreError`` (500) at once, naming the
  engine's error; ``check`` makes them a ``ConfigError`` at start. A blob that is not there
  is ``FileNotFoundError`` where one is needed (``open``, ``get_range``, ``size``).
- ``delete`` removes whole objects only, those it is given.

A blob's Content-Type is the one its first upload gave: the same bytes published under
names of different types (an empty ``.css`` and an empty ``.js``) share one object. Whoever
serves a name passes that name's type to ``presigned_url``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .errors import ArtstoreError, ConfigError, ServiceUnavailable
from .settings import Settings, s3_location

T = TypeVar("T")
SHA_RE = re.compile(r"[0-9a-f]{64}")
MULTIPART_BYTES = 64 * 1024 * 1024  # larger files go up in parts, each retried on its own
PART_BYTES = 16 * 1024 * 1024  # one part in memory per upload in flight
# One listing page (1,000 keys) took as long as ~60 HEADs made 8 at a time, on SeaweedFS
# (bench/s3_upload.py prints both): ``missing`` lists while that is the cheaper way.
HEADS_PER_PAGE = 50
# Error codes worth another attempt besides the 5xx: throttling, and bytes that arrived
# corrupted (the checksum, or the signed payload hash, did not match what was received).
RETRY_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
               "BadDigest", "XAmzContentSHA256Mismatch"}
NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    modified: float  # when it was stored, in seconds since the epoch


class S3BlobStore:
    """Blobs as objects of one bucket of an S3-compatible store (see the module's
    guarantees). Safe to use from several threads."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str = "", region: str = "",
                 access_key: str = "", secret_key: str = "", concurrency: int = 8,
                 retry_seconds: float = 5.0, timeout: float = 10.0) -> None:
        # The s3 extra: only a store that keeps its bytes in an object store needs boto3.
        import boto3.session
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.concurrency = concurrency
        self.retry_seconds = retry_seconds
        # A session of its own: boto3's default one is global, and warns on Python 3.9.
        # Empty keys or region: boto3's standard sources (AWS_* variables, ~/.aws, a role).
        session = boto3.session.Session(aws_access_key_id=access_key or None,
                                        aws_secret_access_key=secret_key or None,
                                        region_name=region or None)
        config = Config(
            # SigV4 for presigned URLs too: botocore's default there is SigV2, whose URLs
            # SeaweedFS refuses once they carry a response-content-type.
            signature_version="s3v4",
            connect_timeout=min(timeout, 5.0), read_timeout=timeout,
            retries={"total_max_attempts": 1},  # the retries are ours, bounded in time
            max_pool_connections=max(10, 2 * concurrency),
            # A self-hosted engine is one host name: http://host/bucket/key, not bucket.host.
            s3={"addressing_style": "path" if endpoint else "auto"})
        self._client = session.client("s3", endpoint_url=endpoint or None,
                                      region_name=session.region_name or "us-east-1",
                                      config=config)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store the ``blob_store`` and ``s3_*`` settings name."""
        bucket, prefix = s3_location(settings.blob_store)
        return cls(bucket, prefix, endpoint=settings.s3_endpoint, region=settings.s3_region,
                   access_key=settings.s3_access_key, secret_key=settings.s3_secret_key)

    def close(self) -> None:
        self._client.close()

    def check(self) -> None:
        """ConfigError unless the bucket is there and takes our credentials (at start)."""
        try:
            self._retrying("find the bucket", lambda: self._client.head_bucket(
                Bucket=self.bucket))
        except (ArtstoreError, FileNotFoundError) as exc:
            detail = "no such bucket" if isinstance(exc, FileNotFoundError) else str(exc)
            raise ConfigError(f"cannot use the blob store s3://{self.bucket}/{self.prefix}: "
                              f"{detail}") from None

    def key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256[:2]}/{sha256}"

    # ------------------------------------------------------------- reading

    def has(self, sha256: str) -> bool:
        """True if the bucket holds that blob (one HEAD)."""
        try:
            self.size(sha256)
        except FileNotFoundError:
            return False
        return True

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; FileNotFoundError if the bucket lacks it."""
        head = self._retrying(f"look up blob {sha256}", lambda: self._client.head_object(
            Bucket=self.bucket, Key=self.key(sha256)))
        return int(head["ContentLength"])

    def missing(self, shas: Iterable[str]) -> list[str]:
        """Those of ``shas`` the bucket lacks, sorted, each once.

        Costs at most about twice the cheaper of one HEAD per sha (``concurrency`` at a
        time) and a listing of the bucket's blobs between the least and the greatest sha: it
        lists while that is cheaper (keys sort as their shas do) and asks about the rest
        with HEADs. So a release's thousands of files cost a few pages in a small or empty
        store, and one HEAD each in a huge one.
        """
        wanted = sorted(set(shas))
        if not wanted:
            return []
        present: set[str] = set()
        seen_to = ""  # every blob up to this sha has been listed
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self.prefix}blobs/",
                                  "StartAfter": self.key(wanted[0])[:-1]}
        for _ in range(len(wanted) // HEADS_PER_PAGE):
            page = self._page(params)
            keys = [entry["Key"] for entry in page.get("Contents", [])]
            present.update(k.rpartition("/")[2] for k in keys)
            if not page.get("IsTruncated"):
                seen_to = wanted[-1]
                break
            seen_to = keys[-1].rpartition("/")[2] if keys else seen_to
            if seen_to >= wanted[-1]:
                break
            params = {**params, "ContinuationToken": page["NextContinuationToken"]}
        rest = [sha for sha in wanted if sha > seen_to]
        found = self._parallel(self.has, rest)
        return ([sha for sha in wanted if sha <= seen_to and sha not in present]
                + [sha for sha, there in zip(rest, found) if not there])

    def open(self, sha256: str) -> io.BufferedReader:
        """The blob's bytes as a stream, to close after use; FileNotFoundError if the bucket
        lacks it. A failure while reading raises ServiceUnavailable (not retried: the
        stream is part read)."""
        got = self._retrying(f"read blob {sha256}", lambda: self._client.get_object(
            Bucket=self.bucket, Key=self.key(sha256)))
        return io.BufferedReader(_Body(got["Body"], sha256), 1024 * 1024)

    def get_range(self, sha256: str, start: int, length: int) -> bytes:
        """``length`` bytes of the blob from ``start`` (fewer at its end), read whole, so a
        failure part way is retried too; FileNotFoundError if the bucket lacks it."""
        if length <= 0:
            return b""

        def attempt() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=self.key(sha256),
                                           Range=f"bytes={start}-{start + length - 1}")["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._retrying(f"read blob {sha256}", attempt)

    def iter_blobs(self) -> Iterator[Blob]:
        """Every blob in the bucket, in sha order, a page (1,000) at a time: for a collector,
        which compares them with what the catalog refers to (``modified`` lets it spare the
        blobs of publishes still in flight)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self.prefix}blobs/"}
        while True:
            page = self._page(params)
            for entry in page.get("Contents", []):
                name = entry["Key"].rpartition("/")[2]
                if SHA_RE.fullmatch(name) and entry["Key"] == self.key(name):
                    yield Blob(name, int(entry["Size"]), entry["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            params = {**params, "ContinuationToken": page["NextContinuationToken"]}

    def presigned_url(self, sha256: str, seconds: int, content_type: str | None = None) -> str:
        """A URL that GETs (and Ranges) the blob for ``seconds`` (at most 7 days) without
        credentials, answering with ``content_type`` if given, else the blob's own. Made
        locally, without asking the engine; a URL of a blob not there answers 404."""
        params = {"Bucket": self.bucket, "Key": self.key(sha256)}
        if content_type:
            params["ResponseContentType"] = content_type
        return str(self._client.generate_presigned_url("get_object", Params=params,
                                                       ExpiresIn=seconds))

    # ------------------------------------------------------------- writing

    def put_file(self, sha256: str, path: str | os.PathLike[str], content_type: str) -> bool:
        """Store the file at ``path``, whose bytes the caller hashed to ``sha256``, as that
        blob with that Content-Type, unless the bucket has it; True if it was uploaded."""
        if self.has(sha256):
            return False
        self._upload(sha256, os.fspath(path), content_type)
        return True

    def put_many(self, items: Iterable[tuple[str, str | os.PathLike[str], str]],
                 concurrency: int | None = None) -> int:
        """``put_file`` for each ``(sha256, path, content_type)`` (a release's files),
        ``concurrency`` at a time (default: the store's), after one ``missing`` for them
        all; how many were uploaded. The first failure stops the rest and is raised; the
        blobs uploaded by then stay (whole, and the collector's if nothing refers to them).
        """
        todo: dict[str, tuple[str, str]] = {}
        for sha, path, content_type in items:
            todo.setdefault(sha, (os.fspath(path), content_type))
        needed = self.missing(todo)
        self._parallel(lambda sha: self._upload(sha, *todo[sha]), needed, concurrency)
        return len(needed)

    def delete(self, shas: Iterable[str]) -> None:
        """Delete those blobs (1,000 a request); one the bucket lacks is no error."""
        ordered = sorted(set(shas))
        for start in range(0, len(ordered), 1000):
            batch = {"Objects": [{"Key": self.key(sha)} for sha in ordered[start:start + 1000]],
                     "Quiet": True}
            answer = self._retrying("delete blobs", lambda batch=batch: (
                self._client.delete_objects(Bucket=self.bucket, Delete=batch)))
            errors = [e for e in answer.get("Errors", []) if e.get("Code") not in NOT_FOUND]
            if errors:
                raise ArtstoreError(f"the object store did not delete {len(errors)} blobs: "
                                    f"{errors[0].get('Key')}: {errors[0].get('Code')} "
                                    f"{errors[0].get('Message', '')}".rstrip())

    def _upload(self, sha256: str, path: str, content_type: str) -> None:
        content_type = content_type or "application/octet-stream"  # never the engine's guess
        if os.path.getsize(path) > MULTIPART_BYTES:
            self._upload_parts(sha256, path, content_type)
            return

        def attempt() -> Any:
            with open(path, "rb") as body:  # opened per attempt: each sends it from the start
                return self._client.put_object(
                    Bucket=self.bucket, Key=self.key(sha256), Body=body,
                    ContentType=content_type, ChecksumSHA256=_b64(bytes.fromhex(sha256)))

        self._retrying(f"store blob {sha256}", attempt)

    def _upload_parts(self, sha256: str, path: str, content_type: str) -> None:
        key, what = self.key(sha256), f"store blob {sha256}"
        upload = self._retrying(what, lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type,
            ChecksumAlgorithm="SHA256"))["UploadId"]
        try:
            whole, parts = hashlib.sha256(), []
            with open(path, "rb") as fh:
                for number in itertools.count(1):
                    data = fh.read(PART_BYTES)
                    if not data:
                        break
                    whole.update(data)
                    parts.append(self._upload_part(what, key, upload, number, data))
            if whole.hexdigest() != sha256:
                raise ArtstoreError(f"{path} does not hash to {sha256}: not stored")
            self._retrying(what, lambda: self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload,
                MultipartUpload={"Parts": parts}))
        except BaseException:
            # Else the engine keeps the parts until the upload expires; best effort, as
            # the error that matters is the one raised.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload)
            raise

    def _upload_part(self, what: str, key: str, upload: str, number: int,
                     data: bytes) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(data).digest())
        sent = self._retrying(what, lambda: self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data,
            ChecksumSHA256=checksum))
        return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum}

    # ------------------------------------------------------------- plumbing

    def _page(self, params: dict[str, Any]) -> dict[str, Any]:
        """One page of a listing of the blobs."""
        return self._retrying("list blobs", lambda: self._client.list_objects_v2(**params))

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, again with backoff while the engine fails, for ``retry_seconds``
        (see the module's guarantees)."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                return attempt()
            except (BotoCoreError, ClientError) as exc:
                failure = _transient(exc)
                if failure is None:
                    raise _refused(exc, what) from exc
                pause = delay * random.uniform(0.5, 1.0)
                if time.monotonic() + pause > deadline:
                    raise ServiceUnavailable(f"the object store is unavailable: could not "
                                             f"{what}: {failure}") from exc
                time.sleep(pause)
                delay = min(delay * 2, 1.0)

    def _parallel(self, fn: Callable[[str], T], args: list[str],
                  concurrency: int | None = None) -> list[T]:
        """``[fn(a) for a in args]``, ``concurrency`` at a time; the first failure cancels
        what has not started and is raised once the running calls end."""
        if len(args) <= 1:
            return [fn(a) for a in args]
        with ThreadPoolExecutor(min(concurrency or self.concurrency, len(args))) as pool:
            futures = [pool.submit(fn, a) for a in args]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]


class _Body(io.RawIOBase):
    """A GET's body as a raw stream whose read failures are ServiceUnavailable."""

    def __init__(self, body: Any, sha256: str) -> None:
        self._body = body
        self._sha = sha256

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError

        try:
            data = self._body.read(len(buffer))
        except BotoCoreError as exc:
            raise ServiceUnavailable(f"the object store is unavailable: reading blob "
                                     f"{self._sha} failed: {_transient(exc) or exc}") from exc
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _transient(exc: Exception) -> str | None:
    """What went wrong, if it is a failure another attempt may not meet; else None."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return "timed out"
    if isinstance(exc, bx.EndpointConnectionError):
        return "cannot connect"
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
        return f"the connection failed ({type(exc).__name__})"
    if isinstance(exc, bx.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        if status >= 500 or code in RETRY_CODES:
            if code in ("BadDigest", "XAmzContentSHA256Mismatch"):
                return (f"it received bytes that do not match their sha256 ({code}): "
                        "corrupted on the way, or the file is not what was hashed")
            return f"it answered {status} {code}".rstrip()
    return None


def _refused(exc: Exception, what: str) -> Exception:
    """The error to raise for a failure that retrying does not mend."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        if code in NOT_FOUND:
            return FileNotFoundError(f"could not {what}: not in the object store")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        named = f"{status} {code}" if code and code != str(status) else str(status)
        return ArtstoreError(f"the object store refused to {what}: {named} "
                             f"{error.get('Message', '')}".rstrip())
    if isinstance(exc, bx.NoCredentialsError):
        return ArtstoreError("no credentials for the object store: set s3_access_key and "
                             "s3_secret_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return ArtstoreError(f"the object store client failed to {what}: {exc}")
