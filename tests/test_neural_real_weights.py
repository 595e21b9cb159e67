"""The neural renderers with the real SoulX-FlashHead-1_3B weights (slow; FLASHHEAD_WEIGHTS_DIR).

Skipped, saying why, when FLASHHEAD_WEIGHTS_DIR is unset or lacks a variant's files. Runs on CUDA
in bf16 when a GPU is there, else on the CPU in float32 (minutes per chunk). Measures with the
project's own quality harness (bench/quality.py): output shape and range, closed lips on silence,
a mouth that follows speech. The bounds are looser than the CPU renderer's: they catch a broken
path (no motion, noise, wrong latent scaling), not a quality target.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.config import Settings

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Settings().weights_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(WEIGHTS is None, reason="FLASHHEAD_WEIGHTS_DIR is not set: these tests need the real "
                       "SoulX-FlashHead-1_3B weights (`flashhead weights download --variant all`)"),
]


@pytest.fixture(scope="module")
def Q():
    spec = importlib.util.spec_from_file_location("flashhead_bench_quality_neural", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=["lite", "pro"])
def neural(request, engines):
    import torch

    from flashhead.pipeline import Engines, PortraitCache
    from flashhead.render.neural.renderer import NeuralRenderer
    from flashhead.render.neural.weights import check_weights

    report = check_weights(WEIGHTS, request.param)
    if not report.ok:
        pytest.skip(f"{WEIGHTS} lacks flashhead-{request.param}:\n{report.format()}")
    cuda = torch.cuda.is_available()
    renderer = NeuralRenderer(request.param, weights_dir=WEIGHTS, device="cuda" if cuda else "cpu",
                              dtype=torch.bfloat16 if cuda else torch.float32)
    renderer.setup()
    yield Engines(Settings(renderer="cpu"), renderer, engines.tts, PortraitCache(renderer))
    renderer.close()


def render(neural, portrait_path, audio: np.ndarray) -> np.ndarray:
    from PIL import Image

    from flashhead.pipeline import Prepared, iter_chunks
    from flashhead.speech.base import Speech
    from flashhead.visemes.features import features_for

    crop = np.asarray(Image.open(portrait_path).convert("RGB"))
    speech = Speech(audio=audio)
    prep = Prepared(seed=3, speech=speech, features=features_for(speech), portrait=neural.portraits.get(crop))
    return np.concatenate([c.frames for c in iter_chunks(prep, neural, chunk_frames=C.CHUNK_FRAMES)])


@pytest.fixture(scope="module")
def speech_audio(Q, speech_path):
    return Q.read_audio(str(speech_path))[: 4 * C.SAMPLE_RATE].astype(np.float32)


def test_output_shape_and_range(neural, portrait_path, speech_audio):
    frames = render(neural, portrait_path, speech_audio[: 2 * C.SAMPLE_RATE])
    assert frames.shape == (2 * C.FPS, C.SIZE, C.SIZE, 3) and frames.dtype == np.uint8
    assert 20 < frames.mean() < 235 and frames.std() > 10            # a picture, not a flat or clipped one


def test_lips_stay_closed_on_silence(Q, neural, portrait_path):
    silence = np.zeros(3 * C.SAMPLE_RATE, np.float32)
    rep = Q.evaluate(render(neural, portrait_path, silence), silence)
    assert rep["face_found_share"] >= 0.95
    assert rep["silence"]["closed_share"] >= 0.8, rep["silence"]


def test_mouth_follows_speech(Q, neural, portrait_path, speech_audio):
    rep = Q.evaluate(render(neural, portrait_path, speech_audio), speech_audio)
    assert rep["face_found_share"] >= 0.95
    assert rep["av_sync"]["correlation"] >= 0.3 and abs(rep["av_sync"]["lag_frames"]) <= 2, rep["av_sync"]
