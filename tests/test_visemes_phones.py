"""Phone hints for uploaded audio: a bilabial seals the lips only where the sound confirms it."""
from __future__ import annotations

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.speech.base import Phoneme
from flashhead.speech.recognize import recognize_phones
from flashhead.visemes.audio import features_from_audio
from flashhead.visemes.phones import refine_with_phones


def vowel_with_gap(gap_at: float, gap_s: float = 0.08, dur: float = 1.6) -> np.ndarray:
    """A voiced 'aaa' (harmonics of 140 Hz) with a near-silent gap, like 'ama'."""
    t = np.arange(int(dur * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 12)) * 0.15
    env = np.ones_like(t)
    env[(t > gap_at) & (t < gap_at + gap_s)] = 0.05
    env[(t < 0.2) | (t > dur - 0.2)] = 0.0
    return (tone * env).astype(np.float32)


def test_recognised_phones_cover_the_audio(engines):
    audio = engines.tts.synthesize("Maybe my baby bought a blue map.", "Roger", 1.0, 0).audio
    phones = recognize_phones(audio)
    assert len(phones) > 5 and phones[0].start == 0.0
    assert all(a.end <= b.start + 1e-9 for a, b in zip(phones, phones[1:]))
    assert phones[-1].end <= len(audio) / C.SAMPLE_RATE + 1e-9


def test_a_bilabial_on_a_loudness_dip_seals_the_lips():
    audio = vowel_with_gap(0.8)
    acoustic = features_from_audio(audio)
    refined, confirmed = refine_with_phones(acoustic, [Phoneme("AA", 0.2, 0.78), Phoneme("M", 0.78, 0.9),
                                                       Phoneme("AA", 0.9, 1.4)])
    assert confirmed == 1
    sealed = np.flatnonzero(refined.closure >= 1.0)
    assert len(sealed) == 1 and 0.78 * C.FPS <= sealed[0] <= 0.9 * C.FPS
    assert refined.open[sealed[0]] == 0.0
    assert refined.open[int(1.1 * C.FPS)] == pytest.approx(acoustic.open[int(1.1 * C.FPS)])


def test_a_bilabial_the_sound_does_not_confirm_changes_nothing():
    audio = vowel_with_gap(1.2)
    acoustic = features_from_audio(audio)
    refined, confirmed = refine_with_phones(acoustic, [Phoneme("M", 0.5, 0.62)])  # loud there
    assert confirmed == 0 and refined is acoustic


@pytest.mark.parametrize("symbol", ["AA", "S", "+NSN+"])
def test_other_phones_never_close_the_lips(symbol):
    audio = vowel_with_gap(0.8)
    acoustic = features_from_audio(audio)
    refined, confirmed = refine_with_phones(acoustic, [Phoneme(symbol, 0.78, 0.9)])
    assert confirmed == 0 and refined is acoustic
