"""FlashHeadVideoService (integrations/pipecat) in a real Pipecat pipeline against a real flashhead
server on loopback (TLS, a key, the CPU renderer).

Pipecat needs protobuf>=5.29, which mediapipe (flashhead's renderer stack) refuses, so the
service runs in a venv of its own: the `agent_python` fixture pip-installs integrations/pipecat
into .venv-pipecat (git-ignored, kept between runs while integrations/pipecat/pyproject.toml is
unchanged) and runs tests/pipecat_driver.py there as a subprocess.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from api_helpers import PORTRAIT, ROOT, Server, make_tls
from stream_server import SPEECH

pytestmark = pytest.mark.slow

PACKAGE = ROOT / "integrations" / "pipecat"
AGENT_VENV = ROOT / ".venv-pipecat"
DRIVER = ROOT / "tests" / "pipecat_driver.py"
INSTALL_TIMEOUT_S = 1200
FPS = 25
SERVICE = {"receive_timeout_s": 3.0}


@pytest.fixture(scope="session")
def agent_python() -> Path:
    """The agent venv's python, with integrations/pipecat (editable) and its pinned deps installed.
    A failed install fails the tests that need it; it never skips them."""
    python = AGENT_VENV / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{PACKAGE}[test]"]
    want = hashlib.sha256((PACKAGE / "pyproject.toml").read_bytes() + sys.version.encode()
                          + " ".join(install).encode()).hexdigest()
    stamp = AGENT_VENV / ".installed"
    if stamp.exists() and stamp.read_text() == want and python.exists():
        return python
    shutil.rmtree(AGENT_VENV, ignore_errors=True)
    for cmd in ([sys.executable, "-m", "venv", str(AGENT_VENV)], install):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            pytest.fail(f"building the agent venv failed: {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    stamp.write_text(want)
    return python


def start_server(tmp: Path, **env: str) -> tuple[Server, str]:
    key = subprocess.run([sys.executable, "-m", "flashhead", "keys", "create", "--data-dir", str(tmp / "data")],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    return Server(tmp / "data", make_tls(tmp / "tls"), env=env).start(), key


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server, key = start_server(tmp_path_factory.mktemp("pipecat"))
    yield server, key
    server.stop()


def drive(agent_python: Path, server: Server, key: str, steps: list[dict], tmp: Path, timeout: float = 240,
          **service) -> dict:
    """Runs the driver; returns its events.json plus the audio in and out."""
    config = {"url": server.base_url, "key": key, "ca": str(server.tls.ca_pem), "image": str(PORTRAIT),
              "steps": steps, "service": {**SERVICE, **service}}
    (tmp / "config.json").write_text(json.dumps(config))
    done = subprocess.run([str(agent_python), str(DRIVER), str(tmp / "config.json"), str(tmp)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    (tmp / "driver.log").write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp / "events.json").read_text())
    result.update(pcm_in=(tmp / "in.pcm").read_bytes(), pcm_out=(tmp / "out.pcm").read_bytes(), log=done.stderr,
                  thumbs=np.load(tmp / "thumbs.npy"))
    return result


def utterances(events: list[dict]) -> list[list[dict]]:
    """The events from each tts_started to its tts_stopped."""
    out, current = [], None
    for e in events:
        if e["kind"] == "tts_started":
            current = []
        elif e["kind"] == "tts_stopped":
            out.append(current)
            current = None
        elif current is not None:
            current.append(e)
    return out


def speech_pairs(events: list[dict]) -> list[tuple[dict, dict]]:
    """(image, audio) for every image immediately followed by an audio frame."""
    return [(a, b) for a, b in zip(events, events[1:]) if a["kind"] == "image" and b["kind"] == "audio"]


def mouth_sync(result: dict) -> list[dict[int, float]]:
    """Per utterance: |correlation| between how far each speech image is from the idle image
    before the utterance (in the 12 most changing 16x16 blocks: the mouth) and the loudness of
    the audio frame that follows it, with the audio shifted by -3..3 frames. In sync: peak at 0."""
    events, thumbs = result["events"], result["thumbs"]
    pcm = np.frombuffer(result["pcm_out"], np.int16).astype(np.float64)
    image_no = np.cumsum([e["kind"] == "image" for e in events]) - 1
    out = []
    for start, stop in zip(*[[i for i, e in enumerate(events) if e["kind"] == k] for k in ("tts_started", "tts_stopped")]):
        pairs = [(image_no[i], events[i + 1]) for i in range(start, stop) if events[i]["kind"] == "image"
                 and events[i + 1]["kind"] == "audio"]
        images = thumbs[[i for i, _ in pairs]]
        loud = np.array([np.sqrt((pcm[a["offset"] // 2:(a["offset"] + a["bytes"]) // 2] ** 2).mean()) for _, a in pairs])
        top = np.argsort(images.std(0).ravel())[-12:]
        moved = np.abs(images - thumbs[image_no[start]]).reshape(len(pairs), -1)[:, top].mean(1)
        n = len(pairs)
        out.append({d: abs(np.corrcoef(moved[max(0, d):n + min(0, d)], loud[max(0, -d):n + min(0, -d)])[0, 1])
                     for d in range(-3, 4)})
    return out


def test_the_package_unit_tests_pass_in_the_agent_venv(agent_python):
    """integrations/pipecat/tests: URL building, frame/audio pairing, resampling (no server)."""
    done = subprocess.run([str(agent_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_utterances_in_a_row_give_one_frame_per_40_ms_and_their_audio_unchanged(agent_python, server, tmp_path):
    """A 16 kHz utterance (no resampling), an espeak one (22050 Hz: resampled for the server, passed
    through at 22050 Hz), and a short 16 kHz one, queued back to back after an idle pause longer
    by an idle pause."""
    steps = [{"sleep": 3.0}, {"wav": str(SPEECH), "seconds": 3.0},
             {"speak": "Hello, I am the face of this agent."}, {"wav": str(SPEECH), "seconds": 1.3}]
    r = drive(agent_python, *server, steps, tmp_path)
    assert not r["errors"] and not r["hang"], r["errors"]
    events = r["events"]
    # Audio passes through unchanged: every byte that went in comes out, in order.
    assert len(r["pcm_in"]) > 4 * 16000 * 2 and r["pcm_out"] == r["pcm_in"]
    spoken = utterances(events)
    assert len(spoken) == 3
    in_bytes = [sum(e["bytes"] for e in u if e["kind"] == "audio") for u in spoken]
    rates = [{e["rate"] for e in u if e["kind"] == "audio"} for u in spoken]
    assert rates == [{16000}, {22050}, {16000}]
    assert in_bytes[0] == 3.0 * 16000 * 2 and in_bytes[2] == 1.3 * 16000 * 2
    # One image per 40 ms of speech, each followed by its own 40 ms of audio (idle images may come
    # between them while the server waits for the end of an utterance to render its last frames).
    for u, n, rate in zip(spoken, in_bytes, (16000, 22050, 16000)):
        pairs, expected = speech_pairs(u), math.ceil(n / 2 / rate * FPS)
        assert abs(len(pairs) - expected) <= (0 if rate == 16000 else 1), (len(pairs), expected)
        assert sum(e["kind"] == "audio" for e in u) == len(pairs)
        assert all(a["bytes"] == 2 * rate // FPS for _, a in pairs[:-1])
    images = [e for e in events if e["kind"] == "image"]
    assert {(tuple(e["size"]), e["format"], e["bytes"], e["sync"]) for e in images} == {((512, 512), "RGB", 512 * 512 * 3, True)}
    # Idle frames before the speech: the face lives while the agent is quiet.
    assert events.index(next(e for e in events if e["kind"] == "tts_started")) > 3.0 * FPS * 0.5
    # In sync: each speech image's mouth follows the audio frame right after it (offset 0 frames).
    for lags in mouth_sync(r):
        assert max(lags, key=lags.get) == 0 and lags[0] > 0.6, lags
    # Released on the media clock: never ahead of 25 fps (a burst would be played at once).
    t0 = images[0]["t"]
    assert all(e["t"] - t0 >= i / FPS - 0.02 for i, e in enumerate(images)), "frames ran ahead of their time"


def test_interruption_mid_utterance_stops_the_speech_frames_and_the_next_utterance_is_whole(agent_python, server,
                                                                                           tmp_path):
    steps = [{"wav": str(SPEECH), "seconds": 8.0}, {"wait_speech": 25}, {"interrupt": True}, {"sleep": 1.5},
             {"wav": str(SPEECH), "seconds": 2.0}]
    r = drive(agent_python, *server, steps, tmp_path)
    assert not r["errors"] and not r["hang"], r["errors"]
    events = r["events"]
    cut = next(i for i, e in enumerate(events) if e["kind"] == "interruption")
    second = next(i for i, e in enumerate(events) if e["kind"] == "tts_started" and i > cut)
    between = events[cut + 1:second]
    assert sum(e["kind"] == "audio" for e in between) <= 1, "speech went on after the interruption"
    assert sum(e["kind"] == "image" for e in between) >= 1.0 * FPS, "the face stopped instead of idling"
    before = sum(e["bytes"] for e in events[:cut] if e["kind"] == "audio")
    assert 25 * 1280 <= before < 4.0 * 32000, before
    # The utterance after the interruption is spoken whole, paired from its first frame.
    after = utterances(events[second:])
    assert len(after) == 1 and len([e for e in after[0] if e["kind"] == "image"]) == 2.0 * FPS
    assert r["pcm_out"][-2 * 32000:] == r["pcm_in"][-2 * 32000:]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_server_that_goes_away_gives_a_pipeline_error_and_the_voice_goes_on(agent_python, tmp_path, how):
    """Killed (the socket closes) or frozen (the socket stays open, silent): an ErrorFrame that says
    so within the receive timeout, no hang, and the held audio still leaves (without a face)."""
    server, key = start_server(tmp_path / "server")
    try:
        steps = [{"wav": str(SPEECH), "seconds": 6.0}, {"wait_speech": 10},
                 {"signal": how, "pid": server.proc.pid}, {"wait_error": 15}]
        r = drive(agent_python, server, key, steps, tmp_path)
    finally:
        server.kill()
        if how == "SIGSTOP":
            server.proc.send_signal(9)
    assert not r["hang"], r["where"]
    assert len(r["errors"]) == 1, r["errors"]
    error = r["errors"][0]
    signalled = next(e["t"] for e in r["events"] if e["kind"] == "signalled")
    expected = "closed the connection" if how == "SIGKILL" else "no message from the flashhead server for 3 s"
    assert expected in error["error"], error
    assert error["t"] - signalled < SERVICE["receive_timeout_s"] + 2
    assert r["pcm_out"] == r["pcm_in"], "audio held for the face was lost"


def test_a_quiet_agent_keeps_its_session(agent_python, tmp_path):
    """The server closes sockets silent for 1.5 s (its cap on what a client may ask): the service,
    told so, keeps the session open through 4 s of silence and then speaks."""
    server, key = start_server(tmp_path / "server", FLASHHEAD_REALTIME_MAX_IDLE_TIMEOUT_S="1.5")
    try:
        r = drive(agent_python, server, key, [{"sleep": 4.0}, {"wav": str(SPEECH), "seconds": 1.0}], tmp_path,
                  idle_timeout_s=1.5)
    finally:
        server.stop()
    assert not r["errors"] and not r["hang"], r["errors"]
    assert len(speech_pairs(r["events"])) == FPS and r["pcm_out"] == r["pcm_in"]


def test_example_agent_writes_a_talking_mp4(agent_python, server, tmp_path):
    srv, key = server
    out = tmp_path / "agent.mp4"
    env = {"SSL_CERT_FILE": str(srv.tls.ca_pem), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(agent_python), "examples/pipecat_agent.py", "--url", srv.base_url, "--key", key,
                           "--text", "Hello from the example.", "-o", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    (tmp_path / "agent.log").write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    from api_helpers import probe_video
    info = probe_video(out.read_bytes())
    assert info["audio"] and (info["width"], info["height"]) == (512, 512)
    frames, seconds = done.stdout.split()[0], float(done.stdout.split()[2])
    assert int(frames) == info["frames"] and abs(info["frames"] / FPS - seconds) <= 2 / FPS + 0.04
