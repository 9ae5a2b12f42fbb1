#!/usr/bin/env python3
"""Issue 7, targets 1 and 2: publish a docs site end to end vs extracting it with tar/unzip.

Generates a 5,000-file docs-like tgz (~30 MB) and a 2,000-file zip (~20 MB), publishes each
through HTTP (raw ``curl -T``) ``--runs`` times, and extracts the same archive with
``tar -xzf`` / ``unzip -q`` into a fresh directory on the same disk as many times,
interleaved. Reports the medians and the ratio (target: at most 1.5x).

Each item has ``keep: 2`` and is first filled with 2 untimed publishes, so every timed
publish is a steady-state one: it also prunes the oldest kept release, as every publish
to a long-lived item does (for scale, ``rm -rf`` of an extracted tree is timed too).
``--no-prune`` measures publishes that prune nothing instead
(``keep`` above the number of publishes, one untimed publish first).

artstore flushes a release to disk (``syncfs``) before it goes live; ``tar`` and ``unzip``
do not. The ratio against "tar -xzf + sync" (the reference followed by a ``sync``) compares
like with like; the plain one is issue 7's target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import common
import docsgen

TARGET = 1.5
WARM_BYTES = 256 * common.MiB  # more than an extracted release (common.warm_memory)


def make_archives(folder: Path) -> dict[str, Path]:
    """The tgz (5,000 files) and the zip (2,000 files), each from its own generated site."""
    tgz_site, zip_site = folder / "tgz-site", folder / "zip-site"
    raw_tgz = docsgen.generate_site(tgz_site, 5000, 115_000_000, seed=1)
    raw_zip = docsgen.generate_site(zip_site, 2000, 71_000_000, seed=2)
    tgz = folder / "docs.tgz"
    common.run(["tar", "-czf", str(tgz), "-C", str(tgz_site), "."])
    zpath = folder / "docs.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(zip_site.rglob("*")):
            zf.write(path, path.relative_to(zip_site).as_posix())
    shutil.rmtree(tgz_site)
    shutil.rmtree(zip_site)
    for path, raw, files in ((tgz, raw_tgz, 5000), (zpath, raw_zip, 2000)):
        print(f"{path.name}: {files} files, {raw / common.MB:.0f} MB of content, "
              f"{path.stat().st_size / common.MB:.1f} MB archive", flush=True)
    return {"tgz": tgz, "zip": zpath}


def reference_cmd(kind: str, archive: Path, dest: Path) -> list[str]:
    if kind == "tgz":
        return ["tar", "-xzf", str(archive), "-C", str(dest)]
    return ["unzip", "-q", str(archive), "-d", str(dest)]


def publish(srv: common.Server, item: str, archive: Path, files: int) -> None:
    status, body = common.curl("-T", str(archive), "-H", common.AUTH_HEADER,
                               f"{srv.url}/bench/{item}")
    if status != 201:
        raise RuntimeError(f"publishing {archive.name}: {status} {body[:500]}")
    answer = json.loads(body)
    if answer["files"] != files:
        raise RuntimeError(f"published {answer['files']} files, expected {files}")


def quiesce(releases: Path) -> None:
    """The same start for every timed step: no deletion running, nothing dirty, cold caches.

    artstore deletes a pruned release in the background (renamed to ``.tmp-*`` first), so
    the step after a publish waits until that is gone. Then ``sync``, and (as root) the
    kernel's caches are dropped: on ext4 without a journal, creating files shortly after
    thousands were deleted nearby costs several times more while the deleted inodes'
    table blocks are cached (``recently_deleted`` in the inode allocator), and whichever
    step came second used to pay for the other's deletions (docs/benchmarks.md). Last,
    memory for the page cache is touched once, as for every step (``common.warm_memory``).
    """
    deadline = time.monotonic() + 120
    while any(p.name.startswith(".tmp-") for p in releases.iterdir()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pruned release in {releases} is still being deleted")
        time.sleep(0.05)
    common.settle()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    common.warm_memory(WARM_BYTES)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--no-prune", action="store_true",
                   help="time publishes that do not prune an old release (keep > runs)")
    args = p.parse_args()
    report = common.Report("publish_archives: end-to-end publish vs extraction alone")
    common.machine_load("start")
    with common.workdir(args, "publish") as folder:
        archives = make_archives(folder)
        keep = args.runs + 2 if args.no_prune else 2
        fill = 1 if args.no_prune else keep
        with common.server(folder, workers=2) as srv:
            srv.create_project("bench", {"docs": {"type": "tgz", "keep": keep},
                                         "site": {"type": "zip", "keep": keep}})
            for kind, item, files, tool in (("tgz", "docs", 5000, "tar -xzf"),
                                            ("zip", "site", 2000, "unzip -q")):
                archive = archives[kind]
                for _ in range(fill):  # fill the item: timed publishes then prune, as in use
                    publish(srv, item, archive, files)
                ours, ref, durable, removal = [], [], [], []
                releases = srv.base_path / "bench" / ".artstore" / item
                for i in range(args.runs):
                    dest = folder / f"ref-{kind}-{i}"
                    dest.mkdir()
                    quiesce(releases)
                    seconds, _ = common.timed(
                        lambda: common.run(reference_cmd(kind, archive, dest)))  # noqa: B023
                    ref.append(seconds)
                    flushed, _ = common.timed(os.sync)  # what artstore's syncfs does too
                    durable.append(seconds + flushed)
                    common.settle()  # and how long deleting such a release takes here
                    seconds, _ = common.timed(
                        lambda: common.run(["rm", "-rf", str(dest)]))  # noqa: B023
                    removal.append(seconds)
                    quiesce(releases)
                    seconds, _ = common.timed(
                        lambda: publish(srv, item, archive, files))  # noqa: B023
                    ours.append(seconds)
                paired = common.median([o / r for o, r in zip(ours, ref)])
                print(f"{kind}: publish {common.describe(ours)}; {tool} {common.describe(ref)}; "
                      f"median of the paired ratios {paired:.2f}x; for scale, rm -rf of the "
                      f"extracted tree {common.describe(removal)}", flush=True)
                pruned = "no release pruned" if args.no_prune else ""
                report.add(f"publish {files}-file {kind} vs {tool}", common.median(ours),
                           common.median(ref), "s", limit=TARGET,
                           note=", ".join(filter(None, ["issue 7's reference", pruned])))
                report.add(f"publish {files}-file {kind} vs {tool} + sync", common.median(ours),
                           common.median(durable), "s", limit=TARGET,
                           note=", ".join(filter(None, ["durable, like artstore", pruned])))
    common.machine_load("end")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
