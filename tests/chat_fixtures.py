"""A real run to chat with (conftest's `chat_run` fixture trains one per test module) on the tiny model: 10
steps, a checkpoint at 5, under a fixed id so that snapshots are stable; its system prompt is the one the chat
must use."""

from __future__ import annotations

import json

import yaml
from conftest import CONTRACT_CONFIG
from engine_runs import dump, start, wait_final

from engine.runs.protocol import Run

CHAT_RUN_ID = "20260301-090000-chat-0001"
SYSTEM_PROMPT = "Join the two words with a hyphen."


def train_chat_run(tiny_project, workspace) -> Run:
    cfg = {**CONTRACT_CONFIG, "model": str(tiny_project / "tiny-model"), "data": str(tiny_project / "train.jsonl"),
           "max_steps": 10, "save_steps": 5, "eval_steps": 10, "system_prompt": SYSTEM_PROMPT}
    path = workspace / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run, proc = start(path, workspace)
    assert wait_final(run, proc)["state"] == "completed", dump(run)
    fixed = run.path.with_name(CHAT_RUN_ID)
    run.path.rename(fixed)
    run = Run(fixed)
    info = run.info()
    info["run_id"] = run.id
    run.run_json_path.write_text(json.dumps(info))
    return run
