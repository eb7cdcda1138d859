"""`tunedeck train|runs|status|stop|resume|attach`: start runs, list them, follow and steer them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine.runs.events import EventReader
from engine.runs.protocol import FINAL_STATES, Run, status_ranks
from engine.runs.workspace import list_runs, resolve_run
from engine.training.config import load_config
from tui.cli.common import CliError, duration, exit_code, fmt, print_json
from tui.follow import RANK_HEADER, fmt_gib, rank_row


def run_summary(run: Run) -> dict:
    status, cfg = run.status(), run.config()
    return {"run_id": run.id, "run_dir": str(run.path), "state": status.get("state"),
            "model": cfg.get("model"), "method": cfg.get("method"), "step": status.get("step"),
            "max_steps": status.get("max_steps"), "loss": status.get("loss"),
            "eval_loss": status.get("eval_loss"), "heartbeat": status.get("heartbeat"),
            "created": run.info().get("created")}


def describe_event(event: dict) -> str | None:
    """One human line for an event worth a line of its own (not per-step logs)."""
    kind, step = event.get("type"), event.get("step")
    at = f"step {step}: " if step is not None else ""
    if kind == "eval":
        return f"{at}eval loss {fmt(event.get('eval_loss'))}"
    if kind == "checkpoint":
        return f"{at}checkpoint saved {event.get('path')}"
    if kind == "sample" and isinstance(event.get("samples"), list):  # a line per held-out prompt
        quoted = lambda text: json.dumps(str(text), ensure_ascii=False)[:100]  # newlines stay on the line
        return "\n".join(f"{at}answer {i}: {quoted(s.get('answer', ''))} (reference {quoted(s.get('reference', ''))})"
                         for i, s in enumerate(event["samples"], 1) if isinstance(s, dict)) or None
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
    ranks = status_ranks(status)
    # several ranks: the memory each holds, in rank order (`tunedeck status` lists them in full)
    per_rank = f"  mem/rank {' '.join(fmt_gib(e.get('memory_used')) for e in ranks)} GiB" if len(ranks) > 1 else ""
    return (f"step {step}/{total or '?'}{pct}  loss {fmt(status.get('loss'))}  "
            f"eval {fmt(status.get('eval_loss'))}  lr {fmt(status.get('learning_rate'), '.2e')}  "
            f"{fmt(status.get('tokens_per_second'), '.0f')} tok/s  ETA {duration(status.get('eta_seconds'))}"
            f"{per_rank}  [{status.get('state')}]")


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


def cmd_train(args) -> int:
    from engine.runs.launch import create_from_config, spawn

    cfg = load_config(args.config)
    if cfg.nnodes > 1:
        from engine.runs.launch import interface_address

        interface_address(cfg.network_interface)  # this node has it, before a run is made
    if cfg.method != "full" and cfg.lora_target_modules != "all-linear":
        from engine.models.facts import model_facts

        # Named targets the model lacks: one line listing its own modules, and no run is made.
        model_facts(cfg.model, cfg.lora_target_modules, cfg.lora_dropout, cfg.trust_remote_code)
    run = create_from_config(cfg, args.workspace, argv=sys.argv[1:])
    if args.detach:
        spawn(run, detach=True)
        if args.json:
            print_json({"run_id": run.id, "run_dir": str(run.path)})
        else:
            print(f"started {run.id}\n  follow it: tunedeck attach {run.id}\n  stop it:   tunedeck stop {run.id}")
        print_join_hint(run, args.json)
        return 0
    print_join_hint(run, args.json)
    return _foreground(run, resume=False, as_json=args.json)


def print_join_hint(run: Run, as_json: bool) -> None:
    """On several machines node 0 waits for the others: say what to run on them (to stderr under --json)."""
    from engine.runs.nodes import JOIN_TIMEOUT_SECONDS

    nnodes = int(run.config().get("nnodes") or 1)
    if nnodes > 1:
        rank, which = ("1", "node 1") if nnodes == 2 else ("N", f"each node N from 1 to {nnodes - 1}")
        print(f"  waiting for {which}, within {JOIN_TIMEOUT_SECONDS // 60} minutes: "
              f"tunedeck join {run.path} --node-rank {rank} --detach", file=sys.stderr if as_json else sys.stdout)


def _foreground(run: Run, resume: bool, as_json: bool) -> int:
    status = train_in_foreground(run, resume, as_json)
    if as_json:
        print_json({"run_id": run.id, "run_dir": str(run.path), **status})
    return exit_code(status)


def train_in_foreground(run: Run, resume: bool, as_json: bool) -> dict:
    """Start the engine attached to this terminal and follow it; progress goes to stderr under --json."""
    from engine.runs.launch import spawn

    proc = spawn(run, resume=resume, detach=False)
    out = sys.stderr if as_json else sys.stdout
    print(f"run {run.id} ({run.path}); Ctrl-C stops after a checkpoint", file=out)
    status = follow(run, proc, out=out)
    if status.get("state") == "failed":
        print(f"run failed: {status.get('error')}\n  log: {run.log_path}", file=sys.stderr)
    return status


def cmd_runs(args) -> int:
    rows = [run_summary(r) for r in list_runs(args.workspace)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {args.workspace / 'runs'}; start one with `tunedeck train CONFIG` or `tunedeck demo`")
        return 0
    print(f"{'RUN':<40} {'STATE':<10} {'METHOD':<6} {'STEP':>11} {'LOSS':>8}")
    for r in rows:
        steps = f"{r['step'] or 0}/{r['max_steps'] or '?'}"
        print(f"{r['run_id'][:40]:<40} {str(r['state']):<10} {str(r['method']):<6} {steps:>11} {fmt(r['loss']):>8}")
    return 0


def cmd_status(args) -> int:
    run = resolve_run(args.run, args.workspace)
    status = run.status()
    if args.json:
        print_json(status)
    else:
        print(progress_line(status))
        ranks = status_ranks(status)
        if len(ranks) > 1:
            print(f"  {RANK_HEADER}  (at step {status.get('ranks_step', '?')})")
            for entry in ranks:
                print(f"  {rank_row(entry)}")
        for w in status.get("warnings") or []:
            print(f"  warning: {w}")
        if status.get("error"):
            print(f"  error: {status['error']}")
        if status.get("state") in ("crashed", "failed"):
            print("  engine.log tail:\n    " + "\n    ".join(run.log_tail(10)))
            errors = [e for e in EventReader(run.events_path).read_new() if e.get("type") == "error"]
            if errors and errors[-1].get("log_tail"):  # a rank lost on another node: that node's log
                print("  its node's log tail:\n    " + "\n    ".join(map(str, errors[-1]["log_tail"][-10:])))
    return 0


def cmd_stop(args) -> int:
    run = resolve_run(args.run, args.workspace)
    state = run.status().get("state")
    if state in FINAL_STATES:
        raise CliError(f"run {run.id} is not running (state: {state})")
    from engine.runs.nodes import stop_waiting

    if stop_waiting(run):
        if args.json:
            print_json({"run_id": run.id, "state": "stopped"})
        else:
            print(f"stopped {run.id} while node 0 waited for the other nodes (nothing had trained)")
        return 0
    cmd_id = run.send_command("stop_now" if args.now else "stop")
    if args.json:
        print_json({"run_id": run.id, "command": "stop_now" if args.now else "stop", "id": cmd_id})
    else:
        print(f"sent {'stop_now' if args.now else 'stop'} to {run.id}; "
              f"{'it exits at once' if args.now else 'it saves a checkpoint, then exits'}")
    return 0


def cmd_resume(args) -> int:
    from engine.runs.launch import resume_detached

    run = resolve_run(args.run, args.workspace)
    checkpoint, skipped = run.resume_checkpoint()
    if args.detach:
        resume_detached(run)
        if args.json:
            print_json({"run_id": run.id, "run_dir": str(run.path), "checkpoint": str(checkpoint) if checkpoint else None,
                         "skipped": skipped})
        else:
            print(f"resuming {run.id} from {checkpoint.name if checkpoint else 'step 0'}")
        print_join_hint(run, args.json)
        return 0
    for reason in skipped:
        print(f"skipping {reason}")
    print_join_hint(run, args.json)
    return _foreground(run, resume=True, as_json=args.json)


def cmd_attach(args) -> int:
    run = resolve_run(args.run, args.workspace)
    if args.plain or not sys.stdout.isatty():
        return exit_code(follow(run))
    from tui.app import run_app

    run_app(args.workspace, attach=str(run.path))
    return 0


def add_parsers(sub, common) -> None:
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
