"""Encoding speed of flashhead.video.encode at 512x512 (frames per second, one encoder thread).

    python bench/encode_speed.py [--frames 250] [--threads 1]
    taskset -c 0 python bench/encode_speed.py      # pin the whole process to one core

Frames are the sample portrait with a moving mouth-sized patch and a slow drift, which is
roughly what a talking-head renderer produces (a static background, motion around the face).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from flashhead import constants as C
from flashhead.video.encode import FragmentedMp4Encoder, Mp4Writer

ROOT = Path(__file__).resolve().parents[1]


def make_frames(n: int) -> np.ndarray:
    portrait = np.asarray(Image.open(ROOT / "examples" / "portrait_girl_512.png").convert("RGB"))
    frames = np.empty((n, C.SIZE, C.SIZE, 3), np.uint8)
    for i in range(n):
        frame = np.roll(portrait, int(3 * math.sin(i / 20)), axis=0)
        opening = int(6 + 10 * abs(math.sin(i / 2.5)))
        frame[330:330 + opening, 215:300] = (90, 30, 35)
        frames[i] = frame
    return frames


def speech(n_frames: int) -> np.ndarray:
    t = np.arange(n_frames * C.SAMPLES_PER_FRAME) / C.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def bench_file(frames: np.ndarray, audio: np.ndarray, threads: int, preset: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with Mp4Writer(Path(tmp) / "bench.mp4", threads=threads, preset=preset) as writer:
            writer.write(frames, audio)
        return time.perf_counter() - start


def bench_stream(frames: np.ndarray, audio: np.ndarray, threads: int, preset: str) -> float:
    start = time.perf_counter()
    encoder = FragmentedMp4Encoder(threads=threads, preset=preset)
    encoder.init_segment()
    for i in range(0, len(frames), C.CHUNK_FRAMES):
        encoder.encode_chunk(frames[i:i + C.CHUNK_FRAMES],
                             audio[i * C.SAMPLES_PER_FRAME:(i + C.CHUNK_FRAMES) * C.SAMPLES_PER_FRAME])
    encoder.finish()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frames, audio = make_frames(args.frames), speech(args.frames)
    for name, fn in (("mp4 file (faststart)", bench_file), ("fragmented mp4 (stream)", bench_stream)):
        for preset in ("veryfast", "superfast", "ultrafast"):
            best = min(fn(frames, audio, args.threads, preset) for _ in range(args.repeat))
            print(f"{name:24s} preset={preset:9s} threads={args.threads}: "
                  f"{args.frames / best:7.1f} fps ({best * 1000 / args.frames:.2f} ms/frame)")


if __name__ == "__main__":
    main()
