"""`tunedeck chat RUN [--base] [--checkpoint STEP | --export PATH] [--prompt TEXT] [--json]`: talk to a run's tuned model (and its
base) from a shell. With --prompt it answers once and exits; without, a line-by-line conversation on the
terminal (an empty line or end of input ends it). Answers stream as they are generated; every answer is
kept in `<run>/chat/`. The model runs in engine.chat.server, owned through a pipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.chat.client import ChatEngine, ChatEngineError
from engine.chat.session import (
    Conversation,
    ConversationLog,
    ChatWeights,
    chat_weights,
    turn_record,
    with_system,
)
from engine.runs.workspace import resolve_run
from tui.cli.common import CliError


def cmd_chat(args) -> int:
    run = resolve_run(args.run, args.workspace)
    weights = ChatWeights(args.checkpoint, args.export.resolve() if args.export else None)
    chat_weights(run, weights)  # a missing adapter, checkpoint or export fails before loading
    if not 0 <= args.temperature <= 5:
        raise CliError(f"--temperature must be between 0 (greedy) and 5, not {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CliError(f"--top-p must be above 0 and at most 1, not {args.top_p}")
    if not 1 <= args.max_new_tokens <= 32768:
        raise CliError(f"--max-new-tokens must be between 1 and 32768, not {args.max_new_tokens}")
    sides = ("tuned", "base") if args.base else ("tuned",)
    settings = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
    engine = ChatEngine(run, weights)
    engine.start()
    try:
        ready = engine.wait_ready()
        log, conversation = ConversationLog(run), Conversation(sides)
        if not args.json and args.prompt is None:
            also = " and the base" if args.base else ""
            bits = ", 4-bit base" if ready.get("base_4bit") else ""
            print(f"chatting with {run.id} ({weights.label} weights{also}{bits}) on {ready['device']}; "
                  "an empty line ends", file=sys.stderr)
        prompts = [args.prompt] if args.prompt is not None else iter(lambda: read_line(), "")
        for prompt in prompts:
            conversation.ask(prompt)
            answers = {}
            for side in sides:
                messages = list(conversation.history[side])
                stream = None if args.json else lambda text: print(text, end="", flush=True)
                if stream:
                    print(f"{side}: ", end="", flush=True)
                done = engine.answer(messages, side, on_token=stream, **settings)
                if stream:
                    print()
                    print(f"  [{done['tokens']} tokens, {fmt_rate(done['tokens_per_second'])}]", file=sys.stderr)
                conversation.answered(side, done["text"])
                sent = with_system(messages, ready["system_prompt"])
                log.append(turn_record(side, weights.label, sent, done, settings))
                answers[side] = done["text"]
            if args.json:
                print(json.dumps(answers, ensure_ascii=False), flush=True)
    except ChatEngineError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.close()
    return 0


def read_line() -> str:
    try:
        return input("you> " if sys.stdin.isatty() else "")
    except EOFError:
        return ""


def fmt_rate(tokens_per_second) -> str:
    return "-" if tokens_per_second is None else f"{tokens_per_second:.1f} tokens/s"


def add_parsers(sub, common) -> None:
    p = sub.add_parser("chat", parents=[common], help="talk to a run's tuned model (and its base), streaming")
    p.add_argument("run")
    p.add_argument("--base", action="store_true", help="the base model answers too, side by side")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--checkpoint", type=int, metavar="STEP", help="a complete checkpoint instead of the final weights")
    choice.add_argument("--export", type=Path, metavar="PATH",
                        help="what `tunedeck export` wrote: an adapter or merged directory, or a GGUF file")
    p.add_argument("--prompt", metavar="TEXT", help="answer this once and exit (else: a conversation on the terminal)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature above 0")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(func=cmd_chat)
