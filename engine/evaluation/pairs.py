"""Preference pairs from your own model: sampled answers judged blind, written as a preference file.

A finished SFT run answers each prompt `n` times (engine.evaluation.sample_pairs, in its own
process); its answers, taken two by two, go into the blind A/B store (engine.evaluation.ab),
where a person picks the better one by keyboard, or an LLM judge behind an OpenAI-compatible endpoint
does (`judge_pairs`: each pair asked in both orders). The judged pairs are written in TRL's
conversational prompt/chosen/rejected layout, which engine.data.load reads back as pairs.
A tie, a skip, a pair not judged yet and two identical answers carry no preference and are
not written; `write_preference_file` counts each.

Everything lives in one folder per run, prompts file and sampling settings,
`<run>/pairs/<prompts>-<content hash>-n<n>-t<temperature>-seed<seed>/`: `samples.jsonl` (one
line per pair, appended as generated, so a killed generation resumes where it stopped),
`ab.sqlite` and `settings.json` (the run, prompts file and settings that made them, for the record).
The same prompts and settings reopen the same folder, with every judgement; another prompts file (even
of the same name) or an edited one, or other settings, get another: pairs are numbered by their
prompt's place in the file.
The A/B store calls a pair's two answers "baseline" and "tuned"; here they are simply the
first and the second sample. Light: no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.data.load import DataError, fingerprint, load_examples
from engine.data.rows import completion_start
from engine.evaluation.ab import ABStore

SAMPLES = "samples.jsonl"
STORE = "ab.sqlite"
SETTINGS = "settings.json"


def check_settings(n: int, temperature: float) -> None:
    if n < 2 or n % 2:
        raise ValueError(f"--n must be an even number of answers per prompt, 2 or more (two make a pair), not {n}")
    if not temperature > 0:
        raise ValueError(f"--temperature must be above 0 (0 would give the same answer twice), not {temperature}")


def pairs_folder(run_dir: str | Path, prompts: str | Path, n: int, temperature: float, seed: int) -> Path:
    """Where the pairs of these prompts (this file's content) and settings live under the run."""
    stem = Path(prompts).name.split(".")[0] or "prompts"
    return Path(run_dir) / "pairs" / f"{stem}-{fingerprint(prompts)[:8]}-n{n}-t{temperature:g}-seed{seed}"


def read_prompts(path: str | Path, system: str | None = None) -> list[list[dict]]:
    """The prompts of a data file: each example's turns before its answer (the answer itself is not used), or each
    line of a plain text file as a user turn; the run's system prompt first, as it was trained."""
    prompts = []
    for example in load_examples(path).examples:
        start = completion_start(example.messages)
        prompt = example.messages[:start] or [{"role": "user", "content": example.messages[0]["content"]}]
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt if m["role"] != "system"]
        prompts.append(([{"role": "system", "content": system}] if system else []) + prompt)
    if not prompts:
        raise DataError(f"no prompts in {path}: give a JSONL of chat rows (their prompts are used) or a text file "
                        "with one prompt a line")
    return prompts


def prompt_text(prompt: list[dict]) -> str:
    """A prompt as the reviewer reads it: the user's text, or each turn under its role when there are several."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in turns)


def read_samples(folder: Path) -> list[dict]:
    """The pairs generated so far: {id, prompt (messages), answers [first, second]}; a line cut short by a
    kill is left out (it is generated again)."""
    path = Path(folder) / SAMPLES
    if not path.is_file():
        return []
    samples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            samples.append(json.loads(line))
        except ValueError:
            break
    return samples


def open_review(folder: Path, seed: int = 0) -> ABStore:
    """The blind A/B store of the folder, with every generated pair in it (those already stored keep their side
    and judgement)."""
    pairs = [{"id": s["id"], "prompt": prompt_text(s["prompt"]), "baseline": s["answers"][0],
              "tuned": s["answers"][1]} for s in read_samples(folder)]
    return ABStore(Path(folder) / STORE, pairs, seed=f"pairs-{seed}")


def judged_rows(folder: Path) -> tuple[list[dict], dict]:
    """(TRL preference rows of the judged pairs, counts: written, ties, skipped, unjudged, identical)."""
    samples = {s["id"]: s for s in read_samples(folder)}
    counts = {"written": 0, "ties": 0, "skipped": 0, "unjudged": 0, "identical": 0}
    rows = []
    with open_review(folder) as store:
        for pair in store.pairs():
            if pair.a.strip() == pair.b.strip():
                counts["identical"] += 1  # no preference to learn, whatever the judgement
                continue
            outcome = pair.outcome()
            if outcome in ("win", "loss"):
                second_better = outcome == "win"  # "tuned" is the second sample (see the module's docstring)
                first, second = samples[pair.id]["answers"]
                chosen, rejected = (second, first) if second_better else (first, second)
                rows.append({"prompt": samples[pair.id]["prompt"],
                             "chosen": [{"role": "assistant", "content": chosen}],
                             "rejected": [{"role": "assistant", "content": rejected}]})
                counts["written"] += 1
            else:
                counts[{"tie": "ties", "skip": "skipped", None: "unjudged"}[outcome]] += 1
    return rows, counts


def judge_pairs(folder: Path, endpoint: str, model: str) -> dict:
    """Judge every pair not judged yet with the LLM judge: asked twice, the answers in both orders (judges
    favour a position: Zheng et al. 2023), a preference only when both orders agree, else a tie. Two identical
    answers are left alone (nothing to prefer). Each judgement is committed before the next request, so an
    endpoint that fails half-way keeps what it judged. Counts: judged, ties among them."""
    from engine.evaluation.judge import prefer

    counts = {"judged": 0, "ties": 0}
    with open_review(folder) as store:
        for pair in store.pairs():
            if pair.choice is not None or pair.a.strip() == pair.b.strip():
                continue
            orders = (prefer(endpoint, model, pair.prompt, pair.a, pair.b),
                      prefer(endpoint, model, pair.prompt, pair.b, pair.a))
            choice = {("A", "B"): "A", ("B", "A"): "B"}.get(orders, "tie")
            store.judge(pair.id, choice)
            counts["judged"] += 1
            counts["ties"] += choice == "tie"
    return counts


def write_preference_file(folder: Path, out: str | Path) -> dict:
    """Write the judged pairs to `out` (JSONL or JSON by its suffix, written to a temporary name then renamed);
    the counts, with the path."""
    from engine.data.export import write_examples

    rows, counts = judged_rows(folder)
    write_examples(rows, out, "json" if Path(out).suffix.lower() == ".json" else "jsonl")
    return {**counts, "out": str(out), "folder": str(folder)}
