"""The pipeline with the neural renderer (tiny CPU weights): latency removed, nothing cut."""
from __future__ import annotations

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.config import Settings
from flashhead.pipeline import Engines, PortraitCache, Prepared, iter_chunks
from flashhead.render.base import SpeechSpan
from flashhead.speech.base import Speech
from flashhead.visemes.features import features_for


@pytest.fixture(scope="module")
def neural_engines(engines):
    from flashhead.render.neural.renderer import NeuralRenderer

    renderer = NeuralRenderer.tiny("lite", size=32)
    renderer.setup()
    return Engines(Settings(renderer="cpu"), renderer, engines.tts, PortraitCache(renderer))


@pytest.mark.slow
def test_chunks_are_aligned_with_the_audio(neural_engines, portrait_path):
    from PIL import Image

    crop = np.asarray(Image.open(portrait_path).convert("RGB"))
    rng = np.random.default_rng(0)
    n_frames = 61                                  # not a multiple of the 24-frame chunk
    audio = (rng.standard_normal(n_frames * C.SAMPLES_PER_FRAME) * 0.1).astype(np.float32)
    speech = Speech(audio=audio)
    prep = Prepared(seed=4, speech=speech, features=features_for(speech),
                    portrait=neural_engines.portraits.get(crop))
    chunks = list(iter_chunks(prep, neural_engines, chunk_frames=C.CHUNK_FRAMES))
    frames = np.concatenate([c.frames for c in chunks])
    assert len(frames) == n_frames
    assert sum(len(c.audio) for c in chunks) == len(audio)
    assert all(len(c.audio) == len(c.frames) * C.SAMPLES_PER_FRAME for c in chunks)

    # Reference: the renderer's raw output, whose frame i shows audio frame i - latency.
    r = neural_engines.renderer
    session = r.new_session(prep.portrait, prep.seed)
    raw = [r.render(session, SpeechSpan(s, prep.features.slice(s, min(s + 8, n_frames)),
                                        audio[s * 640: min(s + 8, n_frames) * 640]))
           for s in range(0, n_frames, 8)]
    raw = np.concatenate(raw + [r.flush(session)])
    assert r.latency_frames > 0
    assert np.array_equal(frames, raw[r.latency_frames: r.latency_frames + n_frames])


def test_generate_names_the_command_that_fetches_missing_weights(portrait_path, tmp_path, capfd,
                                                                 monkeypatch):
    from flashhead.cli import main

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)   # get past the GPU checks
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setenv("FLASHHEAD_NATIVE_LOGS", "1")               # keep stderr as it is
    (tmp_path / "Model_Lite").mkdir()
    code = main(["generate", "--image", str(portrait_path), "--text", "hi", "--renderer", "flashhead-lite",
                 "--weights-dir", str(tmp_path), "-o", str(tmp_path / "out.mp4")])
    err = capfd.readouterr().err
    assert code == 2
    assert "[!!] Model_Lite/config.json (missing)" in err
    assert f"fetch with `flashhead weights download --variant lite --dir {tmp_path}`" in err
