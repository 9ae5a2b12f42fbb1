"""The one error hierarchy. Every failure a client can cause is one of these.

Each carries its HTTP status and a human message; the HTTP layer renders them as
``application/problem+json`` in exactly one place. Nothing here imports Flask.
"""

from __future__ import annotations

from typing import Any


class ArtstoreError(Exception):
    """Base class: a failure with an HTTP status and a message meant for the user."""

    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        # Extra members of the problem document (e.g. ``items`` or ``members``).
        self.extra = extra


class BadRequest(ArtstoreError):
    status = 400
    title = "Bad Request"


class Unauthorized(ArtstoreError):
    status = 401
    title = "Unauthorized"


class Forbidden(ArtstoreError):
    status = 403
    title = "Forbidden"


class NotFound(ArtstoreError):
    status = 404
    title = "Not Found"


class Conflict(ArtstoreError):
    status = 409
    title = "Conflict"


class LengthRequired(ArtstoreError):
    status = 411
    title = "Length Required"


class TooLarge(ArtstoreError):
    status = 413
    title = "Content Too Large"


class UnsupportedType(ArtstoreError):
    status = 415
    title = "Unsupported Media Type"


class Unprocessable(ArtstoreError):
    """The upload was read but its content is refused (bad archive, checksum, ...)."""

    status = 422
    title = "Unprocessable Content"


class ServiceUnavailable(ArtstoreError):
    """A service the store needs (the object store) does not answer, or answers with its
    own failure: retrying later may work."""

    status = 503
    title = "Service Unavailable"


class InsufficientStorage(ArtstoreError):
    status = 507
    title = "Insufficient Storage"


class ConfigError(Exception):
    """A bad ``artstore.json``, environment override or state file: stops start-up."""
