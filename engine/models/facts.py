"""Architecture facts of a local model without loading weights: layers, widths, vocabulary, exact parameter counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.models.find import DEMO_MODEL, ModelError, resolve_model


@dataclass
class ModelFacts:
    name: str
    architecture: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    max_positions: int | None
    parameters: int  # exact when counted from weights
    parameter_source: str  # "safetensors", "gguf" or "config" (analytic)
    dtypes: dict[str, int]  # dtype -> parameter count, as stored

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer in a decoder block (Llama-style naming)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_parameters(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())


def analytic_parameters(layers: int, hidden: int, intermediate: int, kv_dim: int, vocab: int, tied: bool) -> int:
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate + 2 * hidden
    return layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden


def _analytic_count(facts: dict) -> int:
    kv_dim = facts["kv_heads"] * (facts["hidden"] // facts["heads"])
    return analytic_parameters(facts["layers"], facts["hidden"], facts["intermediate"], kv_dim,
                               facts["vocab"], facts["tied_embeddings"])


def safetensors_parameters(directory: Path) -> dict[str, int] | None:
    """Parameter count per dtype from safetensors headers (the first 8 bytes give the header size)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    counts: dict[str, int] = {}
    for path in files:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + n
    return counts


def _config_facts(config: dict, name: str) -> dict:
    text = config.get("text_config", config)  # multimodal configs nest the language model
    hidden = text["hidden_size"]
    heads = text["num_attention_heads"]
    return {
        "name": name, "architecture": text.get("model_type", config.get("model_type", "?")),
        "layers": text["num_hidden_layers"], "hidden": hidden,
        "intermediate": text.get("intermediate_size") or 4 * hidden, "heads": heads,
        "kv_heads": text.get("num_key_value_heads") or heads, "vocab": text["vocab_size"],
        "tied_embeddings": bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        "max_positions": text.get("max_position_embeddings"),
    }


def _gguf_facts(path: Path) -> tuple[dict, dict[str, int]]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
    arch = field("general.architecture")
    names = {t.name for t in reader.tensors}
    facts = {
        "name": field("general.name") or path.stem, "architecture": arch,
        "layers": field(f"{arch}.block_count"), "hidden": field(f"{arch}.embedding_length"),
        "intermediate": field(f"{arch}.feed_forward_length"), "heads": field(f"{arch}.attention.head_count"),
        "kv_heads": field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count"),
        "vocab": field(f"{arch}.vocab_size") or len(field("tokenizer.ggml.tokens", [])),
        "tied_embeddings": "output.weight" not in names, "max_positions": field(f"{arch}.context_length"),
    }
    dtypes: dict[str, int] = {}
    for t in reader.tensors:
        dtypes[t.tensor_type.name] = dtypes.get(t.tensor_type.name, 0) + int(t.n_elements)
    return facts, dtypes


def model_facts(spec: str) -> ModelFacts:
    """Architecture and exact parameter count of a local model, reading headers only."""
    if spec.endswith(".json") and Path(spec).is_file():  # a bare config.json: the analytic count
        try:
            return facts_from_config(json.loads(Path(spec).read_text()), Path(spec).parent.name)
        except (ValueError, KeyError) as exc:
            raise ModelError(f"{spec} is not a model config.json: {exc}") from None
    ref = resolve_model(spec)
    directory = Path(ref.path)
    if ref.gguf_file:
        facts, dtypes = _gguf_facts(directory / ref.gguf_file)
        source = "gguf"
    else:
        try:
            config = json.loads((directory / "config.json").read_text())
            facts = _config_facts(config, config.get("_name_or_path") or directory.name)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot read the architecture from {directory / 'config.json'}: {exc}") from None
        dtypes = safetensors_parameters(directory)
        source = "safetensors"
    if not dtypes:
        dtypes, source = {"unknown": _analytic_count(facts)}, "config"
    if spec == DEMO_MODEL or facts["name"] in ("", None):
        facts["name"] = "SmolLM2-135M-Instruct"
    return ModelFacts(**facts, parameters=sum(dtypes.values()), parameter_source=source, dtypes=dtypes)


def facts_from_config(config: dict, name: str = "model") -> ModelFacts:
    """Facts from a config mapping alone (no weights): the analytic parameter count."""
    facts = _config_facts(config, name)
    total = _analytic_count(facts)
    return ModelFacts(**facts, parameters=total, parameter_source="config", dtypes={"unknown": total})
