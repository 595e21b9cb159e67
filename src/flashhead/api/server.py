"""Entry points the CLI wires up: `flashhead serve` and `flashhead keys create|list|revoke`.

Also runnable on its own: python -m flashhead.api.server serve --port 8000 ...
"""
from __future__ import annotations

import argparse
import faulthandler
import ipaddress
import signal
import socket
import sys
import time
from pathlib import Path

from flashhead.api.auth import KEYS, OPEN, make_key_store

DEFAULT_DATA_DIR = Path("./flashhead-data")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:   # a name: loopback only if every address it has is
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            return False
        return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def _keys(data_dir: str | Path):
    """The key store a server on `data_dir` uses: keys.db there, or the shared redis when
    FLASHHEAD_JOB_STORE (or FLASHHEAD_KEYS_STORE) names one."""
    from flashhead.config import Settings
    return make_key_store(Settings(data_dir=Path(data_dir)))


def add_auth_args(parser: argparse.ArgumentParser) -> None:
    """The serve flags that choose the auth mode (flashhead serve and python -m ...server serve)."""
    parser.add_argument("--no-auth", action="store_true",
                        help="OPEN mode: no API keys checked (loopback hosts only, unless "
                             "--i-know-this-is-open). Default: keys required")
    parser.add_argument("--i-know-this-is-open", action="store_true",
                        help="with --no-auth: also serve openly on a non-loopback host")


def auth_mode(host: str, data_dir: Path, no_auth: bool = False, i_know_this_is_open: bool = False) -> str:
    """The auth mode a server starts in: KEYS unless --no-auth, and never an open API beyond this
    machine without --i-know-this-is-open. Warns when KEYS mode has no key yet (all 401)."""
    if i_know_this_is_open and not no_auth:
        raise SystemExit("--i-know-this-is-open goes with --no-auth")
    if no_auth:
        if not is_loopback(host) and not i_know_this_is_open:
            raise SystemExit(
                f"refusing --no-auth on {host}: anyone who can reach it could use it.\n"
                f"Listen on 127.0.0.1, drop --no-auth (keys: flashhead keys create --data-dir {data_dir}),\n"
                f"or add --i-know-this-is-open.")
        return OPEN
    if not _keys(data_dir).has_keys():
        print(f"flashhead: no API key exists yet: every request will be refused (401) until you run\n"
              f"  flashhead keys create --data-dir {data_dir}\n"
              f"(or serve on loopback with --no-auth for a local, open server)", file=sys.stderr)
    return KEYS


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` writes the stack of every thread of the API process to its stderr (the
    log), without stopping it: how to see what a server that stopped answering is waiting on."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: str | Path = DEFAULT_DATA_DIR,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None, workers: int = 1,
          no_auth: bool = False, i_know_this_is_open: bool = False) -> None:
    """Run the API on uvicorn: one API process plus `workers` render worker processes
    (FLASHHEAD_WORKER_MODE=thread renders in threads of the API process instead)."""
    data_dir = Path(data_dir)
    mode = auth_mode(host, data_dir, no_auth, i_know_this_is_open)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise SystemExit("--ssl-certfile and --ssl-keyfile go together")
    from flashhead.api.app import create_app   # after the checks: a refused start answers at once
    from flashhead.config import Settings

    settings = Settings(data_dir=data_dir)
    app = create_app(settings, workers=workers, auth_mode=mode)
    app.state.ctx.auth.served_names.add(host.lower().strip("[]"))     # e.g. a hostname mapped to 127.0.1.1
    dump_stacks_on_sigusr1()
    run_uvicorn(uvicorn_config(app, settings, host=host, port=port, ssl_certfile=ssl_certfile,
                               ssl_keyfile=ssl_keyfile), on_stop=app.state.ctx.begin_stop)


def uvicorn_config(app, settings, **kw):
    """The uvicorn.Config of `flashhead serve` (kw: host, port, TLS files, or overrides).

    No permessage-deflate: realtime frames carry H.264/AAC segments, which do not compress;
    deflating them cost the API process about a sixth of its CPU per live session. A realtime
    message may be as big as an HTTP body (settings.max_body_bytes; uvicorn's own 16 MiB closed
    the socket on inputs /queue takes), and a socket reads at most
    settings.realtime_read_ahead_messages ahead of the route (uvicorn's 32 would let one socket
    hold 32 such messages; fewer only slows a sender down). Idle
    connections live settings.http_keep_alive_s, past the clients' own keep-alive: at uvicorn's
    default (5 s, httpx's too) a pooled request sometimes met the server's close and failed. A
    request head must arrive whole within settings.http_head_timeout_s (head_timeout_protocol)."""
    import uvicorn

    options = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": settings.shutdown_grace_s,
               "http": head_timeout_protocol(settings.http_head_timeout_s),
               "ws_per_message_deflate": False, "ws_max_size": settings.max_body_bytes,
               "ws_max_queue": settings.realtime_read_ahead_messages,
               "timeout_keep_alive": settings.http_keep_alive_s, **kw}
    return uvicorn.Config(app, **options)


def head_timeout_protocol(timeout_s: float):
    """uvicorn's httptools HTTP protocol with a deadline for each request head: a connection that
    sends no request, or only part of a head, for timeout_s after it opened (or after the first
    byte of its next request) is closed. uvicorn has no such deadline: such connections stayed
    open for good, and a few thousand of them (slowloris) exhaust the server's file descriptors.
    An idle kept-alive connection is uvicorn's keep-alive's (its timer runs then); bodies have
    their own (body_read_timeout_s); a WebSocket, once upgraded, is not this protocol's."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadTimeoutProtocol(HttpToolsProtocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(timeout_s, self._head_late)

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._head_timer = self.loop.call_later(timeout_s, self._head_late)   # a next request
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.transport.get_protocol() is self and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol


def run_uvicorn(config, on_stop=None) -> None:
    """Serve a uvicorn.Config whose TLS (when it has one) sends no TLS 1.3 session tickets;
    on_stop(grace_s) is called (in the event loop) when a graceful stop of grace_s begins.

    A ticket arrives after the handshake, while the client's first request may be on its way. A
    client that reads a TLS socket in one thread and writes it in another (the `websockets` sync
    client, so fal-client's realtime) then sometimes never sends its upgrade request, and its
    connect times out: a few in every thousand WebSocket connections from 6 threads at once
    here. Without tickets there is nothing to read then. Lost with them: TLS session
    resumption, which no client of this API relies on."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            if on_stop is not None:
                on_stop(self.config.timeout_graceful_shutdown or 0.0)
            await super().shutdown(sockets)

    config.load()
    if config.ssl is not None:
        config.ssl.num_tickets = 0
    Server(config).run()


def keys_create(data_dir: str | Path = DEFAULT_DATA_DIR, alias: str | None = None) -> str:
    """Create a key; returns (and the CLI prints, once) "KEY_ID:KEY_SECRET"."""
    return _keys(data_dir).create(alias)


def keys_list(data_dir: str | Path = DEFAULT_DATA_DIR) -> list[dict]:
    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else None  # noqa: E731
    return [{"id": k.id, "alias": k.alias, "created": fmt(k.created_at), "revoked": fmt(k.revoked_at)}
            for k in _keys(data_dir).list()]


def keys_revoke(data_dir: str | Path, key_id: str) -> bool:
    return _keys(data_dir).revoke(key_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flashhead.api.server")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    s.add_argument("--ssl-certfile")
    s.add_argument("--ssl-keyfile")
    s.add_argument("--workers", type=int, default=1, help="render worker processes")
    add_auth_args(s)
    k = sub.add_parser("keys")
    k.add_argument("action", choices=["create", "list", "revoke"])
    k.add_argument("key_id", nargs="?")
    k.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    k.add_argument("--alias")
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.host, a.port, a.data_dir, a.ssl_certfile, a.ssl_keyfile, a.workers, a.no_auth,
              a.i_know_this_is_open)
    elif a.action == "create":
        print(keys_create(a.data_dir, a.alias))
    elif a.action == "list":
        for row in keys_list(a.data_dir):
            print(f"{row['id']}  created {row['created']}  "
                  f"{'revoked ' + row['revoked'] if row['revoked'] else 'active'}  {row['alias'] or ''}")
    else:
        if not a.key_id:
            p.error("keys revoke needs a KEY_ID")
        if not keys_revoke(a.data_dir, a.key_id):
            print(f"no active key {a.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {a.key_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
