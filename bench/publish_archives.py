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
(``keep`` above the number of publishes, one untimed publish first). ``--first`` (issue 13)
times the first publish into a fresh item instead: each timed publish goes to a project
created for it, in a store holding no blobs (the project of the run before, and with it
every blob, deleted untimed). ``--kind`` runs the tgz or the zip alone.

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
KINDS = ("tgz", "zip")
WARM_BYTES = 256 * common.MiB  # more than an extracted release (common.warm_memory)


def make_archives(folder: Path, kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """The tgz (5,000 files) and the zip (2,000 files), each from its own generated site."""
    made = {}
    if "tgz" in kinds:
        tgz_site = folder / "tgz-site"
        raw = docsgen.generate_site(tgz_site, 5000, 115_000_000, seed=1)
        tgz = folder / "docs.tgz"
        common.run(["tar", "-czf", str(tgz), "-C", str(tgz_site), "."])
        shutil.rmtree(tgz_site)
        made["tgz"] = (tgz, raw, 5000)
    if "zip" in kinds:
        zip_site = folder / "zip-site"
        raw = docsgen.generate_site(zip_site, 2000, 71_000_000, seed=2)
        zpath = folder / "docs.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(zip_site.rglob("*")):
                zf.write(path, path.relative_to(zip_site).as_posix())
        shutil.rmtree(zip_site)
        made["zip"] = (zpath, raw, 2000)
    for path, raw, files in made.values():
        print(f"{path.name}: {files} files, {raw / common.MB:.0f} MB of content, "
              f"{path.stat().st_size / common.MB:.1f} MB archive", flush=True)
    return {kind: path for kind, (path, _, _) in made.items()}


def reference_cmd(kind: str, archive: Path, dest: Path) -> list[str]:
    if kind == "tgz":
        return ["tar", "-xzf", str(archive), "-C", str(dest)]
    return ["unzip", "-q", str(archive), "-d", str(dest)]


def publish(srv: common.Server, item: str, archive: Path, files: int,
            project: str = "bench") -> None:
    status, body = common.curl("-T", str(archive), "-H", common.AUTH_HEADER,
                               f"{srv.url}/{project}/{item}")
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
    while releases.exists() and any(p.name.startswith(".tmp-") for p in releases.iterdir()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pruned release in {releases} is still being deleted")
        time.sleep(0.05)
    common.settle()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    common.warm_memory(WARM_BYTES)


def blob_count(srv: common.Server) -> int:
    """The blobs the store holds (``.tmp-*`` leftovers aside)."""
    root = srv.base_path / ".artstore" / "blobs"
    if not root.exists():
        return 0
    return sum(1 for prefix in root.iterdir() if prefix.is_dir()
               for entry in prefix.iterdir() if not entry.name.startswith("."))


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-prune", action="store_true",
                      help="time publishes that do not prune an old release (keep > runs)")
    mode.add_argument("--first", action="store_true",
                      help="time the first publish into a fresh item, in a store holding no "
                           "blobs (issue 13)")
    p.add_argument("--kind", choices=("tgz", "zip", "both"), default="both",
                   help="the archive kind to publish (default both)")
    args = p.parse_args()
    kinds = KINDS if args.kind == "both" else (args.kind,)
    report = common.Report("publish_archives: end-to-end publish vs extraction alone")
    common.machine_load("start")
    with common.workdir(args, "publish") as folder:
        archives = make_archives(folder, kinds)
        keep = args.runs + 2 if args.no_prune else 2
        fill = 0 if args.first else 1 if args.no_prune else keep
        with common.server(folder, workers=2) as srv:
            if not args.first:
                srv.create_project("bench", {"docs": {"type": "tgz", "keep": keep},
                                             "site": {"type": "zip", "keep": keep}})
            for kind, item, files, tool in (("tgz", "docs", 5000, "tar -xzf"),
                                            ("zip", "site", 2000, "unzip -q")):
                if kind not in kinds:
                    continue
                archive = archives[kind]
                for _ in range(fill):  # fill the item: timed publishes then prune, as in use
                    publish(srv, item, archive, files)
                ours, ref, durable, removal = [], [], [], []
                project = "bench"
                for i in range(args.runs):
                    releases = srv.base_path / project / ".artstore" / item
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
                    if args.first:  # a fresh item in a store without blobs
                        project = f"first-{kind}-{i}"
                        srv.create_project(project, {item: {"type": kind, "keep": keep}})
                        releases = srv.base_path / project / ".artstore" / item
                        if blob_count(srv):
                            raise RuntimeError(f"the store holds {blob_count(srv)} blobs "
                                               "before a first publish")
                    quiesce(releases)
                    seconds, _ = common.timed(
                        lambda: publish(srv, item, archive, files, project))  # noqa: B023
                    ours.append(seconds)
                    if args.first:  # untimed; its blobs go with it
                        r = srv.session.delete(f"{srv.url}/{project}", headers=common.AUTH)
                        if r.status_code != 204:
                            raise RuntimeError(f"deleting {project}: {r.status_code} {r.text}")
                paired = common.median([o / r for o, r in zip(ours, ref)])
                what = "first publish" if args.first else "publish"
                print(f"{kind}: {what} {common.describe(ours)}; {tool} {common.describe(ref)}; "
                      f"median of the paired ratios {paired:.2f}x; for scale, rm -rf of the "
                      f"extracted tree {common.describe(removal)}", flush=True)
                pruned = ("fresh item, no blobs, nothing pruned" if args.first
                          else "no release pruned" if args.no_prune else "")
                issue = "issue 13" if args.first else "issue 7's reference"
                report.add(f"{what} {files}-file {kind} vs {tool}", common.median(ours),
                           common.median(ref), "s", limit=TARGET,
                           note=", ".join(filter(None, [issue, pruned])))
                report.add(f"{what} {files}-file {kind} vs {tool} + sync", common.median(ours),
                           common.median(durable), "s", limit=TARGET,
                           note=", ".join(filter(None, ["durable, like artstore", pruned])))
    common.machine_load("end")
    report.exit(args.strict)

if __name__ == "__main__":
    main()
