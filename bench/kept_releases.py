#!/usr/bin/env python3
"""Issue 13: the disk space of kept releases: 10 releases of a docs site vs one release.

Generates a 5,000-file docs-like site (``docsgen``, ~120 MB, the tgz of
``publish_archives.py``) and publishes it ``--publishes`` (10) times as a tgz to an item with
``keep: 10``; before each publish after the first, 1% of the files (``--change``, seeded)
get new content under the same names, as a rebuild of docs changes a few pages. Then it
measures everything the item holds on disk: the blob store, the release trees (directories
and hard links), the live link and the item's catalog state (its state file and the
releases' manifests), each inode counted once however many links it has (``du`` semantics).
The reference is one release's files: the last archive extracted with ``tar -xzf`` into a
fresh directory on the same disk, measured the same way. Target: at most 1.3x.

Two measures, both against the target: apparent sizes (``du -sb``: the bytes of each inode,
directories included) and allocated blocks (``du -s -B1``: what the filesystem spends, small
files rounded up to a block). For scale, the file bytes alone (regular files, each inode
once, directories left out) and the breakdown by part are printed too, and ``du`` itself is
run on the same paths as a check. The figures are byte counts, the same in every run:
``--runs`` repeats nothing here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import common
import docsgen

TARGET = 1.3
SITE_BYTES = 115_000_000  # the 5,000-file site of publish_archives.py


@dataclass
class Usage:
    """Bytes under some paths, each inode once (hard links, and paths given twice)."""

    apparent: int = 0  # st_size of every inode: du -sb
    allocated: int = 0  # st_blocks * 512: du -s -B1
    file_bytes: int = 0  # st_size of regular files only
    files: int = 0  # regular-file inodes
    inodes: int = 0  # every inode: files, directories, symlinks


def usage(paths: list[Path], seen: set[tuple[int, int]] | None = None) -> Usage:
    """Walk ``paths`` (directories or single entries, never following symlinks) and count
    each inode once; ``seen`` carries the inodes counted already across calls."""
    seen = set() if seen is None else seen
    out = Usage()

    def count(st: os.stat_result, is_file: bool) -> None:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        out.apparent += st.st_size
        out.allocated += st.st_blocks * 512
        out.inodes += 1
        if is_file:
            out.file_bytes += st.st_size
            out.files += 1

    def walk(path: str) -> None:
        with os.scandir(path) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                count(st, entry.is_file(follow_symlinks=False))
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path)

    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        count(st, path.is_file() and not path.is_symlink())
        if path.is_dir() and not path.is_symlink():
            walk(str(path))
    return out


def du(paths: list[Path], *flags: str) -> int:
    """``du -sc FLAGS paths``: the total, hard links counted once across all the paths."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    done = common.run(["du", "-sc", *flags, *existing])
    return int(done.stdout.strip().splitlines()[-1].split()[0])


def change_files(site: Path, names: list[Path], words: docsgen.Words, share: float,
                 rng: random.Random) -> int:
    """Give ``share`` of the files new content of the same kind and about the same size
    (same names): a rebuild that changed a few pages. Returns how many changed."""
    count = max(1, round(len(names) * share))
    for rel in rng.sample(names, count):
        path = site / rel
        size = path.stat().st_size
        if rel.suffix == ".html":
            data = docsgen.html_page(words, rng, rel.stem.replace("_", " ").title(),
                                     len(rel.parent.parts), size)
        elif rel.suffix == ".css":
            data = docsgen.css_file(words, rng, size)
        else:
            data = docsgen.js_file(words, rng, size)
        path.write_bytes(data)
    return count


def publish(srv: common.Server, archive: Path, files: int) -> dict[str, object]:
    status, body = common.curl("-T", str(archive), "-H", common.AUTH_HEADER,
                               f"{srv.url}/bench/docs")
    if status != 201:
        raise RuntimeError(f"publishing {archive.name}: {status} {body[:500]}")
    answer: dict[str, object] = json.loads(body)
    if answer["files"] != files:
        raise RuntimeError(f"published {answer['files']} files, expected {files}")
    return answer


def wait_quiet(releases: Path) -> None:
    """Until no release is being deleted in the background (``.tmp-*`` in the item)."""
    deadline = time.monotonic() + 120
    while any(p.name.startswith(".tmp-") for p in releases.iterdir()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"a pruned release in {releases} is still being deleted")
        time.sleep(0.05)


def mb(value: int) -> float:
    return value / common.MB


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=5000, help="files in the site (default 5000)")
    p.add_argument("--publishes", type=int, default=10, help="publishes (default 10)")
    p.add_argument("--keep", type=int, default=10, help="the item's keep (default 10)")
    p.add_argument("--change", type=float, default=1.0,
                   help="percent of the files changed before each publish (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the site and the changes")
    args = p.parse_args()
    report = common.Report(f"kept_releases: {args.publishes} publishes of a {args.files}-file "
                           f"site, keep {args.keep}, vs one release")
    common.machine_load("start")
    with common.workdir(args, "kept") as folder:
        site = folder / "site"
        raw = docsgen.generate_site(site, args.files, SITE_BYTES * args.files // 5000,
                                    seed=args.seed)
        names = sorted(path.relative_to(site) for path in site.rglob("*") if path.is_file())
        print(f"site: {len(names)} files, {mb(raw):.0f} MB of content", flush=True)
        rng = random.Random(f"changes-{args.seed}")
        words = docsgen.Words(random.Random(f"words-{args.seed}"))
        archive = folder / "docs.tgz"
        times = []
        with common.server(folder, workers=2) as srv:
            srv.create_project("bench", {"docs": {"type": "tgz", "keep": args.keep}})
            releases = srv.base_path / "bench" / ".artstore" / "docs"
            for n in range(args.publishes):
                changed = change_files(site, names, words, args.change / 100, rng) if n else 0
                archive.unlink(missing_ok=True)
                common.run(["tar", "-czf", str(archive), "-C", str(site), "."])
                seconds, answer = common.timed(lambda: publish(srv, archive, len(names)))
                times.append(seconds)
                print(f"publish {n + 1}/{args.publishes}: {changed} files changed, "
                      f"{archive.stat().st_size / common.MB:.1f} MB archive, release "
                      f"{answer['release']}, {seconds * 1000:.0f} ms", flush=True)
                if releases.exists():
                    wait_quiet(releases)
            print(f"publish times: {common.describe(times)}", flush=True)
            r = srv.session.get(f"{srv.url}/bench/docs", headers=common.AUTH)
            r.raise_for_status()
            item = r.json()
            blob_bytes = usage([srv.base_path / ".artstore" / "blobs"]).file_bytes
            print(f"the item keeps {len(item['releases'])} releases; the API says it stores "
                  f"{mb(item['stored_bytes']):.1f} MB", flush=True)
            blobs = srv.base_path / ".artstore" / "blobs"
            parts = {
                "blobs": [blobs],
                "release trees": [releases, srv.base_path / "bench" / "docs"],
                "catalog": [srv.state / "items" / "bench" / "docs.json",
                            srv.state / "items" / "bench" / "docs.manifests"],
            }
            seen: set[tuple[int, int]] = set()
            total = Usage()
            for part, paths in parts.items():  # blobs first: the trees' links count there
                u = usage(paths, seen)
                for key in vars(total):
                    setattr(total, key, getattr(total, key) + getattr(u, key))
                print(f"  {part}: {mb(u.apparent):.1f} MB apparent, {mb(u.allocated):.1f} MB "
                      f"allocated, {u.files} files ({mb(u.file_bytes):.1f} MB), "
                      f"{u.inodes} inodes not counted before", flush=True)
            every = [path for paths in parts.values() for path in paths]
            du_b, du_alloc = du(every, "-b"), du(every, "-B1")
            print(f"item on disk: {mb(total.apparent):.1f} MB apparent (du -sb: "
                  f"{mb(du_b):.1f} MB), {mb(total.allocated):.1f} MB allocated (du -s -B1: "
                  f"{mb(du_alloc):.1f} MB), {total.inodes} inodes", flush=True)
            blob_count = sum(1 for prefix in blobs.iterdir() if prefix.is_dir()
                             for entry in prefix.iterdir() if not entry.name.startswith("."))
            print(f"blobs: {blob_count} (one release has {len(names)} files)", flush=True)
            leftovers = list((srv.state / "tmp").iterdir()) if (srv.state / "tmp").exists() \
                else []
            if leftovers:
                print(f"note: temp_path holds {len(leftovers)} entries after the publishes",
                      flush=True)
        ref_dir = folder / "reference"
        ref_dir.mkdir()
        common.run(["tar", "-xzf", str(archive), "-C", str(ref_dir)])
        common.settle()
        ref = usage([ref_dir])
        ref_b, ref_alloc = du([ref_dir], "-b"), du([ref_dir], "-B1")
        print(f"reference, tar -xzf of the last archive: {mb(ref.apparent):.1f} MB apparent "
              f"(du -sb: {mb(ref_b):.1f} MB), {mb(ref.allocated):.1f} MB allocated (du -s -B1: "
              f"{mb(ref_alloc):.1f} MB), {ref.files} files ({mb(ref.file_bytes):.1f} MB)",
              flush=True)
        print(f"for scale, file bytes alone vs one release's {mb(ref.file_bytes):.1f} MB: the "
              f"blobs {mb(blob_bytes):.1f} MB ({blob_bytes / ref.file_bytes:.2f}x), with the "
              f"catalog's files {mb(total.file_bytes):.1f} MB "
              f"({total.file_bytes / ref.file_bytes:.2f}x)", flush=True)
        shutil.rmtree(ref_dir)
        what = f"{args.publishes} kept releases vs 1"
        report.add(f"{what}, apparent (du -sb)", mb(total.apparent), mb(ref.apparent), "MB",
                   limit=TARGET, note=f"{args.change:g}% changed per publish")
        report.add(f"{what}, allocated (du -s -B1)", mb(total.allocated), mb(ref.allocated),
                   "MB", limit=TARGET, note="blocks the filesystem spends")
    common.machine_load("end")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
