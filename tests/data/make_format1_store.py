"""Make ``format1-store.tgz``: a store written by artstore before the blob store (format 1,
commit c858399), for the upgrade tests. Run it with that version installed:

    git worktree add /tmp/old c858399
    PYTHONPATH=/tmp/old/src python tests/data/make_format1_store.py

It publishes through the old code's own API (Flask test client), so the store is exactly what
that version left on disk: full copies of every kept release, state files without manifests.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from artstore import settings
from artstore.api import create_app

AUTH = {"Authorization": "Bearer old-admin"}


def tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def site(n: int) -> dict[str, bytes]:
    """Release n of a small site: a shared stylesheet, pages that change with n."""
    return {"index.html": b"<h1>release %d</h1>" % n, "style.css": b"body{color:#123}\n" * 50,
            "api/page.html": b"<p>api</p>\n" * (20 + n % 2), "empty.txt": b""}


def main() -> None:
    out = Path(__file__).with_name("format1-store.tgz")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        (state / "artstore.json").write_text(json.dumps({"base_path": "public",
                                                         "temp_path": "tmp"}))
        app = create_app(settings.load(state / "artstore.json", environ={}),
                         environ={"ARTSTORE_ADMIN_TOKEN": "old-admin"})
        client = app.test_client()
        items = {"docs": {"type": "tgz", "keep": 3}, "site": {"type": "zip"},
                 "report": {"type": "html"}, "builds": {"type": "collection", "depth": 3}}
        for project in ("alpha", "beta"):
            assert client.post(f"/{project}", json={"items": items},
                               headers=AUTH).status_code == 201
            for n in range(1, 5):
                assert client.put(f"/{project}/docs", data=tgz(site(n)),
                                  headers=AUTH).status_code == 201
            for n in (1, 2):
                assert client.put(f"/{project}/site", data=zipped(site(n)),
                                  headers=AUTH).status_code == 201
            assert client.put(f"/{project}/report?filename=report.html",
                              data=b"<p>green</p>", headers=AUTH).status_code == 201
            for n in range(1, 5):
                assert client.put(f"/{project}/builds?filename=tool-{n}.bin",
                                  data=b"tool %d\n" % (n % 2), headers=AUTH).status_code == 201
        rollback = client.post("/beta/docs/rollback", headers=AUTH)
        assert rollback.status_code == 200
        subprocess.run(["tar", "-czf", str(out), "-C", tmp, "state"], check=True)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
