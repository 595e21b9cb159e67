"""`flashhead weights download`: fetch the official checkpoint through huggingface_hub.

What each variant needs (the layout check_weights expects):
    lite: Soul-AILab/SoulX-FlashHead-1_3B  Model_Lite/*, VAE_LTX/*
    pro:  Soul-AILab/SoulX-FlashHead-1_3B  Model_Pro/*,  VAE_Wan/*
    both: facebook/wav2vec2-base-960h      config.json, preprocessor_config.json and one weights
                                           file (model.safetensors, else pytorch_model.bin)
                                           -> DIR/wav2vec2-base-960h/
snapshot_download into a local folder resumes interrupted files (.incomplete parts, HTTP Range),
skips files already complete and shows tqdm progress bars. The endpoint is huggingface_hub's
(HF_ENDPOINT, default https://huggingface.co) unless one is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FLASHHEAD_REPO = "Soul-AILab/SoulX-FlashHead-1_3B"
WAV2VEC2_REPO = "facebook/wav2vec2-base-960h"
WAV2VEC2_DIR = "wav2vec2-base-960h"
VARIANT_PATTERNS = {"lite": ["Model_Lite/*", "VAE_LTX/*"], "pro": ["Model_Pro/*", "VAE_Wan/*"]}
WAV2VEC2_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DEFAULT_DIR = "./flashhead-weights"


def download_command(variant: str, folder: str | Path | None = None) -> str:
    """The command line that fetches what `variant` needs into `folder`."""
    target = f" --dir {folder}" if folder is not None else ""
    return f"flashhead weights download --variant {variant}{target}"


def fetch_hint(report, folder: str | Path) -> str:
    """One line naming the command that fetches what a failed WeightsReport misses."""
    missing = [f.path for f in report.files if not f.ok]
    return (f"missing or incomplete: {', '.join(missing)}; fetch with "
            f"`{download_command(report.variant, folder)}`")


@dataclass
class Fetch:
    repo: str
    patterns: list[str]
    subdir: str            # inside the weights dir ("" = the dir itself)


def plan(variant: str, wav2vec2_files: list[str]) -> list[Fetch]:
    """The downloads for 'lite' | 'pro' | 'all', given the wav2vec2 repo's file list."""
    if variant not in (*VARIANT_PATTERNS, "all"):
        raise ValueError(f"variant: must be one of lite, pro, all, got {variant!r}")
    names = list(VARIANT_PATTERNS) if variant == "all" else [variant]
    weights = next((w for w in WAV2VEC2_WEIGHTS if w in wav2vec2_files), None)
    if weights is None:
        raise ValueError(f"{WAV2VEC2_REPO} lists none of {', '.join(WAV2VEC2_WEIGHTS)}")
    fetches = [Fetch(FLASHHEAD_REPO, [p for n in names for p in VARIANT_PATTERNS[n]], "")]
    return fetches + [Fetch(WAV2VEC2_REPO, ["config.json", "preprocessor_config.json", weights], WAV2VEC2_DIR)]


def download(variant: str, folder: str | Path, endpoint: str | None = None,
             revision: str | None = None, max_workers: int = 4) -> Path:
    """Fetch everything `variant` needs into `folder` (resumable); returns the folder."""
    from huggingface_hub import HfApi, snapshot_download

    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    api = HfApi(endpoint=endpoint)
    wav2vec2_files = api.list_repo_files(WAV2VEC2_REPO)
    for fetch in plan(variant, wav2vec2_files):
        snapshot_download(fetch.repo, revision=revision if fetch.repo == FLASHHEAD_REPO else None,
                          allow_patterns=fetch.patterns, local_dir=folder / fetch.subdir,
                          endpoint=endpoint, max_workers=max_workers)
    return folder
