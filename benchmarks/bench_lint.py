"""Lint on planted defects: recall per rule, and how many untouched real rows any rule flags.

  python benchmarks/bench_lint.py [--per-kind 60] [--seed 0] [--show-clean]

Real rows come from the three shared Alpaca-layout datasets. Each planted row is a copy of a
real row (seeded choice) with one defect put in the way it happens in real data: an answer cut
mid-sentence, `<noinput>` as the input, a traceback as the answer, a refusal, a URL the model
cannot see, a second numbered instruction merged in, a control character, an e-mail address,
phone number or key, a `{{name}}` blank, a sentence said over and over, a lost user turn, an
attached image ... Recall is the share of a kind's planted rows its rule flags. The clean rate is
the share of the untouched real rows flagged by any rule at warning or error severity: those are
what `lint --fail-on warning` fails on and what the Data screen shows as problems; info flags
(too-short) are notes, not defects. --show-clean prints the flagged real rows to judge by eye.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.lint import lint  # noqa: E402
from engine.data.load import Example  # noqa: E402
from engine.data.rows import parse_row  # noqa: E402

SHARED = Path("/work/shared/data")
FILES = ("gsm8k_train", "gpteacher_toolformer", "gpteacher_roleplay")
COUNTED = ("error", "warning")
SITES = ("www.nytimes.com/2023/04/02/world/europe/summit.html", "en.wikipedia.org/wiki/Photosynthesis",
         "github.com/acme/widget/blob/main/README.md", "docs.google.com/document/d/1xYz/edit",
         "www.bbc.co.uk/news/science-environment-65012345", "medium.com/@writer/ten-lessons-3f9a1c")
NAMES = ("maria.gonzalez", "j.smith1984", "chen.wei", "olivia_brown", "a.kowalski", "dmitri.petrov")
MAILS = ("gmail.com", "outlook.com", "yahoo.co.uk", "protonmail.com", "acme-corp.com")
AREAS = ("212", "415", "646", "312", "617", "503", "206", "737")


def _sentences(text: str) -> list[str]:
    import re

    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) >= 10]


def _prompt(row: dict) -> str:
    return row["instruction"] if not row["input"].strip() else f"{row['instruction']}\n\n{row['input']}"


# Each planter takes (row, rng, other row) and returns (messages, extra) or None when the row cannot take it.

def truncated(row, rng, other):
    out = row["output"].rstrip()
    # a cut mid-sentence at a word boundary in the middle 30-90% of the answer, as a token limit leaves it
    cuts = [i for i in range(int(len(out) * 0.3), int(len(out) * 0.9))
            if out[i] == " " and out[i - 1] not in ".!?:\n" and out[i - 1].isalnum()]
    if not cuts:
        return None
    return _chat(row, output=out[:rng.choice(cuts)])


def placeholder_input(row, rng, other):
    return _chat(row, input=rng.choice(["<noinput>", "No input", "<no input>", "None", "N/A", "No input."]))


def placeholder_answer(row, rng, other):
    return _chat(row, output=rng.choice(["N/A", "<No Output>", "<nooutput>", "None", "TBD", "N/A."]))


def empty_answer(row, rng, other):
    return _chat(row, output=rng.choice(["", " ", "\n"]))


def error_text(row, rng, other):
    dumps = [
        "Traceback (most recent call last):\n  File \"generate.py\", line 88, in <module>\n    resp = client.complete"
        "(prompt)\nopenai.error.RateLimitError: Rate limit reached for default-gpt-3.5-turbo",
        "Error: rate limit exceeded. Please retry after 20 seconds.",
        "<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server "
        "Error</h1><p>The server encountered an internal error.</p></body></html>",
        '{"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}',
        "502 Bad Gateway",
        "An error occurred while generating the response. Request timed out.",
    ]
    return _chat(row, output=rng.choice(dumps))


def refusal(row, rng, other):
    lead = rng.choice(["I'm sorry, but I can't help with that.", "As an AI language model, I cannot do that.",
                       "I'm sorry, but as an AI language model I am unable to provide that.",
                       "I cannot provide an answer to this request.", "I'm afraid I can't assist with that."])
    return _chat(row, output=lead if rng.random() < 0.5 else f"{lead} {row['output']}")


def unseen_reference(row, rng, other):
    url = f"https://{rng.choice(SITES)}"
    lead = rng.choice([f"Based on the article at {url}, ", f"Using the data in {url}: ", "Using the attached "
                       "spreadsheet, ", "Look at the image above and ", f"Read {url} first. "])
    return _chat(row, instruction=lead + row["instruction"])


def merged(row, rng, other):
    n = rng.randint(2, 40)
    tail = f"\n##\n{n}. Instruction: {other['instruction']}\n{n}. Input:\n<noinput>\n{n}. Output:\n{other['output']}"
    return _chat(row, output=row["output"] + tail) if rng.random() < 0.5 else _chat(
        row, instruction=row["instruction"] + tail)


def control(row, rng, other):
    junk = rng.choice(["\x00", "\x07", "\x1b", "\x0c", "\x7f", "\ufffd", "\\u00e9", "\\x92"])
    out = row["output"]
    at = rng.randrange(len(out) + 1)
    return _chat(row, output=out[:at] + junk + out[at:])


def personal(row, rng, other):
    key = "".join(rng.choices(string.ascii_letters + string.digits, k=40))
    found = rng.choice([f"{rng.choice(NAMES)}@{rng.choice(MAILS)}",
                        f"({rng.choice(AREAS)}) {rng.randint(201, 989)}-{rng.randint(0, 9999):04d}",
                        f"+1 {rng.choice(AREAS)} {rng.randint(201, 989)} {rng.randint(0, 9999):04d}",
                        f"sk-{key}", f"AKIA{key[:16].upper()}", f"ghp_{key[:36]}"])
    found = found.replace(" 555-01", " 556-01").replace(" 555 01", " 556 01")  # not the range kept for fiction
    return _chat(row, output=f"{row['output']} You can reach me at {found}." if rng.random() < 0.5 else
                 f"Contact: {found}\n{row['output']}")


def unfilled(row, rng, other):
    blank = rng.choice(["{{name}}", "{{author}}", "[Your Name]", "{{ company }}", "[Insert date]"])
    return _chat(row, output=rng.choice([f"I am {blank}, and here is my answer. {row['output']}",
                                          f"{row['output']}\n\nBest regards,\n{blank}"]))


def repetition(row, rng, other):
    sents = _sentences(row["output"])
    if not sents:
        return None
    loop = rng.choice(sents).strip()
    sep = " " if loop[-1] in ".!?" else "\n"  # a generation loop repeats a line as a line
    return _chat(row, output=row["output"].rstrip() + (sep + loop) * rng.randint(10, 60))


def role_order(row, rng, other):
    messages, extra = _chat(row)
    user, answer = messages
    system = {"role": "system", "content": "You are a helpful assistant."}
    shape = rng.choice([[system, answer], [answer, user, answer], [user, user, answer],
                        [user, system, answer]])
    return [dict(m) for m in shape], extra


def media(row, rng, other):
    messages, _ = _chat(row)
    kind = rng.randrange(3)
    if kind == 0:  # LLaMA-Factory: a tag in the text, the file in `images`
        messages[0]["content"] = "<image>" + messages[0]["content"]
        return messages, {"images": [f"images/{rng.randint(1, 99999)}.jpg"]}
    if kind == 1:
        return messages, {"videos": [f"clips/{rng.randint(1, 99999)}.mp4"]}
    messages[0]["parts"] = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                            {"type": "text", "text": messages[0]["content"]}]
    return messages, None


def too_long(row, rng, other):
    return _chat(row, output=(row["output"] + "\n") * (32_001 // max(len(row["output"]), 1) + 1))


def too_short(row, rng, other):
    return _chat(row, instruction=rng.choice(["?", "Hi", "ok"]), input="")


KINDS = {"truncated-answer": truncated, "placeholder-input": placeholder_input,
         "placeholder-answer": placeholder_answer, "empty-answer": empty_answer, "error-text": error_text,
         "refusal": refusal, "unseen-reference": unseen_reference, "merged-instructions": merged,
         "control-chars": control, "personal-data": personal, "unfilled-placeholder": unfilled,
         "repetition": repetition, "role-order": role_order, "media": media, "too-long": too_long,
         "too-short": too_short}


def _chat(row, **change):
    row = {**row, **change}
    return parse_row(row).messages, None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-kind", type=int, default=60, help="planted rows per kind per file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-clean", action="store_true", help="print the real rows that are flagged")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    examples, origin = [], []  # origin: (file, kind or None for an untouched real row, source row index)
    for name in FILES:
        rows = json.loads((SHARED / f"{name}.json").read_text())
        for i, row in enumerate(rows):
            examples.append(Example(parse_row(row).messages, name, i + 1))
            origin.append((name, None, i))
        for kind, plant in KINDS.items():
            planted = 0
            while planted < args.per_kind:
                i = rng.randrange(len(rows))
                made = plant(rows[i], rng, rows[rng.randrange(len(rows))])
                if made is not None:
                    messages, extra = made
                    examples.append(Example(messages, name, i + 1, extra=extra))
                    origin.append((name, kind, i))
                    planted += 1
    flags = lint(examples)
    rules_of = defaultdict(set)
    for f in flags:
        rules_of[f.index].add((f.rule, f.severity))
    hit, total = Counter(), Counter()
    by_file = defaultdict(Counter)
    for idx, (name, kind, _) in enumerate(origin):
        if kind is not None:
            total[kind] += 1
            caught = any(rule == kind for rule, _ in rules_of[idx])
            hit[kind] += caught
            by_file[kind][name] += caught
    print(f"planted defects: {args.per_kind} per kind per file ({len(FILES)} files), seed {args.seed}")
    print(f"{'rule':22s} {'planted':>8s} {'caught':>7s} {'recall':>7s}   " + "  ".join(f"{n[:14]:>14s}" for n in FILES))
    for kind in KINDS:
        cells = "  ".join(f"{by_file[kind][n] / args.per_kind:>14.0%}" for n in FILES)
        print(f"{kind:22s} {total[kind]:>8,} {hit[kind]:>7,} {hit[kind] / total[kind]:>7.1%}   {cells}")
    clean = [idx for idx, (_, kind, _) in enumerate(origin) if kind is None]
    flagged = [idx for idx in clean if any(sev in COUNTED for _, sev in rules_of[idx])]
    per_rule = Counter(rule for idx in flagged for rule, sev in rules_of[idx] if sev in COUNTED)
    print(f"\nuntouched real rows flagged at {' or '.join(COUNTED)}: {len(flagged):,} of {len(clean):,} = "
          f"{len(flagged) / len(clean):.2%}  ({', '.join(f'{r} {n}' for r, n in per_rule.most_common())})")
    flagged_set = set(flagged)
    for name in FILES:
        rows = [idx for idx in clean if origin[idx][0] == name]
        n = sum(1 for idx in rows if idx in flagged_set)
        print(f"  {name:22s} {n:>4} of {len(rows):,} = {n / len(rows):.2%}")
    if args.show_clean:
        for idx in flagged:
            msgs = examples[idx].messages
            print(f"\n{origin[idx][0]} row {origin[idx][2]}: "
                  f"{[f.rule + ': ' + f.message for f in flags if f.index == idx]}")
            print("  prompt:", repr(msgs[0]["content"][-160:]))
            print("  answer:", repr(msgs[-1]["content"][-200:]))


if __name__ == "__main__":
    main()
