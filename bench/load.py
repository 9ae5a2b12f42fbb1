#!/usr/bin/env python3
"""Load test: concurrent uploaders and readers against ``artstore serve`` for a bounded time.

Starts ``artstore serve --workers 3`` (gunicorn, threaded workers) on loopback with
``serve_files`` on, so the published files are served by the same process at ``/`` and the
API is under ``/artstore`` (the embedded default's layout, the nginx layout's URLs). Then, for
``--duration`` seconds (default 30):

- ``--uploaders`` threads (default 4) publish in turn to a tgz item, a zip item, an html item
  and a collection (raw ``PUT``; the zip as multipart ``POST``), each thread to its own
  project, from a pool of releases built beforehand whose every file carries one marker;
- ``--readers`` threads (default 4) fetch published pages (checking that each is whole: one
  marker), a collection's ``index.json``, and the API's item and project reads.

It prints throughput (publishes/s by type, reads/s, MB/s up and down), latencies (median,
95th percentile, max) and errors: answers other than the expected ones, connection errors,
torn or mixed pages, and 5xx lines in the server's access log. Errors are expected to be
zero; the exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import statistics
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import common
import requests

ITEMS = {"docs": {"type": "tgz", "keep": 3}, "site": {"type": "zip", "keep": 3},
         "report": {"type": "html", "keep": 3}, "builds": {"type": "collection", "depth": 20}}
MARKER = re.compile(rb"<!-- release (\d+) -->")


def page(n: int, size: int) -> bytes:
    line = b"<!-- release %08d -->\n" % n
    return line * max(1, size // len(line))


def tgz(n: int, files: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for i in range(files):
            data = page(n, size)
            info = tarfile.TarInfo("index.html" if i == 0 else f"p/page{i}.html")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(n: int, files: int, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(files):
            archive.writestr("index.html" if i == 0 else f"p/page{i}.html", page(n, size))
    return buf.getvalue()


@dataclass
class Tally:
    """Counters shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    publishes: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    up_bytes: int = 0
    down_bytes: int = 0
    publish_times: list[float] = field(default_factory=list)
    read_times: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def error(self, kind: str, example: str) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, example[:300])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--uploaders", type=int, default=4, help="publishing threads (default 4)")
    p.add_argument("--readers", type=int, default=4, help="reading threads (default 4)")
    p.add_argument("--workers", type=int, default=3, help="gunicorn workers (default 3)")
    p.add_argument("--files", type=int, default=20, help="files per site release (default 20)")
    p.add_argument("--file-kib", type=int, default=16, help="KiB per site file (default 16)")
    p.add_argument("--tmpdir", default=None, help="where the server's data lives")
    p.add_argument("--keep-tmp", action="store_true", help="keep the data and the server log")
    p.add_argument("--seed", type=int, default=None, help="random seed of the readers")
    args = p.parse_args()
    size = args.file_kib * 1024
    rng = random.Random(args.seed)

    # The releases, built before the clock starts: (item, body, marker) per uploader.
    pools: list[list[tuple[str, bytes, int]]] = []
    for u in range(args.uploaders):
        pool = []
        for k in range(6):
            n = (u + 1) * 1_000_000 + k
            pool += [("docs", tgz(n, args.files, size), n),
                     ("site", zipped(n, args.files, size), n),
                     ("report", page(n, 64 * 1024), n), ("builds", page(n, 256 * 1024), n)]
        pools.append(pool)

    common.machine_load("start")
    with common.workdir(args, "load") as folder:
        state = folder / "state"
        common.write_config(state, serve_files=True)
        with api_server(folder, args.workers) as (root, api):
            for u in range(args.uploaders):
                r = requests.post(f"{api}/load{u}", json={"items": ITEMS}, headers=common.AUTH,
                                  timeout=30)
                r.raise_for_status()
            tally = Tally()
            published: set[tuple[int, str]] = set()
            stop = threading.Event()

            def uploader(u: int) -> None:
                session = requests.Session()
                seq = 0
                while not stop.is_set():
                    item, data, n = pools[u][seq % len(pools[u])]
                    seq += 1
                    url = f"{api}/load{u}/{item}"
                    try:
                        started = time.perf_counter()
                        if item == "site":
                            r = session.post(url, files={"item": ("site.zip", data)},
                                             headers=common.AUTH, timeout=120)
                        else:
                            params = {"filename": f"build-{seq:06d}.bin"} if item == "builds" \
                                else {"filename": "report.html"} if item == "report" else {}
                            r = session.put(url, data=data, params=params,
                                            headers=common.AUTH, timeout=120)
                        elapsed = time.perf_counter() - started
                    except requests.RequestException as exc:
                        tally.error("upload: connection", f"{url}: {exc}")
                        session = requests.Session()
                        continue
                    if r.status_code != 201:
                        tally.error(f"upload: HTTP {r.status_code}", f"{url}: {r.text}")
                        continue
                    with tally.lock:
                        tally.publishes[item] += 1
                        tally.up_bytes += len(data)
                        tally.publish_times.append(elapsed)
                        published.add((u, item))

            def reader() -> None:
                session = requests.Session()
                while not stop.is_set():
                    u = rng.randrange(args.uploaders)
                    kind = rng.choice(["docs", "site", "report", "index.json", "api-item",
                                       "api-project", "api-root"])
                    if kind in ("docs", "site"):
                        url = f"{root}/load{u}/{kind}/" + rng.choice(
                            ["index.html", f"p/page{rng.randrange(1, args.files)}.html"])
                    elif kind == "report":
                        url = f"{root}/load{u}/report/report.html"
                    elif kind == "index.json":
                        url = f"{root}/load{u}/builds/index.json"
                    elif kind == "api-item":
                        url = f"{api}/load{u}/{rng.choice(list(ITEMS))}"
                    elif kind == "api-project":
                        url = f"{api}/load{u}"
                    else:
                        url = f"{api}/"
                    live_before = (u, kind) in published or kind.startswith("api") or (
                        kind == "index.json" and (u, "builds") in published)
                    try:
                        started = time.perf_counter()
                        r = session.get(url, timeout=60)
                        body = r.content
                        elapsed = time.perf_counter() - started
                    except requests.RequestException as exc:
                        tally.error("read: connection", f"{url}: {exc}")
                        session = requests.Session()
                        continue
                    if r.status_code == 404 and not live_before:
                        continue  # nothing published there yet
                    if r.status_code != 200:
                        tally.error(f"read: HTTP {r.status_code}", f"{url}: {body[:200]!r}")
                        continue
                    if kind in ("docs", "site", "report"):
                        markers = set(MARKER.findall(body))
                        if len(markers) != 1:
                            tally.error("read: torn or mixed page", f"{url}: {sorted(markers)}")
                    elif kind == "index.json" or kind.startswith("api"):
                        try:
                            json.loads(body)
                        except ValueError:
                            tally.error("read: bad JSON", f"{url}: {body[:200]!r}")
                    with tally.lock:
                        tally.reads[kind] += 1
                        tally.down_bytes += len(body)
                        tally.read_times.append(elapsed)

            threads = [threading.Thread(target=uploader, args=(u,))
                       for u in range(args.uploaders)]
            threads += [threading.Thread(target=reader) for _ in range(args.readers)]
            print(f"load: {args.uploaders} uploaders, {args.readers} readers, "
                  f"{args.workers} workers, {args.duration:g} s", flush=True)
            began = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(args.duration)
            stop.set()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - began
            leftovers = wait_for_empty(state / "tmp")
            if leftovers:
                tally.error("temp_path not empty after the run", ", ".join(leftovers))
        log = (folder / "server.log").read_text(errors="replace")
        for line in log.splitlines():
            if re.search(r'HTTP/1\.[01]" 5\d\d ', line):
                tally.error("server log: 5xx", line)
        common.machine_load("end")
        report(tally, elapsed, args)
    sys.exit(1 if sum(tally.errors.values()) else 0)


class api_server:  # noqa: N801 - a context manager used like a function
    """``artstore serve`` with serve_files on: yields (files root URL, API URL)."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.workers = workers

    def __enter__(self) -> tuple[str, str]:
        import os
        import subprocess

        port = common.free_port()
        env = {**os.environ, "ARTSTORE_ADMIN_TOKEN": common.ADMIN}
        env.pop("ARTSTORE_CONFIG", None)
        with open(self.folder / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "artstore.cli", "serve", "--config",
                 str(self.folder / "state" / "artstore.json"), "--workers", str(self.workers),
                 "--port", str(port)],
                cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.server = common.Server(url=f"http://127.0.0.1:{port}", proc=self.proc,
                                    state=self.folder / "state", log=self.folder / "server.log")
        root, api = self.server.url, self.server.url + "/artstore"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"artstore serve exited:\n{self.server.log_tail()}")
            try:
                if (requests.get(api + "/_health", timeout=1).status_code == 200
                        and len(self.server.workers()) >= self.workers):
                    return root, api
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.server.stop()
                raise RuntimeError(f"artstore serve did not come up:\n{self.server.log_tail()}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def wait_for_empty(folder: Path, seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        left = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def quantiles(samples: list[float]) -> str:
    if not samples:
        return "-"
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms")


def report(tally: Tally, elapsed: float, args: argparse.Namespace) -> None:
    publishes = sum(tally.publishes.values())
    reads = sum(tally.reads.values())
    by_type = defaultdict(int, tally.publishes)
    print()
    print(f"== load: {elapsed:.1f} s, {args.uploaders} uploaders, {args.readers} readers, "
          f"{args.workers} workers")
    print(f"publishes: {publishes} ({publishes / elapsed:.1f}/s): "
          + ", ".join(f"{item} {by_type[item]}" for item in ITEMS))
    print(f"  upload:   {tally.up_bytes / common.MB / elapsed:.1f} MB/s; "
          f"latency {quantiles(tally.publish_times)}")
    print(f"reads:     {reads} ({reads / elapsed:.1f}/s): "
          + ", ".join(f"{kind} {n}" for kind, n in sorted(tally.reads.items())))
    print(f"  download: {tally.down_bytes / common.MB / elapsed:.1f} MB/s; "
          f"latency {quantiles(tally.read_times)}")
    total = sum(tally.errors.values())
    print(f"errors:    {total} (expected 0)")
    for kind, n in sorted(tally.errors.items()):
        print(f"  {kind}: {n}, e.g. {tally.examples[kind]}")


if __name__ == "__main__":
    main()
