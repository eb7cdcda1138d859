"""`tunedeck pairs RUN --prompts FILE --out FILE`: preference pairs from a finished run's own answers.

The run's model answers each prompt twice (or --n times), sampled and seeded, in the engine's process
(engine.evaluation.sample_pairs); the pairs open in the blind A/B review (tui/screens/pair_review.py),
and once it closes the judged ones are written to --out in TRL's prompt/chosen/rejected layout. The same
command resumes: answers already generated and judgements already made are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.evaluation.endpoint import EndpointError
from engine.evaluation.pairs import check_settings, judge_pairs, pairs_folder, write_preference_file
from engine.runs.workspace import resolve_run
from tui.cli.common import CliError, engine_subprocess, print_json


def format_written(result: dict) -> str:
    left = [f"{result[key]} {label}" for key, label in (("ties", "ties"), ("skipped", "skipped"),
                                                        ("unjudged", "not judged yet"),
                                                        ("identical", "with identical answers")) if result[key]]
    line = f"wrote {result['written']} preference pairs to {result['out']}"
    if left:
        line += "; not written: " + ", ".join(left)
    if result["unjudged"]:
        line += " (the same command judges the rest)"
    return line


def cmd_pairs(args) -> int:
    run = resolve_run(args.run, args.workspace)
    try:
        check_settings(args.n, args.temperature)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not Path(args.prompts).exists():
        raise CliError(f"prompts file not found: {args.prompts}")
    folder = pairs_folder(run.path, args.prompts, args.n, args.temperature, args.seed)
    argv = ["--run-dir", str(run.path), "--prompts", str(Path(args.prompts).resolve()), "--folder", str(folder),
            "--n", str(args.n), "--temperature", str(args.temperature), "--seed", str(args.seed),
            "--max-new-tokens", str(args.max_new_tokens)] + (["--limit", str(args.limit)] if args.limit else [])
    generated = json.loads(engine_subprocess("engine.evaluation.sample_pairs", *argv))
    if not args.json:
        print(f"{generated['pairs']} pairs from {generated['prompts']} prompts in {folder} "
              f"({generated['generated']} prompts answered now, {generated['judged']} pairs judged before)")
    judged = None
    if args.judge_endpoint:
        try:
            judged = judge_pairs(folder, args.judge_endpoint, args.judge_model)
        except EndpointError as exc:  # what it judged before failing is kept in the store
            raise CliError(f"{exc} (the pairs judged so far are kept: run the same command again)") from None
        if not args.json:
            print(f"the judge at {args.judge_endpoint} judged {judged['judged']} pairs ({judged['ties']} ties: "
                  "the two orders disagreed or it said tie)")
    if not args.no_review:
        from tui.app import TunedeckApp

        TunedeckApp(args.workspace, mode="eval", judge_pairs=folder).run()
    result = write_preference_file(folder, args.out)
    if args.json:
        print_json({**result, "generated": generated, "judge": judged})
    else:
        print(format_written(result))
    return 0


def add_parsers(sub, common) -> None:
    p = sub.add_parser("pairs", parents=[common],
                       help="preference pairs from a run's own sampled answers, judged blind, written for DPO")
    p.add_argument("run", help="a finished run (its final adapter or model answers)")
    p.add_argument("--prompts", required=True, help="a data file (its prompts are used) or a text file, one a line")
    p.add_argument("--out", required=True, type=Path, help="the preference file to write (.jsonl or .json)")
    p.add_argument("--n", type=int, default=2, help="answers per prompt, judged two by two (even; default 2)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (above 0)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same answers")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--limit", type=int, help="the first N prompts")
    p.add_argument("--judge-endpoint", metavar="URL",
                   help="an LLM judge (OpenAI-compatible base URL) judges the pairs not judged yet, in both orders")
    p.add_argument("--judge-model", default="default")
    p.add_argument("--no-review", action="store_true",
                   help="do not open the review: generate, then write what is already judged")
    p.set_defaults(func=cmd_pairs)
