"""Real servers on loopback for the API tests: TLS from a throwaway trustme CA, a flashhead
server subprocess (killable with SIGKILL), a webhook receiver, a redis-server.

`python tests/api_helpers.py --fake-generate ...` starts the server with a clearly fake
generate (a test double that sleeps per "chunk" and writes a few bytes): only the queue
semantics tests that need a slow, controllable job use it; end-to-end tests use the real
pipeline.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "examples" / "portrait_girl_512.png"
TEXT_ENDPOINT, AUDIO_ENDPOINT = "fal-ai/flashhead", "fal-ai/flashhead/audio"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tls:
    ca_pem: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(tls.ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert), append=True)
    cert.private_key_pem.write_to_path(str(tls.key))
    return tls


@dataclass
class Server:
    """A `flashhead serve` subprocess over TLS on 127.0.0.1."""

    data_dir: Path
    tls: Tls
    port: int = field(default_factory=free_port)
    env: dict = field(default_factory=dict)
    workers: int = 1
    fake_generate: bool = False
    auth: str | None = None     # "keys" | "open" (--no-auth); None: "keys" if the test made a key
    args: list = field(default_factory=list)     # more `flashhead serve` options
    proc: subprocess.Popen | None = None
    fal_clients: list = field(default_factory=list)    # made by fal_sync_client; closed by stop()
    running: ClassVar[list] = []    # every started, not yet stopped Server (conftest dumps them on a failure)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.ssl_context(), timeout=60, **kw)

    def ssl_context(self):
        import ssl
        return ssl.create_default_context(cafile=str(self.tls.ca_pem))

    def start(self) -> "Server":
        env = {**os.environ, "FLASHHEAD_FETCH_ALLOW": "127.0.0.1,localhost,::1", "FLASHHEAD_TTS": "espeak",
               "FLASHHEAD_RENDERER": "cpu", "PYTHONUNBUFFERED": "1", **self.env}
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key),
                "--workers", str(self.workers), *self.args]
        if (self.auth or ("keys" if self.has_keys() else "open")) == "open":
            args.append("--no-auth")
        cmd = ([sys.executable, __file__, "--fake-generate", *args] if self.fake_generate
               else [sys.executable, "-m", "flashhead", *args])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / f"server-{self.port}-{int(time.time() * 1000)}.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.log_path = Path(log.name)
        Server.running.append(self)
        try:
            self.wait_ready()
        except BaseException:          # a failed start must not leave a server running
            self.kill()
            raise
        return self

    def has_keys(self) -> bool:
        """Whether the key store this server will use (keys.db, or a redis named in env) has a key."""
        from flashhead.api.auth import make_key_store
        from flashhead.config import Settings

        options = {k[len("FLASHHEAD_"):].lower(): v for k, v in self.env.items() if k.startswith("FLASHHEAD_")}
        return make_key_store(Settings(**{**options, "data_dir": self.data_dir})).has_keys()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    r = c.get("/health")
                    if r.status_code == 200:
                        return
                    if r.json().get("status") == "error":
                        raise RuntimeError(f"server start-up failed: {r.text}\n{self.log_tail()}")
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def dump_stacks(self) -> str:
        """Has the server write every thread's stack to its log (server.dump_stacks_on_sigusr1);
        returns the log's tail with them: what a failing test prints about a server it used."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        return f"{self.log_path}:\n{self.log_tail(12000)}"

    def _forget(self) -> None:
        Server.running[:] = [s for s in Server.running if s is not self]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash."""
        self._forget()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM. Called while a test's failure is being raised (stop() in a `finally`), it
        first prints the server's log with every thread's stack to stderr, which pytest shows with
        the failure (servers still running at a failure: conftest's pytest_runtest_makereport)."""
        self._forget()
        if self.proc and self.proc.poll() is None:
            if sys.exc_info()[0] is not None:
                print(f"server {self.port} at the failure: {self.dump_stacks()}", file=sys.stderr)
            for fal in self.fal_clients:     # their idle TLS keep-alive connections would hold
                if "_client" in fal.__dict__:  # the server's graceful shutdown for its whole 5 s
                    fal._client.close()
            gc.collect()    # so would the httpx client that fal-client's upload_file makes and drops
                            # unclosed (SyncClient._get_cdn_client): collected, its socket closes
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_processes(parent_pid: int, module: bytes = b"flashhead.jobs.processes") -> list[int]:
    """Live render worker processes (python -m flashhead.jobs.processes, or `module`: e.g. the
    render engine, flashhead.engine.process) whose parent is `parent_pid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == parent_pid and stat[0] != "Z" and module in cmd:
            pids.append(int(entry.name))
    return pids


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def client_env(server: Server) -> dict:
    """Environment for a process running an official client against `server`."""
    return {"SSL_CERT_FILE": str(server.tls.ca_pem), "NODE_EXTRA_CA_CERTS": str(server.tls.ca_pem),
            "FAL_RUN_HOST": f"127.0.0.1:{server.port}", "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{server.port}/queue"}


class WebhookReceiver:
    """A plain HTTP receiver on loopback that records every POST (headers + raw body)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.received: list[tuple[dict, bytes]] = []
        self.event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:       # the sender died mid-request: not delivered, and no reply
                    return
                outer.received.append((dict(self.headers), body))
                outer.event.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RedisServer:
    """redis-server on a free loopback port, no persistence, in a temp dir."""

    def __init__(self, directory: Path):
        self.port, self.dir = free_port(), directory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Makefile target sysdeps installs it)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        r = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                r.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_terminal(c: httpx.Client, request_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/queue/{TEXT_ENDPOINT}/requests/{request_id}/status", params={"logs": 1})
        if r.status_code == 200:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"{request_id} not terminal after {timeout} s")


# ---- test double: a slow, controllable generate (queue-semantics tests only) --------------

FAKE_CHUNK_S = float(os.environ.get("FLASHHEAD_TEST_FAKE_CHUNK_S", "0.2"))
FAKE_CHUNKS = int(os.environ.get("FLASHHEAD_TEST_FAKE_CHUNKS", "10"))


def fake_generate(request, engines, output_path, *, allow_paths=False, should_cancel=None, log=None,
                  progress=None):
    """NOT the pipeline: sleeps FAKE_CHUNKS x FAKE_CHUNK_S, checking should_cancel per chunk."""
    from flashhead.errors import Cancelled
    from flashhead.pipeline import GenerationResult

    for i in range(FAKE_CHUNKS):
        if should_cancel and should_cancel():
            raise Cancelled("the request was cancelled")
        time.sleep(FAKE_CHUNK_S)
        if progress:
            progress(i + 1, FAKE_CHUNKS)
    Path(output_path).write_bytes(b"fake video: " + json.dumps(request.model_dump()).encode())
    return GenerationResult(Path(output_path), request.seed or 0, 1.0, {"total": 0.0},
                            Path(output_path).stat().st_size)


def _serve_fake(argv: list[str]) -> None:
    from flashhead.api import server
    from flashhead.api.app import create_app
    from flashhead.config import Settings

    no_auth = "--no-auth" in argv
    argv = [x for x in argv if x != "--no-auth"]
    a = dict(zip(argv[1::2], argv[2::2]))
    mode = server.auth_mode(a["--host"], Path(a["--data-dir"]), no_auth)
    settings = Settings(data_dir=Path(a["--data-dir"]))
    app = create_app(settings, engines=object(), workers=int(a["--workers"]), generate=fake_generate,
                     auth_mode=mode)
    server.dump_stacks_on_sigusr1()
    server.run_uvicorn(server.uvicorn_config(app, settings, host=a["--host"], port=int(a["--port"]),
                                             ssl_certfile=a["--ssl-certfile"], ssl_keyfile=a["--ssl-keyfile"],
                                             timeout_graceful_shutdown=3), on_stop=app.state.ctx.begin_stop)


if __name__ == "__main__":
    if sys.argv[1] == "--fake-generate":
        _serve_fake(sys.argv[2:])


def data_uri(path: Path, mime: str) -> str:
    import base64
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def fal_sync_client(server: Server, key: str = "unused:unused"):
    """The unmodified fal-client, pointed at `server` the documented way."""
    import fal_client

    from flashhead.api.client_helper import configure_fal_client

    os.environ["SSL_CERT_FILE"] = str(server.tls.ca_pem)
    configure_fal_client(server.base_url)
    client = fal_client.SyncClient(key=key)
    server.fal_clients.append(client)
    return client


def probe_video(data: bytes) -> dict:
    """Size, rate, frame count and audio presence of an MP4, read with PyAV."""
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return {"width": v.codec_context.width, "height": v.codec_context.height,
                "fps": float(v.average_rate), "frames": frames, "codec": v.codec_context.name,
                "audio": len(c.streams.audio) > 0}


def tls_server(tmp_path_factory, name: str, env: dict | None = None):
    """A started flashhead server over TLS in its own folder (`env` added to its environment);
    stopped when the generator ends."""
    tmp = tmp_path_factory.mktemp(name)
    s = Server(tmp / "data", make_tls(tmp / "tls"), env=env or {}).start()
    try:
        yield s
    finally:
        s.stop()
