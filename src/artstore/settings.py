"""Settings: declared once, read from ``artstore.json``, overridden by the environment.

The directory holding ``artstore.json`` is the state directory: ``projects.json``,
tokens, per-item state and locks live there, never under ``base_path``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG = "/etc/artstore/artstore.json"
GiB = 1024**3
CATALOG_SCHEMES = ("postgresql://", "postgres://")
# S3's rule for bucket names (3-63 lowercase letters, digits, dots, hyphens).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "ARTSTORE_" + self.name.upper()


REQUIRED = object()

SETTINGS: tuple[Setting, ...] = (
    Setting("base_path", str, REQUIRED,
            "Root of the served hierarchy; everything under it is public. Relative paths are "
            "resolved against the state directory."),
    Setting("temp_path", str, REQUIRED,
            "Where uploads in flight are written. Put it on the same filesystem as base_path "
            "so files are moved, not copied."),
    Setting("public_url", str, "",
            "Public URL of the served files (e.g. https://ci.example.com). Empty: derived from "
            "each request."),
    Setting("max_upload_bytes", int, 2 * GiB, "Largest accepted upload body."),
    Setting("max_extract_bytes", int, 8 * GiB, "Largest total size extracted from one archive."),
    Setting("max_members", int, 100_000, "Most entries in one archive."),
    Setting("max_path_bytes", int, 1024, "Longest path of an archive member, in bytes."),
    Setting("max_path_depth", int, 32, "Most directories in an archive member's path."),
    Setting("max_name_bytes", int, 255, "Longest single path component, in bytes."),
    Setting("max_ratio", int, 200,
            "Highest compression ratio (per member and overall) once more than 1 MiB came out."),
    Setting("default_keep", int, 5,
            "Releases kept for html, tgz and zip items that do not set keep."),
    Setting("default_depth", int, 10, "Files kept by collections that do not set depth."),
    Setting("read_requires_token", bool, False,
            "Make GET requests to the API need a token too (published files are served by "
            "nginx and are not affected)."),
    Setting("serve_files", bool, False,
            "artstore serve also serves base_path at / and moves the API under /artstore/, "
            "like the nginx setup (the embedded default turns this on)."),
    Setting("collect_interval", int, 3600,
            "Seconds between background runs of the blob collector, which deletes stored "
            "contents no release holds any more (deleting a release frees its own at once; "
            "this catches what a crash left). One worker runs it, at start too."),
    Setting("catalog", str, "",
            "Where the catalog (projects, items, releases, tokens) lives. Empty: the state "
            "directory. A postgresql:// URL: that PostgreSQL database (needs the postgres "
            "extra; a password is better given by PGPASSWORD or ~/.pgpass than in the URL)."),
    Setting("blob_store", str, "",
            "Where the published files' bytes live. Empty: under base_path. An "
            "s3://bucket/prefix URL: that bucket of an S3-compatible object store, under "
            "the prefix (needs the s3 extra; the bucket must exist and need not be public)."),
    Setting("s3_endpoint", str, "",
            "The object store's URL (e.g. http://seaweedfs:8333). Empty: AWS S3."),
    Setting("s3_region", str, "",
            "The object store's region. Empty: AWS_REGION or AWS_DEFAULT_REGION, else "
            "us-east-1."),
    Setting("s3_access_key", str, "",
            "The object store's access key. Empty: the standard AWS sources "
            "(AWS_ACCESS_KEY_ID, ~/.aws/credentials, an instance role)."),
    Setting("s3_secret_key", str, "",
            "The object store's secret key. Empty: the standard AWS sources "
            "(AWS_SECRET_ACCESS_KEY, ...); better given there than in artstore.json."),
    Setting("trusted_proxies", int, 0,
            "How many proxies in front of the service to trust for X-Forwarded-For, -Proto, "
            "-Host and -Prefix (1 behind the sample nginx)."),
)

BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    base_path: Path
    temp_path: Path
    public_url: str = ""
    max_upload_bytes: int = 2 * GiB
    max_extract_bytes: int = 8 * GiB
    max_members: int = 100_000
    max_path_bytes: int = 1024
    max_path_depth: int = 32
    max_name_bytes: int = 255
    max_ratio: int = 200
    default_keep: int = 5
    default_depth: int = 10
    read_requires_token: bool = False
    serve_files: bool = False
    collect_interval: int = 3600
    catalog: str = ""
    blob_store: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    trusted_proxies: int = 0


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Check one value against its declared type; strings from the environment are parsed."""
    where = f"setting {setting.name!r} ({source})"
    if source.startswith("ARTSTORE_") and setting.type is not str:
        text = value.strip().lower()
        if setting.type is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if setting.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if setting.type is int and value < (0 if setting.name == "trusted_proxies" else 1):
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    if setting.type is not int and not isinstance(value, setting.type):
        raise ConfigError(f"{where}: expected {setting.type.__name__}, got {value!r}")
    if setting.type is str and setting.default is REQUIRED and not value:
        raise ConfigError(f"{where}: must not be empty")
    return value


def from_mapping(
    data: Mapping[str, Any], state_dir: Path, environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate ``data`` (the parsed ``artstore.json``) plus environment overrides."""
    if not isinstance(data, Mapping):
        raise ConfigError("artstore.json must hold a JSON object")
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} in artstore.json "
                          f"(known: {', '.join(BY_NAME)})")
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.env in environ:
            values[setting.name] = _coerce(setting, environ[setting.env], setting.env)
        elif setting.name in data:
            values[setting.name] = _coerce(setting, data[setting.name], "artstore.json")
        elif setting.default is REQUIRED:
            raise ConfigError(f"setting {setting.name!r} is required in artstore.json")
    state_dir = Path(state_dir).resolve()
    for key in ("base_path", "temp_path"):
        values[key] = (state_dir / values[key]).resolve()
    if values.get("catalog") and not values["catalog"].startswith(CATALOG_SCHEMES):
        raise ConfigError("setting 'catalog': expected empty (the state directory) or a "
                          "postgresql:// URL")
    if values.get("blob_store"):
        s3_location(values["blob_store"])
    if values.get("s3_endpoint") and not values["s3_endpoint"].startswith(
            ("http://", "https://")):
        raise ConfigError("setting 's3_endpoint': expected an http:// or https:// URL")
    if "public_url" in values:
        values["public_url"] = values["public_url"].rstrip("/")
    return Settings(state_dir=state_dir, **values)


def s3_location(url: str) -> tuple[str, str]:
    """The bucket and key prefix (empty, or ending in ``/``) of a ``blob_store`` URL
    ``s3://bucket/prefix``; ConfigError if it is not one."""
    where = "setting 'blob_store'"
    if not url.startswith("s3://"):
        raise ConfigError(f"{where}: expected empty (under base_path) or an "
                          f"s3://bucket/prefix URL, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"{where}: {bucket!r} is not a bucket name (3-63 lowercase "
                          "letters, digits, dots and hyphens)")
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{where}: the prefix {prefix!r} has an empty, . or .. part")
    return bucket, prefix + "/" if prefix else ""


def config_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where ``artstore.json`` is: ``--config``, else ``$ARTSTORE_CONFIG``, else /etc/artstore."""
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get("ARTSTORE_CONFIG") or DEFAULT_CONFIG)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate ``artstore.json`` at ``path``; ConfigError says what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return from_mapping(data, Path(path).parent, environ)


def write_embedded_default(folder: Path) -> Path:
    """Create (once) a self-contained configuration under ``folder`` and return its path."""
    folder = Path(folder).resolve()
    path = folder / "artstore.json"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        config = {"base_path": "public", "temp_path": "tmp", "serve_files": True}
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
