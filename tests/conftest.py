"""Shared fixtures: a tiny real model on disk, a workspace, run configurations (helpers that drive the
engine subprocess are plain functions in engine_runs.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from engine.testing import build_tiny_model, learnable_rows, write_jsonl

CONTRACT_CONFIG = {
    "model": "./tiny-model", "data": "./train.jsonl", "method": "lora", "max_steps": 40,
    "save_steps": 10, "eval_steps": 10, "learning_rate": 1.0e-3,
    "per_device_train_batch_size": 4, "max_seq_length": 128,
}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """The suite never reads or writes the user's ~/.cache/tunedeck (converted models, review stores):
    a test passes or fails the same on a fresh machine and on one where the demo already ran."""
    cache = tmp_path_factory.mktemp("cache")
    before = os.environ.get("TUNEDECK_CACHE")
    os.environ["TUNEDECK_CACHE"] = str(cache)  # subprocesses the tests start inherit it
    yield cache
    if before is None:
        os.environ.pop("TUNEDECK_CACHE", None)
    else:
        os.environ["TUNEDECK_CACHE"] = before


@pytest.fixture(scope="session")
def demo_model(private_cache) -> Path:
    """The demo model converted once (about 20 s), as `tunedeck demo` leaves it, and its facts built once
    (about 10 s, engine.models.anatomy): planning for `demo` then reads them from the cache in milliseconds,
    as it does for a user from the second plan on."""
    from engine.demo import prepare_demo_model
    from engine.models.facts import model_facts

    path = prepare_demo_model()
    model_facts("demo")
    return path


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A directory with tiny-model/ and train.jsonl, as a user would have them."""
    root = tmp_path_factory.mktemp("project")
    build_tiny_model(root / "tiny-model")
    write_jsonl(root / "train.jsonl", learnable_rows(200))
    return root


@pytest.fixture
def snap_ws() -> Path:
    """A workspace at a fixed short path, so paths on screen are the same in every snapshot."""
    path = Path("/tmp/tunedeck-snapshots")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def write_config(tiny_project, tmp_path):
    def write(**overrides) -> Path:
        cfg = {**CONTRACT_CONFIG, **overrides}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        for key in ("model", "data"):
            if str(cfg[key]).startswith("./"):
                cfg[key] = str(tiny_project / cfg[key][2:])
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


@pytest.fixture(scope="module")
def chat_run(tiny_project, tmp_path_factory):
    """A finished LoRA run of the tiny model to chat with, trained once per module (chat_fixtures.py)."""
    from chat_fixtures import train_chat_run

    return train_chat_run(tiny_project, tmp_path_factory.mktemp("chat-ws"))
