"""A minimal Pipecat agent with a flashhead face, fully offline.

    TTSSpeakFrame -> EspeakTTSService -> FlashHeadVideoService -> Mp4Sink (out/agent.mp4)

A real agent has a transport's input, STT and an LLM in front of the TTS, and the transport's
output (WebRTC, Daily, ...) where the sink is; espeak-ng stands in for the agent's TTS and an MP4
file for the transport, so this runs on one machine with no account anywhere:

    flashhead serve --host 127.0.0.1 --port 8000 --no-auth &          # the face server
    .venv-pipecat/bin/python examples/pipecat_agent.py --url http://127.0.0.1:8000 \
        --text "Hello! I am a Pipecat agent with a flashhead face." -o out/agent.mp4

It runs in the agent's venv (pip install integrations/pipecat), not flashhead's; see
integrations/pipecat/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import mimetypes
import subprocess
import tempfile
import wave
from collections.abc import AsyncGenerator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pipecat.frames.frames import EndFrame, Frame, OutputImageRawFrame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.workers.runner import WorkerRunner

from flashhead_pipecat import FlashHeadVideoService

ESPEAK_RATE = 22_050               # espeak-ng's output rate
FRAME_BYTES = 2 * ESPEAK_RATE // 50  # 20 ms pieces, as a streaming TTS would send them
PORTRAIT = Path(__file__).with_name("portrait_girl_512.png")


def espeak(text: str, voice: str) -> bytes:
    """PCM16 mono 22050 Hz of `text`, from the espeak-ng command line."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-w", f.name, "--", text], check=True, timeout=60,
                       capture_output=True)
        with wave.open(f.name) as w:
            return w.readframes(w.getnframes())


class EspeakTTSService(TTSService):
    """The agent's TTS, played by espeak-ng (offline)."""

    def __init__(self, *, voice: str = "en-us", **kwargs):
        super().__init__(push_start_frame=True, push_stop_frames=True, stop_frame_timeout_s=0.5,
                         sample_rate=ESPEAK_RATE,
                         settings=TTSSettings(model="espeak-ng", voice=voice, language=None), **kwargs)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        pcm = await asyncio.to_thread(espeak, text, self._settings.voice)
        for i in range(0, len(pcm), FRAME_BYTES):
            yield TTSAudioRawFrame(pcm[i:i + FRAME_BYTES], ESPEAK_RATE, 1, context_id=context_id)


class Mp4Sink(FrameProcessor):
    """Stands in for the transport's output: every image and audio frame into one MP4, audio
    padded with silence where the face idles, so the file plays as a viewer would see it."""

    def __init__(self, path: Path, rate: int = ESPEAK_RATE):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.video = self.container.add_stream("libx264", rate=25, options={"preset": "veryfast"})
        self.video.width = self.video.height = 512
        self.video.pix_fmt = "yuv420p"
        self.audio = self.container.add_stream("aac", rate=rate, layout="mono")
        self.rate, self.images, self.samples = rate, 0, 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.pad_audio(self.images * self.rate // 25)     # silence up to this frame's time
            rgb = np.frombuffer(frame.image, np.uint8).reshape(frame.size[1], frame.size[0], 3)
            self.mux(self.video, av.VideoFrame.from_ndarray(rgb, format="rgb24"), self.images, Fraction(1, 25))
            self.images += 1
        elif isinstance(frame, TTSAudioRawFrame):
            self.write_audio(frame.audio)
        await self.push_frame(frame, direction)

    def pad_audio(self, until: int) -> None:
        if until > self.samples:
            self.write_audio(bytes(2 * (until - self.samples)))

    def write_audio(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.rate
        self.mux(self.audio, frame, self.samples, Fraction(1, self.rate))
        self.samples += samples.shape[1]

    def mux(self, stream, frame, pts: int, time_base: Fraction) -> None:
        frame.pts, frame.time_base = pts, time_base
        for packet in stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for stream in (self.video, self.audio):
            for packet in stream.encode(None):
                self.container.mux(packet)
        self.container.close()


def data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


async def main(args: argparse.Namespace) -> None:
    face = FlashHeadVideoService(url=args.url, api_key=args.key, image_url=data_uri(args.image), seed=args.seed)
    sink = Mp4Sink(args.output)
    worker = PipelineWorker(Pipeline([EspeakTTSService(voice=args.voice), face, sink]))
    for sentence in args.text:
        await worker.queue_frame(TTSSpeakFrame(sentence))
    await worker.queue_frame(EndFrame())            # ends once the face has said it all
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    try:
        await runner.run()
    finally:
        sink.close()
    print(f"{sink.images} frames, {sink.samples / sink.rate:.2f} s of audio -> {args.output}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the flashhead server, e.g. http://127.0.0.1:8000")
    p.add_argument("--key", default=None, help="KEY_ID:KEY_SECRET (flashhead keys create); none for --no-auth")
    p.add_argument("--image", type=Path, default=PORTRAIT, help="the portrait")
    p.add_argument("--text", action="append", required=True, help="a sentence to say (repeatable)")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("-o", "--output", type=Path, default=Path("out/agent.mp4"))
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
