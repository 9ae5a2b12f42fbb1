"""Upload counters shared by every worker process, rendered in Prometheus text format.

gunicorn runs several workers, and a scrape reaches only one of them, so the counters
cannot live in memory. They live in one small JSON file in ``<state dir>/metrics/``,
updated with a read-modify-write under an ``flock``: every scrape sees all workers'
uploads, and the totals survive restarts (Prometheus counters may only go up).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import storage
from .errors import ArtstoreError

log = logging.getLogger("artstore")

# Upper bounds (seconds) of the upload duration histogram: a small report to a
# multi-GB site over a slow link.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def result_of(status: int) -> str:
    """``published`` (2xx), ``refused`` (the client's fault, 4xx) or ``failed`` (5xx)."""
    if status < 400:
        return "published"
    return "refused" if status < 500 else "failed"


def _empty() -> dict[str, Any]:
    return {"uploads": {"published": 0, "refused": 0, "failed": 0}, "failures": {},
            "received_bytes": 0, "published_bytes": 0,
            "duration": {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0}}


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics:
    def __init__(self, state_dir: Path, disks: dict[str, Path]) -> None:
        """``disks`` maps a label (``base_path``) to a folder whose free space is reported."""
        self.folder = Path(state_dir) / "metrics"
        self.folder.mkdir(exist_ok=True)
        self.path = self.folder / "counters.json"
        self.disks = disks

    def _read(self) -> dict[str, Any]:
        data = _empty()
        stored = storage.read_json(self.path, {})
        for key, value in stored.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return data

    def record_upload(self, status: int, received: int, seconds: float) -> None:
        """Count one answered upload request (``received``: body bytes read).

        Counting must never change the answer: a failure here is logged, not raised.
        """
        try:
            self._add(status, received, seconds)
        except (OSError, ValueError, ArtstoreError):  # a full disk is an ArtstoreError
            log.exception("could not update the upload counters in %s", self.path)

    def _add(self, status: int, received: int, seconds: float) -> None:
        with storage.locked(self.folder / "counters.lock"):
            data = self._read()
            data["uploads"][result_of(status)] += 1
            if status >= 400:
                data["failures"][str(status)] = data["failures"].get(str(status), 0) + 1
            else:
                data["published_bytes"] += received
            data["received_bytes"] += received
            duration = data["duration"]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    duration["buckets"][i] += 1
            duration["sum"] += seconds
            duration["count"] += 1
            storage.write_json(self.path, data)

    def render(self) -> str:
        """The Prometheus text exposition of the counters and of free disk space."""
        data = self._read()
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, Any]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        metric("artstore_uploads_total", "counter",
               "Upload requests answered, by result: published, refused (4xx), failed (5xx).",
               [(f'{{result="{k}"}}', v) for k, v in data["uploads"].items()])
        metric("artstore_upload_failures_total", "counter",
               "Upload requests that published nothing, by HTTP status.",
               [(f'{{status="{k}"}}', v) for k, v in sorted(data["failures"].items())])
        metric("artstore_upload_received_bytes_total", "counter",
               "Upload body bytes received, published or not.",
               [("", data["received_bytes"])])
        metric("artstore_upload_published_bytes_total", "counter",
               "Upload body bytes of successful uploads.", [("", data["published_bytes"])])
        duration = data["duration"]
        samples = [(f'_bucket{{le="{bound}"}}', n)
                   for bound, n in zip(BUCKETS, duration["buckets"])]
        samples += [('_bucket{le="+Inf"}', duration["count"]), ("_sum", float(duration["sum"])),
                    ("_count", duration["count"])]
        metric("artstore_upload_duration_seconds", "histogram",
               "Time from the start of an upload request to its answer.", samples)
        metric("artstore_disk_free_bytes", "gauge",
               "Free bytes (for unprivileged users) on the filesystem of each path.",
               [(f'{{path="{label}"}}', _free_bytes(folder))
                for label, folder in self.disks.items()])
        return "\n".join(lines) + "\n"
