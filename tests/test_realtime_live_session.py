"""The live-session engine on its own (no HTTP): clock, idle, interrupt, A/V alignment, pacing."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded
from flashhead.live import LiveSession
from live_doubles import EnergyExtractor, LedgerRenderer, engines_with, pcm16, tone

N = C.LIVE_CHUNK_FRAMES
FRAME = C.SAMPLES_PER_FRAME


def session(renderer=None, **kw) -> LiveSession:
    kw.setdefault("pace", False)
    return LiveSession(engines_with(renderer or LedgerRenderer()), object(), 7,
                       make_extractor=EnergyExtractor, **kw)


def push_packets(s: LiveSession, audio: np.ndarray, rng, lo_ms=20, hi_ms=100) -> None:
    """Push `audio` as PCM16 packets of random 20-100 ms, sometimes split mid-sample."""
    data, i = pcm16(audio), 0
    while i < len(data):
        n = int(rng.integers(lo_ms, hi_ms + 1)) * 32 + int(rng.integers(0, 2))
        s.push_audio(data[i:i + n])
        i += n


def drain(s: LiveSession, stop=lambda c: False, limit=10_000):
    out = []
    while len(out) < limit:
        c = s.next_chunk(timeout=2.0)
        assert c is not None, "the session stalled"
        out.append(c)
        if stop(c):
            return out
    raise AssertionError("never reached the stop condition")


class ManualClock:
    """The session's clock, moved only by the test: what is due is decided, never raced."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_starved_session_renders_idle_chunks_at_the_real_time_rate():
    clock = ManualClock()
    s = session(clock=clock)
    chunks = []
    for _ in range(3):
        clock.t = max(clock.t, s.due())            # nothing before it is due (timeout=0: no wait)
        chunks.append(s.next_chunk(timeout=0))
    assert [c.start_frame for c in chunks] == [0, N, 2 * N]
    for c in chunks:
        assert not c.speaking and not c.features.open.any() and not c.audio.any()
        assert len(c.frames) == N and len(c.audio) == N * FRAME
    # Unpaced idle follows the real-time rate: the next idle chunk is due one chunk's duration
    # after the last one left, and not a moment before.
    assert [c.released_at for c in chunks] == pytest.approx([100.0 + k * N * C.FRAME_SECONDS for k in range(3)])
    assert s.due() == pytest.approx(chunks[-1].released_at + N * C.FRAME_SECONDS)
    clock.t = s.due() - 0.001
    assert s.next_chunk(timeout=0) is None
    clock.t = s.due()
    assert s.next_chunk(timeout=0).start_frame == 3 * N


def test_speech_chunk_appears_once_enough_audio_arrived():
    clock = ManualClock()
    s = session(clock=clock)                       # the clock stands still: idle is never due
    assert not s.next_chunk(timeout=0).speaking
    s.push_audio(pcm16(tone(0.2)))                 # 5 frames: less than one chunk
    assert s.next_chunk(timeout=0) is None         # not enough speech, idle not yet due
    s.push_audio(pcm16(tone(0.3)))                 # now 12 frames, lookahead 2 -> 10 ready
    c = s.next_chunk(timeout=0)
    assert c is not None and c.speaking and (c.features.open > 0.5).all()


def test_end_of_speech_flushes_the_tail_padded_to_whole_frames():
    s = session()
    s.push_audio(pcm16(tone(0.5)))                 # 12.5 frames
    s.end_of_speech()
    chunks = drain(s, stop=lambda c: not c.speaking)
    spoken = np.concatenate([c.features.voiced for c in chunks])
    assert spoken.sum() == 13                      # 12 whole frames + the padded half frame
    assert chunks[-2].speaking and not chunks[-2].features.voiced[-1]  # tail padded with idle


def test_audio_and_frames_stay_on_one_clock():
    rng = np.random.default_rng(3)
    s = session()
    pieces = []
    for _ in range(6):                             # bursts of tone with silences between
        pieces += [tone(rng.uniform(0.2, 0.7)), np.zeros(int(rng.uniform(0.1, 0.6) * C.SAMPLE_RATE), np.float32)]
    audio = np.concatenate(pieces)
    push_packets(s, audio, rng)
    s.end_of_speech()
    chunks = drain(s, stop=lambda c: s.frames_out * FRAME >= len(audio) and not c.speaking)
    out_audio = np.concatenate([c.audio for c in chunks])
    feats = np.concatenate([c.features.open for c in chunks])
    pixels = np.concatenate([c.frames[:, 0, 0, 0] for c in chunks])
    assert len(out_audio) == len(feats) * FRAME == s.samples_out == s.frames_out * FRAME
    # The session's audio track is exactly what was pushed (the first chunk may be idle).
    lead = np.flatnonzero(np.abs(out_audio) > 0)[0] // FRAME * FRAME
    np.testing.assert_allclose(out_audio[lead:lead + len(audio)], audio, atol=2 / 32768)
    # Each frame's mouth was driven by that same frame's audio: offset 0 frames (< 40 ms).
    loud = np.sqrt((out_audio.reshape(-1, FRAME) ** 2).mean(1)) > 0.05
    assert ((feats > 0.1) == loud).mean() > 0.98
    np.testing.assert_array_equal(pixels, np.clip(feats * 255, 0, 255).astype(np.uint8))


def test_interrupt_drops_queued_audio_and_idles_within_bound():
    s = session(LedgerRenderer(seconds_per_frame=0.003))
    s.push_audio(pcm16(tone(20.0)))
    first = s.next_chunk(timeout=2.0)
    assert first.speaking
    marks = {}

    def interrupt_later():
        time.sleep(0.1)
        marks["t"] = time.monotonic()
        s.interrupt()

    threading.Thread(target=interrupt_later).start()
    chunks = drain(s, stop=lambda c: c.interrupted)
    latency = chunks[-1].released_at - marks["t"]
    assert latency <= C.LIVE_INTERRUPT_S, f"interrupt took {latency * 1000:.0f} ms"
    assert not chunks[-1].speaking and not chunks[-1].audio.any()
    after = [s.next_chunk(timeout=2.0) for _ in range(3)]
    assert not any(c.speaking for c in after), "queued audio survived the interrupt"
    # Audio pushed after the interrupt is spoken again.
    s.push_audio(pcm16(tone(0.6)))
    assert drain(s, stop=lambda c: c.speaking)[-1].speaking


def test_paced_chunks_never_leave_before_their_media_time_minus_lead():
    lead = 0.05
    s = session(pace=True, lead_s=lead)
    s.push_audio(pcm16(tone(1.0)))
    chunks = [s.next_chunk(timeout=2.0) for _ in range(5)]
    assert any(c.speaking for c in chunks)
    for c in chunks:
        assert c.released_at >= c.media_time - lead - 1e-3
        assert c.media_time == pytest.approx(chunks[0].media_time + c.start_frame / C.FPS)
    # Held back to the media clock, not sent at once. Each chunk may leave up to `lead` early and
    # the first may leave less early than the last (a loaded machine rendered it late): the span
    # is the media span less at most one lead.
    span = chunks[-1].released_at - chunks[0].released_at
    assert span >= (chunks[-1].start_frame - chunks[0].start_frame) / C.FPS - lead - 1e-3


class CountingExtractor(EnergyExtractor):
    pushes = 0

    def push(self, audio):
        CountingExtractor.pushes += 1
        return super().push(audio)


def test_audio_packets_wait_for_their_chunk_unless_they_change_when_it_is_due():
    """A scheduler steps a session when due() has passed. Audio that cannot change the next
    chunk's time must not make it due: each early step would run the feature extractor on one
    40 ms packet, several times the CPU of one run per chunk."""
    clock, packet = ManualClock(), pcm16(tone(0.04))
    paced = LiveSession(engines_with(LedgerRenderer()), object(), 7, pace=True, clock=clock,
                        make_extractor=CountingExtractor)
    paced.next_chunk(timeout=0)                                   # the first chunk leaves at once
    next_due = paced.due()
    CountingExtractor.pushes = 0
    for _ in range(N):                                            # one chunk's speech, as packets
        paced.push_audio(packet)
        assert paced.due() == next_due, "a packet of audio made a paced session due early"
    clock.t = next_due
    assert paced.next_chunk(timeout=0) is not None and CountingExtractor.pushes == 1
    paced.interrupt()                                             # an interrupt is due at once
    assert paced.due() == float("-inf")

    unpaced = session(clock=clock)
    unpaced.next_chunk(timeout=0)
    idle_due = unpaced.due()
    for _ in range(N - 1):
        unpaced.push_audio(packet)
        assert unpaced.due() == idle_due
    unpaced.push_audio(packet)                                    # may complete a speech chunk
    assert unpaced.due() == float("-inf")
    unpaced.next_chunk(timeout=0)
    unpaced.push_audio(packet)
    assert unpaced.due() > clock.t
    unpaced.end_of_speech()                                       # its tail leaves at once
    assert unpaced.due() == float("-inf")


def test_bad_input_and_closed_session_raise_named_errors():
    s = session(max_queue_s=1.0)
    with pytest.raises(InputError) as e:
        s.push_audio("not bytes")
    assert e.value.field == "pcm"
    with pytest.raises(LimitExceeded) as e:
        s.push_audio(pcm16(tone(1.5)))
    assert e.value.field == "pcm"
    s.close()
    assert s.next_chunk(timeout=1.0) is None
    with pytest.raises(InputError):
        s.push_audio(pcm16(tone(0.1)))


def test_speech_frames_name_the_pushed_speech_in_order_across_utterances():
    """A client that pushes whole frames can pair every rendered speech frame with its own audio:
    chunk.speech_frames counts them, also where an utterance's tail and the next one's start
    share a chunk and where a chunk is cut short in the middle of an utterance."""
    rng = np.random.default_rng(5)
    s = session()
    utterances = [tone(0.52), tone(0.28) * 0.5, tone(0.76) * 0.8]     # 13, 7 and 19 frames
    pushed = np.concatenate(utterances)
    s.push_audio(pcm16(utterances[0]))
    s.end_of_speech()
    chunks = [s.next_chunk(timeout=2.0)]           # 8 of 13 frames; the tail (5) waits
    push_packets(s, utterances[1], rng)            # no end_of_speech yet: joins the tail
    chunks += [s.next_chunk(timeout=2.0), s.next_chunk(timeout=2.0)]   # 8, then a short one
    push_packets(s, utterances[2], rng)
    s.end_of_speech()
    while sum(c.speech_frames for c in chunks) < len(pushed) // FRAME:
        chunks.append(s.next_chunk(timeout=2.0))
    assert [c.speech_frames > 0 for c in chunks] == [c.speaking for c in chunks]
    assert any(0 < c.speech_frames < N for c in chunks[:-1]), "no short chunk before the last"
    speech = np.concatenate([c.audio[:c.speech_frames * FRAME] for c in chunks])
    np.testing.assert_allclose(speech, pushed, atol=2 / 32768)
    for c in chunks:                               # what follows the speech frames is idle
        assert not c.audio[c.speech_frames * FRAME:].any()
        assert not c.features.open[c.speech_frames:].any()


def test_each_utterance_is_padded_where_its_end_of_speech_came_even_when_the_next_followed():
    """end_of_speech, then the next utterance's audio, all before the session absorbs either: the
    first utterance's half frame is still padded on its own (frame counts stay per utterance)."""
    s = session()
    first, second = tone(0.5), tone(0.3) * 0.5           # 12.5 and 7.5 frames
    s.push_audio(pcm16(first))
    s.end_of_speech()
    s.push_audio(pcm16(second))
    s.end_of_speech()
    chunks = drain(s, stop=lambda c: not c.speaking)
    assert sum(c.speech_frames for c in chunks) == 13 + 8
    speech = np.concatenate([c.audio[:c.speech_frames * FRAME] for c in chunks])
    padded = [np.pad(a, (0, -len(a) % FRAME)) for a in (first, second)]
    np.testing.assert_allclose(speech, np.concatenate(padded), atol=2 / 32768)
