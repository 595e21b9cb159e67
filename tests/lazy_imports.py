"""`lazy_import`: stands for a module that is imported, the usual way, on its first attribute access.

The neural test modules use it for torch and the neural renderer: importing those takes ~8 s, and
every pytest-xdist worker imports every test module to collect it. Imported on first use, only the
worker that runs the neural tests pays (conftest puts the neural test modules on one worker)."""
from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        if attr.startswith("_"):    # pytest's collection probes every module global (`__test__`,
            raise AttributeError(attr)     # `_mock_name`): no import for those, nor any private name
        return getattr(importlib.import_module(self._name), attr)

    def __setattr__(self, attr: str, value) -> None:
        raise TypeError(f"set {attr!r} on the module itself: monkeypatch.setattr('{self._name}.{attr}', ...)")

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_import(name: str) -> LazyModule:
    return LazyModule(name)
