#!/usr/bin/env python3
"""Issue 7, target 6: ``GET /`` with 1,000 projects of 5 items vs with 10 projects.

Starts two servers, one with 10 projects and one with 1,000 (``--projects``), each project
with 5 items (html, tgz, zip and two collections), created through the API; one item of
every project gets a published html page (``--publish-all`` publishes to every html item
and collection too). Then ``--runs`` rounds, alternating between the servers, each of
``--gets`` (default 50) timed ``GET /`` on a keep-alive connection. Reports the median of the
round medians. Target: at most 3x.
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import common

TARGET = 3.0
ITEMS = {"report": {"type": "html"}, "docs": {"type": "tgz"}, "site": {"type": "zip"},
         "builds": {"type": "collection", "depth": 10},
         "nightly": {"type": "collection", "depth": 3}}
PAGE = b"<!DOCTYPE html><html><body><h1>Report</h1><p>all green</p></body></html>\n"


def populate(srv: common.Server, count: int, publish_all: bool) -> list[float]:
    """Create ``count`` projects (4 at a time); the seconds each creation took, in order."""
    def one(i: int) -> float:
        name = f"project-{i:04d}"
        seconds, _ = common.timed(lambda: srv.create_project(
            name, ITEMS, description=f"Project number {i} & friends"))
        targets = [("report", "report.html")]
        if publish_all:
            targets += [("builds", "build-1.bin"), ("nightly", "nightly-1.bin")]
        for item, filename in targets:
            r = srv.session.put(f"{srv.url}/{name}/{item}", params={"filename": filename},
                                data=PAGE, headers=common.AUTH)
            if r.status_code != 201:
                raise RuntimeError(f"publishing {name}/{item}: {r.status_code} {r.text}")
        return seconds

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, range(count)))


def get_root(conn: http.client.HTTPConnection, expect: int) -> float:
    def get() -> bytes:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET /: {resp.status} {body[:300]!r}")
        return body

    seconds, body = common.timed(get)
    got = len(json.loads(body)["projects"])
    if got != expect:
        raise RuntimeError(f"GET / listed {got} projects, expected {expect}")
    return seconds


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=1000, help="projects on the big server")
    p.add_argument("--small", type=int, default=10, help="projects on the small server")
    p.add_argument("--gets", type=int, default=50, help="GET / per round (default 50)")
    p.add_argument("--publish-all", action="store_true",
                   help="publish to 3 items of every project instead of 1")
    args = p.parse_args()
    report = common.Report(f"list_projects: GET / with {args.projects} vs {args.small} projects")
    common.machine_load("start")
    with common.workdir(args, "list") as folder, ExitStack() as stack:
        servers = {}
        conns = {}
        for count in (args.small, args.projects):
            sub = Path(folder / f"p{count}")
            sub.mkdir()
            srv = stack.enter_context(common.server(sub, workers=2))
            seconds, creates = common.timed(
                lambda: populate(srv, count, args.publish_all))  # noqa: B023
            k = min(20, count)
            print(f"{count} projects created in {seconds:.1f} s; POST /<project>: first {k} "
                  f"{common.median(creates[:k]) * 1000:.1f} ms, last {k} "
                  f"{common.median(creates[-k:]) * 1000:.1f} ms (medians, 4 clients)",
                  flush=True)
            servers[count] = srv
            conns[count] = http.client.HTTPConnection(srv.url.removeprefix("http://"),
                                                      timeout=60)
        rounds: dict[int, list[float]] = {args.small: [], args.projects: []}
        for count, conn in conns.items():  # warm-up, untimed
            for _ in range(5):
                get_root(conn, count)
        for r in range(args.runs):
            for count, conn in conns.items():
                # gunicorn closes idle keep-alive connections after 2 s: a new one per
                # round, opened by an untimed request.
                conn.close()
                get_root(conn, count)
                samples = [get_root(conn, count) for _ in range(args.gets)]
                rounds[count].append(common.median(samples))
            print(f"round {r + 1}/{args.runs}: " + ", ".join(
                f"{c} projects {v[-1] * 1000:.1f} ms" for c, v in rounds.items()), flush=True)
        sizes = {c: len(servers[c].session.get(servers[c].url + "/").content) for c in conns}
        print("response sizes: " + ", ".join(f"{c} projects {s / 1000:.0f} kB"
                                             for c, s in sizes.items()))
        for conn in conns.values():
            conn.close()
        report.add(f"GET / {args.projects} projects vs {args.small}",
                   common.median(rounds[args.projects]), common.median(rounds[args.small]), "s",
                   limit=TARGET)
    common.machine_load("end")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
