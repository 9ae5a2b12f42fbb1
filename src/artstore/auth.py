"""Bearer tokens: the admin token and per-project tokens.

Project tokens are shown once, stored only as SHA-256 hashes (they are 256-bit random
secrets, so no salt or slow hash is needed), and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import storage
from .catalog import FileCatalog
from .errors import ConfigError, Forbidden, NotFound, Unauthorized
from .names import NAME_RE

if TYPE_CHECKING:
    from .pgcatalog import PostgresCatalog

log = logging.getLogger("artstore")
ADMIN_ENV = "ARTSTORE_ADMIN_TOKEN"
TOKEN_PREFIX = "ast_"
SECRET_BYTES = 32
SECRET_CHARS = 43  # secrets.token_urlsafe(SECRET_BYTES)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def ensure_admin_token(state_dir: Path, environ: Mapping[str, str] | None = None) -> str:
    """The admin token: ``$ARTSTORE_ADMIN_TOKEN``, else ``admin.token`` (made once, 0600)."""
    environ = os.environ if environ is None else environ
    if environ.get(ADMIN_ENV):
        return environ[ADMIN_ENV]
    path = Path(state_dir) / "admin.token"
    token = TOKEN_PREFIX + "admin_" + secrets.token_urlsafe(32)
    if not path.exists() and storage.create_once(path, (token + "\n").encode(), 0o600):
        # Through the service's log: a JSON line under deploy/gunicorn.conf.py; with no
        # logging set up (``artstore serve`` makes the token before gunicorn starts),
        # Python's last-resort handler prints a warning on stderr.
        log.warning("created the admin token in %s (mode 0600)", path)
        return token
    # Made by an earlier start or by another worker just now; either way it is whole.
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"{path} is empty: delete it while the service is stopped, and "
                          "the next start makes a new admin token")
    return token


@dataclass(frozen=True)
class Caller:
    """Who sent a request: ``admin``, a project token's project, or nobody."""

    admin: bool = False
    project: str | None = None

    @property
    def anonymous(self) -> bool:
        return not self.admin and self.project is None


class Tokens:
    """Project tokens, kept by the catalog as hashes: ``{"id", "hash", "created"}``.

    A token names its project (``ast_<project>_<secret>``), so checking one reads only that
    project's tokens, however many projects there are.
    """

    def __init__(self, catalog: FileCatalog | PostgresCatalog, admin_token: str) -> None:
        self.catalog = catalog
        self._admin_digest = _digest(admin_token)

    def identify(self, token: str | None) -> Caller:
        """Map a presented bearer token to a caller; a wrong token is a 401."""
        if token is None:
            return Caller()
        digest = _digest(token)
        if hmac.compare_digest(digest, self._admin_digest):
            return Caller(admin=True)
        project = _project_of(token)
        found = False
        for entry in self.catalog.tokens(project) if project else ():
            # Compare against every entry so timing does not reveal which one matched.
            found |= hmac.compare_digest(digest, entry["hash"])
        if not found:
            raise Unauthorized("the bearer token is not valid")
        return Caller(project=project)

    def create(self, project: str, check: Callable[[], Any] | None = None) -> dict[str, Any]:
        """A new token for ``project``; ``check`` (that the project exists) runs under the
        lock that ``drop_project`` takes, so a token is never made for a deleted project."""
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{project}_{secrets.token_urlsafe(SECRET_BYTES)}"
        entry = {"id": token_id, "hash": _digest(token), "created": _now()}
        self.catalog.add_token(project, entry, check)
        return {"id": token_id, "token": token, "created": entry["created"]}

    def list(self, project: str) -> list[dict[str, str]]:
        return [{"id": e["id"], "created": e["created"]} for e in self.catalog.tokens(project)]

    def revoke(self, project: str, token_id: str) -> None:
        if not self.catalog.revoke_token(project, token_id):
            raise NotFound(f"project {project!r} has no token {token_id!r}")

    def drop_project(self, project: str) -> None:
        self.catalog.drop_tokens(project)

    def drop_unless(self, keep: Callable[[str], bool]) -> None:
        """End the tokens of every project ``keep`` says no to."""
        for project in self.catalog.token_projects():
            if not keep(project):
                self.catalog.drop_tokens(project)


def _project_of(token: str) -> str | None:
    """The project a token was made for: ``ast_<project>_<secret>``, the secret being
    SECRET_CHARS long (project names may hold ``_`` too)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) <= len(TOKEN_PREFIX) + SECRET_CHARS + 1:
        return None
    project, sep = token[len(TOKEN_PREFIX):-SECRET_CHARS - 1], token[-SECRET_CHARS - 1]
    return project if sep == "_" and NAME_RE.fullmatch(project) else None


def require_admin(caller: Caller) -> None:
    if caller.anonymous:
        raise Unauthorized("this call needs a bearer token")
    if not caller.admin:
        raise Forbidden("this call needs the admin token")


def require_project(caller: Caller, project: str) -> None:
    if caller.anonymous:
        raise Unauthorized("this call needs a bearer token")
    if not caller.admin and caller.project != project:
        raise Forbidden(f"this token may not change project {project!r}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
