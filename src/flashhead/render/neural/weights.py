"""Weights tooling: the DiT manifest, a strict offline check of a weights folder, strict loading.

Expected layout (the official SoulX-FlashHead-1_3B release; download.py fetches it):
    Model_Pro/{config.json, diffusion_pytorch_model.safetensors}      DiT Pro   (~6.03 GB fp32)
    Model_Lite/{config.json, diffusion_pytorch_model.safetensors}     DiT Lite  (~6.11 GB fp32)
    VAE_Wan/Wan2.1_VAE.pth                                             Pro VAE   (~0.51 GB)
    VAE_LTX/{config.json, diffusion_pytorch_model.safetensors}        Lite VAE  (~1.68 GB)
    wav2vec2-base-960h/ (or facebook/wav2vec2-base-960h/)              audio encoder
Keys and shapes are read from safetensors headers / memory-mapped .pth files, never loaded.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flashhead.errors import BackendUnavailable
from flashhead.render.neural.audio import WAV2VEC2_DIRS, find_wav2vec2
from flashhead.render.neural.dit import VARIANT_CONFIGS, FlashHeadDiT
from flashhead.render.neural.keys import KeyReport, Shape, compare_keys, load_strict, shapes_of
from flashhead.render.neural.stream import VARIANTS

DIT_FILE = "diffusion_pytorch_model.safetensors"
WAN_VAE_FILE = "VAE_Wan/Wan2.1_VAE.pth"
LTX_VAE_DIR = "VAE_LTX"


def _check_variant(variant: str) -> str:
    if variant not in VARIANT_CONFIGS:
        raise ValueError(f"variant: must be one of {sorted(VARIANT_CONFIGS)}, got {variant!r}")
    return variant


def meta_shapes(module_factory) -> dict[str, Shape]:
    """Build a model on the meta device (no memory, no init cost) and list its tensor shapes."""
    with torch.device("meta"):
        return shapes_of(module_factory().state_dict())


def manifest(variant: str) -> dict[str, Shape]:
    """The full-size DiT's {key: shape} for 'pro' or 'lite'."""
    config = VARIANT_CONFIGS[_check_variant(variant)]
    return meta_shapes(lambda: FlashHeadDiT(**config))


def safetensors_header(path: Path) -> tuple[dict[str, Shape], int]:
    """{key: shape} and the file size the header implies, read without loading tensors."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > 100_000_000:
            raise ValueError("implausible safetensors header length")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    return {k: tuple(v["shape"]) for k, v in header.items()}, 8 + n + end


@dataclass
class FileCheck:
    path: str                            # relative to the weights dir
    present: bool
    size: int | None = None              # bytes on disk
    problems: list[str] = field(default_factory=list)
    keys: KeyReport | None = None

    @property
    def ok(self) -> bool:
        return self.present and not self.problems and (self.keys is None or self.keys.ok)

    def to_dict(self) -> dict:
        return {"path": self.path, "present": self.present, "size": self.size, "ok": self.ok,
                "problems": self.problems, "keys": self.keys.to_dict() if self.keys else None}


@dataclass
class WeightsReport:
    variant: str
    root: str
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "root": self.root, "ok": self.ok,
                "files": [f.to_dict() for f in self.files]}

    def format(self) -> str:
        lines = [f"flashhead-{self.variant} weights in {self.root}: {'OK' if self.ok else 'PROBLEMS'}"]
        for f in self.files:
            size = f"{f.size:,} bytes" if f.size is not None else "missing"
            lines.append(f"  [{'ok' if f.ok else '!!'}] {f.path} ({size})")
            lines += [f"       {p}" for p in f.problems + (f.keys.lines() if f.keys else [])]
        return "\n".join(lines)


def _check_safetensors(root: Path, rel: str, expected: dict[str, Shape] | None) -> FileCheck:
    path = root / rel
    if not path.is_file():
        return FileCheck(rel, False, problems=["file not found"])
    check = FileCheck(rel, True, path.stat().st_size)
    try:
        shapes, implied = safetensors_header(path)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        check.problems.append(f"unreadable safetensors header: {exc}")
        return check
    if implied != check.size:
        check.problems.append(f"size {check.size:,} bytes but the header describes {implied:,} (truncated?)")
    if expected is not None:
        check.keys = compare_keys(expected, shapes)
    return check


def _read_config(root: Path, rel: str, checks: list[FileCheck]) -> dict | None:
    path = root / rel
    if not path.is_file():
        checks.append(FileCheck(rel, False, problems=["file not found"]))
        return None
    check = FileCheck(rel, True, path.stat().st_size)
    checks.append(check)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        check.problems.append(f"invalid JSON: {exc}")
        return None


def _check_dit(root: Path, variant: str, checks: list[FileCheck], preset: dict) -> None:
    folder = VARIANTS[variant].model_dir
    config = _read_config(root, f"{folder}/config.json", checks)
    if config is not None:
        wrong = [f"{k}={config.get(k)!r} (expected {v!r})" for k, v in preset.items()
                 if k in config and (list(config[k]) if isinstance(config[k], list) else config[k])
                 != (list(v) if isinstance(v, tuple) else v)]
        if wrong:
            checks[-1].problems.append("config differs from the released " + variant + ": " + ", ".join(wrong))
    expected = meta_shapes(lambda: FlashHeadDiT(**preset))
    checks.append(_check_safetensors(root, f"{folder}/{DIT_FILE}", expected))


def _check_wan_vae(root: Path, checks: list[FileCheck]) -> None:
    from diffusers import AutoencoderKLWan

    from flashhead.render.neural.vae import convert_wan_state_dict
    path = root / WAN_VAE_FILE
    if not path.is_file():
        checks.append(FileCheck(WAN_VAE_FILE, False, problems=["file not found"]))
        return
    check = FileCheck(WAN_VAE_FILE, True, path.stat().st_size)
    checks.append(check)
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a report line, not a crash
        check.problems.append(f"cannot read as a PyTorch state dict: {type(exc).__name__}: {exc}")
        return
    check.keys = compare_keys(meta_shapes(AutoencoderKLWan), shapes_of(convert_wan_state_dict(state)))


def _check_ltx_vae(root: Path, checks: list[FileCheck]) -> None:
    from diffusers import AutoencoderKLLTXVideo
    config = _read_config(root, f"{LTX_VAE_DIR}/config.json", checks)
    expected = None
    if config is not None:
        try:
            expected = meta_shapes(lambda: AutoencoderKLLTXVideo.from_config(config))
        except Exception as exc:  # noqa: BLE001
            checks[-1].problems.append(f"not an AutoencoderKLLTXVideo config: {exc}")
    checks.append(_check_safetensors(root, f"{LTX_VAE_DIR}/{DIT_FILE}", expected))


def _check_wav2vec2(root: Path, checks: list[FileCheck]) -> None:
    folder = find_wav2vec2(root)
    if folder is None:
        checks.append(FileCheck(" | ".join(WAV2VEC2_DIRS), False, problems=["no wav2vec2 folder with config.json"]))
        return
    rel = str(folder.relative_to(root))
    files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    check = FileCheck(rel, True, sum(f.stat().st_size for f in files) if files else None)
    if not files:
        check.problems.append("no model.safetensors or pytorch_model.bin")
    checks.append(check)


def check_weights(weights_dir: str | Path, variant: str, dit_config: dict | None = None) -> WeightsReport:
    """Presence, sizes, key names and shapes of everything `variant` needs; never loads tensors.

    dit_config: the DiT configuration to hold the folder to (default: the released `variant`).
    """
    root = Path(weights_dir)
    checks: list[FileCheck] = []
    _check_variant(variant)
    if not root.is_dir():
        return WeightsReport(variant, str(root), [FileCheck(".", False, problems=["not a directory"])])
    _check_dit(root, variant, checks, dit_config or VARIANT_CONFIGS[variant])
    (_check_wan_vae if variant == "pro" else _check_ltx_vae)(root, checks)
    _check_wav2vec2(root, checks)
    return WeightsReport(variant, str(root), checks)


def load_dit(folder: str | Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> FlashHeadDiT:
    """A DiT folder (config.json + safetensors) -> model, strict: any missing, unexpected or
    mismatched key raises BackendUnavailable listing them all."""
    from safetensors.torch import load_file
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / DIT_FILE).is_file():
        raise BackendUnavailable(f"DiT weights not found in {folder} (config.json + {DIT_FILE})",
                                 field="weights_dir")
    config = json.loads((folder / "config.json").read_text())
    with torch.device("meta"):
        model = FlashHeadDiT.from_config(config)
    load_strict(model, load_file(str(folder / DIT_FILE)), str(folder / DIT_FILE))
    torch.nn.Module.to(model, device=device, dtype=dtype)   # ModelMixin.to warns about fp32 modules
    return model.eval().requires_grad_(False)
