"""Finding models on local disk only."""

from __future__ import annotations

import pytest

from engine.models import ModelError, resolve_model


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


def test_repo_id_in_local_hf_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--someorg--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someorg--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("someorg/tiny").path == str(snapshot)
