"""`flashhead` command line: generate | serve | keys | gc | weights | bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashhead import constants as C


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="render a talking video from a portrait and text or audio")
    p.add_argument("--image", required=True, help="portrait: file path, http(s) URL or data: URI")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to speak with the built-in TTS")
    src.add_argument("--audio", help="speech audio: file path, URL or data: URI")
    p.add_argument("--voice", default=C.DEFAULT_VOICE, help=f"one of: {', '.join(C.VOICES)}")
    p.add_argument("--stability", type=float, default=C.DEFAULT_STABILITY)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--renderer", default=None, help="cpu | flashhead-lite | flashhead-pro")
    p.add_argument("--weights-dir", default=None, help="official checkpoint folder (neural)")
    p.add_argument("-o", "--output", default="out/flashhead.mp4")
    p.add_argument("--keep-framing", action="store_true",
                   help="also write OUTPUT_original.mp4: the face pasted back into the full picture")
    p.set_defaults(func=cmd_generate)


def _settings(args):
    from flashhead.config import Settings

    overrides = {}
    if getattr(args, "renderer", None):
        overrides["renderer"] = args.renderer
    if getattr(args, "weights_dir", None):
        overrides["weights_dir"] = args.weights_dir
    return Settings(**overrides)


class _Progress:
    """A one-line progress bar on stderr, shown for jobs of 10 s of video or more."""

    def __init__(self) -> None:
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if total < 10 * C.FPS:  # short jobs finish before a bar would help
            return
        pct = int(100 * done / total)
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            print(f"\rrendering [{bar:<25}] {pct:3d}% ({done}/{total} frames)",
                  end="" if done < total else "\n", file=sys.stderr, flush=True)


def cmd_generate(args) -> int:
    from flashhead.pipeline import Engines, generate, request_from_input, result_json

    payload = {"image_url": args.image, "seed": args.seed}
    if args.text is not None:
        payload |= {"text": args.text, "voice": args.voice, "stability": args.stability}
        endpoint = C.TEXT_ENDPOINT
    else:
        payload |= {"audio_url": args.audio}
        endpoint = C.AUDIO_ENDPOINT
    request = request_from_input(payload, endpoint)
    engines = Engines.create(_settings(args))
    result = generate(request, engines, args.output, allow_paths=True, progress=_Progress(),
                      keep_framing=args.keep_framing)
    out = result_json(result, Path(args.output).resolve().as_uri())
    if result.original_path is not None:
        out["original_video"] = {"url": result.original_path.resolve().as_uri(),
                                 "content_type": "video/mp4", "file_name": result.original_path.name,
                                 "file_size": result.original_path.stat().st_size}
    print(json.dumps(out, indent=2))
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the fal-compatible HTTP/WebSocket server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", default="./flashhead-data")
    p.add_argument("--ssl-certfile", default=None)
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--workers", type=int, default=1, help="render worker processes")
    p.add_argument("--no-worker", dest="workers", action="store_const", const=0,
                   help="an API node only: render nothing here; queue jobs wait for `flashhead worker` "
                        "machines (shared Redis job store and S3 storage)")
    p.add_argument("--renderer", default=None, help="cpu | flashhead-lite | flashhead-pro")
    p.add_argument("--weights-dir", default=None)
    _add_device(p)
    from flashhead.api.server import add_auth_args
    add_auth_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    from flashhead.api.server import serve

    if args.renderer:
        os.environ["FLASHHEAD_RENDERER"] = args.renderer
    if args.weights_dir:
        os.environ["FLASHHEAD_WEIGHTS_DIR"] = args.weights_dir
    if args.device:                        # the engine process reads the same settings
        os.environ["FLASHHEAD_DEVICE"] = args.device
    if args.workers == 0:                  # an API node: its jobs render on `flashhead worker` machines
        from flashhead.config import Settings
        from flashhead.jobs.node import check_shared
        check_shared(Settings(data_dir=Path(args.data_dir)))
    return serve(host=args.host, port=args.port, data_dir=args.data_dir,
                 ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                 workers=args.workers, no_auth=args.no_auth,
                 i_know_this_is_open=args.i_know_this_is_open) or 0


def _device(value: str) -> str:
    import re

    from flashhead.config import DEVICE_PATTERN

    if not re.match(DEVICE_PATTERN, value):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N (N a GPU index), not {value!r}")
    return value


def _add_device(p) -> None:
    p.add_argument("--device", type=_device, default=None,
                   help="neural renderers: cuda (default), cuda:N or cpu (FLASHHEAD_DEVICE)")


def _add_worker(sub) -> None:
    p = sub.add_parser("worker", help="render queue jobs of the API nodes on this machine (several "
                                      "machines: shared Redis job store and S3 storage)")
    p.add_argument("--data-dir", default="./flashhead-data", help="local work files")
    p.add_argument("--workers", type=int, default=1, help="render worker processes")
    p.add_argument("--job-store", default=None, help="redis://HOST:6379/0 (FLASHHEAD_JOB_STORE)")
    p.add_argument("--storage", default=None, choices=["s3"], help="s3 (FLASHHEAD_STORAGE)")
    p.add_argument("--renderer", default=None, help="cpu | flashhead-lite | flashhead-pro")
    p.add_argument("--weights-dir", default=None)
    _add_device(p)
    p.set_defaults(func=cmd_worker)


def cmd_worker(args) -> int:
    import os
    import signal
    import threading

    from flashhead.api.observability import setup_logging
    from flashhead.config import Settings
    from flashhead.jobs.node import run_worker_node

    for name, value in (("JOB_STORE", args.job_store), ("STORAGE", args.storage), ("RENDERER", args.renderer),
                        ("WEIGHTS_DIR", args.weights_dir), ("DEVICE", args.device)):
        if value:                           # like serve: the worker processes read the same settings
            os.environ[f"FLASHHEAD_{name}"] = value
    setup_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker_node(Settings(data_dir=Path(args.data_dir)), args.workers, stop)
    return 0


def _add_keys(sub) -> None:
    p = sub.add_parser("keys", help="manage API keys: create (prints KEY_ID:KEY_SECRET once) | list | revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("key_id", nargs="?", help="the key to revoke")
    p.add_argument("--data-dir", default="./flashhead-data")
    p.add_argument("--alias", default=None, help="a label for a new key")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args) -> int:
    from flashhead.api import server

    argv = ["keys", args.action, *([args.key_id] if args.key_id else []), "--data-dir", args.data_dir]
    return server.main(argv + (["--alias", args.alias] if args.alias else []))


def _add_gc(sub) -> None:
    p = sub.add_parser("gc", help="delete expired jobs, files and staging now (the server also does it "
                                  "every FLASHHEAD_RETENTION_SWEEP_S)")
    p.add_argument("--data-dir", default="./flashhead-data")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(func=cmd_gc)


def cmd_gc(args) -> int:
    from flashhead.config import Settings
    from flashhead.jobs.backends import make_storage, make_store
    from flashhead.jobs.retention import Retention

    settings = Settings(data_dir=Path(args.data_dir))
    store = make_store(settings)
    try:
        report = Retention(settings, store, make_storage(settings)).sweep(dry_run=args.dry_run)
    finally:
        store.close()
    listed = "would_delete" if args.dry_run else "deleted"
    print(json.dumps({"dry_run": args.dry_run, "counts": report.counts(), "errors": report.errors,
                      listed: {"jobs": report.jobs, "files": report.files, "staging": report.staging}},
                     indent=2))
    return 1 if report.errors else 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="render-speed benchmark (see bench/ for the others)")
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 300.0])
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from flashhead.benchmark import main as bench_main

    return bench_main([str(s) for s in args.seconds])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashhead", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    _add_worker(sub)
    _add_keys(sub)
    _add_gc(sub)
    _add_bench(sub)
    try:
        from flashhead.render.neural.cli import add_cli
    except ImportError:
        pass
    else:
        add_cli(sub)
    return parser


def _quiet_native_logs() -> None:
    """Send native (mediapipe/TFLite C++) stderr chatter to /dev/null, keep Python's stderr.

    Those libraries write to file descriptor 2 before any logging config can apply, which would
    bury the one-line error and the progress bar. FLASHHEAD_NATIVE_LOGS=1 keeps them.
    """
    import os

    if os.environ.get("FLASHHEAD_NATIVE_LOGS") == "1":
        return
    sys.stderr.flush()
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real, "w", buffering=1)


def main(argv: list[str] | None = None) -> int:
    from flashhead.errors import FlashheadError

    args = build_parser().parse_args(argv)
    if args.command != "serve":
        _quiet_native_logs()
    try:
        return args.func(args)
    except FlashheadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # pydantic ValidationError and the like: one readable line
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            print(f"error: {loc}: {first['msg']}", file=sys.stderr)
            return 2
        raise
