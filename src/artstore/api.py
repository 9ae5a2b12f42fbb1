"""The HTTP layer: the only module that knows about Flask and requests.

It authenticates the caller, turns a request into one call on the store, and renders
every error - ours, Werkzeug's and unexpected ones - as ``application/problem+json``.
"""

from __future__ import annotations

import atexit
import functools
import io
import itertools
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, current_app, g, redirect, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from werkzeug.security import safe_join
from werkzeug.utils import send_file

from . import auth
from .errors import (
    ArtstoreError,
    BadRequest,
    LengthRequired,
    NotFound,
    TooLarge,
    Unauthorized,
    Unprocessable,
    UnsupportedType,
)
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .openapi import document
from .settings import Settings, config_path, load
from .store import (
    Block,
    Incoming,
    ItemView,
    ProjectSummary,
    ProjectView,
    Published,
    Store,
    upload_too_large,
)

log = logging.getLogger("artstore")
PROBLEM = "application/problem+json"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_JSON_BYTES = 1024 * 1024  # any JSON body: a project configuration, a rollback...
JSON_PIECE = 64 * 1024
CHUNK = 1024 * 1024
DECODER_PIECE = 256 * 1024
MIN_PIECE = 256 * 1024  # read from the socket before a piece is handed on
MAX_FIELD_BYTES = 64 * 1024  # one metadata field; the store allows 1024 characters
MAX_PARTS = 100
API_PREFIX = "/artstore"
LINGER_SECONDS = 30.0  # reading the rest of a refused body, like nginx's lingering_time
LINGER_IDLE_SECONDS = 5.0  # and its lingering_timeout


@dataclass
class Services:
    settings: Settings
    store: Store
    tokens: auth.Tokens
    metrics: Metrics
    # GET /: the store's blocks of projects, the JSON, and each block's part of it by the
    # block's id() (the blocks, kept with it, are every block the ids name).
    listing: tuple[tuple[Block[ProjectSummary], ...], list[bytes], dict[int, bytes]] = \
        ((), [], {})


def services() -> Services:
    return current_app.extensions["artstore"]  # type: ignore[no-any-return]


class NameConverter(BaseConverter):
    """A project or item name in a route: any segment not starting with ``_``.

    Paths starting with ``_`` are the service's own (``/_health``...), so a wrong method
    on them is a 405, not an attempt on a project named ``_health``. Whether the name is
    valid is checked by the store, which answers 400.
    """

    regex = r"[^_/][^/]*"


# ------------------------------------------------------------------ errors


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "request_id": g.get("request_id"), **extra}
    response = Response(json.dumps(body) + "\n", status=status, mimetype=PROBLEM)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="artstore"'
    return response


def render_error(exc: Exception) -> Response:
    """The one place errors become responses."""
    if isinstance(exc, ArtstoreError):
        if exc.status >= 500:
            log.error("request %s: %s", g.get("request_id"), exc.detail)
        return problem(exc.status, exc.title, exc.detail, **exc.extra)
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        detail = exc.description or exc.name
        if code == 413:
            detail = upload_too_large(current_app.config["MAX_CONTENT_LENGTH"]).detail
        response = problem(code, exc.name, detail)
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response
    log.exception("request %s failed", g.get("request_id"))
    return problem(500, "Internal Server Error",
                   "an unexpected error occurred; the server log has the details under "
                   "this request id")


# -------------------------------------------------------------- helpers


def caller() -> auth.Caller:
    header = request.headers.get("Authorization")
    if header is None:
        return auth.Caller()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use 'Authorization: Bearer <token>'")
    return services().tokens.identify(token.strip())


def may_read() -> None:
    if services().settings.read_requires_token and caller().anonymous:
        raise Unauthorized("reading needs a bearer token on this server")


def site_url() -> str:
    """Where published files are served: the public_url setting, else this host's root."""
    return (services().settings.public_url or request.host_url.rstrip("/")) + "/"


def json_body(optional: bool = False) -> Any:
    """The request's JSON body, the one way every JSON body is read.

    At most MAX_JSON_BYTES are read, counted while reading, so a huge body (chunked, with
    no Content-Length to refuse up front) costs no memory. ``optional``: an empty body is
    None, whatever its content type.
    """
    if not optional and request.mimetype != "application/json":
        raise UnsupportedType("send the body as application/json")
    data = bounded_body(MAX_JSON_BYTES, f"a JSON body is limited to {MAX_JSON_BYTES} bytes")
    if optional and not data.strip():
        return None
    if request.mimetype != "application/json":
        raise UnsupportedType("send the body as application/json")
    try:
        return json.loads(data or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def bounded_body(limit: int, too_large: str) -> bytes:
    """The whole request body, refused (413) as soon as it passes ``limit`` bytes."""
    if (request.content_length or 0) > limit:
        raise TooLarge(too_large)
    data = bytearray()
    while True:
        try:
            piece = request.stream.read(min(JSON_PIECE, limit + 1 - len(data)))
        except Exception:  # noqa: BLE001 - as in wsgi_chunks: the body sent is broken
            raise BadRequest("the request body ended before it was complete") from None
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > limit:
            raise TooLarge(too_large)


def flag(name: str) -> bool:
    # Exactly the OpenAPI boolean (in any case: Python's requests sends True as "True").
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false"):
        raise BadRequest(f"?{name}= takes true or false")
    return value == "true"


def created(body: Any, location: str) -> Response:
    response = current_app.json.response(body)
    response.status_code = 201
    response.headers["Location"] = location
    return response


def body_chunks() -> Iterator[bytes | memoryview]:
    """The request body in large pieces, read straight from the server.

    Each piece is valid until the next one is asked for (it may be a view of a reused
    buffer). Any failure to read is a 400: the body the client sent is broken.
    """
    environ = request.environ
    direct = gunicorn_body(environ)
    pieces = direct if direct is not None else wsgi_chunks(environ["wsgi.input"],
                                                            request.content_length)
    try:
        yield from pieces
    except OSError:  # a reset connection, a timeout
        if direct is not None and hasattr(environ["wsgi.input"], "failed"):
            environ["wsgi.input"].failed = True  # gunicorn 27: close, do not drain the rest
        raise BadRequest("the request body ended before it was complete; nothing was "
                         "published") from None


def wsgi_chunks(stream: Any, remaining: int | None) -> Iterator[bytes]:
    """Read ``wsgi.input`` in 1 MiB pieces (Werkzeug's wrappers read 64 KiB at a time)."""
    while remaining is None or remaining > 0:
        try:
            chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
        except Exception:  # noqa: BLE001 - whatever the server raises (NoMoreData, a bad
            # chunk terminator, a reset connection), the body the client sent is broken.
            raise BadRequest("the request body ended before it was complete; nothing was "
                             "published") from None
        if not chunk:
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def gunicorn_body(environ: dict[str, Any]) -> Iterator[memoryview] | None:
    """A Content-Length body read from gunicorn's client socket into one reused buffer.

    gunicorn's body reader copies every byte several times over (up to ~20 copies with
    gunicorn 23, which reads 1 KiB steps); ``recv_into`` copies it once. This relies on
    what gunicorn's body reader has been from gunicorn 21 to 27: ``Body.buf`` (empty:
    nothing read yet), ``LengthReader.length`` (what is left of the body, kept true here
    after every read, so gunicorn skips exactly the unread rest) and ``Unreader.buf``
    (bytes read with the headers, taken through ``LengthReader.read``, which returns
    exactly what is asked for). tests/test_upload_stream.py checks all of it on both
    gunicorn versions CI runs. Anything else (chunked bodies, another server) gets None.
    """
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    sock = environ.get("gunicorn.socket")
    unreader = getattr(reader, "unreader", None)
    if (sock is None or type(reader).__name__ != "LengthReader"
            or getattr(unreader, "sock", None) is not sock
            or not isinstance(getattr(reader, "length", None), int)
            or not isinstance(getattr(body, "buf", None), io.BytesIO) or body.buf.tell()
            or not isinstance(getattr(unreader, "buf", None), io.BytesIO)):
        return None

    def pieces() -> Iterator[memoryview]:
        held = min(unreader.buf.getbuffer().nbytes, reader.length)
        if held:
            # Exactly ``held`` bytes, all from the buffer (gunicorn 23's Body.read would
            # read on in 1 KiB steps and keep the surplus).
            yield memoryview(reader.read(held))
        buffer = memoryview(bytearray(CHUNK))
        while reader.length > 0:
            # A slow client or TLS (one 16 KiB record per recv) gives small reads: gather
            # at least MIN_PIECE, so the work per piece (multipart decoding) stays small.
            want = min(CHUNK, reader.length)
            filled, n = 0, 1
            while n and filled < min(MIN_PIECE, want):
                n = sock.recv_into(buffer[filled:want])
                filled += n
                reader.length -= n
            if filled:
                yield buffer[:filled]
            if not n:
                return  # the client went away; the caller compares sizes

    return pieces()


def checksum_claimed(fields: dict[str, str]) -> str | None:
    """The sha256 the client says the upload has: ``X-Checksum-Sha256``, or a ``sha256``
    field or query parameter, which is never metadata. Two that disagree are refused."""
    header = request.headers.get("X-Checksum-Sha256")  # if sent, even empty, it is checked
    field = fields.pop("sha256", None)
    if (header is not None and field is not None
            and header.strip().lower() != field.strip().lower()):
        raise Unprocessable(f"X-Checksum-Sha256 ({header.strip()!r}) and sha256 "
                            f"({field.strip()!r}) disagree; nothing was published")
    return header if header is not None else field


def has_body(environ: dict[str, Any]) -> bool:
    return (environ.get("CONTENT_LENGTH") or "0") != "0" or "chunked" in environ.get(
        "HTTP_TRANSFER_ENCODING", "").lower()


def linger(environ: dict[str, Any], limit: int) -> None:
    """Read and drop what is left of a request body, once its answer has been sent.

    An answer given before the body was read (a 401, a 404, a 413 by Content-Length...)
    must reach a client that is still sending. If gunicorn closed the socket with body
    bytes unread, the kernel would send a reset, and nginx, still writing the body to
    us, would answer 502 instead of passing the refusal on. So, like nginx's own
    lingering close, the rest is read here: at most ``limit`` bytes, for at most
    LINGER_SECONDS, and not after LINGER_IDLE_SECONDS of silence. nginx stops sending
    once it has the answer, so behind it this ends almost at once.
    """
    body = environ.get("wsgi.input")
    sock = environ.get("gunicorn.socket")
    if sock is None or body is None or getattr(body, "failed", False):
        return
    deadline = time.monotonic() + LINGER_SECONDS
    pieces = gunicorn_body(environ) or iter(lambda: body.read(CHUNK), b"")
    prior = sock.gettimeout()
    left = limit
    try:
        while left > 0 and time.monotonic() < deadline:
            sock.settimeout(min(LINGER_IDLE_SECONDS, deadline - time.monotonic()))
            piece = next(pieces, b"")
            if not piece:
                return
            left -= len(piece)
    except Exception:  # noqa: BLE001 - a reset, a timeout, a broken chunk: stop reading
        pass
    finally:
        sock.settimeout(prior)
    if hasattr(body, "failed"):
        body.failed = True  # gunicorn 27: close the connection, do not drain the rest


def receive_into(store: Store) -> Incoming:
    incoming = store.receive()
    g.setdefault("incoming", []).append(incoming)  # discarded when the request ends
    return incoming


def decoder_pieces(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """Cut the body into pieces of DECODER_PIECE bytes for Werkzeug's multipart decoder.

    The decoder copies its buffer a few times per piece fed in; at 1 MiB each copy is a
    fresh mmap (page faults, system time), at 256 KiB the allocator reuses memory and
    the decoder runs about three times faster (docs/benchmarks.md).
    """
    for chunk in chunks:
        for start in range(0, len(chunk), DECODER_PIECE):
            yield chunk[start:start + DECODER_PIECE]


def receive_multipart(store: Store) -> tuple[Incoming, str | None, dict[str, str]]:
    """Stream a multipart body: the file under ``item`` to temp, other fields to a dict."""
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary:
        raise BadRequest("the multipart body has no boundary")
    # No max_form_memory_size here: Werkzeug applies it to each piece fed in; the
    # fields' own size is checked below.
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_PARTS)
    incoming: Incoming | None = None
    filename = None
    fields: dict[str, str] = {}
    part: Field | File | None = None
    value: list[bytes] = []
    try:
        for chunk in itertools.chain(decoder_pieces(body_chunks()), [None]):
            decoder.receive_data(chunk)
            event = decoder.next_event()
            while not isinstance(event, (Epilogue, NeedData)):
                if isinstance(event, File):
                    if event.name != "item" or incoming is not None:
                        raise BadRequest("send one file, under key 'item'; other parts "
                                         "must be plain fields")
                    part, incoming, filename = event, receive_into(store), event.filename
                elif isinstance(event, Field):
                    part, value = event, []
                elif isinstance(event, Data):
                    if isinstance(part, File):
                        incoming.write(event.data)  # type: ignore[union-attr]
                    elif part is not None:
                        value.append(event.data)
                        if sum(map(len, value)) > MAX_FIELD_BYTES:
                            raise BadRequest(f"the form field {part.name!r} is longer than "
                                             f"{MAX_FIELD_BYTES} bytes")
                        if not event.more_data:
                            fields[part.name] = b"".join(value).decode("utf-8", "replace")
                event = decoder.next_event()
    except ValueError as exc:
        raise BadRequest(f"the multipart body is malformed or incomplete: {exc}") from None
    if incoming is None:
        raise BadRequest("the multipart body has no file under key 'item'")
    return incoming, filename, fields


# ------------------------------------------------------------ endpoints


def health() -> Any:
    return {"status": "ok"}


def openapi() -> Any:
    return document(request.script_root)


def whoami() -> Any:
    """Who the bearer token is: lets a client stop before it sends a large body."""
    who = caller()
    if who.anonymous:
        raise Unauthorized("this call needs a bearer token")
    return {"admin": who.admin, "project": who.project}


def metrics() -> Any:
    may_read()
    return Response(services().metrics.render(), content_type=METRICS_TYPE)


# -- bodies: the store answers with records; URLs are the HTTP layer's


def project_json(view: ProjectView) -> dict[str, Any]:
    project = view.project
    return {"name": project.name, "description": project.description,
            "created": project.created, "stored_bytes": view.stored_bytes,
            "items": {item.name: {**item.config.as_json(), "live": item.state.live,
                                  "last_publish": item.published,
                                  "stored_bytes": item.stored_bytes}
                      for item in view.items}}


def item_url(project: str, item: str) -> str:
    return f"{site_url()}{quote(project)}/{quote(item)}/"


def item_json(project: str, view: ItemView) -> dict[str, Any]:
    url = item_url(project, view.name)
    body = {"name": view.name, **view.config.as_json(), "live": view.state.live,
            "stored_bytes": view.stored_bytes, "url": url}
    if view.config.is_collection:
        body["files"] = [{**f.as_json(), "url": url + quote(f.name)}
                         for f in reversed(view.state.files)]
    else:
        body["releases"] = [r.as_json() for r in reversed(view.state.releases)]
    return body


def published_json(done: Published) -> dict[str, Any]:
    return {"project": done.project, "item": done.item, "sha256": done.sha256,
            "size": done.size, "metadata": done.metadata, "release": done.release,
            "files": done.files, "warnings": done.warnings, "unwrapped": done.unwrapped,
            "url": item_url(done.project, done.item) + done.page}


def list_projects() -> Any:
    may_read()
    svc = services()
    found = svc.store.list_projects()
    before = svc.listing
    if before[0] is not found or not before[1]:
        # The store reuses unchanged blocks: only a changed block is encoded again (each
        # part begins with the comma that separates it from the one before).
        parts = {id(block): before[2].get(id(block)) or b"".join(
            b", " + json.dumps({"name": p.name, "description": p.description,
                                "items": list(p.items),
                                "last_publish": p.last_publish}).encode()
            for p in block.values) for block in found}
        # Sent part by part the first time: joining them would copy the whole body (1.4 MB
        # with 10,000 projects) into fresh memory, which costs more than the sends.
        listed = list(parts.values())
        body = [b'{"projects": [', *([listed[0][2:]] if listed else []), *listed[1:], b"]}"]
        svc.listing = before = (found, body, parts)
    elif len(before[1]) > 1:  # asked again with nothing changed: one piece from now on
        svc.listing = before = (found, [b"".join(before[1])], before[2])
    return Response(before[1], mimetype="application/json")


def create_project(project: str) -> Any:
    auth.require_admin(caller())
    view = services().store.create_project(project, json_body())
    return created(project_json(view), url_for("get_project", project=project, _external=True))


def get_project(project: str) -> Any:
    may_read()
    return project_json(services().store.project_view(project))


def update_project(project: str) -> Any:
    auth.require_admin(caller())
    return project_json(services().store.update_project(project, json_body(),
                                                        prune=flag("prune")))


def delete_project(project: str) -> Any:
    auth.require_admin(caller())
    # The tokens end before the files are removed: a delete cut short there must not leave
    # tokens that a project created again under the name would accept.
    services().store.delete_project(project,
                                    forget=lambda: services().tokens.drop_project(project))
    return "", 204


def upload(project: str, item: str) -> Any:
    """POST (multipart, file under ``item``) or PUT (raw body) to an item."""
    auth.require_project(caller(), project)
    store = services().store
    store.item_type(project, item)  # 404 before a byte of the body is read
    project_created = store.project_created(project)
    limit = services().settings.max_upload_bytes
    if (request.content_length or 0) > limit:
        raise upload_too_large(limit)
    if request.method == "PUT":
        if request.content_length is None and "chunked" not in request.headers.get(
                "Transfer-Encoding", "").lower():
            raise LengthRequired("send a Content-Length or use chunked transfer encoding")
        incoming = receive_into(store)
        for chunk in body_chunks():
            incoming.write(chunk)
        if request.content_length is not None and incoming.size != request.content_length:
            # gunicorn ends the stream quietly when the client goes away early.
            raise BadRequest(f"the body ended after {incoming.size} of "
                             f"{request.content_length} bytes; nothing was published")
        fields = request.args.to_dict()
        filename = fields.pop("filename", None)
    else:
        if request.mimetype != "multipart/form-data":
            raise UnsupportedType("POST the file as multipart/form-data under key 'item', "
                                  "or PUT the raw body")
        incoming, filename, fields = receive_multipart(store)
    sha256 = checksum_claimed(fields)
    done = store.publish(project, item, incoming, filename=filename, metadata=fields,
                         sha256=sha256, project_created=project_created,
                         # A token revoked while the body streamed publishes nothing.
                         check=lambda: auth.require_project(caller(), project))
    return created(published_json(done),
                   url_for("get_item", project=project, item=item, _external=True))


def get_item(project: str, item: str) -> Any:
    may_read()
    return item_json(project, services().store.item_view(project, item))


def latest(project: str, item: str) -> Any:
    may_read()
    newest = services().store.latest(project, item)
    return redirect(item_url(project, item) + quote(newest.name), code=302)


def rollback(project: str, item: str) -> Any:
    auth.require_project(caller(), project)
    release = None
    body = json_body(optional=True)
    if body is not None:
        if not isinstance(body, dict) or not isinstance(body.get("release"), str):
            raise BadRequest('send {"release": "<id>"}, or no body for the previous release')
        release = body["release"]
    return item_json(project, services().store.rollback(project, item, release))


def delete_file(project: str, item: str, filename: str) -> Any:
    auth.require_project(caller(), project)
    services().store.delete_file(project, item, filename)
    return "", 204


def create_token(project: str) -> Any:
    auth.require_admin(caller())
    if json_body(optional=True) not in (None, {}):
        raise BadRequest("a token takes no options: send no body, or {}")
    services().store.project(project)
    # Checked again under the tokens' lock, so a delete running meanwhile cannot miss it.
    body = services().tokens.create(project,
                                    check=lambda: services().store.project_created(project))
    return created(body, url_for("list_tokens", project=project, _external=True))


def list_tokens(project: str) -> Any:
    auth.require_admin(caller())
    services().store.project(project)
    return {"tokens": services().tokens.list(project)}


def revoke_token(project: str, token_id: str) -> Any:
    auth.require_admin(caller())
    services().store.project(project)
    services().tokens.revoke(project, token_id)
    return "", 204


ROUTES = [
    ("/_health", health, ["GET"]),
    ("/_openapi.json", openapi, ["GET"]),
    ("/_metrics", metrics, ["GET"]),
    ("/_whoami", whoami, ["GET"]),
    ("/", list_projects, ["GET"]),
    ("/<name:project>", get_project, ["GET"]),
    ("/<name:project>", create_project, ["POST"]),
    ("/<name:project>", update_project, ["PUT"]),
    ("/<name:project>", delete_project, ["DELETE"]),
    ("/<name:project>/_tokens", list_tokens, ["GET"]),
    ("/<name:project>/_tokens", create_token, ["POST"]),
    ("/<name:project>/_tokens/<token_id>", revoke_token, ["DELETE"]),
    ("/<name:project>/<name:item>", get_item, ["GET"]),
    ("/<name:project>/<name:item>", upload, ["POST", "PUT"]),
    ("/<name:project>/<name:item>/latest", latest, ["GET"]),
    ("/<name:project>/<name:item>/rollback", rollback, ["POST"]),
    ("/<name:project>/<name:item>/<filename>", delete_file, ["DELETE"]),
]


# ------------------------------------------------------------ factories


def maintenance(store: Store, interval: int) -> None:
    """The background thread of a worker: the store's maintenance, now and then."""
    while True:
        try:
            store.maintain()
        except Exception:  # noqa: BLE001 - logged; the next run tries again
            log.exception("background maintenance failed")
        time.sleep(interval)


def create_app(settings: Settings, environ: dict[str, str] | None = None, *,
               background: bool = False) -> Flask:
    """The API as a WSGI app, for ``settings``. Sweeps leftovers of a crash first; with
    ``background`` (what the servers run) it keeps a maintenance thread too."""
    app = Flask("artstore")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = Store(settings)  # a broken projects.json stops start-up here
    tokens = auth.Tokens(store.catalog, auth.ensure_admin_token(settings.state_dir, environ))
    try:
        store.sweep()
        # A project delete killed before it ended the tokens.
        tokens.drop_unless(lambda project: store.catalog.project(project) is not None)
    except Exception:  # noqa: BLE001
        # Housekeeping must never keep a worker from starting: gunicorn stops the whole
        # service when one fails to boot. What is left is swept at the next start.
        log.exception("the start-up sweep failed; serving anyway")
    if background:
        threading.Thread(target=maintenance, args=(store, settings.collect_interval),
                         name="artstore-maintenance", daemon=True).start()
        store.start_page_writer()
        # A worker that stops leaves projects.json whole, for a human to edit.
        atexit.register(store.catalog.fold)
    disks = {"base_path": settings.base_path, "temp_path": settings.temp_path}
    app.extensions["artstore"] = Services(settings, store, tokens,
                                          Metrics(settings.state_dir, disks))
    app.url_map.converters["name"] = NameConverter
    for path, view, methods in ROUTES:
        app.add_url_rule(path, view.__name__, view, methods=methods)
    app.register_error_handler(Exception, render_error)

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex[:16]
        g.started = time.monotonic()
        # Werkzeug decodes %2F and then drops leading slashes, so "/%2Fdemo" would reach
        # project "demo": refuse an encoded slash anywhere in the path instead.
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
        if "%2f" in raw.split("?", 1)[0].lower():
            raise BadRequest("a name may not contain a slash, encoded or not")

    @app.after_request
    def _count_upload(response: Response) -> Response:
        if request.endpoint == "upload":
            received = sum(incoming.size for incoming in g.get("incoming", []))
            services().metrics.record_upload(response.status_code, received,
                                             time.monotonic() - g.started)
        return response

    @app.after_request
    def _linger(response: Response) -> Response:
        if has_body(request.environ):
            response.call_on_close(functools.partial(linger, request.environ,
                                                     settings.max_upload_bytes))
        return response

    @app.after_request
    def _tag(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def _discard_uploads(_exc: BaseException | None) -> None:
        for incoming in g.pop("incoming", []):
            incoming.discard()

    if settings.trusted_proxies:
        # Exactly the headers the sample nginx config sets (it clears X-Forwarded-Port):
        # a header the proxy passes on unchanged would let a client pick the host or port
        # of every URL the service returns.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n,  # type: ignore
                                x_port=0, x_prefix=n)
    return app


def create_files_app(settings: Settings) -> Flask:
    """Serve ``base_path`` like the sample nginx config: index.html, no dot-paths."""
    app = Flask("artstore.files")
    root = str(settings.base_path)

    def serve(path: str = "") -> Any:
        if any(part.startswith(".") for part in path.split("/")):
            raise NotFound("not found")
        target = safe_join(root, path) if path else root
        if target is None:
            raise NotFound("not found")
        if os.path.isdir(target):
            if path and not path.endswith("/"):
                return redirect(f"{request.script_root}/{quote(path)}/", code=301)
            target = os.path.join(target, "index.html")
        if not os.path.isfile(target):
            raise NotFound(f"/{path} is not published")
        # "no-cache" alone, as the sample nginx config sends for every published file.
        return send_file(target, request.environ, max_age=None, conditional=True)

    app.add_url_rule("/", "root", serve)
    app.add_url_rule("/<path:path>", "serve", serve)
    app.register_error_handler(Exception, render_error)
    return app


def create_site(settings: Settings, environ: dict[str, str] | None = None) -> Any:
    """What ``artstore serve`` runs: the API, plus the files at / when serve_files is on."""
    api = create_app(settings, environ, background=True)
    if not settings.serve_files:
        return api
    return DispatcherMiddleware(create_files_app(settings), {API_PREFIX: api})


def app_from_config() -> Any:
    """The production entry point: ``gunicorn 'artstore.api:app_from_config()'``.

    Reads ``artstore.json`` from ``$ARTSTORE_CONFIG``, else ``/etc/artstore``.
    """
    return create_site(load(config_path()))
