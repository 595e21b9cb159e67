"""MediaPipe FaceMesh landmarks of a portrait (478 points, computed once) and index sets."""
from __future__ import annotations

import threading

import numpy as np

from flashhead.errors import NoFaceError

N_LANDMARKS = 478

# Inner lip contours, corner to corner (78 = right corner of the image-left side, 308 the other).
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_UPPER_MID, LIP_LOWER_MID = 13, 14
CHIN, NOSE_TIP, NOSE_BOTTOM = 152, 1, 2
FOREHEAD = 10

# Eyes: (outer corner, inner corner, upper lid, lower lid, iris centre, iris ring)
RIGHT_EYE = dict(corners=(33, 133), upper=(33, 246, 161, 160, 159, 158, 157, 173, 133),
                 lower=(33, 7, 163, 144, 145, 153, 154, 155, 133), iris=468,
                 brow=(46, 53, 52, 65, 55),
                 ring=(469, 470, 471, 472))
LEFT_EYE = dict(corners=(263, 362), upper=(263, 466, 388, 387, 386, 385, 384, 398, 362),
                lower=(263, 249, 390, 373, 374, 380, 381, 382, 362), iris=473,
                brow=(276, 283, 282, 295, 285),
                ring=(474, 475, 476, 477))
EYES = (RIGHT_EYE, LEFT_EYE)

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
             54, 103, 67, 109)

# Points that move little with speech and blinks: used to align faces (quality harness).
STABLE = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 234, 454, 127, 356, 93, 323, 33, 133,
          263, 362, 70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 98, 327, 129, 358)

_lock = threading.Lock()
_mesh = None


def _static_mesh():
    global _mesh
    if _mesh is None:
        import mediapipe as mp
        _mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=1,
            min_detection_confidence=0.5)
    return _mesh


def detect_landmarks(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (478, 2) float32 pixel coordinates. NoFaceError when none."""
    img = np.ascontiguousarray(image)
    with _lock:
        result = _static_mesh().process(img)
    if not result.multi_face_landmarks:
        raise NoFaceError("no face found in the portrait", field="image")
    h, w = img.shape[:2]
    pts = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark],
                   np.float32)
    return pts[:N_LANDMARKS]


def face_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (e_u across the face, left->right in the image; e_v down the face)."""
    eu = (lm[263] + lm[362]) / 2 - (lm[33] + lm[133]) / 2
    eu = eu / (np.linalg.norm(eu) + 1e-6)
    ev = np.array([-eu[1], eu[0]], np.float32)
    return eu.astype(np.float32), ev


def face_size(lm: np.ndarray) -> float:
    """Interocular-based scale: distance between the eye centres (pixels)."""
    a = lm[list(RIGHT_EYE["corners"])].mean(0)
    b = lm[list(LEFT_EYE["corners"])].mean(0)
    return float(np.linalg.norm(b - a))
