"""How fast tunedeck opens, and how attaching scales with the length of a run.

    python benchmarks/bench_app.py [--repeat 5] [--events 10000 1000000]

1. Time to first frame, tunedeck's GPU screen next to a minimal Textual app, each in a fresh
   interpreter (imports included), headless at 80x24, median of --repeat runs. Target: within 2x.
2. Attach to runs of N events: time until the monitor's first frame (status.json and log tail),
   time until the whole history is replayed into the curves, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIRST_FRAME = """
import time
def first_frame(app):
    print("FIRST_FRAME", time.time(), flush=True)
    app.exit()
"""

MINIMAL = FIRST_FRAME + """
from textual.app import App
from textual.widgets import Static
class Minimal(App):
    def compose(self):
        yield Static("hello")
    def on_mount(self):
        self.call_after_refresh(first_frame, self)
Minimal().run(headless=True, size=(80, 24))
"""

TUNEDECK = FIRST_FRAME + """
from pathlib import Path
from tui.app import TunedeckApp
class FirstFrame(TunedeckApp):
    async def on_mount(self):
        await super().on_mount()
        self.call_after_refresh(first_frame, self)
FirstFrame(Path({ws!r})).run(headless=True, size=(80, 24))
"""

ATTACH = """
import asyncio, json, resource, sys, time
from pathlib import Path
from tui.app import TunedeckApp
from tui.screens.monitor import MonitorScreen

async def main():
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    app = TunedeckApp(Path({ws!r}), attach={run!r}, gpu_sampler=lambda ws: {{"gpus": [], "host": {{}}}})
    async with app.run_test(size=(80, 24)) as pilot:
        while not (isinstance(app.screen, MonitorScreen) and app.screen.view is not None):
            await asyncio.sleep(0.001)
        drawn = []
        app.screen.call_after_refresh(lambda: drawn.append(time.perf_counter()))  # the monitor's first frame
        while not drawn:
            await asyncio.sleep(0.001)
        first = drawn[0] - t0
        while app.screen.view.replaying or app.screen.view.events == 0:
            await pilot.pause(0.01)
        full = time.perf_counter() - t0
        points = sum(len(v) for v in app.screen.view.series.values())
        events = app.screen.view.events
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"first_frame_s": first, "replayed_s": full, "events": events, "points": points,
                      "rss_before_mib": rss0 / 1024, "peak_rss_mib": rss / 1024}}))
asyncio.run(main())
"""


def timed(code: str) -> float:
    """Seconds from starting the interpreter to the app's first frame (process exit not counted)."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("FIRST_FRAME"))
    return float(line.split()[1]) - t0


def write_run(ws: Path, n: int) -> str:
    """A run with n events written the way EventWriter writes them (directly, for speed)."""
    from engine.core.files import write_atomic
    from engine.runs.workspace import create_run

    run = create_run(ws, {"model": "tiny", "method": "lora"}, name=f"bench-{n}")
    with open(run.events_path, "w", encoding="utf-8") as f:
        for i in range(1, n + 1):
            if i % 500 == 0:
                event = {"seq": i, "ts": 1.7e9 + i, "type": "eval", "step": i, "eval_loss": 1.0 + 1 / math.sqrt(i)}
            elif i % 10007 == 0:
                event = {"seq": i, "ts": 1.7e9 + i, "type": "warning", "step": i, "code": "grad_spike",
                         "message": "grad norm spike"}
            else:
                event = {"seq": i, "ts": 1.7e9 + i, "type": "log", "step": i, "loss": 2.5 * math.exp(-i / (n / 4)),
                         "learning_rate": 2e-4, "grad_norm": 1.0 + (i % 13) / 10, "epoch": i / n,
                         "tokens_per_second": 1234.5, "tokens_seen": i * 512, "cuda_memory_gb": 12.5}
            f.write(json.dumps(event) + "\n")
    write_atomic(run.status_path, json.dumps({"state": "completed", "step": n, "max_steps": n, "loss": 0.2}))
    run.log_path.write_text("done\n")
    return run.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, nargs="*", default=[10_000, 1_000_000])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        timed(MINIMAL)  # warm the file cache for both
        timed(TUNEDECK.format(ws=str(ws)))
        minimal = [timed(MINIMAL) for _ in range(args.repeat)]
        tunedeck = [timed(TUNEDECK.format(ws=str(ws))) for _ in range(args.repeat)]
        m, t = statistics.median(minimal), statistics.median(tunedeck)
        print(f"time to first frame (median of {args.repeat}, fresh interpreter, 80x24 headless)")
        print(f"  minimal Textual app  {m * 1000:7.0f} ms")
        print(f"  tunedeck GPU screen  {t * 1000:7.0f} ms   ({t / m:.2f}x; target <= 2x)")
        print()
        print("attach to a run (fresh interpreter each)")
        print(f"  {'events':>9}  {'file':>8}  {'first frame':>11}  {'all replayed':>12}  {'points kept':>11}  "
              f"{'peak RSS':>9}")
        for n in args.events:
            run_id = write_run(ws, n)
            size = (ws / "runs" / run_id / "events.jsonl").stat().st_size
            out = subprocess.run([sys.executable, "-c", ATTACH.format(ws=str(ws), run=run_id)], cwd=ROOT,
                                 check=True, capture_output=True, text=True, timeout=600)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {r['events']:>9,}  {size / 2**20:6.1f}MB  {r['first_frame_s'] * 1000:9.0f}ms  "
                  f"{r['replayed_s']:11.2f}s  {r['points']:>11}  {r['peak_rss_mib']:7.0f}MiB")


if __name__ == "__main__":
    main()
