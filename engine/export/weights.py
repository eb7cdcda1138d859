"""Export a run's result: `python -m engine.export.weights --run-dir DIR --out OUT [--merge | --gguf [--quant Q]]`.

Without --merge the adapter is copied in PEFT format (load it with
`PeftModel.from_pretrained(base, OUT)`); with --merge it is folded into the base
weights and saved as a plain model directory that needs no peft (tokenizer, chat template
and generation config with it: vLLM and TGI serve it as it is); with --gguf the merged model
is written as one GGUF file by llama.cpp's converter (engine.export.gguf) with an Ollama
Modelfile beside it. Every export is verified against the run (engine.export.verify) and
carries a model card (engine.export.card); the last stdout line is the result as JSON.
Heavy: own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.core.files import PRIVATE_UMASK, append_json_line, ensure_private_dir  # noqa: E402
from engine.runs.protocol import Run  # noqa: E402


def export(run_dir: Path, out: Path, merge: bool = False, gguf: str | None = None) -> dict:
    """Write the export at `out` (`gguf`: the quantisation, f16, q8_0 or q4_k_m), verify it, write its card."""
    from engine.export.card import model_card
    from engine.export.verify import verify
    from engine.training.config import parse_config

    run = Run(run_dir)
    adapter, full = run.path / "adapter", run.path / "model"
    if gguf:
        from engine.export.gguf import check_quant

        check_quant(gguf)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new --out")
    if not adapter.is_dir() and not full.is_dir():
        raise FileNotFoundError(f"{run.path} has no adapter/ or model/: the run has not finished training")
    cfg = parse_config(run.config(), base_dir=run.path, check_paths=False)
    result = {"run_id": run.id, "out": str(out)}
    if gguf:
        from engine.export.gguf import modelfile, run_commands, write_gguf
        from engine.models.find import ModelRef
        from engine.models.load import load_tokenizer

        ensure_private_dir(out, tighten=False)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            merged_dir = write_merged(run, cfg, Path(tmp) / "merged") if adapter.is_dir() else full
            path = write_gguf(merged_dir, out / f"{run.id}-{gguf}.gguf", gguf)
            tokenizer = load_tokenizer(ModelRef(str(merged_dir)))
        (out / "Modelfile").write_text(modelfile(path.name, tokenizer, cfg.system_prompt))
        kind, commands = gguf, run_commands(path, ollama_name(run.id))
        files = {path.name: f"the merged model, {gguf}, tokenizer and chat template in its metadata",
                 "Modelfile": "for `ollama create`"}
        result.update(gguf=str(path), modelfile=str(out / "Modelfile"), quant=gguf, bytes=path.stat().st_size)
    elif merge or full.is_dir():
        if adapter.is_dir():
            write_merged(run, cfg, out)
        else:
            _copy_private(full, out)  # full fine-tuning: already a model
        kind, path = "merged", None
        commands = serve_commands(out)
        files = {"config.json, model.safetensors": "the model (fp32)",
                 "tokenizer.json, tokenizer_config.json, chat_template.jinja": "tokenizer and chat template",
                 "generation_config.json": "end-of-sequence tokens for generation"}
    else:
        _copy_private(adapter, out)
        kind, path = "adapter", None
        commands = (f"python -c \"from peft import AutoPeftModelForCausalLM; "
                    f"AutoPeftModelForCausalLM.from_pretrained('{out}')\"")
        files = {"adapter_config.json, adapter_model.safetensors": f"the PEFT adapter for {cfg.model}"}
    verification = verify(run.path, cfg, kind, out, path)
    (out / "verification.json").write_text(json.dumps(verification, indent=1))
    files["verification.json"] = "this export re-run on held-out prompts against the run"
    (out / "README.md").write_text(model_card(run.path, kind, verification, files, commands))
    result.update(kind=kind, verification=verification, card=str(out / "README.md"), commands=commands)
    # the run remembers its exports: the Chat screen offers them (engine.chat.session.run_exports)
    append_json_line(run.path / "exports.jsonl", {"ts": round(time.time(), 3), "kind": kind,
                                                  "path": str((path or out).resolve())})
    return result


def write_merged(run: Run, cfg, out: Path) -> Path:
    """The adapter folded into the fp32 base, saved with what a server needs: tokenizer, chat template
    and a generation config that stops at the tokenizer's end-of-sequence token."""
    from peft import PeftModel

    from engine.models.find import ModelRef, resolve_model
    from engine.models.load import load_model, load_tokenizer

    base = load_model(resolve_model(cfg.model), "export", cfg)  # fp32 and unquantised, even under a QLoRA adapter
    merged = PeftModel.from_pretrained(base, str(run.path / "adapter")).merge_and_unload()
    tokenizer = load_tokenizer(ModelRef(str(run.path / "adapter")), cfg.trust_remote_code)
    generation = merged.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    ensure_private_dir(out, tighten=False)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def serve_commands(model_dir: Path) -> str:
    return "\n".join([
        f"vllm serve {model_dir}        # vLLM: OpenAI-compatible server on port 8000",
        f"docker run --gpus all -p 8080:80 -v {model_dir}:/model ghcr.io/huggingface/text-generation-inference "
        "--model-id /model   # TGI",
    ])


def ollama_name(run_id: str) -> str:
    """Ollama model names are lower case letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id.lower())


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
    parser.add_argument("--gguf", metavar="QUANT", help="write GGUF: f16, q8_0 or q4_k_m")
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)  # the exported weights are as private as the run they come from
    try:
        print(json.dumps(export(args.run_dir, args.out, args.merge, args.gguf)))
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:  # ValueError: the config or model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
