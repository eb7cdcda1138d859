"""The typed run configuration: parsed from YAML, validated, one clear line per mistake.

Key names follow `TrainingArguments` and peft's `LoraConfig` where those exist, so
people can carry their habits over.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from engine.core.quoting import brief


METHODS = ("full", "lora", "qlora")  # what is trained: every weight, a LoRA adapter, or one over a 4-bit base
# what it learns from: demonstrations (sft), preference pairs (dpo, orpo) or labelled completions (kto)
OBJECTIVES = ("sft", "dpo", "orpo", "kto")
PREFERENCE_OBJECTIVES = OBJECTIVES[1:]
FSDP_MODES = ("full_shard", "shard_grad_op", "hybrid_shard")  # TrainingArguments' fsdp options, by their names


DEFAULT_LORA_DROPOUT = 0.05
# LoRA/QLoRA recipes use 1e-4..3e-4 (QLoRA paper: 2e-4); 1e-5..2e-5 is a full fine-tuning rate.
DEFAULT_LEARNING_RATES = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4}
# The loss types TRL 1.16 accepts per objective (DPOConfig's loss_type help, KTOConfig's choices; ORPO's loss is
# fixed). Kept here, without importing TRL, so that a config is checked in the UI in milliseconds;
# tests/test_preference_training.py holds the table to the installed TRL.
LOSS_TYPES = {
    "dpo": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
            "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
    "kto": ("kto", "apo_zero_unpaired"),
}

# Preference tuning starts from a tuned model and moves it a little: an order of magnitude below SFT
# (Zephyr's full DPO 5e-7, the alignment handbook's QLoRA DPO 5e-6).
DEFAULT_PREFERENCE_LEARNING_RATES = {"full": 5e-7, "lora": 5e-6, "qlora": 5e-6}


def resolve_lora_dropout(value: float | str, wraps_experts: bool) -> float:
    """`lora_dropout: auto` is 0.05, or 0 where the targets wrap MoE expert parameters: peft's ParamWrapper
    refuses any dropout there, and a run that trains the experts must not fail on a default."""
    if value == "auto":
        return 0.0 if wraps_experts else DEFAULT_LORA_DROPOUT
    return float(value)


class ConfigError(ValueError):
    """One line naming the key or path at fault and what to do."""


class _Refused(ConfigError):
    """A value of the right type that no type of the key can take (not finite, a NUL character)."""


@dataclass
class RunConfig:
    # what to train
    model: str
    data: str
    method: Literal[METHODS] = "lora"
    eval_data: str | None = None
    test_data: str | None = None  # held out for `tunedeck eval`; never trained or early-stopped on
    task: str | None = None  # picks the evaluation's task metric (see engine.evaluation.metrics)
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
    lora_dropout: float | Literal["auto"] = "auto"  # see resolve_lora_dropout
    lora_target_modules: str | list[str] = "all-linear"  # "all-linear": every linear layer but the head (QLoRA paper)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on for QLoRA, off otherwise
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    trust_remote_code: bool = False

    # health warnings (see engine.training.health)
    divergence_factor: float = 3.0
    grad_spike_factor: float = 10.0

    # several GPUs and machines (engine.runs.launch, engine.training.distributed)
    nproc_per_node: int = 1  # processes per node for torchrun, one per GPU; 1 (and one node) runs a plain process
    # None: every rank holds the whole model (DDP); otherwise the Trainer's FSDP sharding of weights, gradients and
    # optimizer state (full_shard), of gradients and optimizer state (shard_grad_op), or full_shard within each
    # node and replicas across nodes (hybrid_shard)
    fsdp: Literal[FSDP_MODES] | None = None
    nnodes: int = 1  # machines; node 0 starts the run, every other runs `tunedeck join RUN --node-rank N`
    # torchrun's c10d rendezvous on node 0 as HOST:PORT; None: a file store in the run directory, which all nodes
    # must see anyway (no rendezvous port at all)
    rdzv_endpoint: str | None = None
    network_interface: str | None = None  # nnodes > 1: the only interface gloo/NCCL sockets listen on (required)

    # notifications (engine.training.notify): a command the engine runs, without a shell, once per
    # ending and per new warning code, with TUNEDECK_RUN_ID, _STATE, _REASON, _RUN_DIR... in its environment
    notify_command: str | None = None

    # answers sampled while training (engine.training.samples)
    sample_prompts: int = 3  # held-out prompts answered greedily at each evaluation; 0 turns it off

    # mixing in general data against forgetting (engine.data.mix): sampled into the training split only
    general_data: str | None = None  # a file of general instruction examples, any format the loader reads
    general_ratio: float = 0.3  # share of general examples in the mixed training split, 0 < r < 1

    # preference objectives (engine.training.recipes.preference), keys named as in TRL's DPOConfig/KTOConfig/
    # ORPOConfig; their max_length is max_seq_length, one budget for prompt plus completion
    objective: Literal[OBJECTIVES] = "sft"
    beta: float = 0.1  # DPO/KTO: how far from the reference the policy may move; ORPO: the odds-ratio weight
    # None: TRL's default for the objective (sigmoid for DPO, kto for KTO); DPO also takes a list, whose losses
    # TRL adds up: [sigmoid, sft] is DPO with an SFT term on the chosen answers (RPO; TRL 1.16 has no rpo_alpha)
    loss_type: str | list[str] | None = None
    desirable_weight: float = 1.0  # KTO: weights of the desirable and undesirable losses, to balance
    undesirable_weight: float = 1.0  # unequal counts (KTO paper: keep weight x count within 1 to 4/3)

    # FSDP options (engine.training.recipes.base), named as in the Trainer's fsdp_config; only with fsdp set.
    # accelerate runs FSDP on GPUs only: on a CPU the engine refuses fsdp (the Trainer would quietly run DDP).
    fsdp_version: int = 2  # 2: FSDP2 (fully_shard, transformers' default); 1: the deprecated FSDP1, for hybrid_shard
    fsdp_offload: bool = False  # cpu_offload: parameters and gradients wait in CPU memory between uses
    # activation_checkpointing: FSDP's own, which FSDP prefers to gradient_checkpointing (no second all-gather)
    fsdp_activation_checkpointing: bool = False

    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        table = DEFAULT_PREFERENCE_LEARNING_RATES if self.objective in PREFERENCE_OBJECTIVES else DEFAULT_LEARNING_RATES
        return table[self.method]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PATH_KEYS = ("data", "eval_data", "test_data", "general_data")
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HINTS = typing.get_type_hints(RunConfig)
# Bounds of the numbers that TrainingArguments, peft and the health monitor would otherwise refuse (or
# misuse) only after the run has started: (low, high, low inclusive), None for no bound.
FLOAT_RANGES = {
    "num_train_epochs": (0.0, None, False),
    "warmup_steps": (0.0, None, True),  # below 1 a fraction of the steps, else a number of steps
    "weight_decay": (0.0, None, True),
    "max_grad_norm": (0.0, None, True),  # 0 turns clipping off; a negative norm would flip the gradients
    "lora_dropout": (0.0, 1.0, True),
    "early_stopping_threshold": (0.0, None, True),
    "divergence_factor": (1.0, None, False),  # loss this many times its running minimum: at most 1 is always
    "grad_spike_factor": (1.0, None, False),
    "general_ratio": (0.0, 1.0, False),  # 0 would mix nothing, 1 nothing but general data
    "beta": (0.0, None, False),
    "desirable_weight": (0.0, None, False),
    "undesirable_weight": (0.0, None, False),
}
MAX_INT = 2**31 - 1  # no count or length is larger; a larger one overflows a C int downstream
POSITIVE_INT_KEYS = {"per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "max_seq_length", "logging_steps", "lora_r",
                     "nproc_per_node", "nnodes", "eval_steps", "save_steps", "save_total_limit",
                     "early_stopping_patience", "lora_alpha"}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _short(value: Any) -> str:
    return brief(value, 160)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """The value as the declared type, or ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(key, value, option)
            except _Refused:
                raise
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif origin is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            if any("\x00" in v for v in value):
                raise _Refused(f"config key {key!r}: contains a NUL character: {_short(value)}")
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise _Refused(f"config key {key!r}: expected a finite number, got {_short(value)}")
            return number
    elif hint is str:
        if isinstance(value, str):
            if "\x00" in value:
                raise _Refused(f"config key {key!r}: contains a NUL character: {_short(value)}")
            return value
    raise ConfigError(f"config key {key!r}: expected {_type_name(hint)}, got {_short(value)}")


def parse_config(raw: Any, base_dir: Path | None = None, check_paths: bool = True) -> RunConfig:
    """Validate a mapping into a RunConfig; relative paths are taken from `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping of keys to values, e.g. `model: ./my-model`")
    unknown = sorted(set(raw) - set(FIELDS), key=str)  # YAML keys may be numbers, dates, null
    if unknown:
        raise ConfigError(f"unknown config key {_short(unknown[0])}; known keys: {', '.join(FIELDS)}")
    for key in ("model", "data"):
        if raw.get(key) in (None, ""):
            raise ConfigError(f"config key {key!r} is required")
    values = {key: _coerce(key, value, HINTS[key]) for key, value in raw.items()}
    for key in POSITIVE_INT_KEYS:
        if values.get(key) is not None and values[key] < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {values[key]}")
    for key, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT:
            raise ConfigError(f"config key {key!r} must be at most {MAX_INT}, got {_short(value)}")
    for key, (low, high, inclusive) in FLOAT_RANGES.items():
        value = values.get(key)
        if isinstance(value, float) and (value < low or (value == low and not inclusive)
                                  or (high is not None and value >= high)):
            bounds = f"{'at least' if inclusive else 'above'} {low:g}" + (f" and below {high:g}" if high else "")
            raise ConfigError(f"config key {key!r} must be {bounds}, got {value:g}")
    if values.get("sample_prompts", 0) < 0:
        raise ConfigError(f"config key 'sample_prompts' must be 0 (off) or more, got {values['sample_prompts']}")
    if not 0 <= values.get("seed", 0) < 2**32:
        raise ConfigError(f"config key 'seed' must be in [0, 2**32), got {values['seed']}")
    if values.get("lora_target_modules") == []:
        raise ConfigError("config key 'lora_target_modules' must name at least one module, or be all-linear")
    if values.get("max_steps", -1) == 0 or values.get("max_steps", -1) < -1:
        raise ConfigError("config key 'max_steps' must be a positive number of steps, or -1 to use epochs")
    if not 0 <= values.get("validation_split", 0.1) < 1:
        raise ConfigError("config key 'validation_split' must be in [0, 1)")
    lr = values.get("learning_rate")
    if lr is not None and not 0 < lr < 10:
        raise ConfigError(f"config key 'learning_rate' must be positive and below 10, got {lr}")
    _check_objective(values)
    _check_nodes(values)
    _check_fsdp(values)
    if check_paths:
        _check_reporters(values.get("report_to") or [])
    base = base_dir or Path.cwd()
    for key in PATH_KEYS:
        if values.get(key):
            path = _resolve(key, base / _expand(key, values[key]))
            if check_paths and not _exists(key, path):
                raise ConfigError(f"config key {key!r}: file not found: {path}")
            values[key] = str(path)
    if values.get("notify_command") is not None:
        values["notify_command"] = _notify_command(values["notify_command"], base, check_paths)
    model = values["model"]
    local = (base / _expand("model", model))
    if model.startswith((".", "/", "~")) or _exists("model", local):
        if check_paths and not _exists("model", local):
            raise ConfigError(f"config key 'model': not found: {_resolve('model', local)}")
        values["model"] = str(_resolve("model", local))
    return RunConfig(**values)


def _check_objective(values: dict) -> None:
    """The keys a preference objective takes, and those it cannot (what the data holds is checked by the recipe,
    which reads it: engine.training.recipes.preference)."""
    objective = values.get("objective", "sft")
    loss_type = values.get("loss_type")
    if loss_type is not None:
        allowed = LOSS_TYPES.get(objective)
        if not allowed:
            raise ConfigError(f"config key 'loss_type': objective {objective} has no loss types to choose from; "
                              "leave loss_type out")
        names = loss_type if isinstance(loss_type, list) else [loss_type]
        if isinstance(loss_type, list) and (objective != "dpo" or not names):
            raise ConfigError(f"config key 'loss_type': only dpo combines a list of losses; give {objective} one of "
                              f"{', '.join(allowed)}")
        for name in names:
            if name not in allowed:
                raise ConfigError(f"config key 'loss_type': {_short(name)} is not a {objective} loss; "
                                  f"allowed: {', '.join(allowed)}")
    if objective not in PREFERENCE_OBJECTIVES:
        return
    if objective == "kto" and (loss_type or "kto") == "kto" and values.get("per_device_train_batch_size", 4) < 2:
        raise ConfigError("config key 'per_device_train_batch_size': kto estimates its KL term from the other "
                          "completions of a batch, so it must be at least 2")
    refused = {"general_data": "mixes demonstrations into supervised training",
               "packing": "packs demonstrations (TRL pads preference batches)",
               "train_on": "chooses the tokens supervised training learns (preference losses score completions)"}
    for key, why in refused.items():
        if values.get(key) not in (None, FIELDS[key].default, False):
            raise ConfigError(f"config key {key!r} {why}; objective {objective} does not take it: leave it out")


def _check_nodes(values: dict) -> None:
    """Several machines need the interface their sockets may use; one machine keeps everything on loopback."""
    nnodes = values.get("nnodes", 1)
    for key in ("rdzv_endpoint", "network_interface"):
        if nnodes == 1 and values.get(key) is not None:
            raise ConfigError(f"config key {key!r} is for several machines (nnodes > 1); one machine listens on "
                              "loopback only: leave it out")
    if nnodes > 1 and not values.get("network_interface"):
        raise ConfigError(f"config key 'nnodes' is {nnodes}, so 'network_interface' is required: name the interface "
                          "the nodes reach each other on (see `ip -brief address`), e.g. eth0")
    endpoint = values.get("rdzv_endpoint")
    if endpoint is not None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"config key 'rdzv_endpoint': expected HOST:PORT of node 0, got {_short(endpoint)}")


FSDP_OPTIONS = ("fsdp_version", "fsdp_offload", "fsdp_activation_checkpointing")


def _check_fsdp(values: dict) -> None:
    """What can never shard: FSDP options without fsdp, one process, hybrid_shard on FSDP2 (transformers passes
    it to FSDP1 only), two activation checkpointings at once (the Trainer refuses the pair)."""
    fsdp = values.get("fsdp")
    if not fsdp:
        for key in FSDP_OPTIONS:
            if values.get(key) not in (None, FIELDS[key].default):
                raise ConfigError(f"config key {key!r} is an FSDP option: set fsdp (full_shard, shard_grad_op or "
                                  "hybrid_shard) or leave it out")
        return
    version = values.get("fsdp_version", 2)
    if version not in (1, 2):
        raise ConfigError(f"config key 'fsdp_version' must be 1 (FSDP1) or 2 (FSDP2), got {version}")
    if values.get("nnodes", 1) * values.get("nproc_per_node", 1) < 2:
        raise ConfigError(f"config key 'fsdp' is {fsdp}, but the run has one process: FSDP shards across "
                          "processes, so set nproc_per_node to 2 or more (one per GPU), or leave fsdp out")
    if fsdp == "hybrid_shard" and version == 2:
        raise ConfigError("config key 'fsdp': hybrid_shard runs on FSDP1 only in transformers; set fsdp_version: 1, "
                          "or use full_shard")
    if values.get("fsdp_activation_checkpointing") and values.get("gradient_checkpointing"):
        raise ConfigError("config keys 'gradient_checkpointing' and 'fsdp_activation_checkpointing' both checkpoint "
                          "activations; under fsdp keep fsdp_activation_checkpointing and leave the other out")


# report_to backends and the packages the Trainer needs for them (any one will do).
REPORTER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                     "comet_ml": ("comet_ml",), "clearml": ("clearml",), "trackio": ("trackio",)}


def _check_reporters(reporters: list[str]) -> None:
    """A backend whose package is missing fails the Trainer after the model loaded: say so before."""
    import importlib.util

    for name in reporters:
        packages = REPORTER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ConfigError(f"config key 'report_to': {name} needs the {packages[0]} package; "
                              f"`pip install {packages[0]}` or leave {name} out")


def _notify_command(command: str, base: Path, check_paths: bool) -> str:
    """The command split as the engine will run it (shlex, no shell), a relative program path taken from
    `base` (the engine runs in the run directory), and the program found."""
    import shlex
    import shutil

    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"config key 'notify_command': cannot split {_short(command)}: {exc}") from None
    if not argv:
        raise ConfigError("config key 'notify_command' is empty; name a program, or leave the key out")
    if "/" in argv[0]:
        argv[0] = str(_resolve("notify_command", base / _expand("notify_command", argv[0])))
    if check_paths and shutil.which(argv[0]) is None:
        raise ConfigError(f"config key 'notify_command': program {_short(argv[0])} not found or not executable; "
                          "it runs without a shell, so write `sh -c '...'` for pipes or variables")
    return shlex.join(argv)


def _expand(key: str, value: str) -> Path:
    """`~` and `~user` expanded; an unknown user is the config's mistake, not a crash."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise ConfigError(f"config key {key!r}: cannot expand {_short(value)}: no such user's home directory") from None


def _exists(key: str, path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long: the config's mistake, in one line
        raise ConfigError(f"config key {key!r}: cannot use {_short(str(path))}: {exc.strerror or exc}") from None


def _resolve(key: str, path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a name too long, a loop of symbolic links
        raise ConfigError(f"config key {key!r}: cannot use {_short(str(path))}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def load_config(path: str | Path) -> RunConfig:
    try:
        path = Path(path).expanduser()
    except RuntimeError:
        raise ConfigError(f"config file {str(path)!r}: no such user's home directory") from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)  # safe: a config can never construct Python objects
    except RecursionError:
        raise ConfigError(f"config {path} is not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]  # a ReaderError has no `problem`
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    except Exception as exc:  # noqa: BLE001 - the safe constructors raise plain errors for a bad typed scalar
        # (`!!int abc` ValueError, `!!bool maybe` KeyError, `!!timestamp x` AttributeError, an int of 5000 digits)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config {path} is not valid YAML: a value cannot be read as its type: "
                          f"{first[:200]}") from None
    return parse_config(raw, base_dir=path.parent.resolve())
