"""Forgetting probes: small checks of general abilities, run on the base and the tuned model.

A LoRA adapter leaves the base weights alone, but the adapted model's behaviour can
still lose what the base could do; so every method is checked. A probe passes when
the answer matches its expectation; the verdict names the probes that regressed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Probe:
    name: str
    category: str
    prompt: str
    pattern: str  # regular expression searched (case-insensitive) in the answer

    def passes(self, answer: str) -> bool:
        return re.search(self.pattern, answer, flags=re.IGNORECASE | re.DOTALL) is not None


BUILTIN_PROBES = [
    Probe("capital-france", "facts", "What is the capital of France? Answer with one word.", r"\bparis\b"),
    Probe("red-planet", "facts", "Which planet is known as the Red Planet? Answer with one word.", r"\bmars\b"),
    Probe("add", "arithmetic", "What is 7 + 5? Answer with the number only.", r"(?<!\d)12(?!\d)"),
    Probe("multiply", "arithmetic", "What is 9 times 3? Answer with the number only.", r"(?<!\d)27(?!\d)"),
    Probe("tomorrow", "reasoning", "If today is Monday, what day is tomorrow? Answer with one word.", r"\btuesday\b"),
    Probe("shortest", "reasoning", "Tom is taller than Ann. Ann is taller than Bob. Who is the shortest? "
          "Answer with one name.", r"\bbob\b"),
    Probe("yes-format", "format", "Reply with the single word YES in capital letters and nothing else.",
          r"^\W*YES\W*$"),
    Probe("json-list", "format", "Give three colours as a JSON array of strings, nothing else.",
          r"^\s*\[\s*\"[^\"]+\"\s*,\s*\"[^\"]+\"\s*,\s*\"[^\"]+\"\s*\]\s*$"),
    Probe("python-add", "code", "Write a Python function add(a, b) that returns the sum of a and b.",
          r"def\s+add\s*\(\s*a\s*,\s*b\s*\)\s*:.*return\s+a\s*\+\s*b"),
    Probe("python-len", "code", "What does len([1, 2, 3]) return in Python? Answer with the number only.",
          r"(?<!\d)3(?!\d)"),
]

# General text for the perplexity check: plain encyclopedic prose, written for this project.
GENERAL_TEXT = (
    "The river rises in the hills to the north and flows south for about two hundred kilometres before it "
    "reaches the sea. Farmers along its banks grow wheat, barley and vegetables, and the towns that grew up "
    "at its crossings became markets for the surrounding villages. In the nineteenth century a railway was "
    "built along the valley, and the journey that once took three days by cart could be made in a few hours. "
    "Today the valley is known for its orchards, its old stone bridges and a festival held every autumn, when "
    "visitors come to taste the new cider and to walk the paths that follow the water."
)


def load_user_probes(path: str | Path) -> list[Probe]:
    """JSONL rows: {"name", "prompt", "expect"} (a phrase) or {"name", "prompt", "regex"}."""
    probes = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pattern = row["regex"] if "regex" in row else re.escape(row["expect"])
            probes.append(Probe(row.get("name", f"user-{i}"), row.get("category", "user"), row["prompt"], pattern))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{i}: a probe needs 'prompt' and 'expect' or 'regex' ({exc})") from None
    return probes


def verdict(probes: list[Probe], base_answers: list[str], tuned_answers: list[str],
            base_ppl: float | None, tuned_ppl: float | None) -> dict:
    rows, regressed, improved = [], [], []
    for probe, base, tuned in zip(probes, base_answers, tuned_answers):
        base_pass, tuned_pass = probe.passes(base), probe.passes(tuned)
        rows.append({"name": probe.name, "category": probe.category, "prompt": probe.prompt,
                     "base_output": base, "tuned_output": tuned, "base_pass": base_pass, "tuned_pass": tuned_pass})
        if base_pass and not tuned_pass:
            regressed.append(probe.name)
        elif tuned_pass and not base_pass:
            improved.append(probe.name)
    text = (f"{len(regressed)} of {len(probes)} probes regressed" + (f": {', '.join(regressed)}" if regressed else "")
            + f"; base passes {sum(r['base_pass'] for r in rows)}, tuned {sum(r['tuned_pass'] for r in rows)}")
    if base_ppl and tuned_ppl:
        change = tuned_ppl / base_ppl - 1
        text += f"; general-text perplexity {base_ppl:.1f} -> {tuned_ppl:.1f} ({change:+.0%})"
    return {"probes": rows, "regressed": regressed, "improved": improved,
            "perplexity": {"base": base_ppl, "tuned": tuned_ppl}, "verdict": text}
