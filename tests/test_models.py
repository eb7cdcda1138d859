"""Finding models on local disk only."""

from __future__ import annotations

import os

import pytest

from engine.models.find import ModelError, resolve_model


def test_directory_and_gguf(tiny_project, tmp_path):
    assert resolve_model(str(tiny_project / "tiny-model")).gguf_file is None
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    ref = resolve_model(str(gguf))
    assert ref.path == str(tmp_path) and ref.gguf_file == "m.Q4.gguf"
    assert resolve_model(str(tmp_path)).gguf_file == "m.Q4.gguf"  # a directory holding one GGUF file


def test_missing_and_uncached_models_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="never downloads"):
        resolve_model("someorg/some-model")
    with pytest.raises(ModelError, match="not found"):
        resolve_model("no-such-thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def fake_hf_cache(hub, repo_id: str):
    """The Hugging Face cache layout for one repo: snapshots/<hash>/config.json and refs/main."""
    root = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc123")
    return snapshot


def test_repo_id_in_local_hf_cache(tmp_path, monkeypatch):
    snapshot = fake_hf_cache(tmp_path / "hub", "someorg/tiny")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("someorg/tiny").path == str(snapshot)


def test_find_models_lists_directories_gguf_and_cache(tiny_project, tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    fake_hf_cache(tmp_path / "hub", "org/cached")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-m", "tui.cli", "models", str(tiny_project), "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    specs = {(m["kind"], m["spec"]) for m in json.loads(out.stdout)}
    assert ("directory", str(tiny_project / "tiny-model")) in specs
    assert ("hf-cache", "org/cached") in specs
    gguf = subprocess.run([sys.executable, "-m", "tui.cli", "models", str(tmp_path), "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert ("gguf", str(tmp_path / "m.gguf")) in {(m["kind"], m["spec"]) for m in json.loads(gguf.stdout)}
