"""Renderer backends: get_renderer('cpu' | 'flashhead-lite' | 'flashhead-pro')."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flashhead.errors import BackendUnavailable, InputError

if TYPE_CHECKING:     # render.base pulls in numpy/scipy: `flashhead keys` and `weights` need neither
    from flashhead.render.base import Renderer

RENDERERS = ("cpu", "flashhead-lite", "flashhead-pro")

__all__ = ["RENDERERS", "get_renderer"]


def get_renderer(name: str, **kw) -> Renderer:
    """Construct a renderer by name (setup() is left to the caller)."""
    if name == "cpu":
        from flashhead.render.cpu import CpuRenderer
        for key in ("weights_dir", "device", "dtype"):   # neural-only settings
            kw.pop(key, None)
        return CpuRenderer(**kw)
    if name in ("flashhead-lite", "flashhead-pro"):
        try:
            from flashhead.render.neural import renderer as neural
        except Exception as exc:   # noqa: BLE001 - any import failure means the backend is absent
            raise BackendUnavailable(f"renderer {name!r} is not available: {exc}",
                                     field="renderer") from exc
        return neural.NeuralRenderer(variant=name.split("-", 1)[1], **kw)
    raise InputError(f"unknown renderer {name!r}; choose one of {', '.join(RENDERERS)}", field="renderer")
