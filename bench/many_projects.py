#!/usr/bin/env python3
"""Issue 13: changes and ``GET /`` with 10,000 projects vs with 10.

Starts two servers, one with 10 projects and one with 10,000 (``--projects``), each project
with 2 items (html and tgz), created through the API (``--clients`` at a time), each html item
with a published page. Then ``--runs`` rounds, alternating between the servers; in each, on
each server, ``--ops`` (default 3) times: ``POST /<project>`` (create a new project),
``GET /`` right after it (the first listing after a change), ``PUT /<project>`` (its
configuration: description and a third item), ``GET /`` once the server is idle after that
(the first listing after a change, without the change's background work beside it), a
publish (``PUT`` of a small html page to the html item of an existing project),
``DELETE /<project>``; then ``--gets`` (default 20) ``GET /`` with nothing changed (cached).
Reports the median of the round medians and the ratio 10,000 vs 10. Targets: the changes
and the publish at most 1.5x, ``GET /`` (all three) at most 3x.

Every timed request goes on a fresh keep-alive connection opened by an untimed
``GET /_health``, and every one but the ``GET /`` right after the ``POST`` waits until the
server is idle (no CPU time spent by its processes for 0.2 s): the list of projects is
rewritten in a background thread after a change once that is slow, and the next step must
not pay for it. The ``GET /`` right after the ``POST`` does not wait: it is the first one to
see the change, while the server may still be at its background work.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import common

TARGET_CHANGE = 1.5
TARGET_LIST = 3.0
ITEMS = {"report": {"type": "html"}, "docs": {"type": "tgz"}}
PAGE = b"<!DOCTYPE html><html><body><h1>Report</h1><p>all green</p></body></html>\n"
NOTES = {"GET / after a change": "the first after a POST, at once",
         "GET / after a change, idle": "the first after a PUT, once the server is idle"}
STEPS = ("POST /<project>", "GET / after a change", "PUT /<project>",
         "GET / after a change, idle", "publish html page", "DELETE /<project>",
         "GET / cached")


def populate(srv: common.Server, count: int, clients: int) -> list[float]:
    """Create ``count`` projects and publish a page to each html item, ``clients`` at a
    time; the seconds each creation took, in order."""
    def one(i: int) -> float:
        name = f"project-{i:05d}"
        seconds, _ = common.timed(lambda: srv.create_project(
            name, ITEMS, description=f"Project number {i} & friends"))
        r = srv.session.put(f"{srv.url}/{name}/report", params={"filename": "report.html"},
                            data=PAGE, headers=common.AUTH)
        if r.status_code != 201:
            raise RuntimeError(f"publishing {name}/report: {r.status_code} {r.text}")
        return seconds

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(count)))


def cpu_ticks(srv: common.Server) -> int:
    """CPU time (clock ticks) the server's processes have spent: the arbiter and workers."""
    total = 0
    for pid in [srv.proc.pid, *srv.workers()]:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def idle(srv: common.Server, quiet: float = 0.2, timeout: float = 30.0) -> None:
    """Wait until the server has spent no CPU time for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = cpu_ticks(srv), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {srv.url} is still busy after {timeout:.0f} s")
        time.sleep(0.02)
        now = cpu_ticks(srv)
        if now != last:
            last, since = now, time.monotonic()


class Client:
    """One server's keep-alive connection, and its timed requests."""

    def __init__(self, srv: common.Server, count: int) -> None:
        self.srv = srv
        self.count = count
        self.conn = http.client.HTTPConnection(srv.url.removeprefix("http://"), timeout=120)

    def call(self, method: str, path: str, expect: int, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != expect:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data

    def fresh(self, wait: bool = True) -> None:
        """A new connection, opened by an untimed request; the server idle first."""
        if wait:
            idle(self.srv)
        self.conn.close()
        self.call("GET", "/_health", 200)

    def timed(self, method: str, path: str, expect: int, body: Any = None,
              params: str = "") -> tuple[float, bytes]:
        headers = dict(common.AUTH)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return common.timed(lambda: self.call(method, path + params, expect, body, headers))

    def listed(self, data: bytes, expect: int) -> None:
        got = len(json.loads(data)["projects"])
        if got != expect:
            raise RuntimeError(f"GET / listed {got} projects, expected {expect}")

    def round(self, tag: str, ops: int, gets: int, target: str) -> dict[str, float]:
        """One round on this server: the medians of each step."""
        samples: dict[str, list[float]] = {step: [] for step in STEPS}
        for op in range(ops):
            name = f"new-{tag}-{op}"
            config = {"description": "new", "items": ITEMS}
            self.fresh()
            seconds, _ = self.timed("POST", f"/{name}", 201, config)
            samples["POST /<project>"].append(seconds)
            seconds, data = self.timed("GET", "/", 200)  # at once: the first after the change
            self.listed(data, self.count + 1)
            samples["GET / after a change"].append(seconds)
            self.fresh()
            config = {"description": "updated", "items": {**ITEMS, "extra": {"type": "html"}}}
            seconds, _ = self.timed("PUT", f"/{name}", 200, config)
            samples["PUT /<project>"].append(seconds)
            self.fresh()  # the first GET / after the PUT, once the server is idle again
            seconds, data = self.timed("GET", "/", 200)
            self.listed(data, self.count + 1)
            samples["GET / after a change, idle"].append(seconds)
            self.fresh()
            seconds, _ = self.timed("PUT", f"/{target}/report", 201, PAGE,
                                    params="?filename=report.html")
            samples["publish html page"].append(seconds)
            self.fresh()
            seconds, _ = self.timed("DELETE", f"/{name}", 204)
            samples["DELETE /<project>"].append(seconds)
        self.fresh()
        self.listed(self.call("GET", "/", 200), self.count)  # untimed: computes the listing
        for _ in range(gets):
            seconds, data = self.timed("GET", "/", 200)
            samples["GET / cached"].append(seconds)
        self.listed(data, self.count)
        return {step: common.median(values) for step, values in samples.items()}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=10000, help="projects on the big server")
    p.add_argument("--small", type=int, default=10, help="projects on the small server")
    p.add_argument("--clients", type=int, default=4,
                   help="concurrent clients creating the projects (default 4)")
    p.add_argument("--ops", type=int, default=3,
                   help="creates, updates, publishes and deletes per round (default 3)")
    p.add_argument("--gets", type=int, default=20, help="cached GET / per round (default 20)")
    args = p.parse_args()
    report = common.Report(f"many_projects: changes and GET / with {args.projects} vs "
                           f"{args.small} projects")
    common.machine_load("start")
    with common.workdir(args, "many") as folder, ExitStack() as stack:
        clients = {}
        for count in (args.small, args.projects):
            sub = Path(folder / f"p{count}")
            sub.mkdir()
            srv = stack.enter_context(common.server(sub, workers=2))
            seconds, creates = common.timed(
                lambda: populate(srv, count, args.clients))  # noqa: B023
            k = min(20, count)
            print(f"{count} projects created (and a page published to each) in {seconds:.1f} s; "
                  f"POST /<project>: first {k} {common.median(creates[:k]) * 1000:.1f} ms, "
                  f"last {k} {common.median(creates[-k:]) * 1000:.1f} ms (medians, "
                  f"{args.clients} clients)", flush=True)
            clients[count] = Client(srv, count)
            stack.callback(clients[count].conn.close)
        target = f"project-{min(args.small, args.projects) // 2:05d}"  # on both servers
        for client in clients.values():  # warm-up, untimed
            client.round("warm", 1, 3, target)
        rounds: dict[int, list[dict[str, float]]] = {c: [] for c in clients}
        for r in range(args.runs):
            for count, client in clients.items():
                rounds[count].append(client.round(f"r{r}", args.ops, args.gets, target))
            print(f"round {r + 1}/{args.runs}: " + "; ".join(
                f"{step} " + " vs ".join(f"{rounds[c][-1][step] * 1000:.1f}" for c in clients)
                + " ms" for step in STEPS), flush=True)
        for client in clients.values():
            client.fresh(wait=False)
        sizes = {c: len(clients[c].call("GET", "/", 200)) for c in clients}
        print("GET / response sizes: " + ", ".join(f"{c} projects {s / 1000:.0f} kB"
                                                   for c, s in sizes.items()), flush=True)
        for step in STEPS:
            big, small = ([common.median([one[step] for one in rounds[c]])
                           for c in (args.projects, args.small)])
            is_list = step.startswith("GET")
            report.add(f"{step}, {args.projects} vs {args.small} projects", big, small, "s",
                       limit=TARGET_LIST if is_list else TARGET_CHANGE,
                       note=NOTES.get(step, ""))
    common.machine_load("end")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
