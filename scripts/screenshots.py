"""Make the README's screenshots from the real app: the GPU screen of this machine and the monitor
attached to a real training run of a tiny model (trained here, on the CPU, in about a minute).

    python scripts/screenshots.py [--out screenshots] [--workspace WS --run RUN_ID] [--only data,eval,plan]

With --run, the monitor shot is of that existing run instead. The Eval shot shows a fixture
report in the shape engine.evaluation.run writes (tests/eval_fixtures.py). --only takes some of
gpu, plan, data, data-pairs (a preference pair under review), monitor, eval, diagnosis (a real tiny run
planted to overfit), compare, chat (a real tiny run trained to join two words, asked to join two more),
pairs (that run's two sampled answers to a prompt, judged blind for a preference file). SVGs come from Textual's own
screenshot; PNGs are made from them when `rsvg-convert` (Debian: librsvg2-bin) is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = (80, 24)  # what users have in tmux over SSH


def tiny_run(tmp: Path, workspace: Path, name: str, config: dict, finished: bool):
    """A real engine run of the tiny random Llama under tmp/ (built once) with `config`, detached; waited for
    to its end when `finished`."""
    import yaml

    from engine.runs.launch import start_detached
    from engine.runs.protocol import FINAL_STATES
    from engine.testing import build_tiny_model

    if not (tmp / "tiny-model").is_dir():
        build_tiny_model(tmp / "tiny-model")
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "model": str(tmp / "tiny-model"), **config}))
    run = start_detached(path, workspace)
    while finished and run.status().get("state") not in FINAL_STATES:
        time.sleep(1)
    return run


def start_tiny_run(tmp: Path, workspace: Path):
    """Long enough to be caught mid-run."""
    from engine.testing import learnable_rows, write_jsonl

    config = {"data": str(write_jsonl(tmp / "train.jsonl", learnable_rows(400))), "method": "lora",
              "max_steps": 400, "save_steps": 100, "eval_steps": 10, "logging_steps": 1,
              "learning_rate": 2e-3, "per_device_train_batch_size": 4, "max_seq_length": 128}
    return tiny_run(tmp, workspace, "tiny", config, finished=False)


async def shoot(app, name: str, out: Path, ready, timeout: float = 120.0, prepare=None) -> Path:
    """The screen once `ready(app)` holds; `prepare(pilot)`, when given, presses the keys that lead there."""
    async with app.run_test(size=SIZE) as pilot:
        if prepare is not None:
            await prepare(pilot)
        deadline = time.time() + timeout
        while not ready(app):
            if time.time() > deadline:
                raise SystemExit(f"{name}: the screen never became ready")
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        app.clear_notifications()
        await pilot.pause()
        return Path(app.save_screenshot(filename=f"{name}.svg", path=str(out)))


def overfit_run(tmp: Path, workspace: Path):
    """Planted to overfit (as in tests/test_diagnosis.py): twelve answers that do not follow from their
    prompts, a separate eval file, full fine-tuning at a constant rate."""
    from engine.testing import unlearnable_rows, write_jsonl

    config = {"method": "full", "data": str(write_jsonl(tmp / "overfit-train.jsonl", unlearnable_rows(12, 1))),
              "eval_data": str(write_jsonl(tmp / "overfit-eval.jsonl", unlearnable_rows(12, 2))), "max_steps": 80,
              "eval_steps": 10, "save_steps": 1000, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
              "warmup_steps": 0, "early_stopping_patience": None, "max_seq_length": 64}
    return tiny_run(tmp, workspace, "overfit", config, finished=True)


def dpo_run(tmp: Path, workspace: Path):
    """A finished DPO run on pairs the tiny model learns (engine.testing.learnable_pairs)."""
    from engine.testing import learnable_pairs, write_jsonl

    config = {"objective": "dpo", "method": "lora", "data": str(write_jsonl(tmp / "pairs.jsonl", learnable_pairs(160))),
              "max_steps": 40, "eval_steps": 10, "save_steps": 1000, "logging_steps": 1, "learning_rate": 5e-3,
              "per_device_train_batch_size": 4, "max_seq_length": 64}
    return tiny_run(tmp, workspace, "dpo", config, finished=True)


def eval_workspace(workspace: Path) -> Path:
    """A workspace with one evaluated run: the fixture report with a reference model's column, 5 of its pairs
    judged blind and its one tuned failure given an error category."""
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_fixtures import make_report, write_report
    from tui_fixtures import make_run

    from engine.evaluation.ab import ABStore, pairs_from_report
    from engine.evaluation.errors import ErrorStore

    report = make_report(reference=True)
    report["baseline"].update(loss=1.9, perplexity=6.7, shots=3)
    run = make_run(workspace, run_id="20260105-101500-people-3f2a", state="completed", steps=10, max_steps=10)
    write_report(run, report)
    with ABStore(run.path / "eval" / "ab.sqlite", pairs_from_report(report), seed="screenshot") as store:
        for pair, outcome in zip(store.pairs(), ("win", "win", "tie", "win", "loss")):
            other = "B" if pair.tuned_side == "A" else "A"
            store.judge(pair.id, {"win": pair.tuned_side, "loss": other, "tie": "tie"}[outcome])
    with ErrorStore(run.path / "eval" / "errors.sqlite") as errors:
        errors.set("line-7", "factual")  # the tuned answer put Sofia in Lisbon
    return workspace


def compare_workspace(workspace: Path) -> Path:
    """Two finished runs that differ in method and learning rate, the first evaluated, and a third one."""
    sys.path.insert(0, str(ROOT / "tests"))
    from eval_fixtures import write_report
    from tui_fixtures import make_run

    a = make_run(workspace, run_id="20260105-101500-people-3f2a", state="completed", steps=60, max_steps=60,
                 warnings=False)
    write_report(a)
    b = make_run(workspace, run_id="20260105-141000-people-9c1e", state="completed", steps=60, max_steps=60,
                 warnings=False, decay=12)
    b.config_path.write_text(a.config_path.read_text() + "learning_rate: 0.0003\n")
    make_run(workspace, run_id="20260105-170000-people-b210", state="completed", steps=20, max_steps=20)
    return workspace


def joining_run(tmp: Path, workspace: Path):
    """A LoRA run that learnt to join two words with a hyphen."""
    from engine.testing import learnable_rows, write_jsonl

    config = {"method": "lora", "data": str(write_jsonl(tmp / "join-train.jsonl", learnable_rows(400))),
              "max_steps": 150, "save_steps": 1000, "eval_steps": 1000, "learning_rate": 3e-3,
              "per_device_train_batch_size": 8, "max_seq_length": 64,
              "system_prompt": "Join the two words with a hyphen."}
    return tiny_run(tmp, workspace, "join", config, finished=True)


async def ask_to_join(pilot) -> None:
    """On the Chat screen: once the models are loaded, ask for two words joined, 12 new tokens at most."""
    screen = pilot.app.screen
    while screen.state != "ready":
        await pilot.pause(0.1)
    screen.settings["max_new_tokens"] = 12
    await pilot.press(*"join moon and fish", "enter")


PREFERENCE_PAIRS = [  # TRL's layout, conversational and plain
    {"prompt": [{"role": "user", "content": "Summarise: the meeting moved from Tuesday to Thursday at 10."}],
     "chosen": [{"role": "assistant", "content": "The meeting is now on Thursday at 10."}],
     "rejected": [{"role": "assistant", "content": "There was a meeting on Tuesday, and meetings are important "
                                                   "for teams because they help people share what they know."}]},
    {"prompt": "Convert 3 km to metres.", "chosen": "3000 m", "rejected": "300 m"},
]


def sampled_pairs(tmp: Path, workspace: Path) -> Path:
    """The joining run's two sampled answers to a few prompts, as `tunedeck pairs` makes them: the pairs folder.
    Temperature 0.1: beyond its first choice the tiny model's distribution is nearly flat (junk bytes)."""
    from engine.evaluation.pairs import pairs_folder
    from tui.cli.common import engine_subprocess

    run = joining_run(tmp, workspace)
    prompts = tmp / "join-prompts.txt"  # a text file: one prompt a line
    prompts.write_text("join moon and fish\njoin red and hat\njoin sun and cup\n")
    folder = pairs_folder(run.path, prompts, 2, 0.1, 0)
    engine_subprocess("engine.evaluation.sample_pairs", "--run-dir", str(run.path), "--prompts", str(prompts),
                      "--folder", str(folder), "--temperature", "0.1", "--max-new-tokens", "12")
    return folder


async def diagnose_attached(pilot) -> None:
    """On the monitor of the attached run: d."""
    from tui.screens.monitor import MonitorScreen

    while not isinstance(pilot.app.screen, MonitorScreen):
        await pilot.pause(0.1)
    await pilot.press("d")


async def mark_two_and_compare(pilot) -> None:
    """In the Runs list: past the newest run, mark the next two (space), compare them (c)."""
    while not pilot.app.screen.rows:
        await pilot.pause(0.1)
    await pilot.press("j", "space", "space", "c")


def to_png(svg: Path) -> Path | None:
    if not shutil.which("rsvg-convert"):
        return None
    png = svg.with_suffix(".png")
    subprocess.run(["rsvg-convert", "--zoom", "1.5", "-o", str(png), str(svg)], check=True)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--run", help="an existing run to show instead of training a tiny one")
    parser.add_argument("--only", default="gpu,plan,data,data-pairs,monitor,monitor-dpo,eval,diagnosis,compare,chat,pairs",
                        help="comma-separated shots to take")
    args = parser.parse_args()
    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)

    from engine.demo import write_demo_data
    from tui.app import TunedeckApp
    from tui.screens.chat import ChatScreen
    from tui.screens.compare import CompareScreen
    from tui.screens.data import DataScreen
    from tui.screens.diagnosis import DiagnosisScreen
    from tui.screens.eval import EvalScreen
    from tui.screens.gpu import GpuScreen
    from tui.screens.monitor import MonitorScreen
    from tui.screens.pair_review import PairReviewScreen
    from tui.screens.plan import PlanScreen

    made = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workspace = args.workspace or tmp / "ws"
        workspace.mkdir(parents=True, exist_ok=True)
        if "gpu" in only:
            made.append(asyncio.run(shoot(TunedeckApp(workspace), "gpu", args.out,
                                          lambda app: isinstance(app.screen, GpuScreen) and app.screen.samples >= 3)))
        if "plan" in only:
            made.append(asyncio.run(shoot(TunedeckApp(workspace, mode="plan"), "plan", args.out,
                                          lambda app: isinstance(app.screen, PlanScreen) and app.screen.result)))
        if "data" in only:
            train = write_demo_data(tmp / "demo")["train"]  # the bundled demo data, planted defects and all
            made.append(asyncio.run(shoot(TunedeckApp(workspace, mode="data", data=str(train)), "data", args.out,
                                          lambda app: isinstance(app.screen, DataScreen) and app.screen.session
                                          and not app.screen.loading)))
        if "data-pairs" in only:
            from engine.testing import write_jsonl

            pairs = write_jsonl(tmp / "preferences.jsonl", PREFERENCE_PAIRS)
            made.append(asyncio.run(shoot(TunedeckApp(workspace, mode="data", data=str(pairs)), "data-pairs", args.out,
                                          lambda app: isinstance(app.screen, DataScreen) and app.screen.session
                                          and not app.screen.loading)))
        if "eval" in only:
            # A workspace given (e.g. the demo's, ~/tunedeck) shows its real evaluation; else a fixture report.
            eval_ws = args.workspace if args.workspace else eval_workspace(tmp / "eval-ws")
            made.append(asyncio.run(shoot(TunedeckApp(eval_ws, mode="eval"), "eval", args.out,
                                          lambda app: isinstance(app.screen, EvalScreen) and app.screen.report)))
        if "diagnosis" in only:
            run = overfit_run(tmp, workspace)
            made.append(asyncio.run(shoot(TunedeckApp(workspace, attach=run.id), "diagnosis", args.out,
                                          lambda app: isinstance(app.screen, DiagnosisScreen) and app.screen.result,
                                          prepare=diagnose_attached)))
        if "monitor-dpo" in only:
            run = dpo_run(tmp, tmp / "dpo-ws")
            made.append(asyncio.run(shoot(TunedeckApp(tmp / "dpo-ws", attach=run.id), "monitor-dpo", args.out,
                                          lambda app: isinstance(app.screen, MonitorScreen) and app.screen.view
                                          and not app.screen.view.replaying)))
        if "compare" in only:
            made.append(asyncio.run(shoot(TunedeckApp(compare_workspace(tmp / "compare-ws"), mode="runs"), "compare",
                                          args.out, lambda app: isinstance(app.screen, CompareScreen)
                                          and app.screen.comparison, prepare=mark_two_and_compare)))
        if "chat" in only:
            chat_ws = tmp / "chat-ws"
            joining_run(tmp, chat_ws)
            made.append(asyncio.run(shoot(TunedeckApp(chat_ws, mode="chat"), "chat", args.out,
                                          lambda app: isinstance(app.screen, ChatScreen) and app.screen.speed["base"],
                                          timeout=300, prepare=ask_to_join)))
        if "pairs" in only:
            folder = sampled_pairs(tmp, tmp / "pairs-ws")
            made.append(asyncio.run(shoot(TunedeckApp(tmp / "pairs-ws", mode="eval", judge_pairs=folder), "pairs",
                                          args.out, lambda app: isinstance(app.screen, PairReviewScreen)
                                          and app.screen.store is not None)))
        if "monitor" in only:
            run_id, run = args.run, None
            if run_id is None:
                run = start_tiny_run(tmp, workspace)
                run_id = run.id

            def mid_run(app) -> bool:
                screen = app.screen
                return (isinstance(screen, MonitorScreen) and screen.view is not None
                        and not screen.view.replaying and (args.run is not None or (
                            screen.view.status.get("state") == "running" and len(screen.view.series["eval_loss"]) >= 2)))

            try:
                made.append(asyncio.run(shoot(TunedeckApp(workspace, attach=run_id), "monitor", args.out, mid_run,
                                              timeout=300)))
            finally:
                if run is not None:
                    run.send_command("stop_now")
                    deadline = time.time() + 30
                    while run.status().get("state") not in {"stopped", "completed", "failed", "crashed"}:
                        if time.time() > deadline:
                            break
                        time.sleep(0.5)
    for svg in made:
        png = to_png(svg)
        print(svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg,
              f"and {png.name}" if png else "(install librsvg2-bin for PNG)")


if __name__ == "__main__":
    main()
