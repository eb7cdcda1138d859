"""What a model is made of, read from transformers itself rather than from a formula.

The model is built from its config on the meta device (no weights, no memory): the exact parameter
count (tied weights once), every linear module with its name and shape, experts stored as 3-D
parameters, embeddings, head and vision tower; what bitsandbytes turns into NF4 (the quantizer
transformers uses for QLoRA, applied to the meta model); and the parameters peft trains for the
requested LoRA targets (peft wraps the meta model). A config transformers cannot build as a causal
language model is refused with one line.

Activations are measured, not assumed: a copy of the architecture with every width divided by a
factor (heads, experts and routing kept) runs a forward pass on the CPU while autograd's saved
tensors are counted, at one and two layers, three sequence lengths and two factors. The per-layer,
per-token bytes are then the layer difference, the linear term in the sequence length (memory-
efficient attention keeps nothing quadratic) and the value extrapolated to the real widths.

Heavy: torch, transformers and peft at import. The UI asks for facts through
`engine.models.facts`, which runs

    python -m engine.models.anatomy SOURCE.json --out FACTS.json

and caches the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import transformers
from torch import nn

from engine.models.find import ModelError

# Config keys that are widths; a probe divides them all by one factor. Heads, experts and top-k stay.
WIDTH_KEYS = ("hidden_size", "intermediate_size", "head_dim", "moe_intermediate_size", "ffn_dim",
              "shared_expert_intermediate_size", "ffn_hidden_size", "n_inner", "kv_lora_rank", "q_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "hidden_size_per_head")
PROBE_SEQ = (32, 64, 128)
PROBE_VOCAB = 512  # logits are estimated apart; the layer difference removes embeddings and head
PROBE_RANK = 16


def build_config(source: dict, trust_remote_code: bool = False):
    """A transformers config from a config.json mapping, or ModelError saying why there is none."""
    from transformers import CONFIG_MAPPING

    source = {k: v for k, v in source.items() if not k.startswith("_")}
    model_type = source.get("model_type")
    if model_type not in CONFIG_MAPPING:
        remote = " It ships its own code (auto_map): open its directory with trust_remote_code: true." \
            if "auto_map" in source else ""
        raise ModelError(f"model_type {model_type!r} is unknown to transformers {transformers.__version__}: "
                         f"upgrade transformers or pick a supported causal LM.{remote}")
    config = CONFIG_MAPPING[model_type](**{k: v for k, v in source.items() if k != "model_type"})
    check_causal(config)
    return config


def check_causal(config) -> None:
    """ModelError unless transformers has a decoder-only causal-LM class for this config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = config.model_type
    advice = "tunedeck fine-tunes decoder-only causal language models (Llama, Qwen, Gemma, Phi, Mistral, GPT-2 ...)"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{kind} is an encoder-decoder model: {advice}")
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ModelError(f"{kind} is an encoder (a masked language model): {advice}")
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(f"{kind} has no causal-LM head in transformers {transformers.__version__}: {advice}")


def build_meta(config, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _is_linear(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _shape(module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return tuple(module.weight.shape)  # transformers' Conv1D (GPT-2) stores (in, out)


def structure(model) -> dict:
    """Parameter groups (they add up to the exact count) and the linear modules by name."""
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    seen: set[int] = set()
    groups = {"linear": 0, "experts": 0, "embeddings": 0, "head": 0, "vision": 0, "other": 0}
    linear: dict[str, dict] = {}
    experts: dict[str, dict] = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue  # a tied weight counts once
            seen.add(id(p))
            n = p.numel()
            full = f"{name}.{pname}" if name else pname
            if "vision" in full or "visual" in full:
                groups["vision"] += n
            elif module is head:
                groups["head"] += n
            elif module is embeddings or isinstance(module, nn.Embedding):
                groups["embeddings"] += n
            elif _is_linear(module) and pname == "weight":
                groups["linear"] += n
                d_in, d_out = _shape(module)
                entry = linear.setdefault(name.rsplit(".", 1)[-1], {"d_in": d_in, "d_out": d_out, "count": 0})
                entry["count"] += 1
            elif p.dim() == 3:  # experts stored as one tensor (n_experts, out, in)
                groups["experts"] += n
                entry = experts.setdefault(f"{name.rsplit('.', 1)[-1]}.{pname}", {"shape": list(p.shape), "count": 0})
                entry["count"] += 1
            else:
                groups["other"] += n  # norms, biases, routers, positions
    total = sum(p.numel() for p in model.parameters())
    assert sum(groups.values()) == total, (groups, total)
    return {"parameters": total, "groups": groups, "linear_modules": linear, "expert_parameters": experts,
            "head_module": next((n for n, m in model.named_modules() if m is head), None)}


def quantized_4bit(model) -> dict:
    """What transformers' bitsandbytes quantizer turns into 4-bit layers (as a QLoRA load does)."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(BitsAndBytesConfig(load_in_4bit=True), pre_quantized=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer.preprocess_model(model, device_map={"": "cpu"})
    sizes = [m.weight.numel() for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    return {"parameters": sum(sizes), "largest": max(sizes, default=0)}


def lora_targets_error(model, error: Exception) -> ModelError:
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
    return ModelError(f"LoRA targets not found in this {model.config.model_type} model ({error}); "
                      f"its linear modules are: {', '.join(linear)} (or use all-linear)")


def adapters(model, targets) -> dict:
    """The LoRA modules peft makes for `targets` on `model` (wrapped in place), per unit of rank."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, LoraConfig(r=PROBE_RANK, target_modules=targets, lora_dropout=0.0))
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is a ValueError
        raise lora_targets_error(model, exc) from None
    modules: dict[str, dict] = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            own = sum(p.numel() for n, p in module.named_parameters() if n.startswith("lora_"))
            if not own:
                continue
            key = name.rsplit(".", 1)[-1]
            if getattr(module, "parameter_name", None):  # an expert tensor: nested wrappers, one per tensor
                key = f"{name.removesuffix('.base_layer').rsplit('.', 1)[-1]}.{module.parameter_name}"
            entry = modules.setdefault(key, {"type": type(module).__name__, "d_in": module.in_features,
                                             "per_rank": 0, "count": 0})
            entry["count"] += 1
            entry["per_rank"] += own // PROBE_RANK
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable % PROBE_RANK == 0 and trainable // PROBE_RANK == sum(m["per_rank"] for m in modules.values())
    return {"targets": targets, "per_rank": trainable // PROBE_RANK, "modules": modules,
            "wraps_experts": any(m["type"] == "ParamWrapper" for m in modules.values())}


# ---- activations ----------------------------------------------------------------------------------


def saved_bytes(model, seq: int) -> int:
    """Bytes autograd keeps for backward in one forward pass of `seq` tokens (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, use_cache=False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in storages.items() if k not in params)


def _probe_config(config, layers: int, factor: int):
    probe = config.__class__.from_dict(config.to_dict())
    text = probe.get_text_config()
    for key in WIDTH_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0 and not isinstance(getattr(type(text), key, None), property):
            setattr(text, key, max(2, value // factor))  # (a property is derived from the widths set here)
    text.num_hidden_layers = layers
    for key in ("layer_types", "mlp_only_layers"):  # per-layer lists follow the depth
        value = getattr(text, key, None)
        if isinstance(value, list) and len(value) > layers:
            setattr(text, key, value[:layers])
    if getattr(text, "first_k_dense_replace", 0):
        text.first_k_dense_replace = 0  # measure the MoE layers, the most of the model
    text.vocab_size = PROBE_VOCAB
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if hasattr(text, key):
            setattr(text, key, None)
    # dropout stays as configured: its masks are memory a training step really keeps
    return probe


def _probe_model(config, method: str, targets, dropout: float):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config)
    if method == "full":
        model.float()  # fp32 master weights, bf16 autocast: the engine's full fine-tuning
    else:
        from peft import LoraConfig, get_peft_model

        model = model.to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=PROBE_RANK, target_modules=targets, lora_dropout=dropout))
    model.train()
    return model


def _per_layer(config, factor: int, method: str, targets, dropout: float) -> float:
    slopes = []
    for layers in (1, 2):
        model = _probe_model(_probe_config(config, layers, factor), method, targets, dropout)
        measured = [saved_bytes(model, seq) for seq in PROBE_SEQ]
        # fit c + a*s + b*s^2 and keep a: a memory-efficient attention kernel keeps nothing quadratic
        x = torch.tensor([[1.0, s, s * s] for s in PROBE_SEQ], dtype=torch.float64)
        slopes.append(float(torch.linalg.solve(x, torch.tensor(measured, dtype=torch.float64))[1]))
    return slopes[1] - slopes[0]


def per_layer_per_token(config, method: str, targets="all-linear", dropout: float = 0.0) -> float:
    """Bytes autograd saves per token in one decoder layer at the real widths, with bf16 activations:
    `full` trains every weight (fp32 master, bf16 autocast), `lora` a frozen bf16 base with adapters."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    values = []  # (factor, per layer per token), the smallest probes first
    for factor in [f for f in range(max(1, head_dim // 8), 0, -1) if head_dim % f == 0]:
        try:
            values.append((factor, _per_layer(config, factor, method, targets, dropout)))
        except (RuntimeError, ValueError):  # widths this factor makes inconsistent (partial rotary ...)
            continue
        if len(values) == 2 or factor == 1:
            break
    if not values:
        raise ModelError(f"no shrunk copy of this {text.model_type} runs, so its activations are not measured")
    if len(values) == 1:
        return values[0][1] * values[0][0]
    (f1, p1), (f2, p2) = values
    width = (p1 - p2) / (1 / f1 - 1 / f2)  # p(f) = fixed + width / f: terms that scale, and those that do not
    return max(0.0, p1 - width / f1) + width


def activations(config, targets, dropout: float) -> dict:
    return {"full": per_layer_per_token(config, "full"),
            "lora": per_layer_per_token(config, "lora", targets, dropout)}


# ---- everything at once --------------------------------------------------------------------------


def anatomy(config, targets="all-linear", dropout: float | str = "auto", trust_remote_code: bool = False) -> dict:
    """The facts `engine.models.facts.ModelFacts` holds, as JSON-able values."""
    from engine.training.config import resolve_lora_dropout

    text = config.get_text_config()
    heads = text.num_attention_heads
    facts = {
        "model_type": config.model_type, "layers": text.num_hidden_layers, "hidden": text.hidden_size,
        "heads": heads, "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "head_dim": getattr(text, "head_dim", None) or text.hidden_size // heads, "vocab": text.vocab_size,
        "max_positions": getattr(text, "max_position_embeddings", None),
        "experts": getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None)
        or getattr(text, "n_routed_experts", None),
        "experts_per_token": getattr(text, "num_experts_per_tok", None),
    }
    model = build_meta(config, trust_remote_code)
    facts["architecture"] = type(model).__name__
    facts.update(structure(model))
    facts["tied_embeddings"] = facts["groups"]["head"] == 0 and facts["head_module"] is not None
    facts["quantized_4bit"] = quantized_4bit(build_meta(config, trust_remote_code))
    facts["lora"] = adapters(model, targets)
    facts["lora"]["dropout"] = resolve_lora_dropout(dropout, facts["lora"]["wraps_experts"])
    try:
        facts["activations"] = activations(config, targets, facts["lora"]["dropout"])
    except Exception as exc:  # noqa: BLE001 - an architecture the probe cannot shrink: say so, estimate apart
        facts["activations"] = None
        facts["activations_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return facts


def load_request_config(request: dict):
    """The config a facts request names: a config.json mapping, or a model directory or GGUF file."""
    if "config" in request:
        return build_config(request["config"])
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(request["path"], gguf_file=request.get("gguf_file"), local_files_only=True,
                                            trust_remote_code=request.get("trust_remote_code", False))
    except ValueError as exc:  # unknown model_type, or remote code not trusted
        raise ModelError(f"transformers {transformers.__version__} cannot read this model's config: "
                         f"{str(exc).splitlines()[0]}") from None
    check_causal(config)
    return config


def gguf_stored(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models.anatomy")
    parser.add_argument("request", type=Path, help="a JSON file: config or path (and gguf_file), targets, dropout")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    request = json.loads(args.request.read_text())
    try:
        config = load_request_config(request)
        result = anatomy(config, request["targets"], request["dropout"], request.get("trust_remote_code", False))
        if request.get("gguf_file"):
            result["stored"] = gguf_stored(Path(request["path"]) / request["gguf_file"])
    except ModelError as exc:
        result = {"error": str(exc)}
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
