"""The fault suite: faults injected into real processes and real files, each run many
times with the outcome counted (issue 7).

A fault is a function `trial(rng, tmp, env) -> Outcome`: it injects one fault drawn
from `rng` into real tunedeck code (a real engine subprocess, a real app process,
real files) and checks what must survive. `survived` means every check held;
`lost` counts durable things that were gone afterwards (a complete checkpoint, an
acknowledged event, a committed verdict): the suite's promise is zero.

    python scripts/fault_suite.py            # every fault, full trial counts, the table
    tests/test_faults.py                     # every fault, a few fixed-seed trials, in CI
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Outcome:
    survived: bool
    lost: int = 0
    detail: str = ""  # why it did not survive, or what the trial hit


@dataclass
class Fault:
    name: str
    trial: Callable[[random.Random, Path, "Env"], Outcome]
    trials: int  # in the full suite
    ci_trials: int  # in tests/test_faults.py


FAULTS: list[Fault] = []


def fault(name: str, trials: int, ci_trials: int = 1):
    """Register a trial function under a row name of the table."""
    def register(fn):
        FAULTS.append(Fault(name, fn, trials, ci_trials))
        return fn
    return register


@dataclass
class Env:
    """What trials share: a tiny real model and training data, built once."""

    root: Path
    _cache: dict = field(default_factory=dict)

    @property
    def project(self) -> Path:
        """A directory with tiny-model/ and train.jsonl."""
        if "project" not in self._cache:
            from engine.testing import build_tiny_model, learnable_rows, write_jsonl

            project = self.root / "project"
            if not (project / "train.jsonl").exists():
                build_tiny_model(project / "tiny-model")
                write_jsonl(project / "train.jsonl", learnable_rows(200))
            self._cache["project"] = project
        return self._cache["project"]

    def cached(self, key: str, build: Callable[[], object]):
        """Something expensive built once per suite (a reference run, a crashed run to copy)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def run_trial(f: Fault, seed: int, index: int, env: Env) -> Outcome:
    rng = random.Random(f"{seed}/{f.name}/{index}")
    tmp = Path(tempfile.mkdtemp(prefix="fault-", dir=env.root))
    try:
        return f.trial(rng, tmp, env)
    except Exception as exc:  # noqa: BLE001 - a crash of the check is a failed trial, with its reason
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return Outcome(False, detail=f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_all() -> list[Fault]:
    """Import every fault module (registration happens on import)."""
    from faults import app_faults, engine_faults, input_faults  # noqa: F401

    return FAULTS


def run_suite(faults: list[Fault], seed: int, env: Env, trials: int | None = None, report=print) -> list[dict]:
    rows = []
    for f in faults:
        n = trials if trials is not None else f.trials
        started = time.time()
        outcomes = [run_trial(f, seed, i, env) for i in range(n)]
        row = {"fault": f.name, "trials": n, "survived": sum(o.survived for o in outcomes),
               "lost": sum(o.lost for o in outcomes), "seconds": round(time.time() - started, 1),
               "failures": [o.detail for o in outcomes if not o.survived],
               "notes": [f"{n}x {d}" for d, n in Counter(o.detail for o in outcomes if o.survived and o.detail)
                         .most_common()]}
        rows.append(row)
        report(format_row(row))
    return rows


HEADER = f"{'fault':<48} {'trials':>6} {'survived':>8} {'lost':>5} {'time':>7}"


def format_row(row: dict) -> str:
    return f"{row['fault']:<48} {row['trials']:>6} {row['survived']:>8} {row['lost']:>5} {row['seconds']:>6.0f}s"
