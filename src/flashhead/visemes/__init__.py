"""Visemes: per-frame mouth features from phoneme timelines or from the sound alone."""
from flashhead.visemes.base import FrameFeatures
from flashhead.visemes.features import (
    StreamingFeatureExtractor,
    features_for,
    features_from_audio,
    features_from_phonemes,
)

__all__ = ["FrameFeatures", "StreamingFeatureExtractor", "features_for", "features_from_audio",
           "features_from_phonemes"]
