"""`tunedeck eval|export`: evaluate a run against the prompted base model, export its adapter or merged model."""

from __future__ import annotations

import json
from pathlib import Path

from engine.runs.protocol import Run
from engine.runs.workspace import resolve_run
from tui.cli.common import CliError, engine_subprocess, print_json


def run_eval(run: Run, data: str | None, baseline: bool, limit: int | None, *extra: str) -> dict:
    argv = ["--run-dir", str(run.path)] + (["--data", data] if data else []) + (["--baseline"] if baseline else [])
    return json.loads(engine_subprocess("engine.evaluation.run", *argv, *(["--limit", str(limit)] if limit else []),
                                         *extra))


def format_eval(result: dict) -> str:
    from engine.evaluation.report import (
        SIDE_LABELS,
        format_ratio,
        format_value,
        judge_win_rate_line,
        preference_line,
        present,
        sides,
    )

    shown = sides(result)
    against = list(result.get("ratios") or {})
    lines = [f"{result['examples']} held-out examples ({result['data']}); task metric {result['task_metric']}"]
    if "reference_model" in result:
        lines.append(f"ref model: {result['reference_model'].get('model')}, prompted like the baseline")
    if result.get("against"):
        lines.append(f"baseline: {result['baseline'].get('model')}, asked the prompts as they are")
    lines.append(f"{'':<20}" + "".join(f"{SIDE_LABELS[s]:>10}" for s in shown)
                 + "".join(f"{'vs ' + SIDE_LABELS[s]:>13}" for s in against))  # cost: tuned as a multiple
    for m in present(result, shown):
        ratios = "".join(f"{format_ratio(result['ratios'][s].get(m.key)):>13}" for s in against) \
            if m.group == "cost" else ""
        lines.append(f"{m.label:<20}" + "".join(f"{format_value(result[s].get(m.key), m.kind):>10}" for s in shown)
                     + ratios)
    if result.get("preference"):
        lines.append(preference_line(result["preference"]))
    if result.get("judge_win_rate"):
        lines.append(judge_win_rate_line(result["judge_win_rate"]))
    lines.append(f"forgetting: {result['forgetting']['verdict']}")
    lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    run = resolve_run(args.run, args.workspace)
    extra = ["--batch-size", str(args.batch_size)]
    if args.judge_endpoint:
        extra += ["--judge-endpoint", args.judge_endpoint, "--judge-model", args.judge_model]
    if args.reference:
        extra += ["--reference", args.reference, "--reference-model", args.reference_model]
    if args.against:
        if args.baseline:
            raise CliError("--against and --baseline both answer as the baseline side: pick one")
        other = "base" if args.against == "base" else str(resolve_run(args.against, args.workspace).path)
        if other == str(run.path):
            raise CliError(f"--against {args.against} is the run itself; name the run it started from, or base")
        extra += ["--against", other]
    result = run_eval(run, args.data, args.baseline, args.limit, *extra)
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    return 0


def run_export(run: Run, out: Path, merge: bool = False, quant: str | None = None) -> dict:
    """Export in the engine's process (engine.export.weights); its result, verification included."""
    argv = ["--run-dir", str(run.path), "--out", str(out.resolve())] + (["--merge"] if merge else []) \
        + (["--gguf", quant] if quant else [])
    return json.loads(engine_subprocess("engine.export.weights", *argv))


def format_export(result: dict) -> str:
    written = result.get("gguf") or result["out"]
    lines = [f"exported {result['kind'] if result['kind'] in ('adapter', 'merged') else 'GGUF ' + result['kind']} "
             f"to {written}" + (f" ({result['bytes'] / 2**20:.0f} MiB)" if result.get("bytes") else ""),
             *verification_lines(result["verification"])]
    lines += [f"warning: {w}" for w in result["verification"]["warnings"]]
    lines += [f"note: {n}" for n in result["verification"]["notes"]]
    lines += [f"model card: {result['card']}", "run it:", result["commands"]]
    return "\n".join(lines)


def verification_lines(report: dict) -> list[str]:
    return [f"verified {c['model']} on {report['prompts']} prompts of {report['data']}: next token agrees on "
            f"{c['next_token_agreement']:.1%} of {c['positions']} positions, greedy answers same on "
            f"{c['greedy_same']}/{c['greedy_total']}" for c in report["checks"]]


def cmd_export(args) -> int:
    run = resolve_run(args.run, args.workspace)
    if args.quant and not args.gguf:
        raise CliError("--quant goes with --gguf")
    if args.gguf and args.merge:
        raise CliError("--gguf exports the merged model already: drop --merge")
    result = run_export(run, args.out, args.merge, (args.quant or "f16") if args.gguf else None)
    if args.json:
        print_json(result)
    else:
        print(format_export(result))
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common], help="evaluate a run: held-out metrics, baseline, forgetting")
    p.add_argument("run")
    p.add_argument("--data", help="held-out file (default: the run's test_data, else eval_data)")
    p.add_argument("--baseline", action="store_true", help="also the prompted base model (3-shot)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples")
    p.add_argument("--judge-endpoint", help="optional LLM judge: an OpenAI-compatible base URL (off by default)")
    p.add_argument("--judge-model", default="default")
    p.add_argument("--reference", metavar="MODEL|URL",
                   help="a third column: a (larger) model prompted like the baseline: a model directory, GGUF "
                        "file or cached repo id, or an OpenAI-compatible base URL (http://host:port/v1)")
    p.add_argument("--reference-model", default="default", metavar="NAME", help="the model a --reference URL serves")
    p.add_argument("--batch-size", type=int, default=8,
                   help="examples generated together; 1 times each alone (a single request's latency)")
    p.add_argument("--against", metavar="RUN|base",
                   help="compare with another run (e.g. the SFT run a preference run started from) or `base` "
                        "(the model this run started from) instead of the prompted baseline: its answers fill the "
                        "baseline side and the blind A/B review; with --judge-endpoint, a judged win rate")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", parents=[common],
                       help="export the adapter, the merged model or a GGUF file, verified and with a model card")
    p.add_argument("run")
    p.add_argument("--out", type=Path, required=True, help="a new (or empty) directory")
    p.add_argument("--merge", action="store_true", help="fold the adapter into the base weights")
    p.add_argument("--gguf", action="store_true",
                   help="the merged model as GGUF (llama.cpp's converter), with an Ollama Modelfile")
    p.add_argument("--quant", choices=("f16", "q8_0", "q4_k_m"),
                   help="GGUF quantisation (default f16); q4_k_m needs llama.cpp's llama-quantize")
    p.set_defaults(func=cmd_export)
