#!/usr/bin/env python
"""Render + encode speed at 512x512 for 30 s and 300 s of speech; peak RSS per length.

    .venv/bin/python bench/render_speed.py [SECONDS ...]
"""
import sys

from flashhead.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
