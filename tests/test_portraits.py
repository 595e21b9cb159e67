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


# What each kind must give, measured with the CPU renderer's face detector: a video, or the name
# of the error a user gets. A detector change that flips one fails here instead of passing.
EXPECTED = {"girl": "video", "astronaut": "video", "off_centre": "video", "small": "video",
            "large": "video", "grayscale": "video", "glasses": "video", "beard": "video",
            "painted": "video", "cartoon": "video"}


def test_every_kind_states_its_outcome():
    assert set(EXPECTED) == set(portrait_kinds.KINDS)
    assert set(EXPECTED.values()) <= {"video", NoFaceError.__name__}


@pytest.mark.parametrize("kind", sorted(portrait_kinds.KINDS))
def test_every_portrait_kind_gives_its_expected_video_or_error(engines, tmp_path, kind):
    img = portrait_kinds.KINDS[kind]()
    fmt = "JPEG" if kind == "large" else "PNG"
    req = request_from_input({"image_url": data_uri(img, fmt), "text": "Hi there.", "seed": 1},
                             C.TEXT_ENDPOINT)
    if EXPECTED[kind] != "video":
        with pytest.raises(FlashheadError) as err:
            generate(req, engines, tmp_path / f"{kind}.mp4")
        assert type(err.value).__name__ == EXPECTED[kind] and "face" in str(err.value)
        return
    result = generate(req, engines, tmp_path / f"{kind}.mp4")
    w, h, n = frame_size(result.path)
    assert (w, h) == (C.SIZE, C.SIZE) and n == round(result.duration * C.FPS) and n > C.FPS // 2


# Where the face is in each test picture (by construction in bench/portrait_kinds.py), and a
# region well away from it that paste-back must leave alone.
FACE = {"off_centre": (slice(100, 500), slice(40, 440)), "small": (slice(0, 200), slice(0, 200))}
STILL = {"off_centre": [(slice(0, 540), slice(520, 960))],
         "small": [(slice(0, 25), slice(0, 25)), (slice(0, 25), slice(175, 200)),
                   (slice(175, 200), slice(0, 25)), (slice(175, 200), slice(175, 200))]}


def _inner(box: tuple[slice, slice]) -> tuple[slice, slice]:
    (r, c) = box
    dr, dc = (r.stop - r.start) // 4, (c.stop - c.start) // 4
    return slice(r.start + dr, r.stop - dr), slice(c.start + dc, c.stop - dc)


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
    with av.open(str(result.original_path)) as f:
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]).astype(np.float32)
    # the picture is the original one (within codec noise) ...
    assert np.abs(frames[0] - img[:h, :w]).mean() < 6
    motion = lambda box: np.abs(frames[:, box[0], box[1]] - frames[0, box[0], box[1]]).mean(axis=(1, 2, 3)).max()
    # ... still away from the face, and animated in it
    assert max(motion(b) for b in STILL[kind]) < 1.0, [motion(b) for b in STILL[kind]]
    assert motion(_inner(FACE[kind])) > 2.0, motion(_inner(FACE[kind]))
