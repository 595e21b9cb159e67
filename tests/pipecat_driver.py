"""Runs a real Pipecat pipeline with FlashHeadVideoService, in the agent venv (not flashhead's).

    python tests/pipecat_driver.py CONFIG.json OUT_DIR

The pipeline is source -> EspeakTTSService (examples/pipecat_agent.py) -> Tap -> FlashHeadVideoService
-> Recorder. CONFIG names the server and a list of steps (speak text, push a WAV as TTS audio,
interrupt, wait for speech frames, kill or freeze a process, wait for an error); the driver then
ends the pipeline with an EndFrame and writes what the Recorder saw to OUT_DIR: events.json (one
entry per frame, in order, with its time; when each utterance's first audio entered the service),
in.pcm and out.pcm (the TTS audio before and after the service), thumbs.npy (every image, gray,
32x32 blocks). Used by tests/test_pipecat_service.py.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time
import wave
from pathlib import Path

import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from pipecat_agent import EspeakTTSService  # noqa: E402

from flashhead_pipecat import FlashHeadVideoService  # noqa: E402

KINDS = {OutputImageRawFrame: "image", TTSAudioRawFrame: "audio", TTSStartedFrame: "tts_started",
         TTSStoppedFrame: "tts_stopped", InterruptionFrame: "interruption"}


class Tap(FrameProcessor):
    """Records the TTS audio entering the service, and when each utterance's first audio did."""

    def __init__(self, t0: float):
        super().__init__()
        self.pcm, self.t0, self.firsts, self.fresh = bytearray(), t0, [], True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSStartedFrame):
            self.fresh = True
        if isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self.fresh:
                self.firsts.append(time.monotonic() - self.t0)
                self.fresh = False
            self.pcm += frame.audio
        await self.push_frame(frame, direction)


class Recorder(FrameProcessor):
    """The end of the pipeline: what a transport would get, in order, with arrival times."""

    def __init__(self):
        super().__init__()
        self.events: list[dict] = []
        self.thumbs: list[np.ndarray] = []          # every image, gray, 16x16-pixel block means
        self.pcm = bytearray()
        self.speech_frames = 0
        self.t0 = time.monotonic()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        kind = next((k for cls, k in KINDS.items() if type(frame) is cls), None)
        if kind is not None and direction == FrameDirection.DOWNSTREAM:
            event = {"t": time.monotonic() - self.t0, "kind": kind}
            if kind == "image":
                event.update(size=list(frame.size), format=frame.format, bytes=len(frame.image),
                             sync=frame.sync_with_audio)
                self.thumbs.append(thumbnail(frame))
            elif kind == "audio":
                event.update(offset=len(self.pcm), bytes=len(frame.audio), rate=frame.sample_rate)
                self.pcm += frame.audio
                self.speech_frames += 1
            self.events.append(event)
        await self.push_frame(frame, direction)


def thumbnail(frame: OutputImageRawFrame) -> np.ndarray:
    w, h = frame.size
    gray = np.frombuffer(frame.image, np.uint8).reshape(h, w, 3).mean(axis=2)
    return gray.reshape(h // 16, 16, w // 16, 16).mean(axis=(1, 3)).astype(np.float32)


def wav_frames(path: str, seconds: float, frame_ms: int = 20) -> list[TTSAudioRawFrame]:
    with wave.open(path) as w:
        rate = w.getframerate()
        pcm = w.readframes(int(seconds * rate))
    step = 2 * rate * frame_ms // 1000
    return [TTSAudioRawFrame(pcm[i:i + step], rate, 1, context_id="wav") for i in range(0, len(pcm), step)]


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.01)


async def run_steps(worker: PipelineWorker, recorder: Recorder, errors: list, steps: list[dict]) -> None:
    for step in steps:
        if "speak" in step:
            await worker.queue_frame(TTSSpeakFrame(step["speak"]))
        elif "wav" in step:
            await worker.queue_frames([TTSStartedFrame(context_id="wav"), *wav_frames(step["wav"], step["seconds"]),
                                       TTSStoppedFrame(context_id="wav")])
        elif "wait_speech" in step:
            await wait_for(lambda: recorder.speech_frames >= step["wait_speech"], 60, "speech frames")
        elif "interrupt" in step:
            await worker.queue_frame(InterruptionFrame())
        elif "sleep" in step:
            await asyncio.sleep(step["sleep"])
        elif "signal" in step:
            os.kill(step["pid"], getattr(signal, step["signal"]))
            recorder.events.append({"t": time.monotonic() - recorder.t0, "kind": "signalled"})
        elif "wait_error" in step:
            await wait_for(lambda: errors, step["wait_error"], "a pipeline error")


async def main(config: dict, out: Path) -> None:
    image = "data:image/png;base64," + base64.b64encode(Path(config["image"]).read_bytes()).decode()
    context = ssl.create_default_context(cafile=config["ca"]) if config.get("ca") else None
    face = FlashHeadVideoService(url=config["url"], api_key=config.get("key"), image_url=image, seed=3, ssl=context,
                                 **config.get("service", {}))
    recorder, errors = Recorder(), []
    tap = Tap(recorder.t0)
    worker = PipelineWorker(Pipeline([EspeakTTSService(), tap, face, recorder]))

    @worker.event_handler("on_pipeline_error")
    async def on_error(_worker, frame: ErrorFrame):
        errors.append({"t": time.monotonic() - recorder.t0, "error": frame.error})

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    result = {"hang": False}
    try:
        await wait_for(lambda: face.connected or errors, 120, "the session start")
        await run_steps(worker, recorder, errors, config["steps"])
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(run), config.get("end_timeout_s", 60))
    except TimeoutError as exc:
        result = {"hang": True, "where": str(exc)}
        await worker.cancel()
        await asyncio.wait_for(run, 10)
    finally:
        (out / "in.pcm").write_bytes(bytes(tap.pcm))
        (out / "out.pcm").write_bytes(bytes(recorder.pcm))
        np.save(out / "thumbs.npy", np.array(recorder.thumbs, np.float32).reshape(-1, 32, 32))
        result.update(events=recorder.events, errors=errors, first_audio_in=tap.firsts)
        (out / "events.json").write_text(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])))
