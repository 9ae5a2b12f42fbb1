"""GET /_metrics: Prometheus text, counted in the state directory for every worker."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

from artstore.api import create_app
from artstore.metrics import BUCKETS, Metrics

from .conftest import ADMIN, AUTH, write_config


def samples(text: str) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r"^([^#\s]\S*) (\S+)$", text, re.M)}


def test_metrics_count_uploads_by_result_with_bytes_and_durations(client: Any,
                                                                   make_project: Any) -> None:
    make_project()
    assert client.put("/demo/report", data=b"<p>ok</p>", headers=AUTH).status_code == 201
    assert client.put("/demo/report", data=b"\0", headers=AUTH).status_code == 415
    assert client.put("/demo/report", data=b"<p>sum</p>", headers={
        **AUTH, "X-Checksum-Sha256": "0" * 64}).status_code == 422
    assert client.put("/demo/report", data=b"<p>x</p>").status_code == 401
    r = client.get("/_metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.get_data(as_text=True)
    assert "# TYPE artstore_uploads_total counter" in text
    assert "# TYPE artstore_upload_duration_seconds histogram" in text
    got = samples(text)
    assert got['artstore_uploads_total{result="published"}'] == 1
    assert got['artstore_uploads_total{result="refused"}'] == 3
    assert got['artstore_uploads_total{result="failed"}'] == 0
    assert got['artstore_upload_failures_total{status="401"}'] == 1
    assert got['artstore_upload_failures_total{status="415"}'] == 1
    assert got['artstore_upload_failures_total{status="422"}'] == 1
    assert got["artstore_upload_published_bytes_total"] == len(b"<p>ok</p>")
    assert got["artstore_upload_received_bytes_total"] == len(b"<p>ok</p>") + 1 + 10
    assert got["artstore_upload_duration_seconds_count"] == 4
    assert got['artstore_upload_duration_seconds_bucket{le="+Inf"}'] == 4
    buckets = [got[f'artstore_upload_duration_seconds_bucket{{le="{b}"}}'] for b in BUCKETS]
    assert buckets == sorted(buckets)  # cumulative
    assert got['artstore_disk_free_bytes{path="base_path"}'] > 0
    assert got['artstore_disk_free_bytes{path="temp_path"}'] > 0


def test_other_requests_are_not_counted_as_uploads(client: Any, make_project: Any) -> None:
    make_project()
    client.get("/demo/report")
    client.get("/demo")
    got = samples(client.get("/_metrics").get_data(as_text=True))
    assert got["artstore_upload_duration_seconds_count"] == 0


def test_counters_live_in_the_state_directory_and_survive_a_restart(
        settings: Any, client: Any, make_project: Any) -> None:
    make_project()
    assert client.put("/demo/report", data=b"<p>ok</p>", headers=AUTH).status_code == 201
    assert (settings.state_dir / "metrics" / "counters.json").is_file()
    assert not list(settings.base_path.rglob("counters*"))
    again = create_app(settings, environ={"ARTSTORE_ADMIN_TOKEN": ADMIN}).test_client()
    got = samples(again.get("/_metrics").get_data(as_text=True))
    assert got['artstore_uploads_total{result="published"}'] == 1


def test_metrics_need_a_token_when_reads_do(tmp_path: Path) -> None:
    from artstore import settings as settings_mod

    config = write_config(tmp_path / "state", read_requires_token=True)
    app = create_app(settings_mod.load(config, environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    client = app.test_client()
    r = client.get("/_metrics")
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
    assert client.get("/_metrics", headers=AUTH).status_code == 200


def _count(state_dir: str, disks: dict[str, str], n: int) -> None:
    metrics = Metrics(Path(state_dir), {k: Path(v) for k, v in disks.items()})
    for i in range(n):
        metrics.record_upload(201 if i % 5 else 413, 10, 0.01)


def test_counts_from_concurrent_processes_all_add_up(tmp_path: Path) -> None:
    disks = {"base_path": str(tmp_path)}
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_count, [(str(tmp_path), disks, 50)] * 4)
    got = samples(Metrics(tmp_path, {"base_path": tmp_path}).render())
    assert got['artstore_uploads_total{result="published"}'] == 160
    assert got['artstore_upload_failures_total{status="413"}'] == 40
    assert got["artstore_upload_received_bytes_total"] == 2000
    assert got["artstore_upload_duration_seconds_count"] == 200


def test_a_counter_that_cannot_be_written_does_not_fail_the_upload(
        client: Any, make_project: Any, settings: Any) -> None:
    make_project()
    folder = settings.state_dir / "metrics"
    (folder / "counters.json").write_text("{broken")
    assert client.put("/demo/report", data=b"<p>ok</p>", headers=AUTH).status_code == 201
