"""The 60-second soak (bench/soak.py): 20 clients on loopback mixing queue submits with webhooks,
status polls, SSE streams, realtime live sessions and uploads against a real `flashhead serve`.
No errors, every job's webhook delivered exactly once, and the server (API process and its
render worker) back near its warmed-up footprint once the load stops.

The RSS bound is 15 %, not the 10 % bench/soak.py aims for over 10 minutes: in one minute the
thread pools (anyio's and the realtime pool) are still reaching their size on a machine shared
with other work, which shows as a few percent of start-up growth that a 10-minute run amortises
(its figures are in the bench's output, not asserted here).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soak  # noqa: E402

HEAP_TRIM_S = 2.0          # the server returns freed heap every 2 s, so a 3 s rest shows it


@pytest.mark.slow
def test_one_minute_soak(tmp_path):
    out = soak.run(minutes=1.0, clients=20, data_dir=tmp_path / "data", settle_s=HEAP_TRIM_S + 1,
                   warmup_s=10.0, env={"FLASHHEAD_HEAP_TRIM_S": str(HEAP_TRIM_S)})
    print(out)
    assert out["errors"] == 0, out["error_samples"]
    assert out["jobs"] > 0 and min(out["ops"].values()) > 0 and set(out["ops"]) == set(soak.WEIGHTS)
    assert out["webhooks"] == {"missing": 0, "duplicates": 0, "bad": []}
    assert out["rss_growth"] < 0.15, out["footprint"]
    assert out["fds_growth"] < 100, out["footprint"]
