"""What a local model is made of, as transformers and peft build it, cached so that asking is cheap.

The facts come from `engine.models.anatomy`, run in a subprocess (it imports torch, which the UI never
does) and cached under the cache directory, keyed by the config's hash, the LoRA targets and the library
versions that decide the answer. The stored weights' dtypes are read from safetensors headers here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from engine.core.files import ensure_private_dir, write_atomic
from engine.core.paths import cache_dir
from engine.models.find import DEMO_MODEL, ModelError, resolve_model

ANATOMY_VERSION = 1  # bump when engine.models.anatomy changes what it measures
ANATOMY_TIMEOUT_S = 600


@dataclass
class ModelFacts:
    name: str
    architecture: str  # the config's model_type
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    max_positions: int | None
    parameters: int  # exact: the model transformers builds, tied weights once
    groups: dict[str, int]  # linear, experts, embeddings, head, vision, other: they add up to `parameters`
    linear_modules: dict[str, dict]  # name -> d_in, d_out, count (the head excluded)
    expert_parameters: dict[str, dict]  # MoE experts stored as 3-D tensors: name -> shape, count
    experts: int | None
    experts_per_token: int | None
    quantized_4bit: dict  # what bitsandbytes stores in NF4 under QLoRA: parameters, largest layer
    lora: dict  # targets, dropout, per_rank (trainable parameters per unit of rank), modules, wraps_experts
    activations: dict | None  # bytes per token per layer with 16-bit activations: full, lora (None: unmeasured)
    stored: dict[str, int] = field(default_factory=dict)  # dtype -> parameters, as the weight files hold them
    request: dict = field(default_factory=dict, repr=False)  # what was asked, to ask again for other targets

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def lora_trainable(self, r: int) -> int:
        return self.lora["per_rank"] * r

    def for_adapter(self, targets, dropout) -> "ModelFacts":
        """These facts for other LoRA targets or dropout (peft decides what they wrap)."""
        if _targets_key(targets) == _targets_key(self.lora["targets"]) and dropout == self.lora["requested_dropout"]:
            return self
        return _facts({**self.request, "targets": targets, "dropout": dropout}, self.name, self.stored)


def _targets_key(targets) -> str | list[str]:
    return targets if isinstance(targets, str) else sorted(targets)


def safetensors_parameters(directory: Path) -> dict[str, int]:
    """Parameter count per dtype from safetensors headers (the first 8 bytes give the header size)."""
    counts: dict[str, int] = {}
    for path in sorted(directory.glob("*.safetensors")):
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


def model_facts(spec: str, lora_targets="all-linear", lora_dropout="auto",
                trust_remote_code: bool = False) -> ModelFacts:
    """Facts of a model directory, GGUF file, cached repo id, bare config.json or `demo`."""
    if spec.endswith(".json") and Path(spec).is_file():
        try:
            config = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{spec} is not a model config.json: {exc}") from None
        return facts_from_config(config, Path(spec).parent.name, lora_targets, lora_dropout)
    ref = resolve_model(spec)
    directory = Path(ref.path)
    name = "SmolLM2-135M-Instruct" if spec == DEMO_MODEL else directory.name
    if ref.gguf_file:
        gguf = directory / ref.gguf_file
        identity = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size, "mtime": gguf.stat().st_mtime_ns}
        request = {"path": ref.path, "gguf_file": ref.gguf_file, "identity": identity}
        return _facts({**request, "targets": lora_targets, "dropout": lora_dropout,
                       "trust_remote_code": trust_remote_code}, name, None)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the architecture from {directory / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{directory / 'config.json'} is not a JSON object")
    request = {"path": ref.path, "identity": config}
    if spec != DEMO_MODEL:
        name = config.get("_name_or_path") or name
    return _facts({**request, "targets": lora_targets, "dropout": lora_dropout,
                   "trust_remote_code": trust_remote_code}, name, safetensors_parameters(directory))


def facts_from_config(config: dict, name: str = "model", lora_targets="all-linear",
                      lora_dropout="auto") -> ModelFacts:
    """Facts from a config.json mapping alone: the model is built, not downloaded."""
    if not isinstance(config, dict):
        raise ModelError("a model config must be a JSON object")
    return _facts({"config": config, "identity": config, "targets": lora_targets, "dropout": lora_dropout},
                  name, {})


def _facts(request: dict, name: str, stored: dict | None) -> ModelFacts:
    key_material = {k: v for k, v in request.items() if k not in ("path", "config")}
    key_material["targets"] = _targets_key(request["targets"])
    key_material["versions"] = [ANATOMY_VERSION] + [version(p) for p in ("torch", "transformers", "peft")]
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = cache_dir() / "facts" / f"{key}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        result = _run_anatomy(request)
        ensure_private_dir(path.parent)
        write_atomic(path, json.dumps(result))
    result["lora"]["requested_dropout"] = request["dropout"]
    fields = {k: result[k] for k in ("architecture", "layers", "hidden", "heads", "kv_heads", "head_dim", "vocab",
                                     "tied_embeddings", "max_positions", "parameters", "groups", "linear_modules",
                                     "expert_parameters", "experts", "experts_per_token", "quantized_4bit", "lora",
                                     "activations")}
    return ModelFacts(name=name, **fields, stored=result.get("stored", {}) if stored is None else stored,
                      request={k: v for k, v in request.items() if k not in ("targets", "dropout")})


def _run_anatomy(request: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="tunedeck-anatomy-") as tmp:
        source, out = Path(tmp) / "request.json", Path(tmp) / "facts.json"
        source.write_text(json.dumps({k: v for k, v in request.items() if k != "identity"}))
        try:
            done = subprocess.run([sys.executable, "-m", "engine.models.anatomy", str(source), "--out", str(out)],
                                  capture_output=True, text=True, timeout=ANATOMY_TIMEOUT_S,
                                  cwd=Path(__file__).resolve().parents[2])
        except subprocess.TimeoutExpired:
            raise ModelError(f"building the model on the meta device took over {ANATOMY_TIMEOUT_S}s") from None
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"transformers could not build this model: {tail}")
        result = json.loads(out.read_text())
    if "error" in result:
        raise ModelError(result["error"])
    result["architecture"] = result.pop("model_type")
    return result
