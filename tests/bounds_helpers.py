"""An in-process flashhead server (uvicorn in a thread, plain HTTP on 127.0.0.1) with the fake
generate from api_helpers, for tests that reach into the running app (retention, disk full)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

from api_helpers import fake_generate, free_port


@contextmanager
def inproc_server(data_dir: Path, *, generate=fake_generate, **settings):
    """Yields (base_url, app); open mode (no API keys), as `serve --no-auth` on loopback."""
    import uvicorn

    from flashhead.api.app import create_app
    from flashhead.api.auth import OPEN
    from flashhead.api.server import uvicorn_config
    from flashhead.config import Settings

    settings = Settings(data_dir=data_dir, **settings)
    app = create_app(settings, engines=object(), workers=1, generate=generate, auth_mode=OPEN)
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=free_port(), lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and app.state.ctx.ready.is_set()):
        assert time.monotonic() < deadline, app.state.ctx.startup_error or "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
