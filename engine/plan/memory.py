"""GPU memory for fine-tuning, per method, broken down so a person can see why.

Peak memory during a training step is about
    weights + trainable copies + gradients + optimizer state + saved activations
    + logits and loss buffers + CUDA context and allocator overhead.

Every term comes from the model as transformers builds it (`engine.models.facts`): the exact parameter
count, what bitsandbytes quantizes (it turns modules of type `nn.Linear` into NF4 and leaves embeddings,
norms, head, routers, subclasses of nn.Linear and MoE experts stored as 3-D tensors unquantized), what
peft trains for the LoRA targets,
and the activations autograd saves per token in one layer of this very architecture (measured on a
shrunk copy, `engine.models.anatomy`). When the activations could not be measured, the coefficients
measured on Llama blocks stand in, and a note says so.

Defaults follow what tunedeck's engine does (engine.models.load): LoRA keeps the frozen base in 16 bit
and the adapters in fp32; full fine-tuning keeps fp32 master weights and autocasts to bf16; QLoRA
stores linear layers in NF4 with double quantisation, norms and biases in fp32 and every other weight
in 16 bit (engine.training.recipes.base). Every assumption is a field of `Assumptions` and can be changed.

Preference objectives (`objective`, as TRL 1.16's trainers run them): DPO and ORPO put the chosen and the
rejected completion of each pair through the policy in one concatenated batch, so a step holds the
activations of twice the sequences of an SFT step; KTO scores single completions. DPO and KTO also need the
reference's log-probabilities: with LoRA/QLoRA the reference is the base with the adapter disabled (no
extra weights: one more forward without gradients, whose activations are freed layer by layer); full
fine-tuning keeps a second, frozen copy of the weights unless `precompute_ref_log_probs` scores the data
once before training. KTO adds a mismatched "KL" batch (each prompt with another example's completion)
that the policy and the reference score without gradients. ORPO has no reference. DPO and KTO score
tokens through TRL's fused log-prob head (no tokens x vocab logits); ORPO's trainer materialises them.

Every figure is per GPU. With several GPUs (`gpus` per node times `nodes`) and no `fsdp`, each GPU holds a
replica (DDP). FSDP shards what each GPU stores (see `shards`): full_shard the weights, gradients and
optimizer state over every GPU; shard_grad_op the same, but it gathers the whole model for the forward and
keeps it until the backward is done; hybrid_shard full_shard within a node, replicas across nodes. What
FSDP gathers to compute, and the gradient it reduce-scatters, are parts of their own (`gathered_weights`,
`reduce_scatter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.models.facts import ModelFacts
from engine.training.config import FSDP_MODES, METHODS, OBJECTIVES, ConfigError

GiB = 1024 ** 3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# NF4: 4 bits + one absmax per 64 weights; with double quantisation the absmax is 8 bit
# plus one fp32 constant per 256 blocks: 0.5 + 1/64 + 4/(64*256) bytes per parameter.
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
OPTIMIZER_STATE_BYTES = {"adamw": None, "adamw_fp32": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}

# When the architecture's activations could not be measured: the coefficients measured on Llama blocks,
# bytes per token per layer as a*hidden + 8*kv_dim + b*intermediate, plus per adapted input feature.
LLAMA_FULL_ACT = (26.0, 8.0)
LLAMA_LORA_ACT = (8.1, 6.0)
LLAMA_ADAPTER_ACT = {True: 6.2, False: 2.2}  # with dropout / without
LOGITS_BYTES = 10  # per token per vocab entry: 16-bit logits, fp32 upcast kept for the loss, fp32 gradient
CHECKPOINT_ACT = 2.0  # per token per layer per hidden unit: the block input kept under checkpointing
CUDA_CONTEXT_GIB = 0.75
ALLOCATOR_OVERHEAD = 0.05
# TRL's fused log-prob head (trl.kernels.chunked_logprob): logits in tiles of 4096 tokens x 32768 vocab entries.
FUSED_HEAD_TILE = (4096, 32768)
# Sizes past these are typing mistakes, not plans (a 16M-token sequence, a rank above any model's width).
LIMITS = {"seq_len": 1 << 24, "batch_size": 1 << 16, "lora_r": 1 << 14, "gpus": 1 << 16, "nodes": 1 << 12}


@dataclass
class Assumptions:
    seq_len: int = 1024
    batch_size: int = 4  # per device
    gradient_checkpointing: bool | None = None  # None: on for QLoRA, off otherwise (as the engine does)
    memory_efficient_attention: bool = True  # SDPA / flash; False: eager attention keeps the score matrix
    optimizer: str = "adamw"  # adamw (states in the parameter dtype), adamw_fp32, adamw_8bit, paged_adamw_8bit
    compute_dtype: str = "bf16"
    full_master_fp32: bool = True  # full fine-tuning: fp32 weights with bf16 autocast (the engine's way)
    lora_r: int = 16
    lora_targets: str | list[str] = "all-linear"
    lora_dropout: float | str = "auto"  # auto: as the engine resolves it (0 where peft wraps MoE experts)
    double_quant: bool = True
    gpus: int | None = None  # per node; None: 1 in an estimate alone, the GPUs found in a plan
    nodes: int = 1
    fsdp: str | None = None  # None: DDP replicas; or engine.training.config.FSDP_MODES
    fsdp_offload: bool = False  # FSDP's CPU offload: sharded weights, gradients and optimizer state in host memory
    objective: str = "sft"  # sft | dpo | orpo | kto (engine.training.config.OBJECTIVES)
    precompute_ref_log_probs: bool = False  # DPO/KTO: reference log-probs scored once before training

    def __post_init__(self):
        for key, limit in LIMITS.items():
            value = getattr(self, key)
            if key == "gpus" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ConfigError(f"{key} must be a whole number from 1 to {limit:,}, got {value!r}")
        if self.compute_dtype not in DTYPE_BYTES:
            raise ConfigError(f"precision must be one of {', '.join(DTYPE_BYTES)}, got {self.compute_dtype!r}")
        if self.optimizer not in OPTIMIZER_STATE_BYTES:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZER_STATE_BYTES)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}")
        if self.lora_dropout != "auto" and not (isinstance(self.lora_dropout, (int, float))
                                                and 0 <= self.lora_dropout < 1):
            raise ConfigError(f"lora_dropout must be auto or in [0, 1), got {self.lora_dropout!r}")
        if self.fsdp is not None and self.fsdp not in FSDP_MODES:
            raise ConfigError(f"unknown fsdp mode {self.fsdp!r}; use one of {', '.join(FSDP_MODES)}")
        if self.fsdp_offload and self.fsdp is None:
            raise ConfigError("fsdp_offload offloads FSDP's shards: choose an fsdp mode too")
        if self.fsdp is not None and self.gpus is not None and self.world_size < 2:
            raise ConfigError(f"fsdp {self.fsdp} shards across GPUs: plan for 2 or more (GPUs per node, nodes)")

    @property
    def world_size(self) -> int:
        return (self.gpus or 1) * self.nodes

    @property
    def shards(self) -> int:
        """Into how many pieces each GPU's weights, gradients and optimizer state are cut."""
        if self.fsdp is None:
            return 1
        return (self.gpus or 1) if self.fsdp == "hybrid_shard" else self.world_size


@dataclass
class Estimate:
    method: str
    parts: dict[str, float]  # bytes of tensors at the peak; they add up to `total`
    trainable_parameters: int
    notes: list[str] = field(default_factory=list)
    host: dict[str, float] = field(default_factory=dict)  # bytes FSDP's CPU offload keeps in host memory
    fsdp: str | None = None
    gpus: int = 1  # per node
    nodes: int = 1

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes

    @property
    def total(self) -> float:
        """Peak allocated memory: what torch.cuda.max_memory_allocated reports."""
        return sum(self.parts.values())

    @property
    def overhead(self) -> dict[str, float]:
        """Memory the GPU needs beyond the tensors: CUDA context and allocator slack."""
        return {"cuda_context": CUDA_CONTEXT_GIB * GiB, "allocator": ALLOCATOR_OVERHEAD * self.total}

    @property
    def required(self) -> float:
        """What must be free on the GPU for the run to fit."""
        return self.total + sum(self.overhead.values())

    def to_dict(self) -> dict:
        return {"method": self.method, "total_bytes": int(self.total), "required_bytes": int(self.required),
                "total_gib": round(self.total / GiB, 2), "required_gib": round(self.required / GiB, 2),
                "trainable_parameters": self.trainable_parameters,
                "breakdown": {k: int(v) for k, v in self.parts.items()},
                "overhead": {k: int(v) for k, v in self.overhead.items()}, "notes": self.notes,
                "gpus": self.gpus, "nodes": self.nodes, "world_size": self.world_size, "fsdp": self.fsdp,
                "host": {k: int(v) for k, v in self.host.items()}}


def layer_activations(model: ModelFacts, method: str, notes: list[str]) -> float:
    """Bytes saved per token in one decoder layer with 16-bit activations."""
    kind = "full" if method == "full" else "lora"
    if model.activations:
        return model.activations[kind]
    widths = [m["d_out"] for m in model.linear_modules.values()] or [4 * model.hidden]
    a, b = LLAMA_FULL_ACT if kind == "full" else LLAMA_LORA_ACT
    per_layer = a * model.hidden + 8 * model.kv_dim + b * max(widths)
    if kind == "lora":
        dropout = model.lora["dropout"] > 0
        per_layer += sum(LLAMA_ADAPTER_ACT[dropout] * m["d_in"] * m["count"]
                         for m in model.lora["modules"].values()) / max(1, model.layers)
    notes.append(f"activations of {model.architecture} could not be measured: Llama's coefficients stand in")
    return per_layer


def estimate(model: ModelFacts, method: str, a: Assumptions | None = None) -> Estimate:
    a = a or Assumptions()
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method != "full":
        model = model.for_adapter(a.lora_targets, a.lora_dropout)
    notes: list[str] = []
    compute = DTYPE_BYTES[a.compute_dtype]
    checkpointing = a.gradient_checkpointing if a.gradient_checkpointing is not None else method == "qlora"
    # Tokens through the policy with gradients: a pair's chosen and rejected sequence each (DPO, ORPO).
    tokens = a.seq_len * a.batch_size * (2 if a.objective in ("dpo", "orpo") else 1)
    reference = a.objective in ("dpo", "kto") and not a.precompute_ref_log_probs
    h, layers, groups = model.hidden, model.layers, model.groups
    matmul_weights = groups["linear"] + groups["experts"] + model.vocab * h  # what autocast copies to 16 bit
    parts: dict[str, float] = {}

    # Weights and trainable parameters
    if method == "full":
        trainable = model.parameters
        weight_bytes = 4 if a.full_master_fp32 else compute
        parts["weights"] = model.parameters * weight_bytes
        if a.full_master_fp32 and a.fsdp is None:
            # autocast's 16-bit copy of each matmul weight. FSDP instead gathers its shards in the compute dtype
            # (accelerate sets FSDP's mixed-precision policy from bf16/fp16), so autocast finds 16-bit weights.
            parts["weight_copies"] = matmul_weights * compute
        param_bytes = weight_bytes
    else:
        trainable = model.lora_trainable(a.lora_r)
        if method == "qlora":
            nf4 = model.quantized_4bit["parameters"]
            # The engine keeps norms and biases in fp32 and every other unquantized weight in 16 bit
            # (engine.training.recipes.base, as the QLoRA reference code does).
            rest = model.parameters - nf4 - groups["other"]
            parts["weights"] = nf4 * NF4_BYTES[a.double_quant] + rest * compute + groups["other"] * 4
            rest = "16 bit"
            if groups["experts"]:
                notes.append(f"bitsandbytes quantizes nn.Linear layers only: the {groups['experts'] / 1e9:.1f}B "
                             f"expert parameters (3-D tensors) stay unquantized, in {rest} (bitsandbytes#1849): "
                             "QLoRA does not shrink this MoE")
            elif nf4 == 0:
                notes.append(f"bitsandbytes quantizes no layer of this {model.architecture} (it replaces plain "
                             f"nn.Linear only, and these are subclasses): QLoRA keeps every weight in {rest}; "
                             "use LoRA")
            elif nf4 < 0.5 * model.parameters:
                notes.append(f"bitsandbytes quantizes only {nf4 / model.parameters:.0%} of this "
                             f"{model.architecture} (plain nn.Linear layers): the rest is in {rest}")
            else:
                notes.append(f"NF4 linear layers; embeddings, norms and head in {rest}")
        else:
            parts["weights"] = model.parameters * compute
        parts["weights"] += trainable * 4  # peft keeps adapters in fp32
        param_bytes = 4
        if model.lora["wraps_experts"]:
            notes.append(f"LoRA on the experts too (peft wraps them); lora_dropout {model.lora['dropout']:g}")

    # What FSDP gathers to compute: the compute dtype for full fine-tuning, the stored form of a frozen base
    # (QLoRA's 4-bit weights too: stored in 16-bit containers, bnb_4bit_quant_storage, so FSDP can shard them).
    gathered_form = model.parameters * compute if method == "full" else parts["weights"]
    parts["weights"] /= a.shards

    # Gradients and optimizer state of what is trained
    all_gradients = trainable * param_bytes / a.shards
    state = OPTIMIZER_STATE_BYTES[a.optimizer]
    parts["optimizer"] = trainable * (2 * param_bytes if state is None else state) / a.shards
    if a.optimizer.startswith("paged"):
        notes.append("paged optimizer state can spill to CPU memory under pressure")

    # Activations saved for the backward pass
    per_layer = layer_activations(model, method, notes)
    if not a.memory_efficient_attention:
        per_layer += 6 * model.heads * a.seq_len  # fp32 softmax and its 16-bit copy per query
    per_layer *= compute / 2  # measured with 16-bit activations
    if checkpointing:
        # Only block inputs are kept; one block is recomputed at a time during backward.
        parts["activations"] = tokens * (layers * CHECKPOINT_ACT * compute / 2 * h + per_layer)
    else:
        parts["activations"] = tokens * layers * per_layer
    if a.objective in ("dpo", "kto"):
        # TRL's fused head keeps the final hidden states, one 16-bit tile of logits at a time, and in the
        # backward pass an fp32 gradient of the hidden states: no tokens x vocab tensor.
        rows, columns = FUSED_HEAD_TILE
        parts["logits"] = min(tokens, rows) * min(model.vocab, columns) * compute + tokens * h * (compute + 4)
    else:
        parts["logits"] = tokens * model.vocab * LOGITS_BYTES
    if reference:
        # The reference's forward (DPO: both completions; KTO: the completions, then the KL batch) runs
        # without gradients while the policy's activations wait for the backward pass; it frees each
        # layer's tensors as it goes, so it adds at most what one layer of the full model would save.
        full_layer = layer_activations(model, "full", []) * compute / 2
        parts["reference_forward"] = tokens * full_layer
        if method == "full":
            parts["reference_weights"] = model.parameters * compute
            notes.append(f"{a.objective.upper()} with full fine-tuning keeps a frozen 16-bit copy of the model as "
                         f"its reference ({parts['reference_weights'] / GiB:.1f} GiB); precompute_ref_log_probs "
                         "scores the data once before training and frees it")
        else:
            notes.append(f"{a.objective.upper()}'s reference is the base with the adapter disabled: no second "
                         "copy, one more forward without gradients")
    if a.objective in ("dpo", "orpo"):
        notes.append(f"{a.objective.upper()} puts each pair's chosen and rejected completion through the model in "
                     f"one batch: the activations of {2 * a.batch_size} sequences per step")
    if a.objective == "orpo":
        notes.append("ORPO needs no reference model; TRL's ORPOTrainer computes full logits (no fused head)")
    if a.objective == "kto" and a.batch_size < 2:
        notes.append("KTO's KL term pairs each prompt with another example's completion in the same batch: "
                     "TRL needs per_device_train_batch_size 2 or more")
    if model.vocab >= 100_000 and a.objective not in ("dpo", "kto"):
        notes.append(f"vocabulary of {model.vocab:,}: logits alone take {parts['logits'] / GiB:.1f} GiB")
    # The peak comes early in the backward pass, while activations are still held and only the
    # output head's gradient exists; gradients fill in as activations are freed. So the two do not
    # add up: whichever phase is larger sets the peak.
    # Under FSDP the head sits in the root unit, whose gradient stays unsharded, in the compute dtype, until the
    # end of the backward; CPU offload moves the sharded gradients off the GPU as they are reduced.
    head_gradient = 0 if method != "full" else model.vocab * h * (compute if a.fsdp else param_bytes)
    gpu_gradients = 0.0 if a.fsdp_offload else all_gradients
    if parts["activations"] + parts["logits"] + head_gradient >= gpu_gradients:
        parts["gradients"] = head_gradient if method == "full" else gpu_gradients  # adapters' are small
        if method == "full" and gpu_gradients:
            notes.append(f"gradients take {all_gradients / GiB:.1f} GiB once the activations are freed")
    else:
        parts["gradients"] = gpu_gradients
        parts["activations"] = parts["logits"] = 0.0
        if "reference_forward" in parts:
            parts["reference_forward"] = 0.0
        notes.append("gradients outweigh activations: the peak is at the end of the backward pass")
    if method == "qlora":
        parts["dequant_buffer"] = model.quantized_4bit["largest"] * compute  # one layer dequantized at a time
    if a.fsdp is None and a.world_size > 1:
        parts["ddp_buckets"] = min(trainable * param_bytes, 2 * 25 * 1024 ** 2)  # two 25 MB gradient buckets
    host = {}
    if a.fsdp is not None:
        root = (groups["embeddings"] + groups["head"]) * compute  # embeddings stay 16 bit under QLoRA too
        unit = (gathered_form - root) / max(1, layers)  # one wrapped unit: a decoder layer
        if a.fsdp == "shard_grad_op":
            # Not resharded after the forward: the whole model stays gathered until its backward is done.
            parts["gathered_weights"] = gathered_form
        else:
            # The unit computing and the next one, whose all-gather is prefetched: FSDP2 (transformers' default)
            # prefetches one module ahead (fully_shard's set_modules_to_backward_prefetch docs), FSDP1's rate
            # limiter allows two in flight (limit_all_gathers docs; Zhao et al. 2023, "PyTorch FSDP", 3.4). The
            # root (embeddings, final norm, head) is not resharded after the forward (torch's FSDP: "for the
            # root, do not reshard after forward"), so it stays gathered until the end of the backward.
            parts["gathered_weights"] = min(gathered_form, root + 2 * unit)
        # The unit in its backward holds its unsharded gradient until the reduce-scatter (torch's BackwardPrefetch
        # docs: "the current set of gradients"), in the compute dtype.
        unit_trainable = trainable - (groups["embeddings"] + groups["head"] if method == "full" else 0)
        parts["reduce_scatter"] = unit_trainable / max(1, layers) * compute
        shared = "the weights, gradients and optimizer state" if a.fsdp != "shard_grad_op" else \
            "gradients and optimizer state (the weights are gathered whole to compute)"
        across = f"{a.shards} ways within each node, replicas across {a.nodes} nodes" \
            if a.fsdp == "hybrid_shard" else f"{a.shards} ways"
        notes.append(f"fsdp {a.fsdp} shards {shared} {across}")
        if a.fsdp_offload:
            # torch's CPUOffload: parameters and gradients on the CPU, where the optimizer step runs.
            host = {"weights": parts.pop("weights"), "gradients": all_gradients, "optimizer": parts.pop("optimizer")}
            notes.append(f"fsdp_offload: {sum(host.values()) / GiB:.1f} GiB of shards in host memory per GPU; "
                         "the optimizer step runs on the CPU")
    assert all(v >= 0 for v in parts.values()), parts
    return Estimate(method, parts, trainable, notes, host, a.fsdp, a.gpus or 1, a.nodes)


def gpu_count(gpus: int, nodes: int) -> str:
    return f"{gpus} GPUs" if nodes == 1 else f"{nodes} nodes x {gpus} GPUs"


def per_gpu(gpus: int, nodes: int, fsdp: str | None) -> str:
    """How per-GPU figures are meant: of how many GPUs, under which sharding."""
    if gpus * nodes == 1 and fsdp is None:
        return "on one GPU"
    return f"per GPU of {gpu_count(gpus, nodes)}, " + (f"fsdp {fsdp}" if fsdp else "DDP replicas")


def advice_to_fit(model: ModelFacts, method: str, a: Assumptions, free_bytes: float) -> list[str]:
    """What to change, in the order practitioners try it, each with the total it would reach."""
    if estimate(model, method, a).required <= free_bytes:
        return []
    tries = []
    if a.batch_size > 1:
        tries.append((f"per_device_train_batch_size 1 with gradient_accumulation_steps {a.batch_size}",
                      replace(a, batch_size=1)))
    if not (a.gradient_checkpointing if a.gradient_checkpointing is not None else method == "qlora"):
        tries.append(("gradient_checkpointing: true", replace(a, gradient_checkpointing=True)))
    if method == "full" and a.objective in ("dpo", "kto") and not a.precompute_ref_log_probs:
        tries.append(("precompute_ref_log_probs: true (no frozen reference copy)",
                      replace(a, precompute_ref_log_probs=True)))
    if method == "full" and a.optimizer == "adamw":
        tries.append(("optim: adamw_8bit (bitsandbytes)", replace(a, optimizer="adamw_8bit")))
    tries.append((f"max_seq_length {a.seq_len // 2}", replace(a, seq_len=max(64, a.seq_len // 2))))
    advice = []
    for text, changed in tries:
        need = estimate(model, method, changed).required
        advice.append(f"{text}: {need / GiB:.1f} GiB" + (" - fits" if need <= free_bytes else ""))
    if method != "qlora":
        need = estimate(model, "qlora", replace(a, batch_size=1, gradient_checkpointing=True)).required
        advice.append(f"method: qlora with batch 1 and checkpointing: {need / GiB:.1f} GiB"
                      + (" - fits" if need <= free_bytes else ""))
    advice.append(more_gpus(model, method, a, free_bytes))
    return advice


# GPU counts to try sharding over, (per node, nodes): one node's usual sizes, then nodes of 8.
GPU_COUNTS = ((2, 1), (4, 1), (8, 1), (8, 2), (8, 4), (8, 8))


def more_gpus(model: ModelFacts, method: str, a: Assumptions, free_bytes: float) -> str:
    """The fewest GPUs of this size that hold the run under fsdp full_shard (DDP keeps a whole copy per GPU,
    so more GPUs only shrink the per-GPU batch there)."""
    counts = [(a.gpus or 1, a.nodes)] if a.world_size > 1 else []
    counts += [(g, n) for g, n in GPU_COUNTS if g * n > a.world_size]
    for gpus, nodes in counts:
        sharded = replace(a, gpus=gpus, nodes=nodes, fsdp="full_shard")
        need = estimate(model, method, sharded).required
        if need <= free_bytes:
            return f"fsdp: full_shard on {gpu_count(gpus, nodes)}: {need / GiB:.1f} GiB per GPU - fits"
    return f"fsdp: full_shard: even {gpus * nodes} GPUs need {need / GiB:.1f} GiB each"


def estimate_all(model: ModelFacts, a: Assumptions | None = None) -> dict[str, Estimate]:
    return {method: estimate(model, method, a) for method in METHODS}
