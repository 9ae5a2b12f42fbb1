"""The filesystem primitives: claims protect work in progress from a concurrent sweep."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from artstore import storage


def test_a_sweep_leaves_claimed_temp_entries_and_removes_abandoned_ones(tmp_path: Path) -> None:
    fd, path = storage.claimed_file(tmp_path, storage.TMP_PREFIX + "upload-")
    stage, dir_fd = storage.claimed_dir(tmp_path, storage.TMP_PREFIX + "stage-")
    (stage / "file").write_text("x")
    storage.sweep_temp_entries(tmp_path)
    assert os.path.exists(path) and stage.is_dir()
    os.close(fd)
    os.close(dir_fd)
    storage.sweep_temp_entries(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_never_breaks_an_atomic_write_in_progress(tmp_path: Path) -> None:
    """Workers sweep when they start while others write: no write may lose its temp file."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            storage.sweep_temp_entries(tmp_path)

    def write() -> None:
        try:
            for i in range(400):
                storage.write_json(tmp_path / "state.json", {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    writers = [threading.Thread(target=write) for _ in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    sweeper.join()
    assert errors == []
    assert json.loads((tmp_path / "state.json").read_text()) == {"i": 399}


def test_atomic_write_sets_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    storage.atomic_write(tmp_path / "secret", b"s", mode=0o600)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_a_failing_start_up_sweep_does_not_stop_the_worker(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    """gunicorn stops the whole service when a worker fails to boot."""
    from artstore import settings as settings_mod
    from artstore.api import create_app
    from artstore.store import Store

    from .conftest import ADMIN, write_config

    def broken(self: Store) -> None:
        raise FileNotFoundError("a directory vanished under the sweep")

    monkeypatch.setattr(Store, "sweep", broken)
    app = create_app(settings_mod.load(write_config(tmp_path / "s"), environ={}),
                     environ={"ARTSTORE_ADMIN_TOKEN": ADMIN})
    assert app.test_client().get("/_health").status_code == 200
