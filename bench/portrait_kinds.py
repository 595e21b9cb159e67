"""Portrait kinds a user may bring, made from the shipped examples (used by the gallery and tests).

Each maker returns an RGB uint8 image of any size. Landmarks for the drawn glasses and beard
come from an independent mediapipe pass on the source photo.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def girl() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "portrait_girl_512.png").convert("RGB"))


def astronaut() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "portrait_astronaut.jpg").convert("RGB"))


def _landmarks(rgb: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        lm = fm.process(rgb).multi_face_landmarks[0].landmark
    h, w = rgb.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in lm], np.float32)


def off_centre() -> np.ndarray:
    """Landscape 960x540 picture with the face in the left third."""
    src = girl()
    canvas = cv2.resize(src, (960, 540), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 25)
    face = cv2.resize(src, (400, 400), interpolation=cv2.INTER_AREA)
    canvas[100:500, 40:440] = face
    return canvas


def small() -> np.ndarray:
    return cv2.resize(girl(), (200, 200), interpolation=cv2.INTER_AREA)


def large() -> np.ndarray:
    """Over 4K: 4200 x 2800 with the face upscaled."""
    src = girl()
    canvas = cv2.resize(src, (4200, 2800), interpolation=cv2.INTER_LINEAR)
    face = cv2.resize(src, (2400, 2400), interpolation=cv2.INTER_CUBIC)
    canvas[200:2600, 900:3300] = face
    return canvas


def grayscale() -> np.ndarray:
    g = cv2.cvtColor(girl(), cv2.COLOR_RGB2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def glasses() -> np.ndarray:
    img, lm = girl().copy(), _landmarks(girl())
    for ring in ([33, 160, 158, 133, 153, 144], [362, 385, 387, 263, 373, 380]):
        c = lm[ring].mean(axis=0)
        r = int(np.linalg.norm(lm[ring[0]] - lm[ring[3]]) * 0.85)
        cv2.circle(img, (int(c[0]), int(c[1])), r, (25, 25, 30), 4, cv2.LINE_AA)
    a, b = lm[133], lm[362]
    cv2.line(img, (int(a[0]) + 6, int(a[1]) - 4), (int(b[0]) - 6, int(b[1]) - 4), (25, 25, 30), 4,
             cv2.LINE_AA)
    return img


def beard() -> np.ndarray:
    """Stubble and beard over the jaw and chin, leaving the lips free."""
    img, lm = girl().astype(np.float32), _landmarks(girl())
    jaw = lm[[234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
              288, 361, 323, 454]]
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(jaw.astype(np.int32)), 255)
    mask[: int(lm[2][1]) + 4] = 0                                   # below the nose only
    lips = cv2.convexHull(lm[[61, 291, 0, 17, 37, 267, 84, 314]].astype(np.int32))
    cv2.fillConvexPoly(mask, lips, 0)
    rng = np.random.default_rng(0)
    hair = (rng.random(img.shape[:2]) * 60 + 35).astype(np.float32)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 4)[..., None] * 0.85
    tint = np.stack([hair * 0.9, hair * 0.7, hair * 0.5], axis=2)
    return (img * (1 - alpha) + tint * alpha).clip(0, 255).astype(np.uint8)


def painted() -> np.ndarray:
    return cv2.stylization(girl(), sigma_s=60, sigma_r=0.45)


def cartoon() -> np.ndarray:
    """Flat colours and ink outlines."""
    src = girl()
    smooth = cv2.bilateralFilter(src, 9, 80, 80)
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 80, 80)
    flat = (smooth // 40 * 40 + 20).astype(np.uint8)
    gray = cv2.medianBlur(cv2.cvtColor(src, cv2.COLOR_RGB2GRAY), 7)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(flat, flat, mask=edges)


KINDS = {
    "girl": girl, "astronaut": astronaut, "off_centre": off_centre, "small": small,
    "large": large, "grayscale": grayscale, "glasses": glasses, "beard": beard,
    "painted": painted, "cartoon": cartoon,
}
