"""The run plumbing is enough for a second objective without copying any of it: a test-only recipe (raw
text, a loss over every token written by hand in its own Trainer subclass) driven by the real worker
in a real run directory keeps the protocol: events, status, command acks, atomic checkpoints, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch.nn.functional as F
from engine_runs import dump, events, kill, log_steps, wait_for
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from engine.runs.protocol import COMPLETE_MARKER
from engine.training.checkpoints import AtomicCheckpoints
from engine.training.recipes.base import Recipe

ROOT = Path(__file__).resolve().parents[1]


class EveryTokenTrainer(AtomicCheckpoints, Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        targets = inputs["input_ids"][:, 1:].masked_fill(inputs["attention_mask"][:, 1:] == 0, -100)
        loss = F.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        return (loss, outputs) if return_outputs else loss


class RawTextRecipe(Recipe):
    """Each line of the data file as plain text, every token trained on."""

    def load_data(self):
        lines = Path(self.cfg.data).read_text().splitlines()
        encoded = self.tokenizer(lines, truncation=True, max_length=self.cfg.max_seq_length)
        features = [{"input_ids": ids} for ids in encoded["input_ids"]]
        self.plumbing.event("state", state="data_ready", examples=len(features))
        return features[16:], features[:16]

    def build_trainer(self, args, callbacks):
        return EveryTokenTrainer(
            model=self.model, args=TrainingArguments(**args, remove_unused_columns=False),
            train_dataset=self.train_dataset, eval_dataset=self.eval_dataset,
            data_collator=DataCollatorForLanguageModeling(self.tokenizer, mlm=False),
            processing_class=self.tokenizer, callbacks=callbacks, checkpoints=self.checkpoints)


DRIVER = ("import sys; sys.path.insert(0, 'tests'); from test_plumbing import RawTextRecipe; "
          "from engine.training.worker import main; sys.exit(main(sys.argv[1:], recipe_class=RawTextRecipe))")


def test_a_second_recipe_keeps_the_run_protocol(write_config, workspace):
    from engine.runs.launch import create_from_config
    from engine.training.config import load_config

    run = create_from_config(load_config(write_config(max_steps=5000, eval_steps=5, save_steps=10000)), workspace)
    with open(run.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, "--run-dir", str(run.path)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: any(e["type"] == "eval" for e in events(run)), what="an evaluation")
        run.send_command("checkpoint")
        wait_for(lambda: any(e["type"] == "checkpoint" for e in events(run)), what="a checkpoint on command")
        kill(proc, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, dump(run)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    evs = events(run)
    states = [e["state"] for e in evs if e["type"] == "state"]
    assert states[:4] == ["starting", "model_loaded", "data_ready", "running"] and states[-1] == "stopped", states
    assert "batching" not in states  # SFT's own event: this is not SFT
    assert next(e for e in evs if e.get("state") == "data_ready")["examples"] == 200
    assert [e["command"] for e in evs if e["type"] == "command_ack"] == ["checkpoint"]
    assert log_steps(run)[:3] == [1, 2, 3] and all(e["loss"] > 0 for e in evs if e["type"] == "log")
    status = run.status()
    assert status["state"] == "stopped" and status["method"] == "lora" and status["tokens_seen"] > 0, dump(run)
    assert status["best_step"] % 5 == 0 and status["best_metric"] <= status["eval_loss"]  # eval every 5 steps
    complete = [(step, path) for step, path, ok in run.checkpoints() if ok]
    assert len(complete) == 2 and complete[-1][0] == status["step"]  # on command, then at the stop
    assert status["last_checkpoint"] == str(complete[-1][1])
    for _, path in complete:
        assert json.loads((path / COMPLETE_MARKER).read_text())["step"] == int(path.name.split("-")[1])
        assert (path / "optimizer.pt").is_file()
    assert not (run.path / ".staging").exists()
    assert (run.path / "adapter" / "adapter_config.json").is_file()
