"""The neural benchmarks' scripts run end to end with tiny models on the CPU."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"flashhead_bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_task_order_puts_the_useful_figures_first():
    order = load("gpu_neural").task_order(["eager", "compile", "cudagraphs"], [1, 2, 4, 8])
    assert order[:6] == [("eager", 1), ("eager", 2), ("eager", 4), ("eager", 8), ("compile", 1), ("cudagraphs", 1)]
    assert len(order) == len(set(order)) == 12


@pytest.mark.slow
def test_gpu_bench_tiny_run_reports_and_skips_past_the_budget(capsys):
    bench = load("gpu_neural")
    assert bench.main(["--tiny", "--variants", "lite", "--modes", "eager,compile", "--batches", "1,2",
                       "--chunks", "1", "--warmup", "0", "--budget", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    lite = out["variants"]["lite"]
    assert lite["tasks"] == [] and len(lite["skipped"]) == 4              # a spent budget skips, says so
    bench.T0 = bench.time.perf_counter()
    assert bench.main(["--tiny", "--variants", "lite", "--modes", "eager", "--batches", "2",
                       "--chunks", "1", "--warmup", "0", "--budget", "600"]) == 0
    lite = json.loads(capsys.readouterr().out)["variants"]["lite"]
    assert [(t["mode"], t["batch"]) for t in lite["tasks"]] == [("eager", 2)]
    for t in lite["tasks"]:
        assert t["e2e_fps"] > 0 and t["per_session_fps"] == pytest.approx(t["e2e_fps"] / t["batch"])
        assert t["time_to_first_chunk_s"] > 0 and t["all_sessions_real_time"] == (t["per_session_fps"] >= 25)
    assert lite["best_e2e_fps"] == max(t["e2e_fps"] for t in lite["tasks"])


def test_cpu_smoke_tiny_writes_the_chunk(tmp_path, capsys):
    assert load("neural_cpu_smoke").main(["--tiny", "--out", str(tmp_path)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["frames"] == [24, 64, 64, 3] and rep["finite"] and rep["motion_latents"] == [1, 4, 2, 2, 2]
    assert len(rep["dit_step_s"]) == 4 and rep["peak_rss_gib"] > 0
    assert len(list(tmp_path.glob("frame_*.png"))) == 24


def test_gpu_bench_names_the_wheels_a_bare_machine_lacks(monkeypatch):
    bench = load("gpu_neural")
    bench.ensure_wheels(None)                                   # everything is installed here
    monkeypatch.setitem(bench.CARRIED, "no_such_module_xyz", "no-such-dist")
    with pytest.raises(SystemExit, match="missing no-such-dist: pass --wheels"):
        bench.ensure_wheels(None)
