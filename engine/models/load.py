"""The one model loader: a tokenizer, and a base model loaded for what it is for.

    train     as the run's method needs: `full` in fp32 (master weights; the Trainer autocasts),
              `lora` in the run's 16-bit precision, `qlora` in 4 bit (bitsandbytes NF4/FP4)
    evaluate  (and chat) as the run was trained: the same precision and quantisation, so an adapter
              is measured on the base it learned on, a QLoRA one on its 4-bit base
    export    fp32 and never quantised, whatever the run: merged weights are exact
    serve     an export as a server holds it: the run's 16-bit precision (fp32 on a CPU), never 4-bit
              quantised, even after a QLoRA run (the chat with a merged or GGUF export)

A GGUF file is dequantised by transformers as it loads; the quantizer marker it leaves behind is
dropped here, once. Heavy: torch and transformers at import, so only engine subprocesses import it.

    python -m engine.models.load --gguf FILE --out DIR

converts a GGUF file to a safetensors model directory (the demo's cached model) for a caller that
must not import torch itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.data.template import FALLBACK_CHAT_TEMPLATE
from engine.models.find import ModelRef

PURPOSES = ("train", "evaluate", "export", "serve")
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str) -> str:
    """A run's `precision` on this machine: `auto` is bf16 on a GPU that has it, fp16 on other GPUs,
    fp32 on a CPU."""
    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    """The model's tokenizer, with a chat template and a pad token even where the model has none."""
    tokenizer = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file, trust_remote_code=trust_remote_code,
                                              local_files_only=True)
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: ModelRef, purpose: str, cfg=None, device: torch.device | None = None):
    """The model at `ref` loaded for `purpose` (see the module doc). `cfg` is the run's RunConfig (method,
    precision, 4-bit settings, trust_remote_code): train and evaluate need it; export without one loads a
    model no run trained (the demo's GGUF). For evaluate the model is on `device`, in eval mode; for train
    only a 4-bit model is placed (bitsandbytes quantises on its device), the Trainer moves the rest."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    device = device or torch.device("cpu")
    kwargs = _precision(purpose, cfg, device)
    model = AutoModelForCausalLM.from_pretrained(
        ref.path, gguf_file=ref.gguf_file, local_files_only=True,
        trust_remote_code=bool(cfg is not None and cfg.trust_remote_code), **kwargs)
    if ref.gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # Dequantised on load, but still marked as a GGUF-quantised model: transformers would refuse to
        # save it (the demo's conversion, export) and the Trainer to train it.
        model.hf_quantizer.remove_quantization_config(model)
    if purpose in ("evaluate", "serve"):
        if "device_map" not in kwargs:
            model = model.to(device)
        model.eval()
    return model


def _precision(purpose: str, cfg, device: torch.device) -> dict:
    """from_pretrained's dtype and quantisation for a purpose: the one table of how a model is held."""
    if purpose == "export":
        return {"dtype": torch.float32}
    half = HALF_DTYPES.get(resolve_precision(cfg.precision), torch.float32)
    if purpose == "serve":
        return {"dtype": half}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        compute = half if cfg.bnb_4bit_compute_dtype == "auto" else getattr(torch, cfg.bnb_4bit_compute_dtype)
        # FSDP shards tensors of one dtype: training under fsdp stores the packed 4-bit weights as the compute
        # dtype, as the published FSDP+QLoRA recipes do (uint8, the default, would not shard with the rest).
        storage = compute if purpose == "train" and cfg.fsdp else torch.uint8
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                                          bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
                                          bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=storage)
        return {"quantization_config": quantization, "dtype": compute,
                "device_map": {"": (device.index or 0) if device.type == "cuda" else "cpu"}}  # index None: GPU 0
    if cfg.method == "full" and purpose == "train":
        return {"dtype": torch.float32}  # fp32 master weights; the Trainer autocasts to bf16/fp16
    return {"dtype": half}  # a frozen (LoRA: peft keeps the adapters in fp32) or evaluated base in 16 bit on GPUs


def convert_gguf(gguf: Path, out: Path) -> Path:
    """A GGUF file as a safetensors model directory with its tokenizer: seconds to load afterwards."""
    ref = ModelRef(str(gguf.parent), gguf.name)
    load_model(ref, "export").save_pretrained(out)
    load_tokenizer(ref).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models.load")
    parser.add_argument("--gguf", required=True, type=Path, help="the GGUF file to convert")
    parser.add_argument("--out", required=True, type=Path, help="the model directory to write")
    args = parser.parse_args(argv)
    print(convert_gguf(args.gguf, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
