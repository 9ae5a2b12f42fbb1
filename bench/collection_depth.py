#!/usr/bin/env python3
"""Issue 7, target 5: the 10,000th upload to a depth-10 collection vs the 10th.

Uploads ``--uploads`` (default 10,000) small files (1 KiB, distinct names) one after the
other with raw PUT over one keep-alive ``requests`` session, timing each from request to
201. The early figure is the median of uploads #(10-N+1)..#(10+N) (N = ``--runs``, so
#6-#15 by default), the late one the median of the last 2N uploads. Target: late <= 1.2x
early.

Shared machines drift over minutes, so a control is measured too: the last 2N uploads
alternate with uploads #1..#(10+N) to a second, fresh collection in the same project, and
the late figure is also compared with that item's #(10-N+1)..#(10+N), taken in the same
seconds. Growth with the item's history shows in both lines; drift of the machine only in
the first.
"""

from __future__ import annotations

import os

import common

TARGET = 1.2


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=10_000,
                   help="uploads to the collection (default 10000)")
    p.add_argument("--depth", type=int, default=10, help="collection depth (default 10)")
    args = p.parse_args()
    n = args.runs
    if args.uploads < 10 + n + 2 * n:
        p.error(f"--uploads must be at least {10 + 3 * n} for --runs {n}")
    report = common.Report(f"collection_depth: upload #{args.uploads} vs #10 "
                           f"at depth {args.depth}")
    common.machine_load("start")
    with common.workdir(args, "collection") as folder, \
            common.server(folder, workers=2) as srv:
        srv.create_project("bench", {"builds": {"type": "collection", "depth": args.depth},
                                     "fresh": {"type": "collection", "depth": args.depth}})
        url = f"{srv.url}/bench/builds"
        session = srv.session
        session.headers.update(common.AUTH)
        payload = os.urandom(1024)

        def upload(item: str, i: int) -> float:
            seconds, r = common.timed(lambda: session.put(
                f"{srv.url}/bench/{item}", params={"filename": f"build-{i:06d}.bin"},
                data=payload))
            if r.status_code != 201:
                raise RuntimeError(f"upload #{i} to {item}: {r.status_code} {r.text}")
            return seconds

        times: list[float] = []
        control: list[float] = []
        fresh_count = 10 + n
        first_interleaved = args.uploads - 2 * n + 1
        for i in range(1, args.uploads + 1):
            if i >= first_interleaved:  # the last 2n: alternate with the fresh item
                while len(control) < fresh_count - (args.uploads - i):
                    control.append(upload("fresh", len(control) + 1))
            times.append(upload("builds", i))
            if i % 1000 == 0 or i == args.uploads:
                recent = times[-1000:]
                print(f"  {i} uploads; last {len(recent)}: {common.describe(recent)}",
                      flush=True)
        r = session.get(url)
        kept = len(r.json()["files"])
        if kept != args.depth:
            raise RuntimeError(f"the collection holds {kept} files, expected {args.depth}")
        early = times[10 - n:10 + n]  # uploads #(10-n+1) .. #(10+n), 1-based
        late = times[-2 * n:]
        print(f"early (#{10 - n + 1}-#{10 + n}): {common.describe(early)}")
        print(f"late (last {2 * n}): {common.describe(late)}")
        same_period = control[10 - n:10 + n]
        print(f"control: fresh item #{10 - n + 1}-#{10 + n}, alternating with the late "
              f"ones: {common.describe(same_period)}")
        print(f"all: {common.describe(times)}")
        report.add(f"upload #{args.uploads} vs #10 (depth {args.depth})", common.median(late),
                   common.median(early), "s", limit=TARGET)
        report.add(f"upload #{args.uploads} vs #10 of a fresh item, same period",
                   common.median(late), common.median(same_period), "s", limit=TARGET,
                   note="control for machine drift")
    common.machine_load("end")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
