"""Export a run's result: `python -m engine.model_export --run-dir DIR --out OUT [--merge]`.

Without --merge the adapter is copied in PEFT format (load it with
`PeftModel.from_pretrained(base, OUT)`); with --merge it is folded into the base
weights and saved as a plain model directory that needs no peft. Heavy: own process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def export(run_dir: Path, out: Path, merge: bool = False) -> Path:
    from engine.runs import Run

    run = Run(run_dir)
    adapter, full = run.path / "adapter", run.path / "model"
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --out")
    if full.is_dir():
        shutil.copytree(full, out, dirs_exist_ok=True)  # full fine-tuning: already a model
        return out
    if not adapter.is_dir():
        raise FileNotFoundError(f"{run.path} has no adapter/ or model/: the run has not finished training")
    if not merge:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.models import resolve_model

    cfg = run.config()
    ref = resolve_model(cfg["model"])
    base = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=torch.float32,
                                                local_files_only=True,
                                                trust_remote_code=bool(cfg.get("trust_remote_code")))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    if getattr(merged, "hf_quantizer", None) is not None:  # a GGUF base, dequantized on load
        merged.hf_quantizer = None
        merged.config.__dict__.pop("quantization_config", None)
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.model_export")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--merge", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(export(args.run_dir, args.out, args.merge))
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
