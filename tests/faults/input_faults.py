"""Bad input, drawn at random (issue 7): datasets, configs, run ids and paths.

Every trial makes fresh bad input from its `rng` and checks a property on it through the
real code: engine.data.load.load_examples (what `tunedeck data` reads with, and the engine's
training read, engine.training.recipes.sft.read_conversations), engine.training.config.load_config,
engine.runs.workspace.resolve_run, and the real command line (`python -m tui.cli`) in a subprocess.

- datasets: every bad line is reported with its line number, every good line loads unchanged
  (a good line missing or changed counts as `lost`), nothing raises, the command line exits 0
  without a traceback, and its peak memory stays under a bound that does not grow with the
  blank lines or the length of an over-long line;
- configs: a wrong type or an out-of-range value for every key of RunConfig, unknown keys and
  YAML that tries to construct Python objects give ConfigError, one short line naming the key;
  the command line exits 2 with that one line, creates no run, and constructs nothing;
- run ids and paths: `..`, absolute paths, links out of the workspace, shell metacharacters are
  refused with one line (or, for a path to a real run directory, taken as given), and nothing
  outside the workspace is written or created.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
import string
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

from engine.data.load import load_examples
from engine.data.readers import MAX_LINE_BYTES
from engine.runs.protocol import RUN_ID_RE, RunError
from engine.runs.workspace import create_run, list_runs, resolve_run
from engine.training.config import ConfigError, RunConfig, load_config
from faults import Env, Outcome, fault

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


# ---- shared helpers -----------------------------------------------------------------

class Checks:
    """Failed checks of one trial, and the good rows it lost."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.lost = 0
        self.note = ""

    def __call__(self, condition, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return bool(condition)

    def outcome(self) -> Outcome:
        if self.failures:
            return Outcome(False, self.lost, "; ".join(f[:300] for f in self.failures[:3]))
        return Outcome(True, self.lost, self.note)


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    peak_rss: int | None  # bytes, when measured


# `python -m tui.cli` that also leaves its peak memory (VmHWM) in a file as it exits. VmHWM is the
# high-water mark of the process's own memory since exec; ru_maxrss would also count the memory of
# this (large) test process, which the child inherits the high-water mark of when it is spawned.
MEASURED = ("import atexit, os, runpy, sys\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            open(os.environ['INPUT_FAULTS_HWM'], 'w').write(line.split()[1])\n"
            "atexit.register(hwm)\n"
            "sys.argv[0] = 'tunedeck'\n"
            "runpy.run_module('tui.cli', run_name='__main__', alter_sys=True)\n")


def cli(args: list[str], cwd: Path | None = None, home: Path | None = None, timeout: float = 120,
        measure: bool = False) -> Result:
    """`python -m tui.cli ARGS` as a real process; with `measure`, its peak memory too.

    Output is strict UTF-8, as on a person's terminal: text that cannot be printed fails here too."""
    env = {k: v for k, v in os.environ.items() if k != "TUNEDECK_WORKSPACE"}
    env.update(PYTHONPATH=str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               PYTHONIOENCODING="utf-8:strict", COLUMNS="200")
    if home is not None:
        env["HOME"] = str(home)
    with tempfile.TemporaryDirectory() as side:
        hwm = Path(side) / "hwm"
        env["INPUT_FAULTS_HWM"] = str(hwm)
        command = [sys.executable, "-c", MEASURED] if measure else [sys.executable, "-m", "tui.cli"]
        try:
            done = subprocess.run([*command, *args], cwd=cwd or ROOT, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return Result(-9, "", f"timed out after {timeout:.0f}s: {(exc.stderr or b'')[-300:]!r}", None)
        peak = int(hwm.read_text()) * 1024 if measure and hwm.exists() else None
        return Result(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"),
                      peak)


def refused_in_one_line(r: Result) -> str | None:
    """Why the command did not fail the way it must (exit 2, one `tunedeck: error:` line), or None."""
    lines = r.stderr.strip().splitlines()
    if "Traceback" in r.stderr:
        return f"traceback: {r.stderr.strip().splitlines()[-1][:200]}"
    if r.code != 2 or len(lines) != 1 or not lines[0].startswith("tunedeck: error: "):
        return f"exit {r.code}, stderr {r.stderr.strip()[:300]!r}"
    return None


ALPHABET = (string.ascii_letters + string.digits + " .,;:!?'\"\\/{}[]<>()#%&*+-=_|~`^@$\t"
            + "éüßñø中文日本語한국어🙂😀ℝ∑→\u00a0\u2028\u200b")


def text(rng, lo: int = 0, hi: int = 40, alphabet: str = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


# ---- datasets -----------------------------------------------------------------------

# Byte sequences that are not UTF-8 wherever they are put: each has a byte that never occurs in
# UTF-8 (C0, C1, F5-FF), an encoded surrogate, or a lead byte cut short by an ASCII byte.
INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xc1\xbf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                b"\xe4\xb8(", b"\xc3(", b"\xf0\x9f\x98("]
LAYOUTS = ("messages", "alpaca", "prompt", "sharegpt", "text")
NOT_ROLES = ("wizard", "USER ", "", "human", "gpt", "bot", "narrator", "assistant\n", "Assistant", "tool")
NOT_SPEAKERS = ("wizard", "", "bot", "narrator", "tool", "robot", "humans", "g p t")


def good_row(rng, layout: str | None = None) -> tuple[dict, str, str]:
    """(row, layout, the answer it must load with). Noise that must not matter: unknown fields and
    optional fields (label, system) of the wrong type."""
    layout = layout or rng.choice(LAYOUTS)
    prompt, answer = "Q" + text(rng), "A" + text(rng)
    if layout == "messages":
        system = [{"role": "system", "content": text(rng)}] if rng.random() < 0.3 else []
        row = {"messages": system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    elif layout == "alpaca":
        row = {"instruction": prompt, "input": rng.choice(["", text(rng), None, 0, []]), "output": answer}
    elif layout == "prompt":
        row = {"prompt": prompt, "completion": answer}
    elif layout == "sharegpt":
        row = {"conversations": [{"from": rng.choice(["human", "user", "Human"]), "value": prompt},
                                 {"from": rng.choice(["gpt", "assistant", "chatgpt", "GPT"]), "value": answer}]}
    else:
        row = {"text": answer}
    if rng.random() < 0.3:
        row[rng.choice(["label", "category", "id", "meta", "source"])] = junk(rng)
    if rng.random() < 0.2 and layout != "text":
        row["system"] = rng.choice([5, None, [], {"a": 1}, "", "  "])
    return row, layout, answer


def junk(rng, depth: int = 0):
    """A JSON value of any type."""
    kinds = ["int", "float", "bool", "null", "str", "big"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-10**9, 10**9)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "str":
        return text(rng, 0, 20)
    if kind == "big":
        return 10 ** rng.randint(20, 300)
    if kind == "list":
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(rng, 1, 8): junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def nested(rng, depth: int):
    value = rng.choice([1, "x", None, [], {}])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def non_str(rng):
    return rng.choice([rng.randint(-99, 99), rng.random(), True, False, None, [], ["x"], {}, {"content": "x"},
                       nested(rng, rng.randint(1, 60))])


def dumps(row, rng) -> str:
    return json.dumps(row, ensure_ascii=rng.random() < 0.5)


def wrong_type_row(rng) -> dict:
    """A row of a known layout with one field of the wrong type or value: never loadable."""
    row, layout, _ = good_row(rng, rng.choice(LAYOUTS[:4] + ("text",)))
    if layout == "messages":
        msgs = row["messages"]
        i = rng.randrange(len(msgs))
        what = rng.choice(["container", "element", "content", "role", "no-content", "last"])
        if what == "container":
            row["messages"] = rng.choice([[], {}, None, 5, "not a list", {"role": "user"}, True])
        elif what == "element":
            msgs[i] = rng.choice([5, "text", None, [], ["user", "x"], True])
        elif what == "content":
            msgs[i]["content"] = non_str(rng)
        elif what == "role":
            msgs[i]["role"] = rng.choice([non_str(rng), rng.choice(NOT_ROLES)])
        elif what == "no-content":
            del msgs[i]["content"]
        else:
            msgs[-1]["role"] = "user"
    elif layout == "alpaca":
        field = rng.choice(["instruction", "output", "input"])
        row[field] = (rng.choice([5, 1.5, True, ["x"], {"a": 1}, nested(rng, 30)]) if field == "input"
                      else non_str(rng))  # a falsy input (0, [], null) means no input: that row is good
    elif layout == "prompt":
        row[rng.choice(["prompt", "completion"])] = non_str(rng)
    elif layout == "sharegpt":
        turns = row["conversations"]
        i = rng.randrange(len(turns))
        what = rng.choice(["container", "element", "value", "from"])
        if what == "container":
            row["conversations"] = rng.choice([[], {}, None, 5, "not a list", True])
        elif what == "element":
            turns[i] = rng.choice([5, "text", None, [], True])
        elif what == "value":
            turns[i]["value"] = non_str(rng)
        else:
            turns[i]["from"] = rng.choice([non_str(rng), rng.choice(NOT_SPEAKERS)])
    else:
        row["text"] = non_str(rng)
    return row


def broken_json_line(rng) -> bytes:
    """A line that is not a usable row: truncated, nested deep, wrong types, not an object, junk."""
    kind = rng.choice(["truncated", "deep", "deep-field", "wrong-type", "wrong-type", "not-object", "tokens",
                       "big-number", "nan"])
    if kind == "truncated":
        s = dumps(good_row(rng)[0], rng)
        return s[:rng.randint(1, len(s) - 1)].encode()
    if kind == "deep":
        depth = rng.choice([rng.randint(1, 500), rng.randint(500, 5000), rng.randint(5000, 200_000)])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('{"messages":', "}"), ('{"messages": [', "]}")])
        inner = rng.choice(["", "1", "null", "[]", '"x"'])
        return (opener * depth + inner + (closer * depth if rng.random() < 0.7 else "")).encode()
    if kind == "deep-field":
        row, layout, _ = good_row(rng, rng.choice(["messages", "prompt", "sharegpt"]))
        deep = nested(rng, rng.randint(2, 900))
        if layout == "messages":
            row["messages"][-1][rng.choice(["role", "content"])] = deep
        elif layout == "prompt":
            row["completion"] = deep
        else:
            row["conversations"][0][rng.choice(["from", "value"])] = deep
        try:
            return dumps(row, rng).encode()
        except RecursionError:
            return b"[" * 2000
    if kind == "wrong-type":
        return dumps(wrong_type_row(rng), rng).encode()
    if kind == "not-object":
        return json.dumps(rng.choice([5, -1.5, "a string", None, True, [], [good_row(rng)[0]], "[]"])).encode()
    if kind == "tokens":
        tokens = ["{", "}", "[", "]", ":", ",", '"x"', "1", "true", "null", "NaN", "-Infinity", '"', "\\", "'"]
        return "".join(rng.choice(tokens) for _ in range(rng.randint(1, 30))).encode()
    if kind == "big-number":
        return ('{"prompt": "p", "completion": "c", "n": 1' + "0" * rng.randint(4400, 20000) + "}").encode()
    return ('{"prompt": %s, "completion": "c"}' % rng.choice(["NaN", "Infinity", "-Infinity"])).encode()


def bad_bytes_line(rng) -> bytes:
    """A line with bytes that are not UTF-8, NULs, random bytes, or a lone surrogate escape."""
    kind = rng.choice(["random", "corrupt", "surrogate", "nul", "ascii"])
    if kind == "random":
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))).replace(b"\n", b"")
        at = rng.randint(0, len(raw))
        return raw[:at] + rng.choice(INVALID_UTF8) + raw[at:]
    if kind == "corrupt":
        raw = json.dumps(good_row(rng)[0], ensure_ascii=False).encode()
        at = rng.randint(0, len(raw))
        return raw[:at] + rng.choice(INVALID_UTF8) + raw[at:]
    if kind == "surrogate":
        return ('{"prompt": %s, "completion": "%s\\u%04x%s"}' % (
            json.dumps("Q" + text(rng)), "A", rng.randint(0xD800, 0xDFFF), rng.choice(["", "x", "\\n"]))).encode()
    if kind == "nul":
        raw = json.dumps(good_row(rng)[0]).encode()
        at = rng.randint(1, len(raw) - 1)
        return raw[:at] + b"\x00" * rng.randint(1, 3) + raw[at:]
    s = text(rng, 1, 80, string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""))
    return (s if s.strip() else s + "x").encode()


def blank(rng) -> bytes:
    return rng.choice([b"", b"", b" ", b"\t", b"  \t ", b"\r"])


@dataclasses.dataclass
class Planted:
    """A data file with what must come out of it."""

    path: Path
    good: dict[int, str]  # Example.line -> the answer it must load with
    bad: set[int]  # Example.line of every row that must be reported
    fmt: str


def write_lines(path: Path, lines: list[tuple[str, bytes, str | None]], rng, bom: bool = False) -> Planted:
    """`lines`: (kind, bytes, answer) with kind good, bad or blank; one per line, numbered from 1."""
    eol = b"\r\n" if rng.random() < 0.2 else b"\n"
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" if bom else b"")
        f.write(eol.join(raw for _, raw, _ in lines) + (eol if rng.random() < 0.8 else b""))
    good = {i: answer for i, (kind, _, answer) in enumerate(lines, 1) if kind == "good"}
    bad = {i for i, (kind, _, _) in enumerate(lines, 1) if kind == "bad"}
    return Planted(path, good, bad, "jsonl" if path.suffix == ".jsonl" else "text")


def planted_jsonl(rng, tmp: Path, bad_line, n: int) -> Planted:
    share = rng.random() * 0.6
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < share:
            lines.append(("bad", bad_line(rng), None))
        elif r < share + 0.1:
            lines.append(("blank", blank(rng), None))
        else:
            row, _, answer = good_row(rng)
            lines.append(("good", dumps(row, rng).encode(), answer))
    return write_lines(tmp / "data.jsonl", lines, rng, bom=rng.random() < 0.1)


def planted_text(rng, tmp: Path, n: int) -> Planted:
    letters = ALPHABET.replace("\u2028", "")
    lines = []
    for _ in range(n):
        line = "w" + text(rng, 0, 60, letters)
        r = rng.random()
        if r < 0.3:
            raw = line.encode()
            at = rng.randint(0, len(raw))
            lines.append(("bad", raw[:at] + rng.choice(INVALID_UTF8) + raw[at:], None))
        elif r < 0.4:
            lines.append(("blank", blank(rng).replace(b"\r", b""), None))
        else:
            lines.append(("good", line.encode(), line))
    return write_lines(tmp / "data.txt", lines, rng, bom=rng.random() < 0.2)


MARK = "\ue000"  # stands for bytes that are not UTF-8 until the file is written (JSON and CSV leave it be)


def unmark(raw: bytes, rng) -> bytes:
    pieces = raw.split(MARK.encode())
    return pieces[0] + b"".join(rng.choice(INVALID_UTF8).replace(b"(", b"x") + p for p in pieces[1:])


def planted_csv(rng, tmp: Path, n: int) -> Planted:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["prompt", "completion"])
    good, bad = {}, set()
    letters = ALPHABET.replace("\r", "")
    for i in range(1, n + 1):
        prompt, answer = "Q" + text(rng, 0, 40, letters + "\n,\""), "A" + text(rng, 0, 40, letters + "\n,\"")
        r = rng.random()
        if r < 0.25:
            at = rng.randint(1, len(answer))
            writer.writerow([prompt, answer[:at] + MARK + answer[at:]])
            bad.add(i)
        elif r < 0.35:
            writer.writerow(rng.choice([[prompt, answer, "extra"], [prompt, answer, "", "x"], [prompt]]))
            bad.add(i)
        else:
            writer.writerow([prompt, answer])
            good[i] = answer
    raw = unmark(buf.getvalue().encode(), rng)
    path = tmp / "data.csv"
    path.write_bytes((b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + raw)
    return Planted(path, good, bad, "csv")


ANSWER_AT = {"messages": ("messages", -1, "content"), "alpaca": ("output",), "prompt": ("completion",),
             "sharegpt": ("conversations", -1, "value"), "text": ("text",)}


def planted_json_array(rng, tmp: Path, n: int) -> Planted:
    parts, good, bad = [], {}, set()
    for i in range(1, n + 1):
        row, layout, answer = good_row(rng)
        spoil = rng.random() < 0.3
        if spoil:  # bytes that are not UTF-8 inside the answer: they spoil this row only
            *path, last = ANSWER_AT[layout]
            holder = row
            for key in path:
                holder = holder[key]
            at = rng.randint(1, len(answer))
            holder[last] = answer[:at] + MARK + answer[at:]
            bad.add(i)
        else:
            good[i] = answer
        raw = json.dumps(row, ensure_ascii=not spoil and rng.random() < 0.5, indent=rng.choice([None, 2]))
        parts.append(unmark(raw.encode(), rng))
    path = tmp / "data.json"
    path.write_bytes(b"[" + rng.choice([b",", b", ", b",\n  "]).join(parts) + b"]\n")
    return Planted(path, good, bad, "json")


def check_loaded(check: Checks, planted: Planted) -> None:
    """The loader's result against what was planted: every bad row reported at its line, every
    good row loaded unchanged; a good row missing or changed is lost."""
    try:
        result = load_examples(planted.path)
    except Exception as exc:  # noqa: BLE001 - the property is that nothing raises
        check(False, f"load_examples raised {type(exc).__name__}: {str(exc)[:200]}")
        check.lost += len(planted.good)
        return
    loaded = {e.line: e.messages[-1]["content"] for e in result.examples}
    lost = [line for line, answer in planted.good.items() if loaded.get(line) != answer]
    check.lost += len(lost)
    check(not lost, f"{planted.fmt}: good lines lost or changed: {lost[:5]}")
    reported = {p.line for p in result.problems}
    check(reported == planted.bad, f"{planted.fmt}: bad lines not reported {sorted(planted.bad - reported)[:5]}, "
          f"reported but good {sorted(reported - planted.bad)[:5]}")
    check(set(loaded) <= set(planted.good), f"{planted.fmt}: rows loaded that are not good: "
          f"{sorted(set(loaded) - set(planted.good))[:5]}")
    long = [p for p in result.problems if len(p.reason) > 300 or "\n" in p.reason]
    check(not long, f"a reason is not one short line: {long[0].reason[:100]!r}" if long else "")


def check_lint_cli(check: Checks, planted: Planted, as_json: bool, measure: bool = False) -> Result:
    """`tunedeck data lint FILE` for real: exit 0, no traceback, every bad line named by its line."""
    r = cli(["data", "lint", str(planted.path)] + (["--json"] if as_json else []), measure=measure)
    if not check(r.code == 0 and "Traceback" not in r.stderr,
                 f"data lint exit {r.code}: {r.stderr.strip().splitlines()[-1:]}"):
        return r
    # The command line shows JSONL/text lines 1-based, records of CSV/JSON 0-based.
    shown = {line - (planted.fmt in ("csv", "json")) for line in planted.bad}
    if as_json:
        report = json.loads(r.stdout)
        check(report["examples"] == len(planted.good), f"lint --json: {report['examples']} examples, "
              f"planted {len(planted.good)}")
        check({s["line"] for s in report["skipped"]} == shown, "lint --json: skipped lines differ from the planted")
    else:
        lines = r.stdout.splitlines()
        prefix = f"{planted.path}:"
        skipped = {int(x[len(prefix):].split(":", 1)[0]) for x in lines if x.startswith(prefix) and ": skipped: " in x}
        check(skipped == shown, f"lint: skipped lines {sorted(skipped)[:5]}, planted {sorted(shown)[:5]}")
        check(any(x.startswith(f"{len(planted.good)} examples, {len(planted.bad)} skipped") for x in lines),
              f"lint summary: {lines[-1:] if lines else r.stdout[:200]!r}")
    return r


def check_engine_reader(check: Checks, planted: Planted, env: Env) -> None:
    """The training engine's read (engine.training.recipes.sft.read_conversations) goes through the same loader."""
    read = env.cached("engine.training.recipes.sft.read_conversations", lambda: __import__(
        "engine.training.recipes.sft", fromlist=["read_conversations"]).read_conversations)
    events: list[dict] = []
    plumbing = types.SimpleNamespace(event=lambda type, **fields: events.append({"type": type, **fields}))
    try:
        conversations = read(str(planted.path), None, plumbing)
    except ValueError as exc:
        check(not planted.good and "no usable examples" in str(exc), f"engine read raised {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        check(False, f"engine read raised {type(exc).__name__}: {exc}")
        return
    answers = [c.messages[-1]["content"] for c in conversations]
    check(answers == [planted.good[line] for line in sorted(planted.good)], "engine read: rows differ from the good")
    warnings = [e for e in events if e.get("code") == "bad_row"]
    n = len(planted.bad)
    check(len(warnings) == min(n, 20) + (n > 20), f"engine read: {len(warnings)} bad_row warnings for {n} bad rows")


@fault("dataset: random bytes, invalid UTF-8", trials=25, ci_trials=2)
def dataset_bad_bytes(rng, tmp: Path, env: Env) -> Outcome:
    check = Checks()
    fmt = rng.choice(["jsonl", "jsonl", "text", "csv", "json"])
    n = rng.randint(20, 300)
    planted = {"jsonl": lambda: planted_jsonl(rng, tmp, bad_bytes_line, n), "text": lambda: planted_text(rng, tmp, n),
               "csv": lambda: planted_csv(rng, tmp, n), "json": lambda: planted_json_array(rng, tmp, n)}[fmt]()
    check_loaded(check, planted)
    check_lint_cli(check, planted, as_json=rng.random() < 0.4)
    return check.outcome()


@fault("dataset: broken JSON, nesting, wrong types", trials=16, ci_trials=1)
def dataset_broken_json(rng, tmp: Path, env: Env) -> Outcome:
    check = Checks()
    if rng.random() < 0.25:
        return broken_json_array(rng, tmp, check)
    planted = planted_jsonl(rng, tmp, broken_json_line, rng.randint(20, 300))
    check_loaded(check, planted)
    check_lint_cli(check, planted, as_json=rng.random() < 0.4)
    check_engine_reader(check, planted, env)
    return check.outcome()


def broken_json_array(rng, tmp: Path, check: Checks) -> Outcome:
    """A JSON array cut short or broken between rows: the rows before the break load, the break is
    reported once, and nothing after it is made up."""
    rows = [good_row(rng) for _ in range(rng.randint(1, 60))]
    sep = rng.choice([",", ", ", ",\n"])
    text_, ends = "[", []
    for i, (row, _, _) in enumerate(rows):
        text_ += (sep if i else "") + json.dumps(row, ensure_ascii=False)
        ends.append(len(text_))
    text_ += "]"
    raw = text_.encode()
    if rng.random() < 0.5:
        cut = rng.randint(1, len(text_) - 1)  # truncated: never the whole array
        raw = text_[:cut].encode()
        kept = sum(end <= cut for end in ends)
        what = f"truncated at {cut} of {len(text_)}"
    else:
        i = rng.randrange(len(rows))  # junk after row i
        junk_bytes = rng.choice([b"\xff", b"}", b"x", b"][", b"\x00", b";", b"{}"])
        raw = text_[:ends[i]].encode() + junk_bytes + text_[ends[i]:].encode()
        kept = i + 1
        what = f"junk {junk_bytes!r} after row {i + 1}"
    path = tmp / "data.json"
    path.write_bytes(raw)
    try:
        result = load_examples(path, fmt="json")
    except Exception as exc:  # noqa: BLE001
        check(False, f"load_examples raised {type(exc).__name__}: {exc}")
        check.lost += kept
        return check.outcome()
    answers = [e.messages[-1]["content"] for e in result.examples]
    expected = [answer for _, _, answer in rows[:kept]]
    check.lost += sum(a != b for a, b in zip(expected, answers + [None] * kept))
    check(answers == expected, f"json array {what}: {len(answers)} rows loaded, expected the {kept} before the break")
    check(len(result.problems) == 1, f"json array {what}: {len(result.problems)} problems, expected 1")
    r = cli(["data", "lint", str(path), "--format", "json"])
    check(r.code == 0 and "Traceback" not in r.stderr, f"data lint exit {r.code}: {r.stderr.strip()[-200:]}")
    return check.outcome()


def baseline_rss(env: Env) -> int:
    """Peak memory of `tunedeck data lint` on a three-row file: what every command pays."""
    def measure() -> int:
        path = env.root / "baseline.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) + "\n"
                                for i in range(3)))
        return cli(["data", "lint", str(path)], measure=True).peak_rss
    return env.cached("input_faults.baseline_rss", measure)


def within(check: Checks, r: Result, base: int, bound: int, what: str) -> None:
    if check(r.peak_rss is not None, f"{what}: no peak memory measured (exit {r.code})"):
        check(r.peak_rss - base < bound, f"{what}: peak {r.peak_rss / MB:.0f} MB over a baseline of "
              f"{base / MB:.0f} MB, bound {bound / MB:.0f} MB more")


@fault("dataset: huge lines, empty, 1M empty lines", trials=8, ci_trials=1)
def dataset_huge_and_empty(rng, tmp: Path, env: Env) -> Outcome:
    """Memory bounds, each against the baseline command's peak:
    - a million blank lines keep nothing: under 16 MB more, however many there are;
    - a line over MAX_LINE_BYTES is read past in blocks: under MAX_LINE_BYTES + 16 MB more, whatever
      its length (the reader holds one limit-sized buffer at most);
    - a long good line is held as bytes, text and the parsed answer (and lint's copy): under
      6 times its length + 16 MB more;
    - bad lines keep a Problem each (3 slots, a line number, a list slot, a shared reason): under
      160 bytes a line + 16 MB more."""
    check = Checks()
    base = baseline_rss(env)
    slack = 16 * MB

    # 1. an empty file, or blank lines only
    path = tmp / "empty.jsonl"
    path.write_bytes(b"" if rng.random() < 0.5 else b"\n".join(blank(rng) for _ in range(rng.randint(1, 50))))
    check_loaded(check, Planted(path, {}, set(), "jsonl"))
    r = cli(["data", "lint", str(path)])
    check(r.code == 0 and r.stdout.startswith("0 examples, 0 skipped"),
          f"empty file: exit {r.code}, {r.stdout[:100]!r}")

    # 2. about a million blank lines, a few good lines among them
    n_blank = rng.randint(900_000, 1_100_000)
    good_at = sorted(rng.sample(range(1, n_blank), rng.randint(1, 5)))
    lines: list[tuple[str, bytes, str | None]] = [("blank", b"", None)] * n_blank
    for at in good_at:
        row, _, answer = good_row(rng)
        lines[at] = ("good", dumps(row, rng).encode(), answer)
    blanks = write_lines(tmp / "blank.jsonl", lines, rng)
    check_loaded(check, blanks)
    r = check_lint_cli(check, blanks, as_json=False, measure=True)
    within(check, r, base, slack, f"{n_blank} blank lines")

    # 3. one of: a line over the limit, a long good line, a great many bad lines
    kind = check.note = rng.choice(["over-limit", "long-good", "many-bad"])
    if kind == "over-limit":
        size = rng.randint(MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 32 * MB)
        head = rng.choice([b'{"prompt": "p", "completion": "', b"[", b"", b'{"a": ['])
        row, _, answer = good_row(rng)
        path = tmp / "huge.jsonl"
        with open(path, "wb") as f:
            f.write(dumps(row, rng).encode() + b"\n" + head)
            block = rng.choice([b"x", b"\xff", b"[", b" ", b"ab\x00"]) * MB
            for _ in range(size // MB):
                f.write(block)
            f.write(b"\n" + dumps(row, rng).encode() + b"\n")
        planted = Planted(path, {1: answer, 3: answer}, {2}, "jsonl")
        bound = MAX_LINE_BYTES + slack
    elif kind == "long-good":
        size = rng.randint(1 * MB, 8 * MB)
        answer = "A" + "".join(rng.choice(string.ascii_letters + " .") for _ in range(1000)) * (size // 1000)
        path = tmp / "long.jsonl"
        path.write_text(json.dumps({"prompt": "p", "completion": answer}) + "\n")
        planted = Planted(path, {1: answer}, set(), "jsonl")
        bound = 6 * size + slack
    else:
        n = rng.randint(100_000, 250_000)
        path = tmp / "junk.jsonl"
        path.write_bytes(b"\n".join(rng.choice([b"x", b"{", b"\xff", b"[1]", b"{}", b"nul"]) for _ in range(n)) + b"\n")
        planted = Planted(path, {}, set(range(1, n + 1)), "jsonl")
        size = n
        bound = 160 * n + slack
    check_loaded(check, planted)
    r = check_lint_cli(check, planted, as_json=False, measure=True)
    within(check, r, base, bound, f"{kind} ({size / MB:.1f} M)")
    return check.outcome()


# ---- configs -----------------------------------------------------------------------

HINTS = typing.get_type_hints(RunConfig)
KEYS = [f.name for f in dataclasses.fields(RunConfig)]


def accepts(hint, value) -> bool:
    """Whether a value is of the key's declared type (the spec engine.training.config enforces)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(a, value) for a in typing.get_args(hint))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin is list:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if not isinstance(value, str):
            return False
        try:
            float(value)  # YAML reads 1e-3 as text; the config takes it as the number
        except ValueError:
            return False
        return True
    if hint is str:
        return isinstance(value, str)
    raise AssertionError(f"no rule for {hint}")


def any_value(rng):
    """A YAML value of any type, including the ones only YAML has."""
    return rng.choice([
        rng.randint(-10**6, 10**6), rng.uniform(-1e3, 1e3), True, False, None, "", text(rng, 1, 20),
        str(rng.randint(1, 100)), "1e-3", "yes", [], [rng.randint(0, 9)], ["a", 1], {"a": 1}, {},
        nested(rng, rng.randint(1, 40)), datetime.date(2024, 1, rng.randint(1, 28)), b"\x00bytes",
        {"x", "y"}, "x" * rng.randint(1000, 100_000), 10 ** rng.randint(20, 400), -(10 ** rng.randint(20, 400)),
    ])


def wrong_type(rng, key: str):
    for _ in range(100):
        value = any_value(rng)
        if not accepts(HINTS[key], value):
            return value
    raise AssertionError(f"no wrong type found for {key}")


POSITIVE = {"per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "max_seq_length", "logging_steps", "lora_r", "nproc_per_node", "nnodes", "eval_steps", "save_steps",
            "save_total_limit", "early_stopping_patience", "lora_alpha"}
NON_NEGATIVE = {"warmup_steps", "weight_decay", "max_grad_norm", "early_stopping_threshold"}
NOT_FINITE = [math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity", "1e999"]


def out_of_range(rng, key: str) -> list:
    """Values of the right type that the key must refuse (the spec, written out here on purpose)."""
    hint = HINTS[key]
    values = []
    if accepts(hint, 1) and not accepts(hint, 1.5):  # an int key
        values.append(rng.randint(2**31, 10**30))
    if accepts(hint, 1.5) and not accepts(hint, "x"):  # a float key
        values.append(rng.choice(NOT_FINITE))
    if accepts(hint, "x"):  # any text key: a NUL never belongs in a name, path or option
        values.append(text(rng, 0, 5) + "\x00" + text(rng, 0, 5))
    neg = -rng.choice([rng.uniform(1e-9, 1), rng.uniform(1, 1e6)])
    values += {
        "max_steps": [0, rng.randint(-10**9, -2)],
        "validation_split": [rng.uniform(1, 1e6), neg, 1],
        "learning_rate": [0, neg, rng.uniform(10, 1e9)],
        "num_train_epochs": [0, neg],
        "lora_dropout": [neg, rng.uniform(1, 100)],
        "divergence_factor": [rng.uniform(-1e3, 1), 1],
        "grad_spike_factor": [rng.uniform(-1e3, 1), 1],
        "seed": [rng.randint(-10**9, -1), rng.randint(2**32, 2**40)],
        "lora_target_modules": [[]],
        "model": [None, "", "./missing-" + text(rng, 1, 10, string.ascii_letters), "~no-such-user-x/m",
                  "./" + "m" * rng.randint(256, 5000), "./loop"],
        "data": [None, "", "./missing.jsonl", "~no-such-user-x/d.jsonl", "./" + "d" * rng.randint(256, 5000),
                 "./loop", "/dev/null/x"],
        "eval_data": ["./missing.jsonl", "~no-such-user-x/e.jsonl", "./loop"],
        "test_data": ["./missing.jsonl", "~no-such-user-x/t.jsonl", "./" + "t" * 300],
        "general_data": ["./missing.jsonl", "~no-such-user-x/g.jsonl", "./loop"],
        "general_ratio": [0, 1, neg, rng.uniform(1, 100)],
        "sample_prompts": [rng.randint(-10**9, -1)],
        "beta": [0, neg], "desirable_weight": [0, neg], "undesirable_weight": [0, neg], "loss_type": ["no-such-loss"],
        "nnodes": [rng.randint(2, 64)], "rdzv_endpoint": ["node0:29400"], "network_interface": ["eth0"],
        "fsdp": ["full_shard"], "fsdp_version": [1, 3], "fsdp_offload": [True], "fsdp_activation_checkpointing": [True],
        "notify_command": ["", "   ", "notify 'unbalanced", "./no-such-program",
                           "no-such-program-" + text(rng, 1, 8, string.ascii_letters)],
    }.get(key, [])
    if key in POSITIVE:
        values.append(rng.randint(-10**9, 0))
    if key in NON_NEGATIVE:
        values.append(neg)
    return values


def valid_value(rng, key: str):
    """A value the key must take."""
    hint = HINTS[key]
    table = {
        "model": rng.choice(["./model", "org/name"]), "data": "./train.jsonl",
        "eval_data": rng.choice([None, "./train.jsonl"]), "test_data": rng.choice([None, "./train.jsonl"]),
        "general_data": rng.choice([None, "./train.jsonl"]), "general_ratio": rng.uniform(0.01, 0.99),
        "sample_prompts": rng.randint(0, 10**6),
        # the data's kind is the recipe's check (it reads the file), so any objective parses; loss_type depends on it
        "objective": rng.choice(["sft", "dpo", "orpo", "kto"]), "loss_type": None,
        # several machines need an interface, and the interface and endpoint need several machines: alone, one node
        "nnodes": 1, "rdzv_endpoint": None, "network_interface": None,
        # sharding needs several processes, and its options need sharding: alone, off
        "fsdp": None, "fsdp_version": 2, "fsdp_offload": False, "fsdp_activation_checkpointing": False,
        "beta": rng.uniform(0.01, 10), "desirable_weight": rng.uniform(0.01, 10),
        "undesirable_weight": rng.uniform(0.01, 10),
        "max_steps": rng.choice([-1, rng.randint(1, 10**6)]), "validation_split": rng.uniform(0, 0.99),
        "learning_rate": rng.choice([None, rng.uniform(1e-7, 9.9), "1e-4"]), "seed": rng.randint(0, 2**31 - 1),
        "num_train_epochs": rng.uniform(0.01, 100), "lora_dropout": rng.uniform(0, 0.99),
        "divergence_factor": rng.uniform(1.01, 100), "grad_spike_factor": rng.uniform(1.01, 100),
        "lora_target_modules": rng.choice(["all-linear", ["q_proj", "v_proj"]]),
        "report_to": rng.choice([[], ["tensorboard"]]), "optim": "adamw_torch", "lr_scheduler_type": "cosine",
        "notify_command": rng.choice([None, "true", "echo 'run ended'", "sh -c 'echo $TUNEDECK_STATE'"]),
    }
    if key in table:
        return table[key]
    if key in POSITIVE:
        return rng.randint(1, 10**6)
    if key in NON_NEGATIVE:
        return rng.uniform(0, 10)
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    choices = []
    for option in options:
        if typing.get_origin(option) is Literal:
            choices += list(typing.get_args(option))
        elif option is bool:
            choices += [True, False]
        elif option is type(None):
            choices.append(None)
        elif option is str:
            choices.append(text(rng, 1, 30).replace("\x00", ""))
    if choices:
        return rng.choice(choices)
    field = next(f for f in dataclasses.fields(RunConfig) if f.name == key)  # a key added later: its default
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def config_project(tmp: Path) -> Path:
    project = tmp / "project"
    (project / "model").mkdir(parents=True)
    (project / "model" / "config.json").write_text("{}")
    (project / "train.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    (project / "loop").symlink_to(project / "loop")
    return project


def config_error(path: Path) -> str | None:
    """The ConfigError's message, or None when the config loaded; anything else raises."""
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def check_train_cli(check: Checks, config: Path, tmp: Path, what: str, sentinel: Path | None = None) -> None:
    """`tunedeck train BAD.yaml` for real: exit 2, one line, nothing run, nothing constructed."""
    ws = tmp / "ws"
    r = cli(["train", str(config), "--workspace", str(ws)], cwd=tmp)
    why = refused_in_one_line(r)
    check(why is None, f"train {what}: {why}")
    check(not (ws / "runs").exists(), f"train {what}: a run directory was created")
    if sentinel is not None:
        check(not sentinel.exists(), f"train {what}: the YAML constructed an object (sentinel written)")


@fault("config: wrong type or range for every key", trials=16, ci_trials=1)
def config_every_key(rng, tmp: Path, env: Env) -> Outcome:
    check = Checks()
    project = config_project(tmp)
    base = {"model": "./model", "data": "./train.jsonl"}
    refused = []
    for i, key in enumerate(KEYS):
        cases = [("wrong type", wrong_type(rng, key))] + [("out of range", v) for v in out_of_range(rng, key)]
        for what, value in cases:
            path = project / f"bad-{i}-{len(refused)}.yaml"
            path.write_text(yaml.safe_dump({**base, key: value}, allow_unicode=rng.random() < 0.5))
            try:
                message = config_error(path)
            except Exception as exc:  # noqa: BLE001 - the property: ConfigError, or nothing
                check(False, f"{key} = {str(value)[:60]!r} ({what}): {type(exc).__name__}: {str(exc)[:120]}")
                continue
            refused.append(path)
            if not check(message is not None, f"{key} = {str(value)[:60]!r} ({what}) was accepted"):
                continue
            check(f"'{key}'" in message, f"{key} ({what}): the message does not name the key: {message[:150]!r}")
            check("\n" not in message and len(message) < 400, f"{key} ({what}): not one short line: "
                  f"{message[:150]!r}... ({len(message)} characters)")
        value = valid_value(rng, key)
        path = project / f"good-{i}.yaml"
        path.write_text(yaml.safe_dump({**base, key: value}))
        try:
            message = config_error(path)
        except Exception as exc:  # noqa: BLE001
            message = f"{type(exc).__name__}: {exc}"
        check(message is None, f"{key} = {value!r} (valid) was refused: {str(message)[:150]}")
    for path in rng.sample(refused, min(2, len(refused))):
        check_train_cli(check, path, tmp, path.name)
    return check.outcome()


PYTHON_TAGS = ["!!python/object/apply:os.system", "!!python/object/new:os.system",
               "!!python/object/apply:subprocess.call", "!!python/object/apply:subprocess.check_output",
               "!<tag:yaml.org,2002:python/object/apply:os.system>", "!!python/object/apply:builtins.exec",
               "!!python/object/apply:builtins.eval"]


def tagged(rng, sentinel: Path) -> str:
    """A YAML node that, loaded unsafely, would create the sentinel file."""
    tag = rng.choice(PYTHON_TAGS + ["!!python/name", "!!python/module", "!!python/object"])
    if tag == "!!python/name":
        return "!!python/name:os.system"
    if tag == "!!python/module":
        return "!!python/module:os"
    if tag == "!!python/object":
        return "!!python/object:pathlib.PosixPath {}"
    if "exec" in tag or "eval" in tag:
        code = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
        return f"{tag} [{json.dumps(code)}]"
    command = ["touch", str(sentinel)] if "subprocess" in tag else f"touch {sentinel}"
    return f"{tag} [{json.dumps(command)}]"


def laughs(levels: int) -> str:
    """A billion laughs: `levels` levels of 9 aliases each (9**levels strings expanded)."""
    names = [f"l{i}" for i in range(levels)]
    parts = [f"&{names[0]} [" + ", ".join(['"lol"'] * 9) + "]"]
    parts += [f"&{names[i]} [" + ", ".join([f"*{names[i - 1]}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def hostile_yaml(rng, sentinel: Path) -> tuple[str, bytes, str | None]:
    """(kind, YAML bytes, a text the message must hold)."""
    base = "model: ./model\ndata: ./train.jsonl\n"
    kind = rng.choice(["unknown", "unknown", "typo", "odd-key", "tag", "tag", "laughs", "deep", "not-mapping",
                       "bytes", "malformed"])
    if kind == "unknown":
        key = rng.choice(string.ascii_lowercase) + text(rng, 0, 20, string.ascii_lowercase + "_0123456789")
        if key in KEYS:
            key += "_x"
        return kind, (base + f"{key}: {json.dumps(junk(rng))}\n").encode(), f"unknown config key {key!r}"
    if kind == "typo":
        key = rng.choice(KEYS)
        i = rng.randrange(len(key))
        typo = rng.choice([key[:i] + key[i + 1:], key[:i] + key[i] * 2 + key[i + 1:], key.upper(), key + "s",
                           key.replace("_", "-") if "_" in key else key + "-"])
        if typo in KEYS or not typo:
            typo = key + "_"
        return kind, (base + f"{json.dumps(typo)}: 1\n").encode(), "unknown config key"
    if kind == "odd-key":
        key = rng.choice(["1", "2.5", "null", "~", "true", "2024-01-01", "[a, b]", "{a: 1}", "0x1f", ".inf",
                          json.dumps("x" * rng.randint(300, 5000)), "!!binary aGk="])
        return kind, (base + f"? {key}\n: 1\n").encode(), None
    if kind == "tag":
        node = tagged(rng, sentinel)
        where = rng.choice(["document", "value", "unknown", "key", "list"])
        text_ = {"document": node + "\n",
                 "value": f"model: {node}\ndata: ./train.jsonl\n",
                 "unknown": base + f"evil: {node}\n",
                 "key": base + f"? {node}\n: 1\n",
                 "list": base + f"report_to: [{node}]\n"}[where]
        return kind, text_.encode(), "not valid YAML"
    if kind == "laughs":
        key = rng.choice(["report_to", "model", "lora_target_modules", "max_steps", "evil"])
        return kind, (base + f"{key}: {laughs(rng.randint(6, 9))}\n").encode(), None
    if kind == "deep":
        depth = rng.randint(100, 1500)  # past ~1000 levels the composer recurses too deep; PyYAML scans deep
        # flow collections in time that grows faster than the depth, so no deeper than needed
        open_, close = rng.choice([("[", "]"), ("{a: ", "}")])
        return kind, (base + f"report_to: {open_ * depth}x{close * depth}\n").encode(), None
    if kind == "not-mapping":
        return kind, rng.choice([b"", b"- a\n- b\n", b"42\n", b"just text\n", b"null\n", b"[model, data]\n",
                                 b"---\n...\n"]), None
    if kind == "bytes":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 500))), None
    return kind, (base + rng.choice(["max_steps: [1, 2\n", "\tlearning_rate: 1\n", "a: b: c\n", "- x\n", "'x\n",
                                     "lr: *undefined\n", "---\nsecond: 1\n", "%TAG ! x\n", "model: \x01\n",
                                     "x: &a 1\ny: &a 2\nz: *a\n", "max_steps: !!int 'abc'\n", "x: !!int ''\n",
                                     "x: !!float '.'\n", "x: !!bool 'maybe'\n", "x: !!timestamp 'soon'\n",
                                     "x: !!timestamp 2024-13-45\n", "x: !!int 0x\n", "seed: !!binary '%%%'\n",
                                     "max_steps: 1" + "0" * rng.randint(4300, 20000) + "\n"])).encode(), None


@fault("config: unknown keys, YAML object tags", trials=12, ci_trials=1)
def config_hostile_yaml(rng, tmp: Path, env: Env) -> Outcome:
    check = Checks()
    project = config_project(tmp)
    sentinel = tmp / "constructed"
    cases = []
    for i in range(30):
        kind, raw, needle = hostile_yaml(rng, sentinel)
        path = project / f"hostile-{i}.yaml"
        path.write_bytes(raw)
        try:
            message = config_error(path)
        except Exception as exc:  # noqa: BLE001
            check(False, f"{kind} {raw[:60]!r}: {type(exc).__name__}: {str(exc)[:150]}")
            continue
        if not check(message is not None, f"{kind} {raw[:80]!r} was accepted"):
            continue
        cases.append((kind, path))
        check("\n" not in message and len(message) < 1200, f"{kind}: not one short line: {message[:150]!r}... "
              f"({len(message)} characters)")
        if needle:
            check(needle in message, f"{kind}: {needle!r} not in {message[:200]!r}")
        check(not sentinel.exists(), f"{kind}: the YAML constructed an object (sentinel written)")
    tags = [c for c in cases if c[0] == "tag"]
    for kind, path in (tags[:1] + rng.sample(cases, min(1, len(cases)))):
        check_train_cli(check, path, tmp, kind, sentinel)
    return check.outcome()


# ---- run ids and paths -------------------------------------------------------------

METACHARS = ";|&$()`<>*?!{}[]#~ '\"\\\n\t=%^"


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under root but `skip`, with what would show a write (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                               os.readlink(p) if p.is_symlink() else None)
    return found


def run_refs(rng, tmp: Path, ws: Path, real, outside, sentinel: Path) -> list[tuple[str, str]]:
    """(expectation, ref): `refuse`, `inside` (the workspace's own run) or `explicit` (a path to a run
    directory elsewhere, taken as given). Relative refs are relative to tmp/cwd."""
    runs = ws / "runs"
    links = {}
    plain = tmp / "outside-plain"
    plain.mkdir()
    (plain / "config.yaml").write_text("model: m\n")  # a project folder is not a run
    for i in range(rng.randint(1, 4)):
        name = rng.choice(["escape", "evil", "link", "other", "up"]) + f"{i}"
        target = rng.choice([outside.path, os.path.relpath(outside.path, runs), plain, "..", tmp,
                             runs / f"chain{i}"])
        if str(target).endswith(f"chain{i}"):
            (runs / f"chain{i}").symlink_to(outside.path)
        (runs / name).symlink_to(target)
        links[name] = target
    alias = rng.choice(["mirror", "alias", "same"])
    (runs / alias).symlink_to(rng.choice([real.path, real.path.name]))
    refs = [("inside", real.id), ("inside", alias), ("inside", str(real.path)), ("inside", real.id[:12]),
            ("inside", real.id[-6:]), ("explicit", str(outside.path)),
            ("explicit", os.path.relpath(outside.path, tmp / "cwd"))]
    for name in links:
        refs += [("refuse", name), ("refuse", str(runs / name)), ("refuse", os.path.relpath(runs / name, tmp / "cwd")),
                 ("refuse", name[:3])]
    for name in [n for n in os.listdir(runs) if n.startswith("chain")]:
        refs.append(("refuse", name))
    name = text(rng, 1, 8, string.ascii_lowercase)
    refs += [("refuse", r) for r in [
        "..", "../..", ".", "./", "../" * rng.randint(1, 12) + name, "runs/../..", f"{name}/../../..", "..%2f..",
        "....//", "..\\..\\" + name, "/", "/etc", "/tmp", "/dev/null", "//etc", str(tmp), str(ws), str(runs),
        str(plain), "/proc/self/cwd", "/" + "a/" * rng.randint(100, 3000), "a" * rng.randint(129, 5000),
        "~", "~/", "~no-such-user-x", "~no-such-user-x/run", "", " ", "-", "--now",
        f"$(touch {sentinel})", f"`touch {sentinel}`", f"x; touch {sentinel}", f"x && touch {sentinel}",
        f"x | touch {sentinel}", f"x\ntouch {sentinel}", f"x > {sentinel}", f"{real.id};touch {sentinel}",
        f"{real.id} {sentinel}", "*", "?", "{a,b}", "%s%n", "\u202etxt.exe", "rün", "🙂",
    ]]
    for _ in range(rng.randint(3, 8)):
        chars = [rng.choice(string.ascii_letters + METACHARS) for _ in range(rng.randint(1, 30))]
        chars.insert(rng.randint(0, len(chars)), rng.choice(METACHARS))
        refs.append(("refuse", "".join(chars)))
    return refs


@fault("run ids: .., absolute, symlinks, metachars", trials=16, ci_trials=1)
def run_id_refs(rng, tmp: Path, env: Env) -> Outcome:
    check = Checks()
    ws, cwd, home = tmp / "ws", tmp / "cwd", tmp / "home"
    cwd.mkdir()
    home.mkdir()
    sentinel = tmp / "pwned"
    real = create_run(ws, {"model": "m", "data": "d.jsonl", "method": "lora"}, name="real")
    outside = create_run(tmp / "elsewhere", {"model": "m", "data": "d.jsonl", "method": "lora"}, name="outside")
    refs = run_refs(rng, tmp, ws, real, outside, sentinel)
    before = snapshot(tmp, skip=ws)

    # in this process: every ref that does not depend on the working directory
    for expect, ref in refs:
        if not (ref.startswith(("/", "~")) or RUN_ID_RE.match(ref) or not any(c in ref for c in "./")):
            continue
        try:
            run = resolve_run(ref, ws)
        except RunError as exc:
            check(expect == "refuse", f"{ref[:60]!r} ({expect}) was refused: {exc}")
            check("\n" not in str(exc).replace(repr("\n")[1:-1], "") and len(str(exc)) < 600,
                  f"{ref[:60]!r}: not one short line: {str(exc)[:200]!r}")
            continue
        except Exception as exc:  # noqa: BLE001
            check(False, f"{ref[:60]!r}: {type(exc).__name__}: {str(exc)[:150]}")
            continue
        want = {"inside": real.path, "explicit": outside.path}.get(expect)
        check(run.path == want, f"{ref[:60]!r} ({expect}) resolved to {run.path}")
    listed = {r.path.resolve() for r in list_runs(ws)}
    check(listed == {real.path}, f"`tunedeck runs` lists {sorted(map(str, listed))}")

    # the command line, for real, from tmp/cwd with HOME at tmp/home
    commands = [["status"], ["stop"], ["stop", "--now"], ["resume", "--detach"], ["attach", "--plain"], ["eval"],
                ["export", "--out", str(ws / "exports" / "x")]]
    picks = rng.sample([r for r in refs if r[0] == "refuse"], 3) + [rng.choice([r for r in refs if r[0] != "refuse"])]
    for expect, ref in picks:
        command = rng.choice(commands) if expect == "refuse" else ["status"]  # accepted: read, never train
        r = cli([*command, "--workspace", str(ws), "--", ref], cwd=cwd, home=home, timeout=60)
        if expect == "refuse":
            why = refused_in_one_line(r)
            check(why is None, f"{' '.join(command)} {ref[:60]!r}: {why}")
        else:
            check(r.code == 0 and "Traceback" not in r.stderr,
                  f"{' '.join(command)} {ref[:60]!r} ({expect}): exit {r.code}, {r.stderr.strip()[-200:]!r}")
    after = snapshot(tmp, skip=ws)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    check(not changed, f"written outside the workspace: {changed[:5]}")
    check(not sentinel.exists(), "a shell metacharacter in a ref ran a command")
    return check.outcome()
