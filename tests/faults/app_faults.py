"""The app killed (SIGKILL) at a random keystroke during data review and during blind A/B judging.

Rows: "app killed during data review" (verdicts, undo, moves, notes, edits, search, filters,
spot-check, bulk), "app killed with a review dialog open" (the kill waits until the note, edit,
search, filter or bulk dialog shows, then lands between two keystrokes or inside one, the
dialog's enter or ctrl+s included), "app killed during A/B judging" (a/b/t/s, undo, views,
reload, the export dialog).

Each trial starts the real app headless in a child process (app_driver.py: Textual's Pilot),
drives it through a key script drawn from the trial's seed, and reads what the screen shows as
committed after each keystroke. The child runs in lockstep (it waits for a go before each key),
so the kill lands either between two keystrokes or, after a go and a random delay of 0-30 ms,
inside one; half of those aim at a key that writes (a verdict, undo, enter in the note dialog).
A few kills land during start-up (importing, loading, opening the store). Then:

- the store is read directly (a fresh SQLite connection): it must pass integrity_check, take a
  write lock at once (nothing left locked), and hold exactly what the child last reported as
  shown, or that plus the keystroke in flight at the kill (the state a replay of the script up to
  and including that key shows, driven in this process on a fresh copy);
- the app is reopened on the same files (in this process, Pilot): it must show the same reviews
  or judgements as the store, and resume at the example or pair shown before the kill;
- the source dataset (or the evaluation report) must be byte-identical: review never writes it.

`lost` counts verdicts, notes, edits or judgements that the child reported as shown and that
were missing or different afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from faults import Env, Outcome, fault

DRIVER = Path(__file__).with_name("app_driver.py")
ROOT = Path(__file__).resolve().parents[2]
DIALOGS = ("PathPrompt", "EditAnswer", "Confirm")
COMMITTING = {"g", "b", "s", "u", "t", "a", "enter", "ctrl+s", "y"}  # keys that can write to a store
RUN_ID = "20260105-101500-people-3f2a"
LINE_TIMEOUT = 30.0  # seconds for one state line (the first includes importing Textual)


# ---- key scripts ---------------------------------------------------------------

def typed(text: str) -> list[str]:
    return ["space" if c == " " else c for c in text]


def data_script(rng: random.Random, actions: int, dialogs: bool = False) -> list[str]:
    """A reviewer's keystrokes: verdicts, undo, moves, notes, edits, search, filters, spot-check, bulk.
    With `dialogs`, the note and edit dialogs come three times as often."""
    words = ["odd", "typo", "age", "ok"]
    choices = [
        (35, lambda: [rng.choice("gbs")]),
        (10, lambda: ["u"]),
        (14, lambda: [rng.choice(["j", "j", "k"])]),
        (10, lambda: ["n", *typed(rng.choice(words)), rng.choice(["enter", "enter", "escape"])]),
        (8, lambda: ["e", *typed(rng.choice(words) + " "), rng.choice(["ctrl+s", "ctrl+s", "escape"])]),
        (5, lambda: ["slash", *typed(rng.choice(["lisbon", "osaka", "error", "age", "qqq"])),
                     rng.choice(["enter", "enter", "escape"])]),
        (6, lambda: ["f", "ctrl+u", *typed(rng.choice(["all", "all", "flagged", "unreviewed", "good", "bad"])),
                     "enter"]),
        (4, lambda: ["right_square_bracket"]),
        (3, lambda: ["r", "ctrl+u", str(rng.randint(3, 9)), "enter"]),
        (4, lambda: ["B", "ctrl+u", *typed(rng.choice(["good", "bad", "skip"])), "enter",
                     rng.choice(["y", "y", "n"])]),
    ]
    weights = [w * (3 if dialogs and i in (3, 4) else 1) for i, (w, _) in enumerate(choices)]
    keys: list[str] = []
    for _ in range(actions):
        keys += rng.choices([make for _, make in choices], weights=weights)[0]()
    return keys


def ab_script(rng: random.Random, actions: int) -> list[str]:
    """A judge's keystrokes: mostly a/b/t/s and u in the A/B view, with views, scrolling, reload, export."""
    choices = [
        (55, lambda: [rng.choice("abts")]),
        (18, lambda: ["u"]),
        (10, lambda: [rng.choice(["m", "e", "r", "r"])]),
        (8, lambda: [rng.choice("jk")]),
        (5, lambda: ["R"]),
        (4, lambda: ["x", rng.choice(["escape", "ctrl+u"])]),
    ]
    keys = ["r"] if rng.random() < 0.9 else []
    for _ in range(actions):
        keys += rng.choices([make for _, make in choices], weights=[w for w, _ in choices])[0]()
    return keys


# ---- the killed child ----------------------------------------------------------

class Child:
    """app_driver.py in lockstep: `step()` lets one key go; `lines()` has every state line read."""

    def __init__(self, mode: str, target: Path, keys: list[str], tmp: Path):
        keys_file = tmp / "keys.json"
        keys_file.write_text(json.dumps(keys))
        self.err = tmp / "child.err"
        env = {**os.environ, "TUNEDECK_CACHE": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(DRIVER), mode, str(target), str(keys_file),
                                          "--lockstep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, cwd=ROOT, env=env)
        self.queue: queue.Queue = queue.Queue()
        self.states: list[dict] = []
        self.done = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.queue.put(raw)
        self.queue.put(None)

    def _take(self, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            return  # cut off by the kill: not reported
        state = json.loads(raw)
        if state.get("done"):
            self.done = True
        else:
            self.states.append(state)

    def next_line(self) -> dict | None:
        """Wait for the next state line; None once the child finished its script."""
        while not self.done:
            try:
                raw = self.queue.get(timeout=LINE_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"no state line in {LINE_TIMEOUT:.0f}s: {self.stderr_tail()}") from None
            if raw is None:
                raise RuntimeError(f"the app exited with {self.proc.wait()}: {self.stderr_tail()}")
            before = len(self.states)
            self._take(raw)
            if len(self.states) > before:
                return self.states[-1]
        return None

    def step(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(5)
        while True:  # whatever it wrote before it died counts as reported
            try:
                raw = self.queue.get_nowait()
            except queue.Empty:
                break
            if raw is not None:
                self._take(raw)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def stderr_tail(self) -> str:
        try:
            return self.err.read_text(errors="replace")[-600:].strip() or "(no stderr)"
        except OSError:
            return "(no stderr)"


def kill_child(rng: random.Random, child: Child, keys: list[str], in_dialog: bool) -> tuple[str, int | None]:
    """Let the child run its script and SIGKILL it at a random keystroke. Returns where the kill landed
    and the index of the key in flight (None when it landed between keystrokes or at start-up).
    With `in_dialog`, the kill waits for a line that shows a dialog open (note, edit, search, ...)."""
    if rng.random() < 0.08:  # during start-up: importing, loading, opening the store
        time.sleep(rng.uniform(0.2, 1.5))
        child.kill()
        return "at start-up", None
    mid = rng.random() < 0.5
    committing = [k for k, key in enumerate(keys) if key in COMMITTING]
    # Half the kills inside a keystroke aim at one that commits something (a verdict, undo, saving a note).
    target = rng.choice(committing) if mid and committing and rng.random() < 0.5 else rng.randint(0, len(keys))
    dialogs_seen = 0
    dialog_target = rng.randint(0, 3)
    for k in range(len(keys) + 1):
        state = child.next_line()
        if state is None:
            break
        if in_dialog:
            if state["modal"] in DIALOGS:
                dialogs_seen += 1
            hit = (state["modal"] in DIALOGS and dialogs_seen > dialog_target) or k == len(keys)
        else:
            hit = k >= target
        if hit:
            dialog = f" with {state['modal']} open" if state["modal"] in DIALOGS else ""
            if mid and k < len(keys):
                child.step()
                time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.005), rng.uniform(0.0, 0.03)]))
                child.kill()
                if len(child.states) > k + 1:  # it finished the key and said so before it died
                    return f"just after key {k + 1} {keys[k]!r}{dialog}", None
                return f"inside key {k + 1} {keys[k]!r}{dialog}", k
            child.kill()
            return f"between keys {k} and {k + 1}{dialog}", None
        child.step()
    child.kill()
    return "after the whole script", None


# ---- checking ------------------------------------------------------------------

def in_thread(make_coro):
    """Run a coroutine to completion on a fresh event loop in its own thread (safe inside a running loop)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make_coro())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        raise RuntimeError("the in-process app did not finish in 120 s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def drive_here(mode: str, target: Path, keys: list[str]) -> list[dict]:
    """The app driven in this process through `keys`: every state line, the loaded one first."""
    from faults.app_driver import drive

    states: list[dict] = []
    in_thread(lambda: drive(mode, target, keys, states.append))
    return states


def sqlite_sound(path: Path) -> str | None:
    """Why the store at `path` is not sound (corrupt, still locked), or None."""
    if not path.exists():
        return None
    db = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            return f"integrity_check: {check}"
        db.execute("BEGIN IMMEDIATE")  # a lock left behind would fail here
        db.execute("ROLLBACK")
    except sqlite3.Error as error:
        return f"{type(error).__name__}: {error}"
    finally:
        db.close()
    return None


def differing(reported: dict, stored: dict) -> int:
    """Entries of `reported` that `stored` lacks or holds differently."""
    return sum(1 for key, value in reported.items() if stored.get(key) != value)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(mode: str, *, field: str, where: str, states: list[dict], flight: int | None, stored: dict,
          replay, reopened: dict, how: str) -> Outcome:
    """Compare the store and the reopened app with what the child last reported (`field`: the reviews
    or judgements; `where`: the example or pair shown). With a key in flight at the kill, the state
    after that key (from `replay`) is accepted as well, for each of the two on its own: a verdict and
    the move to the next example are two commits, and the kill may fall between them."""
    problems = [f"line {i}: {s['inconsistent']}" for i, s in enumerate(states) if s.get("inconsistent")]
    last = states[-1] if states else {field: {}, where: None}

    def places(candidates: list[dict]) -> list:
        # A Data filter that matched nothing showed no example; reopening resumes at the last one shown.
        found = [c[where] for c in candidates]
        shown = [s[where] for s in states if s[where] is not None]
        if mode == "data" and shown:
            found = [p if p is not None else shown[-1] for p in found]
        return found

    candidates = [last]
    if flight is not None and (stored != last[field] or (states and reopened[where] not in places([last]))):
        replayed = replay(flight + 1)
        if [s[field] for s in replayed[:len(states)]] != [s[field] for s in states]:
            problems.append("the replay of the script diverged from the killed run, so the key in flight "
                            "could not be checked")
        else:
            candidates.append(replayed[len(states)])
    lost = 0
    if all(stored != c[field] for c in candidates):
        lost = min(differing(c[field], stored) for c in candidates)
        extra = min(sum(1 for k in stored if k not in c[field]) for c in candidates)
        problems.append(f"store differs from the last state shown ({lost} lost, {extra} unexpected) "
                        f"after a kill {how}")
    if reopened[field] != stored:
        problems.append(f"the reopened app shows {len(reopened[field])} {field}, the store holds {len(stored)}")
    if states and reopened[where] not in places(candidates):
        problems.append(f"reopened at {where} {reopened[where]!r}, the app showed {last[where]!r} "
                        f"(kill {how}, last key {len(states) - 1})")
    if reopened.get("inconsistent"):
        problems.append(f"reopened: {reopened['inconsistent']}")
    if problems:
        return Outcome(False, lost, "; ".join(problems))
    kind = next(k for k in ("start-up", "between keys", "inside key", "just after key", "after the whole script")
                if k in how)
    if kind == "inside key":
        kind += ", its change stored" if len(candidates) > 1 and stored == candidates[1][field] else ""
    return Outcome(True, 0, f"killed {kind}" + (" (dialog open)" if " open" in how else ""))


# ---- data review ------------------------------------------------------------------

def demo_dataset(env: Env) -> Path:
    def build() -> Path:
        from engine.demo import write_demo_data

        return write_demo_data(env.root / "app-faults-data", train_size=25)["train"]

    return env.cached("app-faults-data", build)


def stored_reviews(dataset: Path) -> tuple[dict, str | None]:
    from engine.data.review import ReviewStore, store_path

    path = store_path(dataset)
    problem = sqlite_sound(path)
    if problem or not path.exists():
        return {}, problem
    store = ReviewStore(path)
    try:
        reviews = {key: r for key, r in store.all().items() if any(r.values())}
    finally:
        store.close()
    return reviews, None


def data_trial(rng: random.Random, tmp: Path, env: Env, in_dialog: bool) -> Outcome:
    source = demo_dataset(env)
    dataset = tmp / "data" / "train.jsonl"
    dataset.parent.mkdir()
    shutil.copyfile(source, dataset)
    before = sha256(dataset)
    keys = data_script(rng, rng.randint(5, 12), dialogs=in_dialog)
    child = Child("data", dataset, keys, tmp)
    try:
        how, flight = kill_child(rng, child, keys, in_dialog)
    finally:
        if child.proc.poll() is None:
            child.kill()
    stored, problem = stored_reviews(dataset)
    if problem:
        return Outcome(False, sum(len(s["reviews"]) for s in child.states[-1:]),
                       f"store unsound after a kill {how}: {problem}")

    def replay(n: int) -> list[dict]:
        fresh = tmp / "replay" / "train.jsonl"
        fresh.parent.mkdir()
        shutil.copyfile(source, fresh)
        return drive_here("data", fresh, keys[:n])

    reopened = drive_here("data", dataset, [])[0]
    outcome = check("data", field="reviews", where="current", states=child.states, flight=flight, stored=stored,
                    replay=replay, reopened=reopened, how=how)
    if sha256(dataset) != before:
        return Outcome(False, outcome.lost, f"the dataset changed; {outcome.detail}")
    return outcome


@fault("app killed during data review", trials=20, ci_trials=2)
def killed_during_review(rng: random.Random, tmp: Path, env: Env) -> Outcome:
    return data_trial(rng, tmp, env, in_dialog=False)


@fault("app killed with a review dialog open", trials=12, ci_trials=2)
def killed_in_review_dialog(rng: random.Random, tmp: Path, env: Env) -> Outcome:
    return data_trial(rng, tmp, env, in_dialog=True)


# ---- blind A/B judging ---------------------------------------------------------------

def evaluated_workspace(workspace: Path) -> Path:
    """A workspace with one completed run and its evaluation report (6 pairs); the report's path."""
    from eval_fixtures import write_report
    from tui_fixtures import make_run

    run = make_run(workspace, run_id=RUN_ID, state="completed", steps=10, max_steps=10)
    return write_report(run)


def stored_judgements(report: Path) -> tuple[dict, str | None]:
    from engine.evaluation.ab import ABStore

    path = report.parent / "ab.sqlite"
    problem = sqlite_sound(path)
    if problem or not path.exists():
        return {}, problem
    with ABStore(path) as store:
        return store.judgements(), None


@fault("app killed during A/B judging", trials=20, ci_trials=2)
def killed_during_ab(rng: random.Random, tmp: Path, env: Env) -> Outcome:
    workspace = tmp / "ws"
    report = evaluated_workspace(workspace)
    before = sha256(report)
    keys = ab_script(rng, rng.randint(6, 14))
    child = Child("ab", workspace, keys, tmp)
    try:
        how, flight = kill_child(rng, child, keys, in_dialog=False)
    finally:
        if child.proc.poll() is None:
            child.kill()
    stored, problem = stored_judgements(report)
    if problem:
        return Outcome(False, sum(len(s["judgements"]) for s in child.states[-1:]),
                       f"store unsound after a kill {how}: {problem}")

    def replay(n: int) -> list[dict]:
        fresh = tmp / "replay"
        evaluated_workspace(fresh)
        return drive_here("ab", fresh, keys[:n])

    reopened = drive_here("ab", workspace, [])[0]
    outcome = check("ab", field="judgements", where="pair", states=child.states, flight=flight, stored=stored,
                    replay=replay, reopened=reopened, how=how)
    if sha256(report) != before:
        return Outcome(False, outcome.lost, f"the evaluation report changed; {outcome.detail}")
    return outcome
