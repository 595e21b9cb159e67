"""Reference image options: the face crop (default) and the original's cover + centre-crop."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

from flashhead import constants as C
from flashhead.config import Settings
from flashhead.media.image import crop_cover, paste_back
from flashhead.pipeline import PortraitCache, load_portrait


def test_cover_crop_is_the_centred_square_resized():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
    crop, info = crop_cover(wide)
    assert (info.left, info.top, info.side) == (150, 0, 600)
    expected = cv2.resize(wide[:, 150:750], (C.SIZE, C.SIZE), interpolation=cv2.INTER_AREA)
    assert crop.shape == (C.SIZE, C.SIZE, 3) and np.array_equal(crop, expected)
    tall = rng.integers(0, 255, (301, 200, 3), dtype=np.uint8)
    assert crop_cover(tall)[1].top == 50
    back = paste_back(wide, crop, info)                   # paste-back works on its box
    assert np.array_equal(back[:, :150], wide[:, :150]) and np.abs(
        back[:, 150:750].astype(int) - wide[:, 150:750]).mean() < 60


def test_pipeline_uses_the_configured_reference_crop(portrait_path, tmp_path):
    from PIL import Image
    picture = np.asarray(Image.open(portrait_path).convert("RGB"))
    framed = np.zeros((512, 800, 3), np.uint8)
    framed[:, 144:656] = picture                          # the portrait centred on a black band
    path = tmp_path / "wide.png"
    Image.fromarray(framed).save(path)

    def crop_with(mode):
        engines = SimpleNamespace(settings=Settings(reference_crop=mode), portraits=PortraitCache(None))
        return load_portrait(str(path), engines, allow_paths=True)

    cover, framing = crop_with("cover")
    assert np.array_equal(cover, picture) and framing.crop.side == 512
    face, _ = crop_with("face")
    assert not np.array_equal(face, picture)              # the default still finds the face
