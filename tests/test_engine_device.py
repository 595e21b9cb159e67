"""--device (FLASHHEAD_DEVICE): the neural renderer's torch device, from `flashhead serve` and
`flashhead worker` to the engine's renderer; a bad value is a clear error. No GPU needed: where
the value goes shows in which check fails first (CUDA for a cuda device, the weights for cpu)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from api_helpers import ROOT, Server, make_tls
from flashhead.config import Settings
from flashhead.errors import BackendUnavailable
from flashhead.pipeline import Engines


@pytest.mark.slow               # imports torch and the neural renderer (~15 s on a busy machine)
def test_the_device_setting_reaches_the_neural_renderer(tmp_path):
    with pytest.raises(BackendUnavailable) as cpu:            # cpu: no CUDA check, the weights are missing
        Engines.create(Settings(renderer="flashhead-lite", device="cpu", weights_dir=tmp_path))
    assert cpu.value.field == "weights_dir", cpu.value
    with pytest.raises(BackendUnavailable) as gpu:            # on any machine: no GPU, or not 99 of them
        Engines.create(Settings(renderer="flashhead-lite", device="cuda:99", weights_dir=tmp_path))
    assert gpu.value.field == "device" and "cuda:99" in gpu.value.message, gpu.value


def test_a_bad_device_is_refused_naming_the_setting():
    with pytest.raises(ValidationError, match="device"):
        Settings(device="gpu0")
    for command in ("serve", "worker"):
        r = subprocess.run([sys.executable, "-m", "flashhead", command, "--device", "gpu0"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "argument --device: must be cpu, cuda or cuda:N" in r.stderr and "'gpu0'" in r.stderr


@pytest.mark.slow               # two servers whose engine loads torch and fails
@pytest.mark.parametrize("device, says", [("cuda:99", "device cuda:99"), ("cpu", "weights")])
def test_serve_device_reaches_the_engines_renderer(tmp_path, device, says):
    server = Server(tmp_path / "data", make_tls(tmp_path / "tls"), env={"FLASHHEAD_RENDERER": "flashhead-lite"},
                    args=["--device", device, "--weights-dir", str(tmp_path)])
    with pytest.raises(RuntimeError, match="server start-up failed") as failed:
        server.start()
    health = str(failed.value).split("\n", 1)[0]
    assert "render engine exited" in health and says in health, health
    assert ("CUDA" in health) == (device != "cpu"), health
