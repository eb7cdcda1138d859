"""Should you fine-tune, how, with which hyperparameters, and what it costs.

The decision follows the field's practice: measure the prompted model first;
use retrieval (RAG) when the need is fresh or private knowledge; fine-tune only
with a measured gap, a stable task and enough clean examples; then LoRA by
default, QLoRA when memory is short, full fine-tuning only with much data and
memory; FSDP's sharding only when one GPU cannot hold the run and the planned GPUs
can. Every suggestion carries its reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from engine.models.facts import ModelFacts
from engine.plan.memory import Assumptions, GiB, advice_to_fit, estimate, estimate_all
from engine.training.config import DEFAULT_PREFERENCE_LEARNING_RATES, PREFERENCE_OBJECTIVES

# Clean examples to start with, by task: (minimum, comfortable). Formatting and extraction are
# learned from hundreds (the demo learns a strict JSON format from 275); knowledge-heavy tasks
# need thousands.
DATA_NEEDS = {
    "classification": (500, 2000), "extraction": (200, 1000), "formatting": (200, 1000),
    "style": (300, 1500), "dialogue": (500, 3000), "summarisation": (1000, 5000),
    "reasoning": (1000, 5000), "code": (2000, 10000), "domain": (5000, 20000),
}
TASKS = tuple(DATA_NEEDS)

# Dense bf16 tensor throughput, TFLOP/s, by a substring of the GPU name; and a typical
# on-demand price per GPU-hour in USD (an assumption: pass your own price).
GPU_SPECS = [("H200", 989, 3.5), ("H100", 989, 2.5), ("A100", 312, 1.5), ("L40S", 362, 1.0),
             ("A10", 125, 0.75), ("L4", 121, 0.5), ("4090", 165, 0.5), ("3090", 71, 0.3),
             ("V100", 125, 0.5), ("T4", 65, 0.3)]
MFU = 0.35  # share of peak reached by a typical fine-tuning step
CPU_TFLOPS_PER_CORE = 0.04  # measured: SmolLM2-135M LoRA at ~150 tokens/s on 2 cores


@dataclass
class Situation:
    task: str = "formatting"
    clean_examples: int | None = None
    baseline_score: float | None = None  # the prompted model's task metric, 0..1
    target_score: float | None = None
    fresh_knowledge: bool = False  # needs facts that change, or private documents
    task_stable: bool = True
    reason: str = "quality"  # quality | latency | cost
    gpus: list[dict] = field(default_factory=list)  # from engine.gpu.snapshot()["gpus"]
    tokens_per_example: int | None = None  # mean, from the data screen
    tokens_p99: int | None = None  # 99th percentile of example length in tokens
    price_per_gpu_hour: float | None = None
    general_data: str | None = None  # a file of general instruction examples to mix in against forgetting
    objective: str = "sft"  # sft | dpo | orpo | kto
    sft_runs: list[str] | None = None  # finished SFT runs of the workspace (sft_runs()); None: not looked
    desirable: int | None = None  # KTO: desirable and undesirable completions in the data
    undesirable: int | None = None


@dataclass
class Hyperparameter:
    key: str
    value: object
    reason: str


@dataclass
class Plan:
    decision: str  # measure_baseline | prompt | rag | collect_data | fine_tune
    reasons: list[str]
    method: str | None
    method_reason: str
    memory: dict[str, dict]  # method -> estimate dict with "fits", per GPU under `fsdp`
    free_memory_gib: float | None
    fit_advice: list[str]
    hyperparameters: list[Hyperparameter]
    time_hours: float | None
    cost_usd: float | None
    time_basis: str
    forgetting: str = ""  # the reasoned line on forgetting and mixing in general data
    mixing: list[Hyperparameter] = field(default_factory=list)  # general_data/general_ratio, when a file was given
    objective: str = "sft"
    objective_advice: list[str] = field(default_factory=list)  # preference objectives: where to start from, why
    gpus: int = 1  # per node, as planned
    nodes: int = 1
    fsdp: str | None = None  # the sharding mode the plan is for: asked, or recommended (then `fsdp_reason` says why)
    fsdp_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def config(self, model: str, data: str) -> dict:
        """A run configuration for `tunedeck train`."""
        cfg = {"model": model, "data": data, "method": self.method or "lora"}
        if self.objective != "sft":
            cfg["objective"] = self.objective
        for hp in self.hyperparameters + self.mixing:
            cfg[hp.key] = hp.value
        return cfg


def decide(s: Situation) -> tuple[str, list[str]]:
    need_min, need_ok = DATA_NEEDS.get(s.task, (500, 2000))
    reasons = []
    if s.fresh_knowledge:
        return "rag", ["the need is fresh or private knowledge: retrieval keeps it current and citable; "
                       "fine-tuning teaches format and behaviour, not facts that change"]
    if not s.task_stable:
        return "prompt", ["the task still changes: every change would mean new data and a new run; "
                          "iterate on the prompt until it settles"]
    if s.baseline_score is None:
        return "measure_baseline", ["no measured baseline: evaluate the prompted base model (system prompt "
                                    "plus a few examples) on held-out data first, it often suffices"]
    if s.target_score is not None and s.baseline_score >= s.target_score:
        return "prompt", [f"the prompted model already scores {s.baseline_score:.0%} against a target of "
                          f"{s.target_score:.0%}: fine-tuning would cost more and gain little"]
    gap = f"{s.baseline_score:.0%} prompted" + (f" vs target {s.target_score:.0%}" if s.target_score else "")
    reasons.append(f"measured gap: {gap}")
    if s.clean_examples is None or s.clean_examples < need_min:
        have = "an unknown number of" if s.clean_examples is None else f"{s.clean_examples:,}"
        return "collect_data", reasons + [f"{have} clean examples; {s.task} needs about {need_min:,} to start "
                                          f"and {need_ok:,} to be comfortable: collect and clean more first"]
    reasons.append(f"{s.clean_examples:,} clean examples for {s.task} (start at {need_min:,})")
    if s.reason in ("latency", "cost"):
        reasons.append(f"{s.reason} is a good reason: a tuned small model can replace a prompted large one")
    return "fine_tune", reasons


def choose_method(s: Situation, fits: dict[str, bool] | None) -> tuple[str, str]:
    """`fits`: method -> whether the planned GPUs hold it (sharded where that is what it takes); None: unknown."""
    if fits is None:
        return "lora", "LoRA by default: close to full fine-tuning on most tasks at a fraction of the memory"
    _, need_ok = DATA_NEEDS.get(s.task, (500, 2000))
    if fits["full"] and (s.clean_examples or 0) >= max(20000, 4 * need_ok):
        return "full", "full fine-tuning: it fits and there is much data, where it can beat LoRA"
    if fits["lora"]:
        return "lora", "LoRA: fits in memory and is the default; full fine-tuning rarely pays for its memory"
    if fits["qlora"]:
        return "qlora", "QLoRA: LoRA does not fit; 4-bit base weights cut memory with a small quality cost"
    return "qlora", "nothing fits as configured: QLoRA needs the least; see what to change"


# Sharding modes to try when one GPU cannot hold a run, with why each (torch's FSDP docs, ShardingStrategy, and
# Zhao et al. 2023, "PyTorch FSDP"), least communication first: across nodes hybrid_shard keeps the all-gathers
# on each node's own links; shard_grad_op gathers the weights once a step; full_shard shards the most.
SHARDING_REASONS = {
    "hybrid_shard": "full_shard within each node and replicas across nodes: the per-layer all-gathers stay on "
                    "the node's own links (torch FSDP docs)",
    "shard_grad_op": "shards gradients and optimizer state and gathers the weights once a step (ZeRO-2 in "
                     "DeepSpeed's terms): the least communication (torch FSDP docs)",
    "full_shard": "shards weights, gradients and optimizer state: the most memory saved, at two all-gathers of "
                  "each layer a step (PyTorch FSDP paper, Zhao et al. 2023)",
}


def choose_sharding(model: ModelFacts, method: str, a: Assumptions, free: float) -> tuple[str | None, str, bool]:
    """(mode, why, fits): DDP replicas while one GPU holds the run; otherwise the first mode whose shards the
    planned GPUs hold. A mode already asked for is kept."""
    need = estimate(model, method, a).required
    if a.fsdp is not None or need <= free or a.world_size == 1:
        return a.fsdp, "", need <= free
    modes = (["hybrid_shard"] if a.nodes > 1 else []) + ["shard_grad_op", "full_shard"]
    for mode in modes:
        sharded = estimate(model, method, replace(a, fsdp=mode)).required
        if sharded <= free:
            return mode, (f"one GPU cannot hold {method} ({need / GiB:.1f} GiB for {free / GiB:.1f} free); fsdp "
                          f"{mode} on {a.world_size} GPUs needs {sharded / GiB:.1f} GiB each"), True
    return None, "", False


# Preference objectives: what their strength is called, its value and where it comes from.
PREFERENCE_BETA = {
    "dpo": "the DPO paper (Rafailov et al. 2023) uses beta 0.1, TRL's default: how far the policy may move from "
           "the reference; lower lets it drift further, higher keeps it close",
    "orpo": "ORPO's lambda, the weight of the odds-ratio term beside the NLL on chosen answers: 0.1 in the ORPO "
            "paper (Hong et al. 2024) and TRL's ORPOConfig",
    "kto": "the KTO paper (Ethayarajh et al. 2024) and TRL's KTOConfig default: 0.1, as DPO's beta",
}


def hyperparameters(model: ModelFacts, method: str, s: Situation, a: Assumptions) -> list[Hyperparameter]:
    n = s.clean_examples or 1000
    preference = s.objective in PREFERENCE_OBJECTIVES
    billions = model.parameters / 1e9
    if preference:
        lr = DEFAULT_PREFERENCE_LEARNING_RATES[method]
        lr_reason = ("an order of magnitude below SFT: preference tuning moves a tuned model a little "
                     + ("(Zephyr's full DPO: 5e-7)" if method == "full" else
                        "(the alignment handbook's QLoRA DPO: 5e-6)")
                     + "; higher rates collapse the chosen answers' likelihood")
        epochs = 3 if n < 1000 else 2 if n < 5000 else 1
        epochs_reason = ("the alignment handbook's DPO recipes train 1 epoch, Zephyr 1-3: small pair sets take "
                         "2-3; more drives the training margin up while held-out reward accuracy stalls")
    else:
        epochs = 3 if n < 1000 else 2 if n < 10000 else 1
        epochs_reason = "fewer passes as data grows: small sets need 3, large ones 1-2; more epochs mostly add overfitting"
        if method == "full":
            lr = 2e-5 if billions < 10 else 1e-5
            lr_reason = "full fine-tuning moves every weight: 1e-5..2e-5, lower for larger models"
        else:
            lr = 2e-4 if billions < 20 else 1e-4
            lr_reason = ("LoRA/QLoRA recipes use 1e-4..3e-4 (QLoRA paper: 2e-4 up to 13B, 1e-4 for 33B+); "
                         "1e-5 is a full fine-tuning rate and barely moves an adapter")
    batch, batch_reason = a.batch_size, "the largest that fits the estimate"
    if s.objective == "kto" and batch < 2:
        batch, batch_reason = 2, "KTO's KL term pairs each completion with another in the same batch: TRL needs 2+"
    effective = 16 if n < 5000 else 32
    accumulation = max(1, effective // (batch * a.world_size))
    steps = max(1, n * epochs // (batch * a.world_size * accumulation))
    every = max(1, steps // 10)
    if s.tokens_p99:
        seq_len = min(a.seq_len, 1 << (s.tokens_p99 - 1).bit_length())  # next power of two above p99
        seq_reason = f"the next power of two above the data's 99th percentile ({s.tokens_p99} tokens)"
    else:
        seq_len, seq_reason = a.seq_len, "no data measured: a common default; longer costs memory linearly"
    if preference:
        seq_reason += "; prompt and completion share it (TRL's max_length)"
    hps = [
        Hyperparameter("learning_rate", lr, lr_reason),
        Hyperparameter("num_train_epochs", epochs, epochs_reason),
        Hyperparameter("per_device_train_batch_size", batch, batch_reason),
        Hyperparameter("gradient_accumulation_steps", accumulation,
                       f"an effective batch of about {effective} steadies updates without more memory"),
        Hyperparameter("max_seq_length", seq_len, seq_reason),
        Hyperparameter("lr_scheduler_type", "cosine", "cosine decay with a short warmup is the common default"),
        Hyperparameter("weight_decay", 0.0 if method != "full" else 0.01,
                       "adapters are small and start at zero: no decay; full fine-tuning: a light 0.01"),
        Hyperparameter("eval_steps", every, f"about 10 evaluations over the run's ~{steps} steps"),
        Hyperparameter("save_steps", every, "a checkpoint at every evaluation, so the best one can be kept"),
        Hyperparameter("warmup_steps", 0.1, "10% warmup, as the alignment handbook's DPO recipes") if preference
        else Hyperparameter("warmup_steps", 0.03, "3% warmup avoids early spikes while Adam's statistics settle"),
        Hyperparameter("early_stopping_patience", 3, "stop when eval loss has not improved for 3 evaluations"),
    ]
    if preference:
        hps[:0] = [Hyperparameter("objective", s.objective, OBJECTIVE_REASONS[s.objective]),
                   Hyperparameter("beta", 0.1, PREFERENCE_BETA[s.objective])]
        hps += kto_weights(s) if s.objective == "kto" else []
    if method != "full":
        rank = 8 if n < 1000 else 16 if n < 20000 else 32
        hps += [
            Hyperparameter("lora_r", rank, "rank 8-16 suffices for format and style; more data can use more"),
            Hyperparameter("lora_alpha", 2 * rank, "alpha = 2 x rank (scaling 2); note alpha 32 with r 8 is 4x"),
            Hyperparameter("lora_target_modules", "all-linear", target_reason(model)),
            Hyperparameter("lora_dropout", model.lora["dropout"],
                           "peft wraps this model's expert tensors, which take no dropout" if model.lora["wraps_experts"]
                           else "a light dropout on the adapters' input, the common default"),
        ]
    if method == "qlora" or a.gradient_checkpointing:
        hps.append(Hyperparameter("gradient_checkpointing", True, "trades ~30% speed for most activation memory"))
    return hps


OBJECTIVE_REASONS = {
    "dpo": "pairs of a chosen and a rejected answer: DPO raises the chosen one's likelihood against the "
           "rejected one's, relative to the reference model",
    "orpo": "pairs, without a reference model: ORPO adds an odds-ratio penalty to SFT's loss on the chosen answers",
    "kto": "single answers labelled desirable or not: KTO needs no pairs",
}


def kto_weights(s: Situation) -> list[Hyperparameter]:
    """KTO paper: keep desirable_weight x desirable / (undesirable_weight x undesirable) within 1 to 4/3."""
    if not s.desirable or not s.undesirable:
        return [Hyperparameter("desirable_weight", 1.0, "count the data's desirable and undesirable answers: "
                               "the KTO paper balances weight x count to a ratio within 1 to 4/3")]
    ratio = s.desirable / s.undesirable
    desirable, undesirable = (round(1 / ratio, 2), 1.0) if ratio < 1 else (1.0, round(ratio * 3 / 4, 2)) \
        if ratio > 4 / 3 else (1.0, 1.0)
    why = (f"{s.desirable:,} desirable and {s.undesirable:,} undesirable answers: weights that keep weight x count "
           "within 1 to 4/3 (the KTO paper's balance)")
    return [Hyperparameter("desirable_weight", desirable, why), Hyperparameter("undesirable_weight", undesirable, why)]


def objective_advice(s: Situation) -> list[str]:
    """Where a preference run starts from, and why: DPO and KTO reweight what the starting model already says."""
    if s.objective not in PREFERENCE_OBJECTIVES:
        return []
    if s.objective == "orpo":
        return ["ORPO folds SFT into its loss (an NLL term on the chosen answers): it may start from the base "
                "model, no SFT run needed (ORPO paper)"]
    why = (f"{s.objective.upper()} only reweights answers its starting model already gives (the reference is that "
           "model), so it cannot teach a format or task the model does not produce; the DPO paper and Zephyr "
           "start from an SFT model")
    if s.sft_runs is not None and not s.sft_runs:
        return [f"no finished SFT run in this workspace: train SFT first (objective: sft) on demonstrations, "
                f"then start the {s.objective.upper()} run from its model. " + why]
    start = (f"start from an SFT run's model: `tunedeck export {s.sft_runs[-1]} --merge --out DIR`, then model: DIR"
             if s.sft_runs else "start from an SFT model (model: the merged export of an SFT run)")
    return [start + ". " + why]


def sft_runs(workspace) -> list[str]:
    """The workspace's finished supervised runs that left weights (adapter/ or model/), oldest first."""
    from engine.runs.workspace import list_runs

    return [run.id for run in list_runs(workspace)
            if run.config().get("objective", "sft") == "sft" and run.status().get("state") == "completed"
            and ((run.path / "adapter").is_dir() or (run.path / "model").is_dir())]


def forgetting_advice(method: str, s: Situation) -> tuple[str, list[Hyperparameter]]:
    """Mixing in general data (003's first remedy for forgetting), offered by method: full fine-tuning moves
    every weight, so it is advised there; an adapter forgets less but not nothing (the demo's LoRA regressed
    3 of 10 probes), so there it is the answer to probes that regress. Written into the config only with a
    general file to name."""
    ratio = 0.3
    keys = f"general_data: FILE, general_ratio: {ratio}"
    if method == "full":
        line = (f"full fine-tuning moves every weight, where forgetting is worst: mix in general examples "
                f"({keys}; 003's 70/30) and check with `tunedeck eval`'s probes")
    else:
        line = (f"{method} forgets less, not nothing: check with `tunedeck eval`'s probes; if they regress, "
                f"mix in general examples ({keys})")
    if not s.general_data:
        return line, []
    return line, [Hyperparameter("general_data", s.general_data, "general examples sampled into the training "
                                 "split only; the validation split stays the task's"),
                  Hyperparameter("general_ratio", ratio, "share of general examples in training: 003's 70/30")]


def target_reason(model: ModelFacts) -> str:
    """all-linear, said in the model's own module names (what a user would list to narrow it)."""
    names = ", ".join(model.linear_modules)
    experts = ", ".join(model.expert_parameters)
    return (f"every linear layer of this {model.architecture} ({names}"
            + (f"; and the experts' {experts}" if experts and model.lora["wraps_experts"] else "")
            + "): the QLoRA paper found attention-only adapters fall short")


def gpu_rate(gpus: list[dict]) -> tuple[float, float | None, str]:
    """(effective FLOP/s across GPUs, price per hour or None, description)."""
    if not gpus:
        import os

        cores = os.cpu_count() or 1
        return cores * CPU_TFLOPS_PER_CORE * 1e12, None, f"CPU, {cores} cores"
    total, price = 0.0, 0.0
    for gpu in gpus:
        name = str(gpu.get("name") or "")
        spec = next(((t, p) for key, t, p in GPU_SPECS if key in name), (100, 1.0))
        total += spec[0] * 1e12 * MFU
        price += spec[1]
    return total, price, f"{len(gpus)} x {gpus[0].get('name')}"


def training_time(model: ModelFacts, method: str, tokens: float, gpus: list[dict], checkpointing: bool,
                  objective: str = "sft"):
    # Forward 2N FLOPs per token, backward 4N (2N with a frozen base: no weight gradients).
    per_token = 6 if method == "full" else 4
    if checkpointing:
        per_token += 2  # one more forward
    if objective in ("dpo", "orpo"):
        per_token *= 2  # a pair's chosen and rejected sequence
    if objective == "dpo":
        per_token += 4  # the reference's forward of both
    if objective == "kto":
        per_token += 6  # the KL batch through the policy, then both batches through the reference
    flops = per_token * model.parameters * tokens
    rate, price, basis = gpu_rate(gpus)
    if method == "qlora":
        rate /= 1.4  # dequantising NF4 weights on every use
    hours = flops / rate / 3600
    return hours, price, basis


def plan(model: ModelFacts, s: Situation, a: Assumptions | None = None) -> Plan:
    a = a or Assumptions()
    decision, reasons = decide(s)
    free_mib = [g.get("memory_free_mib") or ((g.get("memory_total_mib") or 0) - (g.get("memory_used_mib") or 0))
                for g in s.gpus]
    free = min(free_mib) * 2**20 if s.gpus and all(free_mib) else None
    a = replace(a, gpus=a.gpus or max(1, len(s.gpus)), objective=s.objective)
    sharding = None if free is None else {m: choose_sharding(model, m, a, free) for m in estimate_all(model, a)}
    method, method_reason = choose_method(s, None if sharding is None else {m: v[2] for m, v in sharding.items()})
    fsdp, fsdp_reason = sharding[method][:2] if sharding else (a.fsdp, "")
    a = replace(a, fsdp=fsdp)
    memory = {m: {**e.to_dict(), "fits": None if free is None else e.required <= free}
              for m, e in estimate_all(model, a).items()}
    fit = advice_to_fit(model, method, a, free) if free is not None else []
    hps = hyperparameters(model, method, s, a)
    if a.gpus > 1:
        hps.append(Hyperparameter("nproc_per_node", a.gpus, "one process per GPU (torchrun)" + (
            f"; on each of the {a.nodes} nodes, with nnodes: {a.nodes} and network_interface added by hand"
            if a.nodes > 1 else "")))
    if fsdp:
        hps.append(Hyperparameter("fsdp", fsdp, SHARDING_REASONS[fsdp]))
    if fsdp == "hybrid_shard":
        hps.append(Hyperparameter("fsdp_version", 1, "transformers runs hybrid_shard on FSDP1 only"))
    if a.fsdp_offload:
        hps.append(Hyperparameter("fsdp_offload", True, "the shards of weights, gradients and optimizer state wait "
                                  "in host memory; the optimizer step runs on the CPU"))
    forgetting, mixing = forgetting_advice(method, s)
    epochs = next(h.value for h in hps if h.key == "num_train_epochs")
    tokens = (s.clean_examples or 1000) * (s.tokens_per_example or a.seq_len // 2) * epochs
    checkpointing = a.gradient_checkpointing if a.gradient_checkpointing is not None else method == "qlora"
    # The planned GPUs: those found, or as many of the first one's kind as asked for, on every node.
    devices = (s.gpus if len(s.gpus) == a.gpus else s.gpus[:1] * a.gpus) * a.nodes
    hours, price, basis = training_time(model, method, tokens, devices, checkpointing, s.objective)
    price = s.price_per_gpu_hour * max(1, len(devices)) if s.price_per_gpu_hour is not None else price
    return Plan(decision=decision, reasons=reasons, method=method, method_reason=method_reason, memory=memory,
                free_memory_gib=None if free is None else round(free / GiB, 2), fit_advice=fit,
                hyperparameters=hps, forgetting=forgetting, mixing=mixing, objective=s.objective,
                objective_advice=objective_advice(s), gpus=a.gpus, nodes=a.nodes, fsdp=fsdp,
                fsdp_reason=fsdp_reason, time_hours=round(hours, 3),
                cost_usd=None if price is None else round(hours * price, 2),
                time_basis=f"{tokens:,.0f} training tokens on {basis} at {MFU:.0%} of peak"
                           if s.gpus else f"{tokens:,.0f} training tokens on the {basis}")


def labels(examples) -> tuple[int | None, int | None]:
    """(desirable, undesirable) completions among unpaired (KTO) examples; (None, None) when there are none."""
    unpaired = [ex.desirable for ex in examples if ex.kind == "unpaired"]
    return (sum(unpaired), len(unpaired) - sum(unpaired)) if unpaired else (None, None)
