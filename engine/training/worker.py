"""The engine process: `python -m engine.training.worker --run-dir DIR [--resume]`.

Started detached by engine.runs.launch (new session, stdio to engine.log), or under
torchrun for several GPUs. Exit codes: 0 completed or stopped, 1 failed, 2 the
run could not be started (bad config, locked by another engine).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
import traceback
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network, even for a typo'd repo id
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.core.files import PRIVATE_UMASK, lock_exclusive, name_holder, write_atomic  # noqa: E402
from engine.runs.events import EventWriter  # noqa: E402
from engine.runs.protocol import Run, RunError  # noqa: E402
from engine.training.config import ConfigError, parse_config  # noqa: E402
from engine.training.notify import NOTIFY_FAILED, Notifier  # noqa: E402
from engine.training.signals import SIGNALS, StopNow  # noqa: E402

OOM_ADVICE = ("out of memory: try per_device_train_batch_size 1 with gradient_accumulation_steps, "
              "gradient_checkpointing: true, method: qlora, or a shorter max_seq_length")


def acquire_lock(run: Run):
    """An exclusive lock held for the engine's life: a second engine on the same run refuses."""
    f, holder = lock_exclusive(run.lock_path)
    if f is None:
        raise RunError(f"run {run.id} is already being trained by {holder}; "
                       f"stop it first with `tunedeck stop {run.id}`")
    name_holder(f, f"pid {os.getpid()}")
    return f


def number_ranks_by_node(node_rank: int) -> None:
    """torchrun's c10d rendezvous numbers the nodes in the order of their addresses, not by --node-rank; the
    ranks follow the node rank each node was started with instead, so node 0 (`tunedeck train`) holds rank 0,
    the run's one writer, and node N's ranks are N * nproc_per_node + local rank. The process group is
    tunedeck's own (engine.training.distributed), so the numbering is ours to choose."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    os.environ["RANK"] = str(node_rank * local_world + int(os.environ.get("LOCAL_RANK", "0")))
    os.environ["GROUP_RANK"] = str(node_rank)


def die_with_agent() -> None:
    """A worker outlives a torchrun agent killed outright (torch sets no parent-death signal), and would train on
    while no one can stop that node; it dies with it instead, so its peers fail the run at once, naming the node."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(message, what to do) for an exception that ended training."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}", OOM_ADVICE
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"disk full: {exc}", "free disk space, then `tunedeck resume` from the last complete checkpoint"
    refused = refused_pickle(exc)
    if refused is not None:
        return refused
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}", "see engine.log for the traceback"


# What gloo and NCCL say when the rank at the other end of a collective is gone.
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited", "DistNetworkError")
REPORT_WAIT_SECONDS = 10  # the other node's torchrun writes its failure report once it sees its worker gone


def lost_rank(exc: BaseException, run: Run) -> tuple[str, str, list[str]] | None:
    """(message, what to do, that node's log tail) when a collective lost its peer: a rank died (killed, out of
    memory, its machine gone). On several machines the node whose torchrun reports a failed worker in its
    engine-nodeN.log is named, with the tail of that log."""
    text = f"{type(exc).__name__}: {exc}"
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or not any(s in text for s in LOST_PEER):
        return None
    advice = f"see its log, fix what ended it, then `tunedeck resume {run.id}` from the last complete checkpoint"
    nnodes = int(run.config().get("nnodes") or 1)
    deadline = time.time() + (REPORT_WAIT_SECONDS if nnodes > 1 else 0)
    while True:
        for node in range(1, nnodes):
            log = run.path / f"engine-node{node}.log"
            tail = failed_worker_report(log)
            if tail:
                code = next((line.split(":", 1)[1].strip() for line in tail if line.strip().startswith("exitcode")),
                            "see its log")
                return f"node {node} lost a rank (exit code {code}); its log: {log}", advice, tail
            if agent_gone(run, node):
                return (f"node {node}'s torchrun is gone (killed, or its machine lost) and its ranks with it; its "
                        f"log: {log}", advice, log_tail(log))
        if time.time() >= deadline:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            where = "the engine-nodeN.log files of the other nodes" if nnodes > 1 else "engine.log"
            return f"another rank is gone ({first[:200]})", f"see {where}; {advice}", []
        time.sleep(0.5)


def agent_gone(run: Run, node: int) -> bool:
    """Node `node`'s torchrun has exited: the lock its join took (engine.runs.nodes.hold_node) is free again."""
    from engine.runs.launch import DDP_DIR

    try:
        with open(run.path / DDP_DIR / "nodes" / f"node-{node}.lock", "r") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, OSError):
        return False  # held, or never taken (a Slurm node holds none)
    return True


def log_tail(log: Path) -> list[str]:
    """The last lines of a node's log since its latest launch."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.rsplit("\n=== ", 1)[-1].splitlines() if line.strip()][-20:]


def failed_worker_report(log: Path) -> list[str]:
    """The last lines of torchrun's report of a failed worker in a node's log, since its latest launch."""
    tail = log_tail(log)
    return tail if any("Root Cause" in line for line in tail) else []


def refused_pickle(exc: BaseException) -> tuple[str, str] | None:
    """torch.load(weights_only=True) met a pickled object that is not a tensor (a planted or foreign
    checkpoint): say which file and which object, not torch's advice to load it without weights_only."""
    import pickle
    import re

    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    path, tb = None, exc.__traceback__
    while tb is not None:  # the file is torch.load's argument, in its frame
        code = tb.tb_frame.f_code
        if code.co_name == "load" and code.co_filename.endswith(os.path.join("torch", "serialization.py")):
            f = tb.tb_frame.f_locals.get("f")
            path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
        tb = tb.tb_next
    return (f"refused to unpickle {path or 'a checkpoint or weights file'}: it holds Python objects"
            f"{f' ({found.group(1)})' if found else ''}, not only tensors, and loading it could run code",
            "tunedeck loads .bin/.pt/.pth files with weights_only: resume from an earlier checkpoint "
            "(delete this one), or use safetensors weights from a source you trust")


def recipe_for(objective: str):
    """The Recipe subclass that trains an objective (imports torch and the trainer: seconds)."""
    if objective == "sft":
        from engine.training.recipes.sft import SFTRecipe

        return SFTRecipe
    from engine.training.recipes.preference import PreferenceRecipe

    return PreferenceRecipe


def main(argv: list[str] | None = None, recipe_class=None) -> int:
    """`recipe_class`: the Recipe subclass to drive; the config's objective's unless given (a test drives its own)."""
    SIGNALS.arm()  # first; spawn starts us with stop signals blocked until now, so none is lost
    os.umask(PRIVATE_UMASK)  # all the Trainer, peft and TensorBoard write under the run is owner-only
    parser = argparse.ArgumentParser(prog="python -m engine.training.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--node-rank", type=int, help="this node's rank in a run on several machines")
    args = parser.parse_args(argv)
    if args.node_rank is not None:
        number_ranks_by_node(args.node_rank)
        die_with_agent()
    run = Run(args.run_dir.resolve())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        lock = acquire_lock(run) if rank0 else None
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)  # the running engine's files are left alone
        return 2
    try:
        cfg = parse_config(run.config(), base_dir=run.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if rank0:
            write_atomic(run.status_path, json.dumps({**run.status(), "state": "failed", "pid": os.getpid(),
                                                      "heartbeat": time.time(), "error": f"config: {exc}"}))
        return 2
    try:  # seconds of torch import
        from engine.training.plumbing import RunPlumbing

        if recipe_class is None:
            recipe_class = recipe_for(cfg.objective)
    except StopNow:
        return _stopped_before_start(run, rank0, cfg.notify_command)
    if SIGNALS.count:
        return _stopped_before_start(run, rank0, cfg.notify_command)

    plumbing = RunPlumbing(run, resume=args.resume, notify_command=cfg.notify_command,
                           method=cfg.method, model=cfg.model, max_steps=None, step=0)
    recipe = recipe_class(cfg, plumbing)
    code = 0
    try:
        recipe.setup()
        recipe.train()
    except StopNow as exc:
        plumbing.set_state("stopped", step=_step(recipe), reason=f"{exc}: stopped at once, no checkpoint")
    except BaseException as exc:  # noqa: BLE001 - everything ends as a recorded failure
        traceback.print_exc()
        message, advice = describe_failure(exc)
        lost = lost_rank(exc, run) if rank0 else None
        if lost is not None:
            message, advice, tail = lost
        plumbing.event("error", step=_step(recipe), message=message, advice=advice,
                       **({"log_tail": tail} if lost is not None else {}))
        plumbing.set_state("failed", step=_step(recipe), error=f"{message}; {advice}")
        code = 1
    finally:
        recipe.cleanup()
        plumbing.close()
        if lock is not None:
            lock.close()
    if rank0 and plumbing.board.fields.get("state") == "stopped":
        release_agents(run)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, interpreter teardown can hit a joinable C++ thread in the distributed
        # backend and abort a rank after a clean finish; everything is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def release_agents(run: Run) -> None:
    """After a stop on several machines: torchrun's agents, once their workers have left, wait up to 300 s (its
    exit barrier, not settable from its command line) for every other agent, and one stopped by a signal never
    comes. A file where their store's directory was makes each open of the store fail at once (a missing one
    they retry until that timeout), so they stop waiting; the next launch makes a fresh directory."""
    from engine.runs.launch import rendezvous_dir

    if int(run.config().get("nnodes") or 1) == 1:
        return
    store_dir = rendezvous_dir(run.path)
    ended = store_dir.with_name(store_dir.name + ".ended")
    try:
        os.replace(store_dir, ended)
        store_dir.write_text("this launch has ended\n")
    except OSError:
        return  # released already, or never made
    shutil.rmtree(ended, ignore_errors=True)


def _stopped_before_start(run: Run, rank0: bool, notify_command: str | None) -> int:
    """A stop signal arrived while the engine started: nothing trained, nothing to save."""
    if rank0:
        reason = "stop signal before training started"
        write_atomic(run.status_path, json.dumps({**run.status(), "state": "stopped", "pid": os.getpid(),
                                                  "heartbeat": time.time(), "reason": reason}))
        notifier = Notifier(notify_command, run.id, run.path, partial(_record_warning, run, NOTIFY_FAILED))
        notifier.ending("stopped", reason, None)
        notifier.wait()
    return 0


def _record_warning(run: Run, code: str, message: str) -> None:
    """A warning event from outside the plumbing (which this engine never built)."""
    events = EventWriter(run.events_path)
    events.write("warning", code=code, message=message)
    events.close()


def _step(recipe) -> int | None:
    return recipe.trainer.state.global_step if recipe.trainer is not None else None


if __name__ == "__main__":
    sys.exit(main())
