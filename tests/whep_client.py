"""A real aiortc WHEP client for the WebRTC tests and bench/webrtc_latency.py: it offers to receive
video + audio with a data channel, records every decoded frame with its RTP timestamp and arrival
time, and every RTCP sender report (to put both tracks on the sender's NTP clock)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import msgpack
import numpy as np

SDP = "application/sdp"


MARK = 64                           # marker square side (pixels)


class MarkerRenderer:
    """The real renderer, plus a marker square in the top-left corner (test mode): white on the
    frames whose audio samples (n_frames x samples) `marks` picks, black elsewhere."""

    def __init__(self, inner, marks):
        self.inner, self.marks = inner, marks

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def render(self, session, span):
        frames = self.inner.render(session, span)
        audio = np.asarray(span.audio, np.float32).reshape(span.n_frames, -1)
        frames[:, :MARK, :MARK] = np.where(self.marks(audio), 255, 0)[:, None, None, None].astype(np.uint8)
        return frames


def shows_marker(y) -> bool:
    """Whether a decoded frame's luma plane shows the marker (its inner part, clear of the codec's blur)."""
    return y[8:MARK - 8, 8:MARK - 8].mean() > 200


@dataclass
class Received:
    video: list = field(default_factory=list)      # (arrival, RTP timestamp, Y plane)
    audio: list = field(default_factory=list)      # (arrival, RTP timestamp, float mono samples at 48 kHz)
    reports: dict = field(default_factory=dict)    # kind -> [(ntp seconds, rtp timestamp)]
    messages: list = field(default_factory=list)   # data channel messages (decoded)


class WhepClient:
    def __init__(self, base: str, endpoint: str, headers: dict, *, keep_pixels: bool = True):
        self.base, self.endpoint, self.headers, self.keep_pixels = base, endpoint, headers, keep_pixels
        self.got = Received()
        self.pc = None
        self.channel = None
        self.location: str | None = None
        self.tasks: list[asyncio.Task] = []
        self.opened = asyncio.Event()

    async def connect(self, image_url: str, **query) -> httpx.Response:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        self.channel = pc.createDataChannel("control")
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda raw: self.got.messages.append(msgpack.unpackb(raw, raw=False)))
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(f"{self.base}/{self.endpoint}/whep", content=pc.localDescription.sdp,
                                params={"image_url": image_url, **query},
                                headers={**self.headers, "Content-Type": SDP})
        if r.status_code == 201:
            self.location = r.headers["location"]
            await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        return r

    def _on_track(self, track) -> None:
        self._hook_reports(track.kind)
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    def _hook_reports(self, kind: str) -> None:
        """Record the sender reports of the receiver of `kind` (aiortc keeps them private)."""
        from aiortc.rtp import RtcpSrPacket

        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == kind)
        handle = receiver._handle_rtcp_packet
        reports = self.got.reports.setdefault(kind, [])

        async def hooked(packet):
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                reports.append(((ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32, packet.sender_info.rtp_timestamp))
            return await handle(packet)

        receiver._handle_rtcp_packet = hooked

    async def _read(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == track.kind)
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                # aiortc counts pts from the track's first RTP timestamp; undo that.
                rtp = (receiver._RTCRtpReceiver__timestamp_mapper._origin + frame.pts) % 2**32
                if track.kind == "video":
                    y = frame.to_ndarray(format="gray") if self.keep_pixels else None
                    self.got.video.append((now, rtp, y))
                else:
                    a = frame.to_ndarray().astype(np.float32).reshape(-1, len(frame.layout.channels))[:, 0] / 32768
                    self.got.audio.append((now, rtp, a))
        except MediaStreamError:
            pass

    async def send(self, message: dict) -> None:
        await asyncio.wait_for(self.opened.wait(), 30)
        self.channel.send(msgpack.packb(message, use_bin_type=True))

    async def push_pcm(self, pcm: bytes, *, step_bytes: int = 1280, realtime: bool = True) -> None:
        """PCM16 16 kHz in 40 ms messages, at the speed it plays (or as fast as possible)."""
        t0 = time.monotonic()
        for i, at in enumerate(range(0, len(pcm), step_bytes)):
            await self.send({"type": "audio", "pcm": pcm[at:at + step_bytes]})
            if realtime:
                await asyncio.sleep(max(0.0, t0 + (i + 1) * step_bytes / 32000 - time.monotonic()))

    async def delete(self) -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.delete(f"{self.base}{self.location}", headers=self.headers)
        return r.status_code

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()


def upload(app, path, content_type: str, base: str) -> str:
    """The file stored in the server's storage, as a URL of that server (image_url of a WHEP POST)."""
    storage = app.state.ctx.storage
    stored = storage.put_bytes(path.read_bytes(), content_type, path.name)
    return storage.url(stored.key, base)
