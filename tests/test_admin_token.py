"""The generated admin token: made once, whole, whichever worker starts first."""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from artstore import auth
from artstore.errors import ConfigError

SRC = str(Path(auth.__file__).parent)


def test_a_worker_reading_the_admin_token_while_another_creates_it_never_gets_a_partial_one(
        tmp_path: Path) -> None:
    """At every line the creating worker runs once admin.token exists, another worker starts
    and reads it: it must get the whole token, the one the creator ends up with. (Before
    that, another worker would race to create it, and one of the two would win.)"""
    seen: list[str] = []
    steps: list[int] = []

    def another_worker_starts() -> None:
        steps.append(1)
        if (tmp_path / "admin.token").exists():
            seen.append(auth.ensure_admin_token(tmp_path, {}))

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(SRC):
            return None
        if event == "line":
            another_worker_starts()  # a trace function is not traced itself
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        token = auth.ensure_admin_token(tmp_path, {})
    finally:
        sys.settrace(previous)
    assert len(steps) > 5, "the trace did not step through the creation"
    assert seen, "admin.token never existed while the creator ran"
    assert set(seen) == {token} and token.startswith("ast_admin_") and len(token) > 40
    assert (tmp_path / "admin.token").read_text() == token + "\n"
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin.token"]


def test_an_empty_admin_token_file_stops_start_up_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("\n")
    with pytest.raises(ConfigError, match="admin.token is empty"):
        auth.ensure_admin_token(tmp_path, {})
