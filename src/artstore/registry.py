"""The project registry: ``projects.json`` in the state directory.

It maps each project name to the project's configuration, in the API's shape. Every
change is a read-modify-write under an inter-process lock, written atomically, so
several worker processes and a crash at any instant never corrupt it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from . import storage
from .errors import BadRequest, ConfigError
from .names import check_name

ITEM_TYPES = ("html", "tgz", "zip", "collection")
RELEASE_TYPES = ("html", "tgz", "zip")


def normalise_project(body: Any) -> dict[str, Any]:
    """Validate a project configuration from a request; return its canonical form."""
    if not isinstance(body, dict):
        raise BadRequest("the project configuration must be a JSON object")
    unknown = sorted(set(body) - {"description", "items"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} in the project configuration")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 1000:
        raise BadRequest("'description' must be a string of at most 1000 characters")
    items = body.get("items", {})
    if not isinstance(items, dict):
        raise BadRequest("'items' must be an object mapping item names to their settings")
    return {
        "description": description,
        "items": {check_name(name, "item name"): _normalise_item(name, conf)
                  for name, conf in items.items()},
    }


def _normalise_item(name: str, conf: Any) -> dict[str, Any]:
    if not isinstance(conf, dict):
        raise BadRequest(f"item {name!r}: settings must be a JSON object")
    kind = conf.get("type")
    if kind not in ITEM_TYPES:
        raise BadRequest(f"item {name!r}: 'type' must be one of {', '.join(ITEM_TYPES)}")
    allowed = {"type", "depth" if kind == "collection" else "keep"}
    unknown = sorted(set(conf) - allowed)
    if unknown:
        raise BadRequest(f"item {name!r}: unknown setting {unknown[0]!r} for a {kind} item")
    out: dict[str, Any] = {"type": kind}
    for key in allowed - {"type"}:
        if key in conf:
            value = conf[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON has one kind of number: 5.0 is the integer 5
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
                raise BadRequest(f"item {name!r}: {key!r} must be an integer from 1 to 10000")
            out[key] = value
    return out


class Registry:
    """Reads and changes ``projects.json``; reads are cached until the file changes."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "projects.json"
        self.lock_path = Path(state_dir) / "projects.lock"
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    def load(self) -> dict[str, Any]:
        """All projects, ``{name: configuration}``. Raises ConfigError if the file is broken."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            data = json.loads(self.path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of projects")
            projects = {}
            for name, conf in data.items():
                check_name(name, "project name")
                projects[name] = normalise_project(conf)
        except (ValueError, BadRequest) as exc:
            detail = exc.detail if isinstance(exc, BadRequest) else str(exc)
            raise ConfigError(
                f"{self.path} is broken ({detail}); fix or restore it by hand while the "
                "service is stopped - it is never reset automatically"
            ) from None
        self._cache = (key, projects)
        return projects

    def get(self, name: str) -> dict[str, Any] | None:
        return self.load().get(name)

    def change(self, mutate: Callable[[dict[str, Any]], Any]) -> Any:
        """Run ``mutate`` on a fresh copy of all projects under the lock, then save it.

        ``mutate`` may raise to abandon the change; its return value is passed back.
        """
        with storage.locked(self.lock_path):
            self._cache = None
            projects = json.loads(json.dumps(self.load()))
            result = mutate(projects)
            storage.write_json(self.path, projects)
            return result
