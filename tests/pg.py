"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temp directory, listening
only on a unix socket there, stopped and removed after the session.

initdb refuses to run as root (as CI runs): then the server runs as user ``postgres`` (the
Debian package makes it) or ``nobody``, owning the directory. Without the PostgreSQL
binaries, ``start`` says why, and the tests that need it skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "artstore"


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: the newest Debian package's, else those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _runner() -> tuple[list[str], str | None]:
    """The command prefix to run the server with, and the user it runs as."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"], user
    raise RuntimeError("running as root, and there is no user postgres or nobody for initdb")


@dataclass
class Cluster:
    folder: Path
    bin: Path
    prefix: list[str]
    created: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.folder}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        self.created += 1
        name = f"t{os.getpid()}_{self.created}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "stop", "-m", "immediate",
                        "-D", str(self.folder / "data")], capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Cluster:
    """Start a server; RuntimeError saying why it could not."""
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError("no PostgreSQL binaries (install the Debian package postgresql)")
    prefix, user = _runner()
    # In /tmp itself, not under pytest's 0700 directory of root, so the server's user
    # reaches it; and short, as a unix socket's path must be.
    folder = Path(tempfile.mkdtemp(prefix="artstore-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    options = (f"-c listen_addresses='' -c unix_socket_directories={folder} "
               "-c fsync=off -c max_connections=300")
    steps = [
        [str(binaries / "initdb"), "-D", str(folder / "data"), "-U", SUPERUSER,
         "-A", "trust", "-E", "UTF8", "--no-sync"],
        [str(binaries / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(folder / "data"),
         "-l", str(folder / "server.log"), "-o", options],
    ]
    for step in steps:
        done = subprocess.run([*prefix, *step], cwd=folder, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            log = folder / "server.log"
            detail = done.stderr + (log.read_text() if log.exists() else "")
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"{Path(step[0]).name} failed: {detail.strip()}")
    return Cluster(folder, binaries, prefix)
