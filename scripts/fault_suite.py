"""The fault suite: every fault of tests/faults, many trials each, and the table.

    python scripts/fault_suite.py [--seed 0] [--trials N] [--only TEXT] [--json]

Prints one row per fault (fault, trials, survived, lost, time) and why any trial did
not survive. Exit 1 when one did not. A small fixed-seed part runs in CI as
tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models; keeps engines from fighting over cores

from faults import HEADER, Env, load_all, run_suite  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, help="trials per fault (default: each fault's own count)")
    parser.add_argument("--only", help="run the faults whose name contains this text")
    parser.add_argument("--json", action="store_true", help="the rows as JSON at the end")
    args = parser.parse_args()
    faults = [f for f in load_all() if not args.only or args.only.lower() in f.name.lower()]
    started = time.time()
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="tunedeck-faults-") as root:
        rows = run_suite(faults, args.seed, Env(Path(root)), args.trials)
    total = sum(r["trials"] for r in rows)
    survived = sum(r["survived"] for r in rows)
    print(f"\n{survived} of {total} trials survived, {sum(r['lost'] for r in rows)} things lost, "
          f"in {(time.time() - started) / 60:.1f} min (seed {args.seed})")
    for row in rows:
        for failure in row["failures"]:
            print(f"  FAILED {row['fault']}: {failure}")
        for note in row["notes"]:
            print(f"  note   {row['fault']}: {note}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if survived == total else 1


if __name__ == "__main__":
    sys.exit(main())
