"""Strict comparison of checkpoint keys and shapes, with a readable report."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flashhead.errors import BackendUnavailable

Shape = tuple[int, ...]


@dataclass
class KeyReport:
    """What a strict load of `found` into a model expecting `expected` would complain about."""

    missing: list[str] = field(default_factory=list)                          # in model, not in file
    unexpected: list[str] = field(default_factory=list)                       # in file, not in model
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, expected, found

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, limit: int = 20) -> list[str]:
        out = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
                out.append(f"{len(items)} {title} key(s): {shown}")
        if self.mismatched:
            shown = "; ".join(f"{k} expected {list(e)} found {list(f)}" for k, e, f in self.mismatched[:limit])
            out.append(f"{len(self.mismatched)} shape mismatch(es): {shown}")
        return out

    def to_dict(self) -> dict:
        return {"missing": self.missing, "unexpected": self.unexpected,
                "mismatched": [{"key": k, "expected": list(e), "found": list(f)} for k, e, f in self.mismatched]}


def compare_keys(expected: dict[str, Shape], found: dict[str, Shape]) -> KeyReport:
    report = KeyReport()
    report.missing = sorted(k for k in expected if k not in found)
    report.unexpected = sorted(k for k in found if k not in expected)
    report.mismatched = [(k, tuple(expected[k]), tuple(found[k])) for k in sorted(expected)
                         if k in found and tuple(expected[k]) != tuple(found[k])]
    return report


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `model` (meta or real) or raise BackendUnavailable listing every problem."""
    report = compare_keys(shapes_of(model.state_dict()), shapes_of(state))
    if not report.ok:
        raise BackendUnavailable(f"{what} does not match {type(model).__name__}: " + "; ".join(report.lines()),
                                 field="weights_dir")
    model.load_state_dict(state, strict=True, assign=True)
