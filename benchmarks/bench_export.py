"""GGUF export: time and size per quantisation, on the demo model (SmolLM2-135M-Instruct), and the whole
`tunedeck export --gguf` of a short LoRA run (merge, conversion, verification, card).

    python benchmarks/bench_export.py [--skip-export]

The conversion is llama.cpp's own converter (engine.export.gguf); its one-time fetch is timed apart.
q4_k_m is measured only where llama.cpp can quantise (llama-quantize on PATH, or llama-cpp-python). Not a test: figures are printed,
BENCHMARKS.md keeps what we measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine.demo import demo_config, prepare_demo_model, write_demo_data  # noqa: E402
from engine.export.gguf import QUANTS, can_quantize, converter, write_gguf  # noqa: E402


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-export", action="store_true", help="conversion only, no training run")
    args = parser.parse_args()
    model = prepare_demo_model()
    started = time.perf_counter()
    converter()
    print(f"converter ready in {time.perf_counter() - started:.1f} s (a fetch on first use, then cached)")
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    print(f"demo model: {model} ({mib(weights)} safetensors, fp32)\n")
    print("| quantisation | conversion time | GGUF size | of the fp32 weights |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for quant in QUANTS:
            if quant == "q4_k_m" and not can_quantize():
                print("| q4_k_m | - | - | not measured: no llama-quantize on PATH, no llama-cpp-python |")
                continue
            out = Path(tmp) / f"demo-{quant}.gguf"
            started = time.perf_counter()
            write_gguf(model, out, quant)
            seconds = time.perf_counter() - started
            print(f"| {quant} | {seconds:.1f} s | {mib(out.stat().st_size)} | {out.stat().st_size / weights:.2f} |")
            out.unlink()
        if args.skip_export:
            return
        cfg = demo_config(model, write_demo_data(Path(tmp) / "data"), 3)
        cfg.update(eval_steps=1000, save_steps=1000)
        (Path(tmp) / "cfg.yaml").write_text(json.dumps(cfg))
        from engine_runs import start, wait_final

        run, proc = start(Path(tmp) / "cfg.yaml", Path(tmp) / "ws")
        assert wait_final(run, proc, timeout=900)["state"] == "completed"
        print("\n| `tunedeck export` of a 3-step LoRA run | wall time | checked with | next-token agreement "
              "| greedy same |\n| --- | --- | --- | --- | --- |")
        exports = [("adapter", []), ("--merge", ["--merge"]), ("--gguf (f16)", ["--gguf"]),
                   ("--gguf --quant q8_0", ["--gguf", "--quant", "q8_0"])]
        if can_quantize():
            exports.append(("--gguf --quant q4_k_m", ["--gguf", "--quant", "q4_k_m"]))
        for label, extra in exports:
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "tui.cli", "export", str(run.path), "--out",
                                     str(Path(tmp) / label.replace(" ", "_")), *extra, "--json"],
                                    capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - started
            for check in json.loads(result.stdout)["verification"]["checks"]:  # transformers, and llama.cpp
                print(f"| {label} | {seconds:.1f} s | {check['model']} | {check['next_token_agreement']:.1%} of "
                      f"{check['positions']} | {check['greedy_same']}/{check['greedy_total']} |")


if __name__ == "__main__":
    main()
