"""Shared fixtures: repo files, a shared CPU engine set, helpers to inspect outputs."""
from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# Tests fetch from servers they start on loopback; production refuses loopback by default.
os.environ.setdefault("FLASHHEAD_FETCH_ALLOW", "127.0.0.1,localhost,::1")
# Never let a test reach a real ElevenLabs account by accident.
os.environ.pop("ELEVENLABS_API_KEY", None)


def pytest_collection_finish(session):
    """Every module the tests import (torch, diffusers, ...) is loaded now: move those objects out
    of the garbage collector's sight. Each full collection during the run then skips them, and
    so does the interpreter's shutdown (1.5-3.5 s per process with the neural modules loaded)."""
    gc.freeze()


def pytest_unconfigure(config):
    gc.freeze()        # the xdist controller collects nothing; its shutdown is as slow otherwise


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (make test-fast), with the tests/test_neural_* files as one unit: they
    import torch and the neural renderer (~8 s a process) when they run (see lazy_imports), so
    only the worker that runs them pays. pytest-xdist's own `loadgroup` cannot say this under
    pytest 9: it renames items through `item._nodeid`, which pytest 9 no longer reads."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/test_neural_*" if Path(path).name.startswith("test_neural_") else path

    return FileScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the log, with every thread's stack, of each test server
    still running (module-scoped ones included): a stall shows where the server was waiting."""
    report = yield
    if report.failed:
        from api_helpers import Server
        for server in list(Server.running):
            report.sections.append((f"server {server.port} at the failure", server.dump_stacks()))
    return report


@pytest.fixture(scope="session")
def portrait_path() -> Path:
    return EXAMPLES / "portrait_girl_512.png"


@pytest.fixture(scope="session")
def speech_path() -> Path:
    return EXAMPLES / "speech_excerpt_10s.wav"


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """One CPU renderer + TTS for the whole session (as one server process would have)."""
    from flashhead.config import Settings
    from flashhead.pipeline import Engines

    data_dir = tmp_path_factory.mktemp("engines")
    return Engines.create(Settings(data_dir=data_dir, renderer="cpu", tts="espeak"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, one per test module."""
    from api_helpers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r.url


JS_CLIENT = ROOT / "tests" / "js" / "node_modules" / "@fal-ai" / "client"


@pytest.fixture
def js_client() -> Path:
    """tests/js, where node runs the official @fal-ai/client. When node or the client is missing
    the test FAILS in CI (CI=true: `make test` installs both) and is skipped, saying why, elsewhere."""
    missing = [name for name, there in (("node", shutil.which("node")),
                                        ("tests/js/node_modules/@fal-ai/client", JS_CLIENT.is_dir())) if not there]
    if missing:
        reason = f"{' and '.join(missing)} missing: run `make jsdeps` (npm ci --prefix tests/js)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return JS_CLIENT.parents[2]
