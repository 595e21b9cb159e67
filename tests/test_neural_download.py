"""`flashhead weights download` against a loopback server speaking the Hub HTTP API that
huggingface_hub calls: repo info, the recursive tree listing, HEAD/GET (with Range) on resolve URLs.
The served repositories hold tiny files laid out like the real ones."""
from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from flashhead.render.neural.download import FLASHHEAD_REPO, WAV2VEC2_REPO, download, plan

SHA = "0123456789abcdef0123456789abcdef01234567"

from lazy_imports import lazy_import

torch = lazy_import("torch")
weights_mod = lazy_import("flashhead.render.neural.weights")
dit = lazy_import("flashhead.render.neural.dit")


def _save(module_save, name: str) -> dict[str, bytes]:
    """Files a save_pretrained-style callable writes, as {relative path: bytes}."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        module_save(tmp)
        return {f"{name}/{p.name}": p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def _flashhead_files() -> dict[str, bytes]:
    from flashhead.render.neural.vae import diffusers_key_to_wan, tiny_ltx_vae, tiny_wan_vae
    torch.manual_seed(0)
    files = {"README.md": b"# SoulX-FlashHead-1_3B\n", "assets/logo.png": b"\x89PNG..."}
    for variant, folder in (("lite", "Model_Lite"), ("pro", "Model_Pro")):
        files |= _save(dit.FlashHeadDiT(**dit.tiny_config(variant)).save_pretrained, folder)
    files |= _save(tiny_ltx_vae().model.save_pretrained, "VAE_LTX")
    buf = io.BytesIO()
    torch.save({diffusers_key_to_wan(k, num_res_blocks=1): v for k, v in tiny_wan_vae().model.state_dict().items()},
               buf)
    files["VAE_Wan/Wan2.1_VAE.pth"] = buf.getvalue()
    return files


def _wav2vec2_files() -> dict[str, bytes]:
    from transformers import Wav2Vec2Model

    from flashhead.render.neural.audio import tiny_wav2vec2_config
    files = _save(Wav2Vec2Model(tiny_wav2vec2_config()).save_pretrained, "x")
    files = {k[2:]: v for k, v in files.items()}
    return files | {"preprocessor_config.json": b"{}", "pytorch_model.bin": b"unused", "tf_model.h5": b"unused"}


class Hub:
    """Repos {repo_id: {path: bytes}}; records every request; can drop one body half-way."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests, self.drop_once = repos, [], set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of one file's resolve URL (None: whole file)."""
        return [rng for method, p, rng in self.requests if method == "GET" and p.endswith("/resolve/main/" + path)
                or method == "GET" and p.endswith(f"/resolve/{SHA}/" + path)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, head: bool) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append(("HEAD" if head else "GET", path, self.headers.get("Range")))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
                if m and m.group(1) in hub.repos:
                    files = hub.repos[m.group(1)]
                    if m.group(2) == "revision":
                        return self._json({"id": m.group(1), "sha": SHA, "private": False,
                                           "siblings": [{"rfilename": p} for p in files]})
                    return self._json([{"type": "file", "path": p, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for p, b in files.items()])
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m and m.group(1) in hub.repos and m.group(3) in hub.repos[m.group(1)]:
                    return self._file(hub.repos[m.group(1)][m.group(3)], m.group(3), head)
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _file(self, data: bytes, name: str, head: bool) -> None:
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-\d*", rng).group(1))
                self.send_response(206 if rng else 200)
                self.send_header("X-Repo-Commit", SHA)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if name in hub.drop_once and not rng:
                    hub.drop_once.discard(name)
                    self.wfile.write(data[: len(data) // 2])     # then the connection breaks
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hub():
    server = Hub({FLASHHEAD_REPO: _flashhead_files(), WAV2VEC2_REPO: _wav2vec2_files()})
    yield server
    server.close()


def test_plan_per_variant():
    w2v = ["config.json", "model.safetensors", "pytorch_model.bin"]
    assert plan("lite", w2v)[0].patterns == ["Model_Lite/*", "VAE_LTX/*"]
    assert plan("all", w2v)[0].patterns == ["Model_Lite/*", "VAE_LTX/*", "Model_Pro/*", "VAE_Wan/*"]
    assert plan("pro", w2v)[1].patterns == ["config.json", "preprocessor_config.json", "model.safetensors"]
    assert plan("pro", ["config.json", "pytorch_model.bin"])[1].patterns[-1] == "pytorch_model.bin"
    with pytest.raises(ValueError):
        plan("ultra", w2v)


def test_download_lite_fetches_what_lite_needs_resumes_and_passes_the_check(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)   # tiny files: resume inside one file
    served = hub.repos[FLASHHEAD_REPO]
    hub.drop_once = {"Model_Lite/diffusion_pytorch_model.safetensors"}
    root = download("lite", tmp_path / "w", endpoint=hub.url)
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == ["Model_Lite/config.json", "Model_Lite/diffusion_pytorch_model.safetensors",
                   "VAE_LTX/config.json", "VAE_LTX/diffusion_pytorch_model.safetensors",
                   "wav2vec2-base-960h/config.json", "wav2vec2-base-960h/model.safetensors",
                   "wav2vec2-base-960h/preprocessor_config.json"]
    for rel in got[:4]:
        assert (root / rel).read_bytes() == served[rel]
    dit_file = "Model_Lite/diffusion_pytorch_model.safetensors"
    half = len(served[dit_file]) // 2
    first, resumed = hub.gets(dit_file)                                   # the broken transfer resumed
    start = int(re.fullmatch(r"bytes=(\d+)-", resumed).group(1))
    assert first is None and half - 4096 < start <= half
    assert weights_mod.check_weights(root, "lite", dit_config=dit.tiny_config("lite")).ok
    # a second run downloads nothing again
    before = len(hub.requests)
    download("lite", root, endpoint=hub.url)
    assert not [r for r in hub.requests[before:] if r[0] == "GET" and "/resolve/" in r[1]]


def test_cli_download_checks_and_prints_the_weights_dir(hub, tmp_path, capsys, monkeypatch):
    from flashhead.cli import main
    monkeypatch.setitem(weights_mod.VARIANT_CONFIGS, "lite", dit.tiny_config("lite"))   # served files are tiny
    monkeypatch.setenv("FLASHHEAD_NATIVE_LOGS", "1")
    target = tmp_path / "weights"
    assert main(["weights", "download", "--variant", "lite", "--dir", str(target), "--endpoint", hub.url]) == 0
    out = capsys.readouterr().out
    assert f"flashhead-lite weights in {target}: OK" in out
    assert f"use --weights-dir {target} " in out
    # pro needs the Wan VAE, whose tiny file fails the full-size check: exit 1 and say so
    monkeypatch.setitem(weights_mod.VARIANT_CONFIGS, "pro", dit.tiny_config("pro"))
    assert main(["weights", "download", "--variant", "pro", "--dir", str(target), "--endpoint", hub.url]) == 1
    assert (target / "VAE_Wan/Wan2.1_VAE.pth").read_bytes() == hub.repos[FLASHHEAD_REPO]["VAE_Wan/Wan2.1_VAE.pth"]
    assert "[!!] VAE_Wan/Wan2.1_VAE.pth" in capsys.readouterr().out
