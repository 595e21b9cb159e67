"""flashhead_pipecat's parts on their own (no server, no pipeline): run in the package's venv,
`python -m pytest integrations/pipecat/tests` (tests/test_pipecat_service.py does it)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from flashhead_pipecat.media import SAMPLES_PER_FRAME, Resampler
from flashhead_pipecat.protocol import realtime_url
from flashhead_pipecat.speech import Ledger


@pytest.mark.parametrize(("url", "socket"), [
    ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/fal-ai/flashhead/realtime"),
    ("https://face.example/", "wss://face.example/fal-ai/flashhead/realtime"),
    ("wss://face.example/base", "wss://face.example/base/fal-ai/flashhead/realtime"),
])
def test_realtime_url_from_the_server_url(url, socket):
    assert realtime_url(url, "fal-ai/flashhead") == socket


@pytest.mark.parametrize("url", ["ftp://face.example", "127.0.0.1:8000", "http://"])
def test_realtime_url_refuses_what_is_not_a_server_url(url):
    with pytest.raises(ValueError, match="url must be"):
        realtime_url(url, "fal-ai/flashhead")


def pcm(samples: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-3000, 3000, samples, dtype=np.int16).tobytes()


def test_ledger_pairs_each_frame_with_its_40_ms_and_the_last_frame_takes_the_rest():
    """22050 Hz audio whose 16 kHz version filled exactly 3 frames: the 5 samples the resampler
    rounded away still leave, with the last frame; the next utterance starts at its own frame 0."""
    ledger = Ledger(max_utterances=4)
    first, second = pcm(3 * 882 + 5, 1), pcm(2 * 882, 2)
    for audio, sent in ((first, 3 * SAMPLES_PER_FRAME), (second, 2 * SAMPLES_PER_FRAME - 100)):
        u = ledger.open()
        u.rate, u.audio, u.sent_samples, u.ended = 22050, bytearray(audio), sent, True
    frames = ledger.take(2) + ledger.take(10)
    assert [(f.index, f.last) for f in frames] == [(0, False), (1, False), (2, True), (0, False), (1, True)]
    assert [len(f.audio) for f in frames] == [1764, 1764, 1764 + 10, 1764, 1764]
    assert b"".join(f.audio for f in frames) == first + second
    assert not ledger.pending


def test_ledger_settles_utterances_that_end_after_their_frames_left_or_had_no_audio():
    """All of an utterance's frames left before it ended; then an utterance without audio: both
    settle, in order, at the next take (riding with the next frame) or by settle()."""
    ledger = Ledger(max_utterances=3)
    spoken = ledger.open("started")
    spoken.rate, spoken.audio, spoken.sent_samples = 16000, bytearray(pcm(1300, 3)), 1280
    assert [f.last for f in ledger.take(5)] == [False, False]        # 1280 samples: 2 frames, not ended
    assert ledger.current() is spoken and ledger.settle() == []
    spoken.ended = True
    silent = ledger.open("silent")
    silent.ended = True
    assert ledger.take(5) == []                                       # nothing after them to ride with
    nxt = ledger.open()
    nxt.rate, nxt.audio, nxt.sent_samples = 16000, bytearray(pcm(640, 4)), 640
    frame, = ledger.take(1)
    assert frame.settled == [spoken, silent] and frame.utterance is nxt and ledger.settle() == []
    nxt.ended = True
    assert ledger.settle() == [nxt] and not ledger.pending
    for _ in range(3):
        ledger.open()
    with pytest.raises(OverflowError, match="more than 3 utterances"):
        ledger.open()


def test_resampler_passes_16k_mono_through_and_brings_other_rates_to_16k_mono():
    r = Resampler()
    audio = pcm(1234, 4)
    assert r.push(audio, 16000, 1) == audio
    out = b"".join(r.push(chunk, 22050, 1) for chunk in (pcm(441, 5), pcm(22050 - 441, 6))) + r.flush()
    assert abs(len(out) // 2 - 16000) <= 2
    stereo = np.repeat(np.frombuffer(pcm(4800, 7), np.int16), 2).tobytes()     # 0.1 s at 48 kHz, L == R
    mono = r.push(stereo, 48000, 2) + r.flush()
    assert abs(len(mono) // 2 - 1600) <= 2


class _SilentServer:
    """A realtime connection whose server has gone quiet (say, overloaded): it answers nothing."""

    def __init__(self):
        self.sent: list[dict] = []

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def recv(self, timeout: float) -> dict:
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass


def test_keepalives_go_out_on_their_own_timer_while_the_server_sends_nothing():
    """The server closes a session that sent nothing for its idle timeout. A quiet agent must keep
    it open even when no chunk arrives to prompt it (a keepalive sent only after a received chunk
    let an overloaded server time the session out)."""
    from flashhead_pipecat.service import FlashHeadVideoService

    async def run() -> list[dict]:
        svc = FlashHeadVideoService(url="https://127.0.0.1:9", image_url="data:,x", idle_timeout_s=0.3)
        loop, conn = asyncio.get_running_loop(), _SilentServer()
        svc._conn, svc._last_sent = conn, loop.time()
        tasks = [asyncio.ensure_future(svc._receive()), asyncio.ensure_future(svc._keep_alive())]
        await asyncio.sleep(0.65)
        svc._conn = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return conn.sent

    sent = asyncio.run(run())
    assert sent == [{"type": "audio", "pcm": b""}] * len(sent) and len(sent) >= 5, sent   # every 0.1 s
