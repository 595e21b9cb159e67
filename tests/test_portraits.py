"""Any portrait: every kind gives a video or a clear error, never a crash; paste-back keeps resolution."""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from flashhead import constants as C
from flashhead.errors import FlashheadError, NoFaceError
from flashhead.pipeline import generate, request_from_input

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import portrait_kinds  # noqa: E402


def data_uri(rgb: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, quality=92)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def frame_size(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as f:
        s = f.streams.video[0]
        return s.codec_context.width, s.codec_context.height, sum(1 for _ in f.decode(video=0))


@pytest.mark.parametrize("kind", sorted(portrait_kinds.KINDS))
def test_every_portrait_kind_gives_a_video_or_a_clear_error(engines, tmp_path, kind):
    img = portrait_kinds.KINDS[kind]()
    fmt = "JPEG" if kind == "large" else "PNG"
    req = request_from_input({"image_url": data_uri(img, fmt), "text": "Hi there.", "seed": 1},
                             C.TEXT_ENDPOINT)
    try:
        result = generate(req, engines, tmp_path / f"{kind}.mp4")
    except NoFaceError as exc:  # a clear refusal is acceptable for stylised faces only
        assert kind in {"cartoon", "painted"}, f"{kind}: {exc}"
        assert "face" in str(exc)
        return
    w, h, n = frame_size(result.path)
    assert (w, h) == (C.SIZE, C.SIZE) and n == round(result.duration * C.FPS)


@pytest.mark.parametrize("kind", ["off_centre", "small"])
def test_paste_back_keeps_the_original_resolution(engines, tmp_path, kind):
    img = portrait_kinds.KINDS[kind]()
    req = request_from_input({"image_url": data_uri(img), "text": "Hello.", "seed": 2},
                             C.TEXT_ENDPOINT)
    result = generate(req, engines, tmp_path / "crop.mp4", keep_framing=True)
    assert result.original_path is not None
    w, h, n = frame_size(result.original_path)
    assert (w, h) == (img.shape[1] - img.shape[1] % 2, img.shape[0] - img.shape[0] % 2)
    assert n == frame_size(result.path)[2]
    # away from the face the picture is the original one
    with av.open(str(result.original_path)) as f:
        first = next(f.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    corner = (slice(h - 40, h), slice(w - 60, w)) if kind == "off_centre" else None
    if corner:
        assert np.abs(first[corner] - img[:h, :w][corner]).mean() < 6

