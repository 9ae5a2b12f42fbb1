"""Memory of ``artstore push``: does the client stay flat when it pushes 1 GiB?

Starts a real ``artstore serve`` on a temp directory, then runs the client as a subprocess
(``python -m artstore.cli push``) three times while sampling its resident memory from
``/proc/<pid>/status`` (VmRSS every few milliseconds, and VmHWM, the kernel's own peak):

1. a 1 KiB file: the baseline, the client's memory doing almost nothing;
2. a 1 GiB file (sparse, so it costs no disk to make) to a collection item;
3. a directory of incompressible files to a tgz item, packed on the fly.

Prints each run's peak RSS against the baseline, its time and its throughput in MB/s
(end to end: process start, sha256 pass, upload and the server's answer). Linux only.

    .venv/bin/python bench/push_memory.py [--file-mib 1024] [--dir-mib 256] [--tmpdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ADMIN = "bench-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
MiB = 1024 * 1024
MB = 1000 * 1000
SAMPLE_EVERY = 0.005


@dataclass
class Run:
    what: str
    seconds: float
    bytes_sent: int
    peak_rss: int  # bytes: the larger of the sampled VmRSS and the last VmHWM seen
    samples: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = folder / "state" / "artstore.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"base_path": str(folder / "public"),
                                  "temp_path": str(folder / "tmp"),
                                  "max_upload_bytes": 4 * 1024 * MiB}))
    port = free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "artstore.cli", "serve", "--config", str(config),
         "--port", str(port), "--workers", "2"],
        env={**os.environ, "ARTSTORE_ADMIN_TOKEN": ADMIN}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/_health", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"the server did not start; see {folder / 'server.log'}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB (empty once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            lines = status.read().splitlines()
    except OSError:
        return {}
    return {key: int(rest.split()[0]) for key, _, rest in (line.partition(":") for line in lines)
            if key in ("VmRSS", "VmHWM")}


def push(url: str, target: str, path: Path, what: str, size: int) -> Run:
    env = {**os.environ, "ARTSTORE_URL": url, "ARTSTORE_TOKEN": ADMIN}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "artstore.cli", "push", target, str(path),
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, samples = 0, 0
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"),
                                                            proc.communicate())))
    reader.start()
    while proc.poll() is None:
        memory = memory_kib(proc.pid)
        if memory:
            peak = max(peak, memory.get("VmRSS", 0), memory.get("VmHWM", 0))
            samples += 1
        time.sleep(SAMPLE_EVERY)
    reader.join()
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"push of {what} failed ({proc.returncode}): "
                         f"{out['stderr'].decode(errors='replace')}")
    answer = json.loads(out["stdout"])
    return Run(what, seconds, int(answer["size"]), peak * 1024, samples)


def make_directory(folder: Path, total: int) -> Path:
    """Files of random bytes (incompressible, so gzip does real work) plus a page."""
    folder.mkdir()
    (folder / "index.html").write_text("<h1>bench</h1>")
    left, i = total, 0
    while left > 0:
        size = min(16 * MiB, left)
        (folder / f"blob{i:03d}.bin").write_bytes(os.urandom(size))
        left -= size
        i += 1
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file-mib", type=int, default=1024, help="size of the file pushed")
    parser.add_argument("--dir-mib", type=int, default=256,
                        help="size of the directory packed on the fly (0 to skip)")
    parser.add_argument("--tmpdir", default=None, help="where the server and data live")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="artstore-bench-", dir=args.tmpdir))
    proc, url = start_server(folder)
    try:
        items = {"builds": {"type": "collection"}, "docs": {"type": "tgz"}}
        requests.post(f"{url}/bench", json={"items": items}, headers=AUTH).raise_for_status()
        small = folder / "small.bin"
        small.write_bytes(os.urandom(1024))
        big = folder / "big.bin"
        with open(big, "wb") as f:
            f.truncate(args.file_mib * MiB)  # sparse: costs no disk and no time to make
        runs = [push(url, "bench/builds", small, "1 KiB file -> collection", 1024),
                push(url, "bench/builds", big, f"{args.file_mib} MiB file -> collection",
                     args.file_mib * MiB)]
        if args.dir_mib:
            site = make_directory(folder / "site", args.dir_mib * MiB)
            runs.append(push(url, "bench/docs", site,
                             f"{args.dir_mib} MiB directory -> tgz (packed)",
                             args.dir_mib * MiB))
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)

    baseline = runs[0].peak_rss
    print(f"artstore push: client memory (peak RSS) and throughput, Python "
          f"{sys.version.split()[0]}")
    for run in runs:
        growth = (run.peak_rss - baseline) / MiB
        print(f"  {run.what:<40} peak RSS {run.peak_rss / MiB:6.1f} MiB "
              f"({growth:+5.1f} MiB vs 1 KiB)  {run.seconds:6.2f} s  "
              f"{run.bytes_sent / MB / run.seconds:7.1f} MB/s  ({run.samples} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
