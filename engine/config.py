"""The typed run configuration: parsed from YAML, validated, one clear line per mistake.

Key names follow `TrainingArguments` and peft's `LoraConfig` where those exist, so
people can carry their habits over.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """One line naming the key or path at fault and what to do."""


@dataclass
class RunConfig:
    # what to train
    model: str
    data: str
    method: Literal["full", "lora", "qlora"] = "lora"
    eval_data: str | None = None
    test_data: str | None = None  # held out for `tunedeck eval`; never trained or early-stopped on
    task: str | None = None  # picks the evaluation's task metric (see engine.metrics)
    validation_split: float = 0.1  # held out from `data` when there is no eval_data
    name: str | None = None

    # schedule
    max_steps: int = -1
    num_train_epochs: float = 3.0
    learning_rate: float | None = None  # None: 2e-4 for LoRA/QLoRA, 2e-5 for full
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03  # below 1: a fraction of all steps, as in TrainingArguments
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    seed: int = 42

    # batches and sequences
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 1024
    overlong: Literal["truncate", "drop"] = "truncate"
    # Packing concatenates a batch without padding, attention kept per example. It pays where attention
    # is computed per example (flash-attention varlen kernels); with SDPA the packed row gets one
    # block-diagonal mask and attention cost grows with the whole row. "auto": pack with flash
    # attention, otherwise pad batches of similar length (group_by_length). See BENCHMARKS.md.
    packing: bool | Literal["auto"] = "auto"
    group_by_length: bool | None = None  # None: on when not packing
    train_on: Literal["assistant", "all"] = "assistant"
    system_prompt: str | None = None

    # logging, evaluation, checkpoints
    logging_steps: int = 1
    eval_steps: int | None = None  # None: about 10 evaluations per run
    save_steps: int | None = None  # None: same as eval_steps
    save_total_limit: int | None = 3
    early_stopping_patience: int | None = 3  # evaluations without improvement; None turns it off
    early_stopping_threshold: float = 0.0
    report_to: list[str] = field(default_factory=list)  # e.g. [tensorboard] or [wandb]

    # method details
    lora_r: int = 16
    lora_alpha: int = 32  # scaling = alpha / r = 2
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"  # "all-linear": every linear layer but the head (QLoRA paper)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on for QLoRA, off otherwise
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    trust_remote_code: bool = False

    # health warnings (see engine.health)
    divergence_factor: float = 3.0
    grad_spike_factor: float = 10.0

    # several GPUs: processes per node for torchrun; 1 runs a plain process
    nproc_per_node: int = 1

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        # LoRA/QLoRA recipes use 1e-4..3e-4 (QLoRA paper: 2e-4); 1e-5..2e-5 is a full fine-tuning rate.
        return 2e-5 if self.method == "full" else 2e-4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PATH_KEYS = ("data", "eval_data", "test_data")
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HINTS = typing.get_type_hints(RunConfig)
POSITIVE_INT_KEYS = {"per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "max_seq_length", "logging_steps", "lora_r",
                     "nproc_per_node", "eval_steps", "save_steps", "save_total_limit",
                     "early_stopping_patience", "lora_alpha"}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """The value as the declared type, or ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # YAML reads 1e-3 (without a dot) as a string; accept it as the number it means.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(hint)}, got {value!r}")


def parse_config(raw: Any, base_dir: Path | None = None, check_paths: bool = True) -> RunConfig:
    """Validate a mapping into a RunConfig; relative paths are taken from `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping of keys to values, e.g. `model: ./my-model`")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(FIELDS)}")
    for key in ("model", "data"):
        if raw.get(key) in (None, ""):
            raise ConfigError(f"config key {key!r} is required")
    values = {key: _coerce(key, value, HINTS[key]) for key, value in raw.items()}
    for key in POSITIVE_INT_KEYS:
        if values.get(key) is not None and values[key] < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {values[key]}")
    if values.get("max_steps", -1) == 0 or values.get("max_steps", -1) < -1:
        raise ConfigError("config key 'max_steps' must be a positive number of steps, or -1 to use epochs")
    if not 0 <= values.get("validation_split", 0.1) < 1:
        raise ConfigError("config key 'validation_split' must be in [0, 1)")
    lr = values.get("learning_rate")
    if lr is not None and not 0 < lr < 10:
        raise ConfigError(f"config key 'learning_rate' must be positive and below 10, got {lr}")
    base = base_dir or Path.cwd()
    for key in PATH_KEYS:
        if values.get(key):
            path = (base / Path(values[key]).expanduser()).resolve()
            if check_paths and not path.exists():
                raise ConfigError(f"config key {key!r}: file not found: {path}")
            values[key] = str(path)
    model = values["model"]
    local = (base / Path(model).expanduser())
    if model.startswith((".", "/", "~")) or local.exists():
        if check_paths and not local.exists():
            raise ConfigError(f"config key 'model': not found: {local.resolve()}")
        values["model"] = str(local.resolve())
    return RunConfig(**values)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)  # safe: a config can never construct Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(raw, base_dir=path.parent.resolve())
