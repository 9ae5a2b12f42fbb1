"""Shared helpers of the benchmark scripts: a real ``artstore serve``, timing, results.

Every script starts its own server (``python -m artstore.cli serve --config ... --workers 2``)
on a temp directory, measures the figure and its reference in the same run, prints one
result line per target of issue 7 and removes everything it created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

ADMIN = "bench-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
AUTH_HEADER = f"Authorization: Bearer {ADMIN}"  # for curl -H
MB = 1000 * 1000  # throughput is quoted in MB/s (10^6 bytes), like curl and dd
MiB = 1024 * 1024


# ------------------------------------------------------------------ arguments


def parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes: --runs, --tmpdir, --keep-tmp, --strict."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=5,
                   help="timed repetitions; medians are reported (default 5)")
    p.add_argument("--tmpdir", default=None,
                   help="where the server, the references and the test data live; all on "
                        "one disk (default: the system temp dir)")
    p.add_argument("--keep-tmp", action="store_true",
                   help="keep the temp dir (server log, data) for a post-mortem")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any target is missed (default: exit 0, measure only)")
    return p


@contextlib.contextmanager
def workdir(args: argparse.Namespace, tag: str) -> Iterator[Path]:
    """A fresh temp dir for one run of a script, removed afterwards (unless --keep-tmp)."""
    path = Path(tempfile.mkdtemp(prefix=f"artstore-bench-{tag}-", dir=args.tmpdir))
    try:
        yield path
    finally:
        if args.keep_tmp:
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"base_path": str(folder / "public"), "temp_path": str(folder / "tmp"),
              **overrides}
    path = folder / "artstore.json"
    path.write_text(json.dumps(config))
    return path


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the gunicorn workers of the arbiter)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def proc_kib(pid: int, key: str = "VmRSS") -> int:
    """A ``/proc/<pid>/status`` memory figure (VmRSS, VmHWM) in KiB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Server:
    """A running ``artstore serve`` (gunicorn arbiter plus workers), API at ``url``."""

    url: str
    proc: subprocess.Popen[bytes]
    state: Path
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base_path(self) -> Path:
        return self.state / "public"

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def create_project(self, name: str, items: dict[str, Any], description: str = "") -> None:
        r = self.session.post(f"{self.url}/{name}", headers=AUTH,
                              json={"description": description, "items": items})
        if r.status_code != 201:
            raise RuntimeError(f"creating project {name}: {r.status_code} {r.text}")

    def stop(self) -> None:
        self.session.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def server(folder: Path, workers: int = 2, **config: Any) -> Iterator[Server]:
    """Start ``artstore serve`` on a config in ``folder/state``; stop it afterwards."""
    state = folder / "state"
    cfg = write_config(state, **config)
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "ARTSTORE_ADMIN_TOKEN": ADMIN}
    env.pop("ARTSTORE_CONFIG", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "artstore.cli", "serve", "--config", str(cfg),
             "--workers", str(workers), "--port", str(port)],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    srv = Server(url=f"http://127.0.0.1:{port}", proc=proc, state=state, log=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"artstore serve exited:\n{srv.log_tail()}")
            try:
                if (requests.get(srv.url + "/_health", timeout=1).status_code == 200
                        and len(srv.workers()) >= workers):
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"artstore serve did not come up:\n{srv.log_tail()}")
            time.sleep(0.1)
        yield srv
    finally:
        srv.stop()


# ------------------------------------------------------------------ timing


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds that ``fn()`` took, and what it returned."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def settle() -> None:
    """Flush dirty pages before a timed step, so no step pays for the previous one's writes."""
    os.sync()


def warm_memory(size: int) -> None:
    """Touch and free ``size`` bytes of memory just before a timed step.

    On these VMs (Firecracker with free page reporting) memory the guest freed is handed
    back to the host, and touching it again costs ~3 s per GiB: whatever writes through
    the page cache first pays for it (a 1 GiB nginx PUT ran at 320 MB/s cold and 750-850
    MB/s warm). Touching the memory first gives every step the same, best case.
    """
    bytearray(size)  # zero-filled, so every page is touched; freed at once


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, raise with its output if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


def curl(*args: str) -> tuple[int, str]:
    """``curl`` with the response body and the HTTP status as ``(status, body)``."""
    done = run(["curl", "-sS", "-w", "\n%{http_code}", *args])
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


# ------------------------------------------------------------------ memory


class RssSampler:
    """Sample VmRSS of some pids every ``interval`` seconds from a thread; keep the peaks."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = {pid: proc_kib(pid) for pid in pids}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], proc_kib(pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_load(when: str) -> None:
    """Print the load average and pressure: these shared machines are noisy."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append("loadavg " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    for kind in ("cpu", "io"):
        with contextlib.suppress(OSError, IndexError):
            some = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0].split()
            parts.append(f"{kind} pressure {some[1].replace('avg10=', 'avg10 ')}%")
    print(f"machine at {when}: {', '.join(parts)} ({os.cpu_count()} CPUs)", flush=True)


# ------------------------------------------------------------------ results


@dataclass
class Result:
    name: str
    figure: float
    reference: float
    unit: str
    compared: str  # "1.23x" or "+4.5 MB"
    target: str  # e.g. "<= 1.5x"
    passed: bool
    note: str = ""


class Report:
    """Collects result lines; prints a table at the end; knows whether all passed."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.results: list[Result] = []

    def add(self, name: str, figure: float, reference: float, unit: str, *,
            limit: float, higher_is_better: bool = False, note: str = "") -> Result:
        """A ratio target: figure/reference must be <= limit (>= limit when
        ``higher_is_better``, for throughputs)."""
        ratio = figure / reference if reference else float("inf")
        passed = ratio >= limit if higher_is_better else ratio <= limit
        target = f"{'>=' if higher_is_better else '<='} {limit:g}x"
        return self._add(Result(name, figure, reference, unit, f"{ratio:.2f}x", target,
                                passed, note))

    def add_within(self, name: str, figure: float, reference: float, unit: str, *,
                   within: float, note: str = "") -> Result:
        """An absolute target: figure - reference must be <= within (same unit)."""
        delta = figure - reference
        return self._add(Result(name, figure, reference, unit, f"{delta:+.1f} {unit}",
                                f"<= +{within:g} {unit}", delta <= within, note))

    def _add(self, res: Result) -> Result:
        self.results.append(res)
        print(format_result(res), flush=True)
        return res

    def print_table(self) -> None:
        print()
        print(f"== {self.title}")
        print(f"{'figure':50} {'value':>12} {'reference':>12} {'ratio':>10} {'target':>12}"
              "  result")
        for r in self.results:
            print(f"{r.name:50} {_fmt(r.figure, r.unit):>12} {_fmt(r.reference, r.unit):>12} "
                  f"{r.compared:>10} {r.target:>12}  {'PASS' if r.passed else 'FAIL'}"
                  + (f"  ({r.note})" if r.note else ""))

    @property
    def all_passed(self) -> bool:
        return all(r.passed for r in self.results)

    def exit(self, strict: bool) -> None:
        self.print_table()
        sys.exit(1 if strict and not self.all_passed else 0)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"
    if unit in ("MB/s", "MB"):
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def format_result(r: Result) -> str:
    return (f"RESULT {r.name}: {_fmt(r.figure, r.unit)}  reference {_fmt(r.reference, r.unit)}"
            f"  ratio {r.compared}  target {r.target}  {'PASS' if r.passed else 'FAIL'}"
            + (f"  ({r.note})" if r.note else ""))


def describe(samples: list[float], unit: str = "s") -> str:
    """Median with the spread, for progress lines."""
    return (f"median {_fmt(median(samples), unit)} (min {_fmt(min(samples), unit)}, "
            f"max {_fmt(max(samples), unit)}, n={len(samples)})")
