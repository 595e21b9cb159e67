"""`flashhead weights check DIR [--variant]` and `flashhead weights manifest --variant pro|lite`.

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


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `weights` command (check / manifest) to an argparse subparsers object."""
    weights = subparsers.add_parser("weights", help="inspect SoulX-FlashHead weights (never downloads)")
    sub = weights.add_subparsers(dest="weights_command", required=True)
    check = sub.add_parser("check", help="validate presence, sizes, key names and shapes of a weights folder")
    check.add_argument("dir", help="folder holding Model_Pro/, Model_Lite/, VAE_Wan/, VAE_LTX/, wav2vec2-base-960h/")
    check.add_argument("--variant", choices=["pro", "lite", "both"], default="both")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)
    man = sub.add_parser("manifest", help="print the DiT's {key: shape} as JSON (built on the meta device)")
    man.add_argument("--variant", choices=["pro", "lite"], required=True)
    man.set_defaults(func=_manifest)
    return weights
