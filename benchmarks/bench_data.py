"""Data engine throughput, in one run:

  python benchmarks/bench_data.py [--rows 1000000] [--near-rows 100000]

- lint (character rules) + exact dedup against plain `json.loads` of the same file,
  on the three shared real datasets and a synthetic file of --rows rows;
- token counting on its own (bound by the tokenizer), when the demo model is present;
- near-duplicate time and peak memory on --near-rows examples;
- near-duplicate recall of one-character edits in English and in scripts written without spaces;
- time to the first example and j keypress latency in the app, 1M-line file vs 1k-line file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.dedup import dedup, exact_clusters, example_text  # noqa: E402
from engine.data.lint import lint  # noqa: E402
from engine.data.load import Example, load_examples  # noqa: E402

SHARED = Path("/work/shared/data")
WORDS = ("alpha beta gamma delta model data train token answer question river stone light "
         "number table chair green paper write read count seven eleven city house").split()


def synthetic(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            q = " ".join(rng.choices(WORDS, k=rng.randint(6, 20)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(5, 40))) + f" {i}."
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    + "\n")


def parse_time(path: Path) -> float:
    t = time.perf_counter()
    raw = path.read_bytes()
    if raw.lstrip().startswith(b"["):
        json.loads(raw)
    else:
        for line in raw.splitlines():
            json.loads(line)
    return time.perf_counter() - t


def lint_and_exact(path: Path) -> dict:
    result = load_examples(path)
    ex = result.examples
    t = time.perf_counter()
    flags = lint(ex)
    t_lint = time.perf_counter() - t
    t = time.perf_counter()
    exact = exact_clusters([example_text(e.messages) for e in ex])
    t_exact = time.perf_counter() - t
    parse = parse_time(path)
    rate = len(ex) / (t_lint + t_exact)
    return {"file": path.name, "rows": len(ex), "parse_s": parse, "lint_s": t_lint, "exact_s": t_exact,
            "flags": len(flags), "exact_dups": len(exact.duplicates()),
            "rows_per_s": rate, "vs_parse": (t_lint + t_exact) / parse}


def edit_recall(edits: int = 200, seed: int = 0) -> None:
    """How often near dedup (0.8) pairs a ~270-character answer with itself after one random letter changed."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_dedup as answers

    rng = random.Random(seed)
    for script, question, answer in (("English", "How can I sleep better?", answers.EN_A),
                                     ("Chinese", "怎样才能睡得更好？", answers.ZH_A),
                                     ("Japanese", "よく眠るにはどうすればいいですか？", answers.JA_A),
                                     ("Thai", "ทำอย่างไรจึงจะนอนหลับได้ดีขึ้น", answers.TH_A),
                                     ("Korean", "잠을 잘 자려면 어떻게 해야 하나요?", answers.KO_A)):
        letters = [i for i, c in enumerate(answer) if c.isalpha()]
        pool = sorted({c for c in answer if c.isalpha()})  # replacements from the same script
        found = 0
        for _ in range(edits):
            i = rng.choice(letters)
            edited = answer[:i] + rng.choice([c for c in pool if c != answer[i]]) + answer[i + 1:]
            pair = [Example([{"role": "user", "content": question}, {"role": "assistant", "content": text}], "m", 1)
                    for text in (answer, edited)]
            found += bool(dedup(pair, 0.8)["near"].groups)
        print(f"  {script:8s} ({len(answer)} characters): {found}/{edits} one-character edits found")


async def app_latency(path: Path) -> tuple[float, float, float]:
    from tui.app import TunedeckApp

    app = TunedeckApp(Path(tempfile.mkdtemp()), mode="data", data=path)
    t0 = time.perf_counter()
    async with app.run_test(size=(80, 24)) as pilot:
        while app.screen.first is None and app.screen.session is None:
            await pilot.pause(0.005)
        first = time.perf_counter() - t0
        while app.screen.session is None:
            await pilot.pause(0.05)
        ready = time.perf_counter() - t0
        times = []
        for _ in range(20):
            t = time.perf_counter()
            await pilot.press("j")
            await pilot.pause()
            times.append(time.perf_counter() - t)
        times.sort()
        return first, ready, times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--near-rows", type=int, default=100_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    big = tmp / "big.jsonl"
    synthetic(big, args.rows)
    print("lint (character rules) + exact dedup vs json.loads of the same file")
    for path in [*(SHARED / f"{n}.json" for n in ("gsm8k_train", "gpteacher_toolformer", "gpteacher_roleplay")), big]:
        r = lint_and_exact(path)
        print(f"  {r['file']:28s} {r['rows']:>9,} rows  parse {r['parse_s']:.2f}s  lint {r['lint_s']:.2f}s  "
              f"exact {r['exact_s']:.2f}s  {r['rows_per_s']:,.0f} rows/s  = {r['vs_parse']:.1f}x parse time  "
              f"({r['flags']} flags, {r['exact_dups']} exact dups)")
    from engine.models.find import demo_model_dir

    if (demo_model_dir() / "tokenizer.json").is_file():
        from engine.data.template import LightTokenizer

        tok = LightTokenizer(str(demo_model_dir()))
        ex = load_examples(SHARED / "gsm8k_train.json").examples
        t = time.perf_counter()
        counts = tok.count_examples(ex)
        dt = time.perf_counter() - t
        print(f"token counting (SmolLM2 tokenizer, chat template rendered): gsm8k {len(ex):,} examples, "
              f"{sum(counts):,} tokens in {dt:.2f}s = {sum(counts) / dt:,.0f} tokens/s")
    near = tmp / "near.jsonl"
    synthetic(near, args.near_rows, seed=1)
    ex = load_examples(near).examples
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    found = dedup(ex, 0.8)
    dt = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"near dedup (MinHash 128 perm, LSH, 0.8) on {len(ex):,} examples: {dt:.1f}s, "
          f"peak RSS {rss1 / 1024:,.0f} MiB (grew {(rss1 - rss0) / 1024:,.0f} MiB), "
          f"{len(found['near'].duplicates()):,} duplicates")
    print("near-duplicate recall, one random letter changed in a ~270-character answer, threshold 0.8")
    edit_recall()
    for rows in (1000, args.rows):
        path = tmp / f"app-{rows}.jsonl"
        synthetic(path, rows, seed=2)
        first, ready, key = asyncio.run(app_latency(path))
        print(f"app, {rows:>9,} lines: first example {first * 1000:.0f} ms, fully indexed+linted {ready:.1f}s, "
              f"j keypress median {key * 1000:.1f} ms")


if __name__ == "__main__":
    main()
