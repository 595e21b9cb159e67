"""Portrait images: decode with limits, find the face, cut the reference square.

Crop rule (reference implementation): a square of side CROP_SCALE x the face box width, with
CROP_ABOVE of the side above the face centre, padded by edge replication where it leaves the
image, resized to SIZE x SIZE. CropInfo keeps the square in original pixels for paste-back.
"""
from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded, NoFaceError
from flashhead.media.sniff import IMAGE, IMAGE_NAMES, describe, sniff

DETECT_SIDE = 1024            # faces are searched on a copy no larger than this
REFINE_SIDE = C.SIZE          # ... and then measured again in their own square at this size
MIN_FACE_SCORE = 0.5

Box = tuple[float, float, float, float]  # (centre x, centre y, width, height) in pixels


def load_image(data: bytes, *, field: str = "image_url", max_pixels: int = C.MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/GIF (first frame)/BMP/TIFF bytes to an H x W x 3 uint8 RGB array,
    upright per EXIF.

    The format is sniffed from the bytes and only its decoder may open them; the pixel count
    is checked from the header before any pixel is decoded.
    """
    kind = sniff(data)
    if kind not in IMAGE:
        raise InputError(f"the file is {describe(data)}, not a {IMAGE_NAMES} image", field=field)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
        try:
            image = Image.open(io.BytesIO(data), formats=(kind.pillow,))  # JPEG's opener yields MPO too
        except Image.DecompressionBombError:
            raise LimitExceeded(f"the image has more than {max_pixels} pixels", field=field) from None
        except Exception:  # noqa: BLE001 - an untrusted header may break a decoder in any way
            raise InputError(f"the {kind.name} header is damaged", field=field) from None
        width, height = image.size
        if width * height > max_pixels:
            raise LimitExceeded(
                f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels", field=field
            )
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)      # a copy less of a 50 MP photo
            return _to_rgb(image)
        except Image.DecompressionBombError:
            raise LimitExceeded(f"the image has more than {max_pixels} pixels", field=field) from None
        except Exception:  # noqa: BLE001 - truncated data, bad EXIF, a decoder's own limit
            raise InputError(f"the {kind.name} image is damaged or truncated", field=field) from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB; transparent pixels are composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale
        gray = (np.asarray(image, dtype=np.float32) / 257.0).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if "A" in image.getbands() or "transparency" in image.info:
        return _on_white(np.asarray(image if image.mode == "RGBA" else image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))


def _on_white(rgba: np.ndarray, rows: int = 256) -> np.ndarray:
    """RGBA over opaque white, rounded as Pillow's alpha_composite, a band of rows at a time: a
    49 MP RGBA PNG peaked at 1.28 GB with Pillow's full-size temporaries, 0.63 GB this way."""
    out = np.empty((*rgba.shape[:2], 3), np.uint8)
    for y in range(0, rgba.shape[0], rows):
        band = rgba[y:y + rows]
        # c*a/255 + 255 - a = 255 - (255 - c)*a/255: the product fits 16 bits; x/255 never ties
        shade = (255 - band[..., :3]).astype(np.uint16) * band[..., 3:] + 128
        out[y:y + rows] = 255 - ((shade + (shade >> 8)) >> 8)
    return out


# --- face detection ------------------------------------------------------------------------

_detectors: dict[int, object] = {}
_detect_lock = threading.Lock()  # mediapipe graphs are not safe to share between threads


def _detector(model: int):
    if model not in _detectors:
        import mediapipe as mp  # heavy import, only when a face is needed

        _detectors[model] = mp.solutions.face_detection.FaceDetection(
            model_selection=model, min_detection_confidence=MIN_FACE_SCORE
        )
    return _detectors[model]


def _relative_boxes(rgb: np.ndarray, model: int) -> list[Box]:
    with _detect_lock:
        result = _detector(model).process(rgb)
    boxes = []
    for det in result.detections or []:
        b = det.location_data.relative_bounding_box
        boxes.append((b.xmin + b.width / 2, b.ymin + b.height / 2, b.width, b.height))
    return boxes


def _find(rgb: np.ndarray, max_side: int) -> list[Box]:
    """Relative face boxes in `rgb` searched on a copy at most `max_side` pixels wide and high;
    mediapipe's full-range model (far faces) first, then the short-range one."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(rgb)
    for model in (1, 0):
        boxes = _relative_boxes(rgb, model)
        if boxes:
            return boxes
    return []


def detect_face(rgb: np.ndarray) -> Box | None:
    """The largest face as (cx, cy, w, h) in pixels of `rgb`, or None.

    A second look at the face's own crop square, scaled to REFINE_SIDE, makes the box (and so
    the crop) the same whatever the photo's size: detectors' boxes vary with the face's scale.
    """
    height, width = rgb.shape[:2]
    boxes = _find(rgb, DETECT_SIDE)
    if not boxes:
        return None
    cx, cy, w, h = max(boxes, key=lambda b: b[2] * b[3])
    face = (min(max(cx * width, 0.0), width - 1.0), min(max(cy * height, 0.0), height - 1.0), w * width, h * height)
    left, top, side = crop_square(face)
    square = cv2.resize(cut_padded(rgb, left, top, side), (REFINE_SIDE, REFINE_SIDE), interpolation=cv2.INTER_AREA)
    expected = (0.5, C.CROP_ABOVE)  # where the face centre sits in its square
    near = [b for b in _find(square, REFINE_SIDE) if abs(b[0] - expected[0]) + abs(b[1] - expected[1]) < 0.25]
    if not near:
        return face
    rx, ry, rw, rh = min(near, key=lambda b: abs(b[0] - expected[0]) + abs(b[1] - expected[1]))
    return left + rx * side, top + ry * side, rw * side, rh * side


# --- crop and paste-back -------------------------------------------------------------------

@dataclass(frozen=True)
class CropInfo:
    """Where the SIZE x SIZE reference came from, in pixels of the original image."""

    left: int          # the square's left edge (may be < 0: padded)
    top: int           # the square's top edge (may be < 0: padded)
    side: int          # the square's side
    image_width: int
    image_height: int
    face: Box          # the detected face box (cx, cy, w, h)

    @property
    def scale(self) -> float:
        """Output pixels per original pixel."""
        return C.SIZE / self.side


def crop_square(face: Box, *, scale: float = C.CROP_SCALE, above: float = C.CROP_ABOVE) -> tuple[int, int, int]:
    """(left, top, side) of the reference square around a face box."""
    cx, cy, face_width, _ = face
    side = max(2, round(scale * face_width))
    return round(cx - side / 2), round(cy - above * side), side


def cut_padded(rgb: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """rgb[top:top+side, left:left+side], edges replicated where the square leaves the image."""
    height, width = rgb.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the square does not overlap the image")
    pads = (y0 - top, top + side - y1, x0 - left, left + side - x1)  # top, bottom, left, right
    inner = rgb[y0:y1, x0:x1]
    return cv2.copyMakeBorder(inner, *pads, cv2.BORDER_REPLICATE) if any(pads) else inner


def crop_face(rgb: np.ndarray, *, field: str = "image_url") -> tuple[np.ndarray, CropInfo]:
    """Find the face and return the SIZE x SIZE x 3 uint8 reference and where it came from."""
    face = detect_face(rgb)
    if face is None:
        raise NoFaceError("no face found in the image", field=field)
    height, width = rgb.shape[:2]
    cx, cy, face_width, face_height = face
    face = (min(max(cx, 0.0), width - 1.0), min(max(cy, 0.0), height - 1.0), face_width, face_height)
    left, top, side = crop_square(face)
    square = cut_padded(rgb, left, top, side)
    interpolation = cv2.INTER_AREA if side > C.SIZE else cv2.INTER_LANCZOS4
    out = cv2.resize(square, (C.SIZE, C.SIZE), interpolation=interpolation)
    return np.ascontiguousarray(out), CropInfo(left, top, side, width, height, face)


def paste_back(original: np.ndarray, frame: np.ndarray, info: CropInfo) -> np.ndarray:
    """A copy of `original` with a SIZE x SIZE `frame` put back where the crop came from."""
    out = original.copy()
    interpolation = cv2.INTER_AREA if info.side < frame.shape[0] else cv2.INTER_LANCZOS4
    square = cv2.resize(frame, (info.side, info.side), interpolation=interpolation)
    x0, y0 = max(info.left, 0), max(info.top, 0)
    x1 = min(info.left + info.side, info.image_width)
    y1 = min(info.top + info.side, info.image_height)
    out[y0:y1, x0:x1] = square[y0 - info.top:y1 - info.top, x0 - info.left:x1 - info.left]
    return out


def crop_cover(rgb: np.ndarray) -> tuple[np.ndarray, CropInfo]:
    """The original SoulX-FlashHead's default reference (no face detection): resize to cover
    SIZE x SIZE and centre-crop, i.e. the centred square of side min(h, w) resized to SIZE.
    It never leaves the image. (The face crop above pads by edge replication where its square
    leaves the image; the original's optional face crop clamps the box to the image instead,
    which makes it non-square near a border and then distorts it when resizing to SIZE.)"""
    height, width = rgb.shape[:2]
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb[top:top + side, left:left + side]
    interpolation = cv2.INTER_AREA if side > C.SIZE else cv2.INTER_LANCZOS4
    out = cv2.resize(square, (C.SIZE, C.SIZE), interpolation=interpolation)
    centre = (left + side / 2, top + side / 2, side / 2, side / 2)
    return np.ascontiguousarray(out), CropInfo(left, top, side, width, height, centre)
