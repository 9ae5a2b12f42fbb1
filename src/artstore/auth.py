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
from typing import Any, Callable

from . import storage
from .errors import ConfigError, Forbidden, NotFound, Unauthorized

log = logging.getLogger("artstore")
ADMIN_ENV = "ARTSTORE_ADMIN_TOKEN"
TOKEN_PREFIX = "ast_"


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
    """Project tokens in ``tokens.json``: ``{project: [{"id", "hash", "created"}]}``."""

    def __init__(self, state_dir: Path, admin_token: str) -> None:
        self.path = Path(state_dir) / "tokens.json"
        self.lock_path = Path(state_dir) / "tokens.lock"
        self._admin_digest = _digest(admin_token)

    def identify(self, token: str | None) -> Caller:
        """Map a presented bearer token to a caller; a wrong token is a 401."""
        if token is None:
            return Caller()
        digest = _digest(token)
        if hmac.compare_digest(digest, self._admin_digest):
            return Caller(admin=True)
        found = None
        for project, entries in storage.read_json(self.path, {}).items():
            for entry in entries:
                # Compare against every entry so timing does not reveal which one matched.
                if hmac.compare_digest(digest, entry["hash"]):
                    found = project
        if found is None:
            raise Unauthorized("the bearer token is not valid")
        return Caller(project=found)

    def create(self, project: str, check: Callable[[], Any] | None = None) -> dict[str, Any]:
        """A new token for ``project``; ``check`` (that the project exists) runs under the
        lock that ``drop_project`` takes, so a token is never made for a deleted project."""
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{project}_{secrets.token_urlsafe(32)}"
        entry = {"id": token_id, "hash": _digest(token), "created": _now()}
        with storage.locked(self.lock_path):
            if check is not None:
                check()
            data = storage.read_json(self.path, {})
            data.setdefault(project, []).append(entry)
            storage.write_json(self.path, data, mode=0o600)
        return {"id": token_id, "token": token, "created": entry["created"]}

    def list(self, project: str) -> list[dict[str, str]]:
        entries = storage.read_json(self.path, {}).get(project, [])
        return [{"id": e["id"], "created": e["created"]} for e in entries]

    def revoke(self, project: str, token_id: str) -> None:
        with storage.locked(self.lock_path):
            data = storage.read_json(self.path, {})
            entries = data.get(project, [])
            kept = [e for e in entries if e["id"] != token_id]
            if len(kept) == len(entries):
                raise NotFound(f"project {project!r} has no token {token_id!r}")
            data[project] = kept
            storage.write_json(self.path, data, mode=0o600)

    def drop_project(self, project: str) -> None:
        self.drop_unless(lambda name: name != project)

    def drop_unless(self, keep: Callable[[str], bool]) -> None:
        """End the tokens of every project ``keep`` says no to (asked under the lock)."""
        with storage.locked(self.lock_path):
            data = storage.read_json(self.path, {})
            kept = {project: entries for project, entries in data.items() if keep(project)}
            if kept != data:
                storage.write_json(self.path, kept, mode=0o600)


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
