"""Watch a flashhead face over WebRTC (WHEP) and make it speak a WAV, from Python (aiortc).

    FAL_KEY=KEY_ID:KEY_SECRET .venv/bin/python examples/whep_speak.py \\
        --server http://127.0.0.1:8000 --image examples/portrait_girl_512.png \\
        --audio examples/speech_excerpt_10s.wav -o out/whep.mp4

It uploads the portrait (the storage API the fal clients use), POSTs an SDP offer to
/fal-ai/flashhead/whep, pushes the WAV (PCM16 mono 16 kHz) over the data channel in 40 ms messages
at the speed it plays, records what comes back (video + audio tracks; kept in memory, so keep the
WAV short) to an MP4, and ends the session with DELETE. A browser does the same with RTCPeerConnection (see the playground).
"""
from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import wave
from pathlib import Path

import httpx
import msgpack
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from flashhead.video.encode import Mp4Writer

ENDPOINT = "fal-ai/flashhead"


def upload(server: str, headers: dict, path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    r = httpx.post(f"{server}/rest/storage/upload/initiate?storage_type=fal-cdn-v3", headers=headers,
                   json={"content_type": kind, "file_name": path.name}, timeout=30)
    r.raise_for_status()
    target = r.json()
    httpx.put(target["upload_url"], content=path.read_bytes(), headers={"Content-Type": kind},
              timeout=60).raise_for_status()
    return target["file_url"]


class Recording:
    """What the two tracks deliver: RGB frames, and audio as mono float at 48 kHz."""

    def __init__(self):
        self.frames, self.audio, self.tasks = [], [], []

    def add(self, track) -> None:
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append(frame.to_ndarray(format="rgb24"))
                else:            # s16 stereo, interleaved
                    self.audio.append(frame.to_ndarray().reshape(-1, 2)[:, 0].astype(np.float32) / 32768)
        except MediaStreamError:
            pass

    def save(self, path: str) -> None:
        for task in self.tasks:
            task.cancel()
        with Mp4Writer(path, sample_rate=48_000) as mp4:
            mp4.write(np.stack(self.frames), np.concatenate(self.audio))


def pcm16(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 16000):
            raise SystemExit("--audio must be PCM16 mono 16 kHz WAV")
        return w.readframes(w.getnframes())


async def main(args) -> None:
    headers = {"Authorization": f"Key {os.environ['FAL_KEY']}"} if os.environ.get("FAL_KEY") else {}
    image_url = upload(args.server, headers, Path(args.image))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    channel = pc.createDataChannel("control")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    recording = Recording()
    pc.on("track", recording.add)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(f"{args.server}/{ENDPOINT}/whep", params={"image_url": image_url},
                            content=pc.localDescription.sdp, headers={**headers, "Content-Type": "application/sdp"})
        if r.status_code != 201:
            raise SystemExit(f"WHEP: HTTP {r.status_code}: {r.text}")
        session = f"{args.server}{r.headers['Location']}"
        await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
        await asyncio.wait_for(opened.wait(), 30)
        print(f"connected: {session}")
        await asyncio.sleep(1.0)                                   # a moment of idle first
        pcm, step = pcm16(Path(args.audio)), 1280                  # 40 ms messages
        for at in range(0, len(pcm), step):
            channel.send(msgpack.packb({"type": "audio", "pcm": pcm[at:at + step]}))
            await asyncio.sleep(step / 32000)
        channel.send(msgpack.packb({"type": "end_of_speech"}))
        await asyncio.sleep(1.5)
        await http.delete(session, headers=headers)
    await pc.close()
    recording.save(args.output)
    print(f"recorded {args.output}: {len(recording.frames)} frames")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--image", required=True)
    p.add_argument("--audio", required=True)
    p.add_argument("-o", "--output", default="out/whep.mp4")
    args = p.parse_args()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args))
