"""English phones with timings from uploaded audio: pocketsphinx in all-phone mode.

Uses the acoustic model and phone language model shipped inside the pocketsphinx wheel (no
download). The result is a hint for lip shapes only; callers check it against the sound before
trusting it, because uploads can be in any language.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from flashhead import constants as C
from flashhead.speech.base import Phoneme

PHONE_FRAME_S = 0.01          # pocketsphinx frames are 10 ms
_local = threading.local()    # a Decoder is not thread-safe: one per thread


def _decoder():
    if getattr(_local, "decoder", None) is None:
        from pocketsphinx import Decoder, get_model_path

        lm = os.path.join(get_model_path(), "en-us", "en-us-phone.lm.bin")
        # lw / beams as recommended for phone decoding: wide beams, a light phone LM.
        _local.decoder = Decoder(allphone=lm, lw=2.0, beam=1e-20, pbeam=1e-20, loglevel="FATAL")
    return _local.decoder


def recognize_phones(audio: np.ndarray) -> list[Phoneme]:
    """audio: float32 mono at C.SAMPLE_RATE -> ARPAbet phones (SIL, +NSN+ ... included)."""
    pcm = (np.clip(np.asarray(audio, np.float32), -1, 1) * 32767).astype("<i2").tobytes()
    d = _decoder()
    d.start_utt()
    d.process_raw(pcm, full_utt=True)
    d.end_utt()
    end_s = len(audio) / C.SAMPLE_RATE
    return [Phoneme(s.word, s.start_frame * PHONE_FRAME_S,
                    min(end_s, (s.end_frame + 1) * PHONE_FRAME_S)) for s in d.seg()]
