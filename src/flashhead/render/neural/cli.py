"""`flashhead weights check DIR [--variant]`, `flashhead weights manifest --variant pro|lite` and
`flashhead weights download --variant lite|pro|all [--dir D]`.

The lead wires it in: `add_cli(subparsers)`, then call `args.func(args)` -> exit code.
"""
from __future__ import annotations

import argparse
import json
import sys


def _check(args: argparse.Namespace) -> int:
    from flashhead.render.neural.weights import check_weights
    variants = ["pro", "lite"] if args.variant == "both" else [args.variant]
    reports = [check_weights(args.dir, v) for v in variants]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        print("\n".join(r.format() for r in reports))
    return 0 if all(r.ok for r in reports) else 1


def _manifest(args: argparse.Namespace) -> int:
    from flashhead.render.neural.weights import manifest
    json.dump({k: list(v) for k, v in manifest(args.variant).items()}, sys.stdout, indent=1)
    print()
    return 0


def _download(args: argparse.Namespace) -> int:
    from flashhead.config import get_settings
    from flashhead.render.neural.download import DEFAULT_DIR, download
    from flashhead.render.neural.weights import check_weights
    folder = args.dir or get_settings().weights_dir or DEFAULT_DIR
    root = download(args.variant, folder, endpoint=args.endpoint, revision=args.revision)
    variants = ["lite", "pro"] if args.variant == "all" else [args.variant]
    reports = [check_weights(root, v) for v in variants]
    print("\n".join(r.format() for r in reports))
    if not all(r.ok for r in reports):
        print("error: the downloaded files do not pass `flashhead weights check`; run the same "
              "command again to resume", file=sys.stderr)
        return 1
    renderers = " | ".join(f"flashhead-{v}" for v in variants)
    print(f"\nweights ready: use --weights-dir {root} (or FLASHHEAD_WEIGHTS_DIR={root}) "
          f"with --renderer {renderers}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `weights` command (check / manifest / download) to an argparse subparsers object."""
    weights = subparsers.add_parser("weights", help="fetch and inspect SoulX-FlashHead weights")
    sub = weights.add_subparsers(dest="weights_command", required=True)
    check = sub.add_parser("check", help="validate presence, sizes, key names and shapes of a weights folder")
    check.add_argument("dir", help="folder holding Model_Pro/, Model_Lite/, VAE_Wan/, VAE_LTX/, wav2vec2-base-960h/")
    check.add_argument("--variant", choices=["pro", "lite", "both"], default="both")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)
    man = sub.add_parser("manifest", help="print the DiT's {key: shape} as JSON (built on the meta device)")
    man.add_argument("--variant", choices=["pro", "lite"], required=True)
    man.set_defaults(func=_manifest)
    down = sub.add_parser("download", help="fetch the official checkpoint and wav2vec2 from the Hugging "
                          "Face Hub (resumable), then check them")
    down.add_argument("--variant", choices=["lite", "pro", "all"], required=True)
    down.add_argument("--dir", default=None, help="target folder (default: FLASHHEAD_WEIGHTS_DIR or "
                      "./flashhead-weights); a second run resumes and skips finished files")
    down.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    down.add_argument("--revision", default=None, help="checkpoint revision (branch, tag or commit)")
    down.set_defaults(func=_download)
    return weights
