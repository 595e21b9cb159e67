"""WebRTC output of live sessions over WHEP (RFC 9725), with aiortc.

    POST   /{owner}/{alias}[/audio]/whep?image_url=<URL>[&seed=<int>]
           Content-Type: application/sdp, body: the client's SDP offer (receive video and audio;
           a data channel optional)    -> 201, the SDP answer, Location: .../whep/<session id>
    DELETE /{owner}/{alias}[/audio]/whep/<session id>   -> 204: the session ends
Auth as the realtime WebSocket: `Authorization: Key <id>:<secret>`, `Authorization: Bearer
<realtime token>` or `?fal_jwt_token=<realtime token>`. Errors are the API's error bodies (415 for
a body that is not SDP, 422 for a bad offer or image_url, 429 + Retry-After at capacity).

The POST opens a live session (as the WebSocket's `start`, one slot of the engine's capacity) and
answers once the portrait is prepared. The session sends a 512x512 25 fps video track and an Opus
audio track on one media clock (media_clock.py); it idles (blinks, breathes) until speech comes.
It is driven by the realtime protocol's msgpack messages, through either
- the offer's data channel (any label): audio {pcm}, end_of_speech, interrupt, listening,
  thinking, speaking, stop; the server sends back {"type": "chunk", index, start, duration,
  speaking, interrupted} per engine chunk and x-fal-error maps (msgpack), or
- a realtime WebSocket of the same key: {"type": "attach", "session": "<session id>"}, then the
  same messages (an agent's server drives the face a browser watches).
A session ends on DELETE, `stop`, a failed or closed peer connection, a peer that does not connect
within webrtc_connect_timeout_s, after webrtc_max_session_s, or when the engine fails.

Why raw media: the engine sends these sessions' frames (I420) and PCM16 instead of fMP4 segments,
so the API does not decode what the engine just encoded, chunks need not be whole AAC frames (one 40 ms
frame instead of 320 ms: speech shows sooner), and audio has no AAC priming delay to undo.
"""
from __future__ import annotations

import asyncio
import fractions
import logging
import secrets
import time

import av
import msgpack
import numpy as np
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from flashhead import constants as C
from flashhead.api.deps import authenticate
from flashhead.api.errors import sent_in
from flashhead.api.media_clock import BLOCK_SAMPLES, MediaTimeline, i420_array
from flashhead.api.queue import check_inputs
from flashhead.api.realtime import decode_message, error_message, live_message
from flashhead.api.stream import ENDPOINTS
from flashhead.errors import (FlashheadError, InputError, NotFound, PayloadTooLarge,
                              UnsupportedMediaType)
from flashhead.schemas import check_seed

log = logging.getLogger("flashhead.webrtc")
SDP = "application/sdp"
VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_TIME_BASE = fractions.Fraction(1, C.SAMPLE_RATE)
CLOSE_FLUSH_S = 0.5              # at shutdown, for the last message on the data channels


# ---- tracks -------------------------------------------------------------------------------------

class _TimelineTrack(MediaStreamTrack):
    """A track that takes its media from the session's timeline; ends when the timeline does."""

    def __init__(self, timeline: MediaTimeline):
        super().__init__()
        self.timeline = timeline

    async def recv(self):
        try:
            index, data = await self._next()
        except EOFError:
            self.stop()
            raise MediaStreamError from None
        return self._frame(index, data)


class VideoTrack(_TimelineTrack):
    """The timeline's frames, each at its slot's due time, pts = slot time (90 kHz)."""

    kind = "video"

    def _next(self):
        return self.timeline.next_frame()

    def _frame(self, slot: int, data: bytes):
        frame = av.VideoFrame.from_ndarray(i420_array(data), format="yuv420p")
        frame.pts, frame.time_base = slot * (90_000 // C.FPS), VIDEO_TIME_BASE
        return frame


class AudioTrack(_TimelineTrack):
    """The timeline's audio in 20 ms blocks (PCM16 mono 16 kHz; aiortc resamples for Opus)."""

    kind = "audio"

    def _next(self):
        return self.timeline.next_block()

    def _frame(self, block: int, data: bytes):
        frame = av.AudioFrame.from_ndarray(np.frombuffer(data, "<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = C.SAMPLE_RATE, block * BLOCK_SAMPLES, AUDIO_TIME_BASE
        return frame


# ---- one session --------------------------------------------------------------------------------

class WhepSession:
    """A peer connection fed by one live session of the engine."""

    def __init__(self, service: "WebRtcService", sid: str, key_id: str | None, session, pc):
        self.service, self.id, self.key_id, self.session, self.pc = service, sid, key_id, session, pc
        s = service.settings
        self.timeline = MediaTimeline(s.webrtc_jitter_s, s.webrtc_max_buffer_s)
        self.channel = None                # the data channel, once the peer opened it
        self.closed = False
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._lifetime())]

    # -- client messages (data channel or an attached WebSocket) ---------------------------
    async def send(self, kind: str, payload=None) -> None:
        """Forward one input to the engine; an interrupt also drops the media not yet sent."""
        if self.closed:
            raise InputError("the WebRTC session has ended", field="session")
        if kind == "interrupt":
            self.timeline.interrupt()
        await self.session.send(kind, payload)

    async def on_message(self, raw) -> None:
        try:
            msg = decode_message(raw)
            if msg.get("type") == "stop":
                await self.close()
                return
            await live_message(self, msg)
        except FlashheadError as exc:
            self.emit(error_message(exc))

    def emit(self, message: dict) -> None:
        """A message to the peer over the data channel (dropped when there is none)."""
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(msgpack.packb(message, use_bin_type=True))

    # -- engine chunks ---------------------------------------------------------------------
    async def _pump(self) -> None:
        try:
            while True:
                kind, payload = await self.session.get()
                if kind == "error":                  # the session goes on (e.g. too much audio queued)
                    self.emit(error_message(payload))
                elif kind == "event" and self.timeline.append(payload):
                    self.emit({k: payload[k] for k in ("type", "index", "start", "duration", "speaking",
                                                       "interrupted")})
        except FlashheadError as exc:                # the engine failed: the session is over
            self.emit(error_message(exc))
        finally:
            await self.close()

    async def _lifetime(self) -> None:
        s = self.service.settings
        await asyncio.sleep(s.webrtc_connect_timeout_s)
        if self.pc.connectionState != "connected":
            log.info("WHEP peer did not connect", extra={"session": self.id})
        else:
            await asyncio.sleep(max(0.0, s.webrtc_max_session_s - s.webrtc_connect_timeout_s))
        await self.close()

    async def close(self) -> None:
        """Idempotent: frees the engine slot at once, then closes the peer connection."""
        if self.closed:
            return
        self.closed = True
        self.service.sessions.pop(self.id, None)
        self.session.close()
        self.timeline.close()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self.pc.close()


# ---- the service: create, find, end -------------------------------------------------------------

class WebRtcService:
    def __init__(self, ctx):
        self.ctx, self.settings = ctx, ctx.settings
        self.sessions: dict[str, WhepSession] = {}

    def configuration(self) -> RTCConfiguration:
        s = self.settings
        servers = [RTCIceServer(urls=url, username=s.webrtc_ice_username, credential=s.webrtc_ice_credential)
                   for url in s.webrtc_ice_servers]
        return RTCConfiguration(iceServers=servers)    # [] (not None): no default STUN server

    async def create(self, offer_sdp: str, image_url: str, seed: int | None, base_url: str,
                     key_id: str | None) -> WhepSession:
        offer = _offer(offer_sdp)
        await run_in_threadpool(check_inputs, self.ctx, {"image_url": image_url}, base_url)
        s = self.settings
        session = await self.ctx.engine.open("live", {
            "image_url": image_url, "base_url": base_url, "seed": seed, "pace": True, "output": "raw",
            "chunk_frames": s.webrtc_chunk_frames, "lead_s": 0.0}, key_id)
        pc = RTCPeerConnection(self.configuration())
        whep = WhepSession(self, secrets.token_urlsafe(12), key_id, session, pc)
        try:
            await session.get()                              # "started": the portrait is ready
            await _answer(pc, offer, whep)
        except BaseException:
            await whep.close()
            raise
        self.sessions[whep.id] = whep
        whep.start()
        return whep

    def find(self, sid: str, key_id: str | None) -> WhepSession:
        """A session of this key (another key's is as absent as a missing one)."""
        whep = self.sessions.get(sid)
        if whep is None or whep.key_id != key_id:
            raise NotFound("no such WebRTC session (it may have ended)", field="session")
        return whep

    async def close_all(self, reason: FlashheadError | None = None) -> None:
        """Every session ends; with a reason (the server stopping) each peer is told first, and
        the data channels get CLOSE_FLUSH_S to send it."""
        wheps = list(self.sessions.values())
        if reason is not None:
            for whep in wheps:
                whep.emit(error_message(reason))
            deadline = time.monotonic() + CLOSE_FLUSH_S
            while any(w.channel is not None and w.channel.bufferedAmount for w in wheps) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        for whep in wheps:
            await whep.close()


def _offer(sdp: str) -> RTCSessionDescription:
    """The offer, checked: it must be SDP that asks to receive video and audio."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:  # noqa: BLE001 - aiortc's parser raises assorted errors on junk
        raise InputError("is not a valid SDP offer", field="body") from None
    receiving = {m.kind for m in parsed.media if (m.direction or "sendrecv") in ("sendrecv", "recvonly")}
    if not {"audio", "video"} <= receiving:     # sendonly / inactive would hold a slot, show nothing
        raise InputError("the offer must receive a video and an audio track", field="body")
    if not all(m.dtls and m.dtls.fingerprints for m in parsed.media):
        raise InputError("the offer has no DTLS fingerprint (a=fingerprint)", field="body")
    return RTCSessionDescription(sdp=sdp, type="offer")


async def _answer(pc: RTCPeerConnection, offer: RTCSessionDescription, whep: WhepSession) -> None:

    @pc.on("datachannel")
    def on_datachannel(channel):
        whep.channel = channel
        channel.on("message", lambda raw: asyncio.ensure_future(whep.on_message(raw)))

    @pc.on("connectionstatechange")
    async def on_state():
        if pc.connectionState in ("failed", "closed"):
            await whep.close()

    try:   # aiortc refuses offers it cannot answer with assorted errors, at any of these steps
        await pc.setRemoteDescription(offer)   # (e.g. createAnswer on an offer given twice over)
        pc.addTrack(VideoTrack(whep.timeline))
        pc.addTrack(AudioTrack(whep.timeline))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception:  # noqa: BLE001
        log.info("WHEP offer not negotiated", exc_info=True)
        raise InputError("the offer cannot be negotiated (no common codec or transport)", field="body") from None


# ---- routes -------------------------------------------------------------------------------------

async def _sdp_body(request: Request, limit: int) -> str:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
        raise UnsupportedMediaType(f"must be {SDP} (an SDP offer)", field="Content-Type", location="header")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"the SDP offer is larger than {limit} bytes", field="body")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("is not a valid SDP offer", field="body") from None


def _seed(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        seed = int(raw)
    except ValueError:
        raise InputError("must be an integer", field="seed") from None
    return check_seed(seed)


def whep_routes(app: FastAPI, ctx, endpoint: str) -> None:
    service: WebRtcService = ctx.webrtc
    path = f"/{endpoint}/whep"

    async def whep_post(request: Request) -> Response:
        key_id = await authenticate(request, token_type="realtime", token_param="fal_jwt_token", app=endpoint)
        sdp = await _sdp_body(request, ctx.settings.webrtc_max_sdp_bytes)
        with sent_in("query", "image_url", "seed"):
            image_url = request.query_params.get("image_url")
            if not image_url:
                raise InputError("required (query parameter): the portrait URL", field="image_url")
            whep = await service.create(sdp, image_url, _seed(request.query_params.get("seed")),
                                        ctx.base_url(request), key_id)
        return Response(whep.pc.localDescription.sdp, 201, media_type=SDP,
                        headers={"Location": f"{path}/{whep.id}"})

    async def whep_delete(sid: str, request: Request) -> Response:
        key_id = await authenticate(request, token_type="realtime", token_param="fal_jwt_token", app=endpoint)
        await service.find(sid, key_id).close()
        return Response(status_code=204)

    name = endpoint.replace("/", "_").replace("-", "_")
    app.add_api_route(path, whep_post, methods=["POST"], name=f"whep_{name}", status_code=201,
                      summary=f"WebRTC (WHEP): start a live session of {endpoint}", response_class=Response,
                      responses={201: {"content": {SDP: {}}, "description": "the SDP answer"}})
    app.add_api_route(f"{path}/{{sid}}", whep_delete, methods=["DELETE"], name=f"whep_delete_{name}",
                      status_code=204, summary="WebRTC (WHEP): end the session", response_class=Response)


def register(app: FastAPI, ctx) -> None:
    """Called by flashhead.api.app.create_app."""
    ctx.webrtc = WebRtcService(ctx)
    for endpoint in ENDPOINTS:
        whep_routes(app, ctx, endpoint)
