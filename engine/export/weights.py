"""Export a run's result: `python -m engine.export.weights --run-dir DIR --out OUT [--merge]`.

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

from engine.core.files import PRIVATE_UMASK, ensure_private_dir  # noqa: E402
from engine.runs.protocol import Run  # noqa: E402


def export(run_dir: Path, out: Path, merge: bool = False) -> Path:
    run = Run(run_dir)
    adapter, full = run.path / "adapter", run.path / "model"
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --out")
    if full.is_dir():
        _copy_private(full, out)  # full fine-tuning: already a model
        return out
    if not adapter.is_dir():
        raise FileNotFoundError(f"{run.path} has no adapter/ or model/: the run has not finished training")
    if not merge:
        _copy_private(adapter, out)
        return out
    from peft import PeftModel

    from engine.models.find import ModelRef, resolve_model
    from engine.models.load import load_model, load_tokenizer
    from engine.training.config import parse_config

    cfg = parse_config(run.config(), base_dir=run.path, check_paths=False)
    base = load_model(resolve_model(cfg.model), "export", cfg)  # fp32 and unquantised, even under a QLoRA adapter
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    ensure_private_dir(out, tighten=False)
    merged.save_pretrained(out)
    load_tokenizer(ModelRef(str(adapter)), cfg.trust_remote_code).save_pretrained(out)
    return out


def _copy_private(src: Path, out: Path) -> None:
    """Copy a model directory readable by its owner only, like the run it comes from: directories
    0700 (new ones, whatever the umask), files 0600 (copytree would copy the source's modes)."""
    for path in [src, *sorted(src.rglob("*"))]:
        target = out / path.relative_to(src)
        if path.is_dir():
            ensure_private_dir(target, tighten=target != out)
        else:
            shutil.copyfile(path, target)
            os.chmod(target, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.export.weights")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--merge", action="store_true")
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)  # the exported weights are as private as the run they come from
    try:
        print(export(args.run_dir, args.out, args.merge))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ValueError: the config or model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
