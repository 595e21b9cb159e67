"""Real services for the multi-machine deployment tests: moto's standalone S3-protocol server
on loopback (plain HTTP, any dummy credentials), and the environment that points a flashhead
server (or boto3 in the test process) at it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api_helpers import free_port

S3_START_TIMEOUT_S = 60
# boto3 in every process signs with these; moto accepts any. Nothing is read from ~/.aws, and no
# instance-metadata lookup can happen (loopback only).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "flashhead-test", "AWS_SECRET_ACCESS_KEY": "flashhead-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class S3Server:
    """`python -m moto.server` on a free loopback port, in its own process (killed on exit)."""

    def __init__(self, log_dir: Path):
        self.port, self.log_dir = free_port(), log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def server_env(self, bucket: str, prefix: str = "files/") -> dict:
        """FLASHHEAD_* variables selecting this S3 for a `flashhead serve` subprocess."""
        return {**AWS_ENV, "FLASHHEAD_STORAGE": "s3", "FLASHHEAD_S3_BUCKET": bucket,
                "FLASHHEAD_S3_PREFIX": prefix, "FLASHHEAD_S3_ENDPOINT_URL": self.endpoint_url,
                "FLASHHEAD_S3_REGION": "us-east-1"}

    def __enter__(self) -> "S3Server":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"moto-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **AWS_ENV})
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited {self.proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                httpx.get(self.endpoint_url + "/", timeout=2, trust_env=False)   # any answer: up
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class RoundRobinProxy:
    """A TCP load balancer on loopback: each new connection goes to the next backend port (TLS
    passes through untouched, so the servers' certificate for 127.0.0.1 still matches)."""

    def __init__(self, backends: list[int]):
        import socketserver
        import threading

        self.backends, self.turn, self.port = list(backends), 0, free_port()
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer._pipe(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _pipe(self, client) -> None:
        import socket
        import threading

        with self.lock:
            port, self.turn = self.backends[self.turn % len(self.backends)], self.turn + 1
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return
        upstream.settimeout(None)

        def copy(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=copy, args=(upstream, client), daemon=True)
        back.start()
        copy(client, upstream)
        back.join()
        upstream.close()

    def __enter__(self) -> "RoundRobinProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
