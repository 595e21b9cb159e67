"""FlashHeadVideoService: a Pipecat service that gives the agent's voice a talking face.

TTS audio frames go to a flashhead server's live session (realtime protocol) and are held back;
the server renders video chunks on its media clock, idle (blinking, breathing) between
utterances. Each rendered frame leaves as an OutputImageRawFrame, and each speech frame is
followed by the same 40 ms of the agent's own audio, so picture and sound leave together, in
order, and the output transport keeps them in sync (`sync_with_audio`). Frames are released at
the pace of the session's media clock.
"""
from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from flashhead_pipecat.media import FPS, Resampler, decode_chunk
from flashhead_pipecat.protocol import ConnectionLost, FlashHeadError, RealtimeConnection, ServerError, realtime_url
from flashhead_pipecat.speech import Ledger, SpeechFrame, Utterance

PCM_PIECE_BYTES = 3200             # 100 ms at 16 kHz: the protocol's largest audio message
MAX_LATE_S = 1.0                   # frames this late re-anchor the clock instead of bursting out


@dataclass
class Chunk:
    """One rendered chunk, waiting for its media time."""

    segment: bytes
    start: float                   # seconds on the session's media clock
    speech: list[SpeechFrame]      # its first len(speech) frames, paired with the agent's audio
    generation: int                # bumped by every interruption: older chunks are dropped


class FlashHeadVideoService(AIService):
    """TTS audio in; a talking face (OutputImageRawFrame, RGB) and that same audio out.

    Args:
        url: the flashhead server, e.g. ``https://avatar.example:8000`` (or ws://, wss://).
        api_key: ``<key id>:<secret>`` from ``flashhead keys create``; None for an open server.
        image_url: the portrait, as a URL the server may fetch or a ``data:`` URI.
        endpoint: the server endpoint whose realtime socket is used.
        seed: the session's seed (idle motion), None for the server's choice.
        ssl: the TLS context for wss:// (default: the system's trust store).
        connect_timeout_s: the WebSocket handshake.
        start_timeout_s: the server preparing the portrait (the ``started`` answer).
        receive_timeout_s: the longest silence from the server before it counts as gone (it
            sends a chunk every 0.32 s, idle or not).
        idle_timeout_s: asked of the server (which caps it): it closes a session that sent
            nothing for this long. A quiet agent sends an empty audio message every third of it.
        drain_timeout_s: on EndFrame, the longest wait for the speech still being rendered.
        max_utterances: utterances that may wait for their frames at once.
        max_queued_chunks: rendered chunks that may wait for their media time at once.
    """

    def __init__(self, *, url: str, image_url: str, api_key: str | None = None,
                 endpoint: str = "fal-ai/flashhead", seed: int | None = None,
                 ssl: ssl_module.SSLContext | None = None, connect_timeout_s: float = 10.0,
                 start_timeout_s: float = 60.0, receive_timeout_s: float = 5.0, idle_timeout_s: float = 60.0,
                 drain_timeout_s: float = 60.0, max_utterances: int = 64, max_queued_chunks: int = 64,
                 **kwargs):
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self._socket_url = realtime_url(url, endpoint)
        self._api_key, self._image_url, self._seed, self._ssl = api_key, image_url, seed, ssl
        self._connect_timeout_s, self._start_timeout_s = connect_timeout_s, start_timeout_s
        self._receive_timeout_s, self._idle_timeout_s = receive_timeout_s, idle_timeout_s
        self._drain_timeout_s, self._max_queued_chunks = drain_timeout_s, max_queued_chunks
        self._ledger = Ledger(max_utterances)
        self._resampler = Resampler()
        self._conn: RealtimeConnection | None = None
        self._init_segment = b""
        self._out: deque[Chunk | Frame] = deque()    # what waits for its time, in order
        self._wake = asyncio.Event()                  # set when _out gets something
        self._generation = 0
        self._cut = False               # interrupted: drop chunks until the server's cut arrives
        self._emitting = False          # the release task holds speech it has not pushed yet
        self._failed = False            # the session failed and said so
        self._last_sent = 0.0
        self._t0: float | None = None   # loop time at media time 0
        self._downstream = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, frame: StartFrame):
        await super().start(frame)
        try:
            await self._connect()
        except FlashHeadError as exc:
            await self._fail(exc)
            return
        self._tasks = [self.create_task(self._receive(), "flashhead-receive"),
                       self.create_task(self._release(), "flashhead-release"),
                       self.create_task(self._keep_alive(), "flashhead-keepalive")]

    async def _connect(self) -> None:
        conn = await RealtimeConnection.open(self._socket_url, self._api_key, self._connect_timeout_s, self._ssl)
        try:
            start = {"type": "start", "image_url": self._image_url, "pace": True, "idle_timeout": self._idle_timeout_s}
            if self._seed is not None:
                start["seed"] = self._seed
            await conn.send(start)
            started = await conn.recv(self._start_timeout_s)
            if started.get("type") != "started":
                raise ConnectionLost(f"expected 'started' from the flashhead server, got {started.get('type')!r}")
        except BaseException:
            await conn.close()
            raise
        self._conn, self._init_segment = conn, started["init_segment"]
        self._last_sent = asyncio.get_running_loop().time()
        logger.info(f"{self}: live session on {self._socket_url} (seed {started.get('seed')})")

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        if self._conn is not None and self._ledger.current() is not None:
            await self._end_utterance(None)
        await self._drain()
        await self._close()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close()

    async def cleanup(self):
        await super().cleanup()
        await self._close()

    async def _drain(self) -> None:
        """Wait (bounded) until every utterance's frames have left."""
        deadline = asyncio.get_running_loop().time() + self._drain_timeout_s
        while self._busy():
            if asyncio.get_running_loop().time() > deadline:
                await self.push_error(f"{self}: speech still rendering after {self._drain_timeout_s:g} s; ending "
                                      f"without it ({self._ledger.describe()}, {len(self._out)} queued)")
                return
            await asyncio.sleep(0.02)

    def _busy(self) -> bool:
        """Speech is still to leave (idle frames never end, so they do not count)."""
        return bool(self._tasks) and (self._ledger.pending or self._emitting or any(map(_speaks, self._out)))

    async def _close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task is not asyncio.current_task():
                await self.cancel_task(task)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _fail(self, exc: FlashHeadError) -> None:
        """The session is over: say so once; what is held leaves as audio only, in order."""
        if self._failed:
            return                                       # already said, already released
        self._failed = True
        logger.error(f"{self}: {exc}")
        conn, self._conn = self._conn, None
        await self.push_error(str(exc), exception=exc, force_treat_as_permanent=True)
        for u in self._ledger.clear():
            self._queue(*_rest(u))
        self._resampler.reset()
        if conn is not None:
            await conn.close()

    # -- frames in ----------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._downstream.set()                       # from now on frames may leave
            return
        if self._conn is None or direction != FrameDirection.DOWNSTREAM:
            if self._conn is None and self._busy() and direction == FrameDirection.DOWNSTREAM:
                self._queue(frame)                       # behind what the failed session still holds
            else:
                await self.push_frame(frame, direction)
            return
        try:
            if isinstance(frame, TTSStartedFrame):
                await self._open_utterance(frame)
            elif isinstance(frame, TTSAudioRawFrame):
                await self._speak(frame)
            elif isinstance(frame, TTSStoppedFrame):
                await self._end_utterance(frame)
            else:
                if isinstance(frame, InterruptionFrame):
                    await self._interrupt()
                await self.push_frame(frame, direction)
        except FlashHeadError as exc:
            await self._fail(exc)

    async def _open_utterance(self, opening: TTSStartedFrame | None) -> Utterance:
        if self._ledger.current() is not None:           # a new response ends the open one
            await self._end_utterance(None)
        try:
            return self._ledger.open(opening)
        except OverflowError as exc:
            raise ConnectionLost(str(exc)) from exc

    async def _speak(self, frame: TTSAudioRawFrame) -> None:
        u = self._ledger.current() or await self._open_utterance(None)
        if u.rate and (u.rate, u.channels) != (frame.sample_rate, frame.num_channels):
            u = await self._open_utterance(None)         # the TTS changed its format: a new utterance
        if not u.rate:
            u.rate, u.channels, u.context_id = frame.sample_rate, frame.num_channels, frame.context_id
        u.audio += frame.audio
        await self._send_pcm(u, self._resampler.push(frame.audio, frame.sample_rate, frame.num_channels))

    async def _send_pcm(self, u: Utterance, pcm: bytes) -> None:
        for i in range(0, len(pcm), PCM_PIECE_BYTES):
            await self._send({"type": "audio", "pcm": pcm[i:i + PCM_PIECE_BYTES]})
        u.sent_samples += len(pcm) // 2

    async def _end_utterance(self, closing: TTSStoppedFrame | None) -> None:
        u = self._ledger.current()
        if u is None:                                    # nothing open: keep the frame's place in line
            if closing is not None:
                self._queue(closing)
            return
        u.closing = closing
        await self._send_pcm(u, self._resampler.flush())
        u.ended = True
        await self._send({"type": "end_of_speech"})
        self._release_settled()

    async def _interrupt(self) -> None:
        """Drop everything not yet out, and cut the server's session to idle."""
        self._generation += 1
        self._out.clear()
        self._ledger.clear()
        self._resampler.reset()
        self._cut = True
        await self._send({"type": "interrupt"})

    async def _send(self, message: dict) -> None:
        if self._conn is None:                           # failed while this frame was being handled
            raise ConnectionLost("the flashhead session is over")
        await self._conn.send(message)
        self._last_sent = asyncio.get_running_loop().time()

    # -- chunks from the server -----------------------------------------------------------------
    async def _receive(self) -> None:
        while self._conn is not None:
            try:
                message = await self._conn.recv(self._receive_timeout_s)
                if message.get("type") == "chunk":
                    self._take_chunk(message)
            except ServerError as exc:
                if exc.closing:
                    await self._fail(exc)
                else:                                    # e.g. too much audio queued: the session goes on
                    await self.push_error(str(exc), exception=exc)
            except FlashHeadError as exc:
                await self._fail(exc)

    async def _keep_alive(self) -> None:
        """An empty audio message whenever a third of the idle timeout passed with nothing sent:
        on its own timer, so a server slow to send chunks cannot starve it."""
        loop, every = asyncio.get_running_loop(), self._idle_timeout_s / 3
        while self._conn is not None:
            await asyncio.sleep(max(0.0, self._last_sent + every - loop.time()))
            if self._conn is not None and loop.time() - self._last_sent >= every:
                try:
                    await self._send({"type": "audio", "pcm": b""})
                except FlashHeadError as exc:
                    await self._fail(exc)
                    return

    def _take_chunk(self, message: dict) -> None:
        if self._cut and not message.get("interrupted"):
            return                                       # rendered before the interrupt landed
        self._cut = False
        speech = self._ledger.take(int(message.get("speech_frames", 0)))
        self._queue(Chunk(message["segment"], float(message["start"]), speech, self._generation))
        self._release_settled()

    def _release_settled(self) -> None:
        for u in self._ledger.settle():
            self._queue(*_rest(u))

    def _queue(self, *items: Chunk | Frame) -> None:
        """Into the release queue; rendered chunks are refused past max_queued_chunks (the frames
        that go with utterances are bounded by max_utterances)."""
        if items and isinstance(items[0], Chunk) and len(self._out) >= self._max_queued_chunks:
            raise ConnectionLost(f"more than {self._max_queued_chunks} chunks wait to be released; "
                                 "the pipeline is not taking frames")
        self._out.extend(items)
        self._wake.set()

    # -- frames out ---------------------------------------------------------------------------
    async def _release(self) -> None:
        await self._downstream.wait()
        while True:
            while not self._out:
                self._wake.clear()
                await self._wake.wait()
            item = self._out.popleft()
            self._emitting = _speaks(item)
            try:
                if isinstance(item, Chunk):
                    await self._release_chunk(item)
                else:
                    await self.push_frame(item)
            finally:
                self._emitting = False

    async def _release_chunk(self, chunk: Chunk) -> None:
        """Frame by frame on the media clock; once the session failed, the rest of its speech
        leaves as audio at once."""
        shown = 0
        if self._conn is not None:
            for rgb in await asyncio.to_thread(decode_chunk, self._init_segment, chunk.segment):
                await self._wait_until(chunk.start + shown / FPS)
                if chunk.generation != self._generation:
                    return                               # interrupted while it waited
                if self._conn is None:
                    break
                image = OutputImageRawFrame(rgb.tobytes(), (rgb.shape[1], rgb.shape[0]), "RGB")
                image.sync_with_audio = True
                await self._push_speech_frame(image, chunk.speech[shown] if shown < len(chunk.speech) else None)
                shown += 1
        for speech in chunk.speech[shown:]:
            await self._push_speech_frame(None, speech)

    async def _push_speech_frame(self, image: OutputImageRawFrame | None, speech: SpeechFrame | None) -> None:
        u = speech.utterance if speech else None
        for frame in [f for done in speech.settled for f in _rest(done)] if speech else []:
            await self.push_frame(frame)
        if speech and speech.index == 0 and u.opening is not None:
            await self.push_frame(u.opening)
        if image is not None:
            await self.push_frame(image)
        if speech and speech.audio:
            await self.push_frame(TTSAudioRawFrame(speech.audio, u.rate, u.channels, context_id=u.context_id))
        if speech and speech.last and u.closing is not None:
            await self.push_frame(u.closing)

    async def _wait_until(self, media_time: float) -> None:
        now = asyncio.get_running_loop().time()
        if self._t0 is None or now - (self._t0 + media_time) > MAX_LATE_S:
            self._t0 = now - media_time                  # first frame, or far behind: re-anchor
        delay = self._t0 + media_time - now
        if delay > 0:
            await asyncio.sleep(delay)


def _speaks(item: Chunk | Frame) -> bool:
    """Whether a queued item carries speech (or a frame of the agent's, which must not be lost)."""
    return not isinstance(item, Chunk) or bool(item.speech)


def _rest(u: Utterance) -> list[Frame]:
    """What of a settled (or abandoned) utterance did not leave with its frames: its opening if
    no frame left, its audio past the frames that left, its closing."""
    start = (u.frames_out * u.rate // FPS) * 2 * u.channels
    audio = [TTSAudioRawFrame(bytes(u.audio[start:]), u.rate, u.channels, context_id=u.context_id)] \
        if len(u.audio) > start else []
    opening = [u.opening] if u.opening is not None and u.frames_out == 0 else []
    return [*opening, *audio, *([u.closing] if u.closing is not None else [])]
