"""`tunedeck join|slurm`: a run on several machines (engine.runs.nodes)."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.runs.workspace import resolve_run
from engine.training.config import load_config
from tui.cli.common import CliError, exit_code, print_json
from tui.cli.runs import follow


def cmd_join(args) -> int:
    from engine.runs.nodes import join

    run = resolve_run(args.run, args.workspace)
    proc = join(run, args.node_rank, detach=args.detach)
    log = run.path / f"engine-node{args.node_rank}.log"
    if args.detach:
        if args.json:
            print_json({"run_id": run.id, "run_dir": str(run.path), "node_rank": args.node_rank, "pid": proc.pid,
                        "log": str(log)})
        else:
            print(f"node {args.node_rank} joined {run.id} (torchrun pid {proc.pid}, log {log})\n"
                  f"  follow it: tunedeck attach {run.id}\n  stop it:   tunedeck stop {run.id}")
        return 0
    out = sys.stderr if args.json else sys.stdout
    print(f"node {args.node_rank} joined {run.id} ({run.path}); log {log}", file=out)
    status = follow(run, proc, out=out)
    if args.json:
        print_json({"run_id": run.id, "run_dir": str(run.path), "node_rank": args.node_rank, **status})
    return exit_code(status) if proc.returncode == 0 else 1


def cmd_slurm(args) -> int:
    from engine.runs.launch import create_from_config
    from engine.runs.nodes import slurm_script

    cfg = load_config(args.config)
    if cfg.nnodes == 1:
        raise CliError(f"{args.config} has nnodes: 1; set nnodes (and network_interface) for a Slurm job on "
                       "several nodes, or run `tunedeck train` on one machine")
    run = create_from_config(cfg, args.workspace, argv=sys.argv[1:])
    script = slurm_script(run)
    out = args.out or run.path / "slurm.sbatch"
    out.write_text(script)
    out.chmod(0o700)
    if args.json:
        print_json({"run_id": run.id, "run_dir": str(run.path), "script": str(out)})
    else:
        print(f"wrote {out} for run {run.id}\n  submit it: sbatch {out}\n  follow it: tunedeck attach {run.id}")
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("join", parents=[common],
                       help="join a run on several machines from another node (node 0 started it)")
    p.add_argument("run", help="run id or run directory, on storage all nodes see")
    p.add_argument("--node-rank", type=int, required=True, help="this node's rank, 1 to nnodes - 1")
    p.add_argument("--detach", action="store_true", help="start in the background and return at once")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("slurm", parents=[common], help="create a run and write an sbatch script that trains it")
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, help="the script's path (default: slurm.sbatch in the run directory)")
    p.set_defaults(func=cmd_slurm)
