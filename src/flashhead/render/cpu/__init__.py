"""Default CPU renderer: mediapipe landmarks + blend-shape warps, no model weights."""
from .renderer import CpuRenderer, Portrait, Session

__all__ = ["CpuRenderer", "Portrait", "Session"]
