"""The memory estimate against published measured peaks, parameter counts against the meta-device count,
and how long the first (uncached) facts of a model take.

    python benchmarks/bench_memory.py [--skip-timing]

Each published row is a peak `torch.cuda.max_memory_allocated` someone measured and wrote down with its
configuration: LitGPT's resource tables (A100 40GB, bf16-true, LoRA r=8 on query and value, dropout
0.05, AdamW, no activation checkpointing, microbatch of the longest Alpaca example), PEFT's method
comparison on MetaMathQA (L40S, bf16 weights, AdamW, sequence 768, batch 4) and the QLoRA paper (base
weights loaded in 4 bit). The estimate gets the same settings; the error is estimated / measured - 1.
Not a test: figures are printed, BENCHMARKS.md keeps what we measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # model_configs: published config.json contents

import model_configs  # noqa: E402

from engine.models.facts import facts_from_config  # noqa: E402
from engine.plan.memory import Assumptions, estimate  # noqa: E402

LITGPT = "LitGPT resource tables (A100, 2023-10)"
PEFT = "PEFT method comparison (L40S, 2025-06)"
QLORA = "QLoRA paper (LLaMA-7B loaded in 4 bit)"
# LitGPT trained on Alpaca with microbatches of whole examples: the peak comes at the longest one.
LONGEST = {"PHI_15": 1044, "STABLELM_ALPHA_3B": 1034, "LLAMA_7B": 1304, "LLAMA_2_13B": 1304}
QV = {"PHI_15": ["q_proj", "v_proj"], "STABLELM_ALPHA_3B": ["query_key_value"], "LLAMA_7B": ["q_proj", "v_proj"],
      "LLAMA_2_13B": ["q_proj", "v_proj"]}

# LitGPT computes Phi's GELU as one fused op (F.gelu, approximate="tanh"); transformers' gelu_new is written
# out in Python, and autograd keeps each intermediate of the 8192-wide MLP. The comparison estimates the
# computation that was measured; the Phi rows are printed again as transformers (and tunedeck) runs them.
AS_MEASURED = {"PHI_15": {"hidden_act": "gelu_pytorch_tanh"}}

# (model, method, batch, quantization, published peak in GB of 1e9 bytes)
LITGPT_ROWS = [
    ("PHI_15", "lora", 1, None, 4.82), ("PHI_15", "qlora", 1, "nf4", 3.78), ("PHI_15", "qlora", 1, "nf4-dq", 3.72),
    ("PHI_15", "lora", 2, None, 6.76), ("PHI_15", "lora", 4, None, 10.68),
    ("STABLELM_ALPHA_3B", "lora", 1, None, 9.69), ("STABLELM_ALPHA_3B", "qlora", 1, "nf4", 6.35),
    ("STABLELM_ALPHA_3B", "qlora", 1, "nf4-dq", 6.19), ("STABLELM_ALPHA_3B", "lora", 2, None, 12.10),
    ("STABLELM_ALPHA_3B", "lora", 4, None, 16.92),
    ("LLAMA_7B", "lora", 1, None, 21.30), ("LLAMA_7B", "qlora", 1, "nf4", 14.14),
    ("LLAMA_7B", "qlora", 1, "nf4-dq", 13.84), ("LLAMA_7B", "lora", 2, None, 29.07),
    ("LLAMA_2_13B", "lora", 1, None, 38.12), ("LLAMA_2_13B", "qlora", 1, "nf4", 23.14),
    ("LLAMA_2_13B", "qlora", 1, "nf4-dq", 22.55),
]


def rows():
    """(source, model, label, Assumptions, method, measured bytes, what is compared)."""
    for model, method, batch, quant, gb in LITGPT_ROWS:
        a = Assumptions(seq_len=LONGEST[model], batch_size=batch, lora_r=8, lora_targets=QV[model],
                        lora_dropout=0.05, gradient_checkpointing=False, double_quant=quant == "nf4-dq")
        yield LITGPT, model, f"{method} {quant or ''} mb{batch}".replace("  ", " "), a, method, gb * 1e9, "peak"
    peft = Assumptions(seq_len=768, batch_size=4, full_master_fp32=False, gradient_checkpointing=False)
    yield PEFT, "LLAMA_32_3B", "full bf16", peft, "full", 38.9e9, "peak"
    yield (PEFT, "LLAMA_32_3B", "lora r32 q,v", Assumptions(seq_len=768, batch_size=4, lora_r=32, lora_dropout=0.0,
           lora_targets=["q_proj", "v_proj"], gradient_checkpointing=False), "lora", 22_273_851_392, "peak")
    yield QLORA, "LLAMA_7B", "4-bit weights loaded", Assumptions(), "qlora", 5048e6, "weights"


def compare() -> None:
    print(f"{'source':<40} {'model':<18} {'row':<22} {'measured':>9} {'estimate':>9} {'error':>7}")
    errors: dict[str, list[float]] = {}
    facts, as_run = {}, []
    for source, model, label, a, method, measured, what in rows():
        if model not in facts:
            facts[model] = facts_from_config({**getattr(model_configs, model), **AS_MEASURED.get(model, {})}, model)
        e = estimate(facts[model], method, a)
        value = e.total if what == "peak" else e.parts["weights"] + e.overhead["cuda_context"]
        error = value / measured - 1
        errors.setdefault(facts[model].architecture, []).append(error)
        print(f"{source:<40} {model:<18} {label:<22} {measured / 1e9:>8.2f}G {value / 1e9:>8.2f}G {error:>+7.1%}")
        if model in AS_MEASURED:
            as_run.append((model, label, a, method, measured))
    print("\nas transformers computes them (gelu_new written out):")
    for model, label, a, method, measured in as_run:
        value = estimate(facts_from_config(getattr(model_configs, model), model), method, a).total
        print(f"{'':<40} {model:<18} {label:<22} {measured / 1e9:>8.2f}G {value / 1e9:>8.2f}G "
              f"{value / measured - 1:>+7.1%}")
    every = [abs(e) for family in errors.values() for e in family]
    for family, values in errors.items():
        print(f"  {family:<10} {len(values):>2} rows: mean |error| {statistics.fmean(map(abs, values)):.1%}, "
              f"worst {max(values, key=abs):+.1%}")
    print(f"all {len(every)} rows as measured, {len(errors)} families: mean |error| {statistics.fmean(every):.1%}, "
          f"worst {max(every):.1%}")


def counts() -> None:
    print(f"\n{'config':<20} {'architecture':<13} {'meta-device count':>18} {'published':>16} {'difference':>10}")
    for name, published in model_configs.PUBLISHED_PARAMETERS.items():
        f = facts_from_config(getattr(model_configs, name), name)
        print(f"{name:<20} {f.architecture:<13} {f.parameters:>18,} {published:>16,} "
              f"{f.parameters / published - 1:>+10.3%}")


def timing() -> None:
    """The first facts of a config never seen (a fresh cache) against the same facts from the cache."""
    before = os.environ.get("TUNEDECK_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TUNEDECK_CACHE"] = cache
        print()
        for name in ("LLAMA_3_70B", "MIXTRAL_8X7B", "QWEN3_30B_A3B"):
            t0 = time.perf_counter()
            facts_from_config(getattr(model_configs, name), name)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            facts_from_config(getattr(model_configs, name), name)
            cached = time.perf_counter() - t0
            print(f"{name:<14} first facts {first:6.1f} s (meta build, peft, quantizer, activation probe), "
                  f"cached {cached * 1000:6.1f} ms: {first / cached:,.0f}x")
    if before is not None:
        os.environ["TUNEDECK_CACHE"] = before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    compare()
    counts()
    if not args.skip_timing:
        timing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
