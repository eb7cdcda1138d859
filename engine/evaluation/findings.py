"""The findings of a diagnosis (engine.evaluation.diagnosis): the evidence a run directory holds, read once,
and one rule per branch of the practice's debugging tree (seeds 003), each a Finding with the evidence
in this run's numbers, the advice, and the change as config keys. Light: no torch, no UI."""


from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from functools import cached_property

from engine.core.files import read_json
from engine.runs.events import EventReader
from engine.runs.protocol import Run, is_number
from engine.training.config import DEFAULT_LEARNING_RATES, DEFAULT_PREFERENCE_LEARNING_RATES, PREFERENCE_OBJECTIVES

# not_learning: the mean loss of the last fifth of the logged steps against the first fifth. A fall
# below 10% over a whole run is flat: a working LoRA run on a new format falls by half or more.
FLAT_FALL = 0.10
MIN_LOGS = 8  # fewer logged losses say nothing about a trend
ALREADY_LOW_LOSS = 0.2  # nats per token: the model knows the task already; a flat curve is no fault
NO_TARGET_SHARE = 0.05  # examples with nothing trained: the template or the roles are off
MIN_GRAD_SPIKES = 2  # one spike is a bad batch; repeated ones are the learning rate
# overfitting: eval loss this much above its best, at least twice after it, while train loss fell.
EVAL_RISE = 0.02
FORMAT_COMPLIANCE = 0.9  # below this share of held-out answers in the expected format
SIMILAR_EXAMPLES = 3  # training examples listed per failing output
MAX_FAILURES_SEARCHED = 20
# memorization: a wrong held-out answer of at least MEMO_WORDS words that is a training answer, or whose
# word 8-grams are mostly (MEMO_COVERAGE) found in training answers and not in its own prompt or reference.
MEMO_NGRAM = 8
MEMO_WORDS = 8
MEMO_COVERAGE = 0.5
MEMO_SHARE = 0.05  # of held-out answers, and at least MEMO_MIN of them
MEMO_MIN = 2
# forgetting: probes the base passed and the tuned model fails, or general-text perplexity up.
FORGOTTEN_PROBES = 2
PERPLEXITY_RISE = 0.2
MASK_EXAMPLES = 3  # rendered examples shown with their trained text for not_learning
MARK_OPEN, MARK_CLOSE = "\u27e6", "\u27e7"  # ⟦trained text⟧ in a rendered example


@dataclass
class Finding:
    id: str
    evidence: str
    advice: str
    config: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        if not out["details"]:
            del out["details"]
        return out


@dataclass
class Evidence:
    """What the run directory says, read once."""

    run: Run
    config: dict
    status: dict
    logs: list[dict]  # log events: step, loss, grad_norm, epoch
    evals: list[dict]  # eval events: step, eval_loss
    warnings: list[dict]
    errors: list[dict]
    data_ready: dict | None
    report: dict | None  # eval/report.json

    @classmethod
    def read(cls, run: Run) -> Evidence:
        events = EventReader(run.events_path).read_new()
        of = lambda kind: [e for e in events if e.get("type") == kind]
        data_ready = next((e for e in reversed(of("state")) if e.get("state") == "data_ready"), None)
        return cls(run, run.config(), run.status(), [e for e in of("log") if is_number(e.get("loss"))],
                   [e for e in of("eval") if is_number(e.get("eval_loss"))], of("warning"), of("error"),
                   data_ready, read_json(run.path / "eval" / "report.json"))

    @cached_property
    def training(self) -> list:
        """The examples of the training file (empty when it cannot be read: the findings that need it say so)."""
        from engine.data.load import load_examples

        try:
            return load_examples(self.config["data"]).examples
        except (OSError, KeyError, ValueError):
            return []

    def learning_rate(self) -> float:
        lr = self.config.get("learning_rate")
        return float(lr) if is_number(lr) else self.recipe_learning_rate()

    def recipe_learning_rate(self) -> float:
        """The rate the run's recipe trains at by default: a preference objective's is 10-100x below SFT's."""
        preference = self.config.get("objective", "sft") in PREFERENCE_OBJECTIVES
        table = DEFAULT_PREFERENCE_LEARNING_RATES if preference else DEFAULT_LEARNING_RATES
        return table.get(self.config.get("method"), table["lora"])


def _finite(x) -> bool:
    return is_number(x) and math.isfinite(x)


def plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _lr(value: float) -> float:
    return float(f"{value:.2g}")


# ---- training curves -------------------------------------------------------------
def failed(ev: Evidence) -> Finding | None:
    if ev.status.get("state") not in ("failed", "crashed"):
        return None
    error = ev.errors[-1] if ev.errors else {}
    message = error.get("message") or ev.status.get("error") or "the engine stopped without a final status"
    config = {}
    if "out of memory" in message.lower():
        batch = int(ev.config.get("per_device_train_batch_size") or 1)
        config = {"per_device_train_batch_size": 1,
                  "gradient_accumulation_steps": int(ev.config.get("gradient_accumulation_steps") or 1) * batch,
                  "gradient_checkpointing": True}
    return Finding("failed", f"the run {ev.status['state']} at step {ev.status.get('step', '?')}: {message}",
                   error.get("advice") or f"see {ev.run.log_path}; `tunedeck resume {ev.run.id}` continues from "
                   "the last complete checkpoint once the cause is fixed", config)


def lr_too_high(ev: Evidence) -> Finding | None:
    seen = []
    bad_logs = [e for e in ev.logs if not _finite(e["loss"]) or (is_number(e.get("grad_norm"))
                                                                 and not _finite(e["grad_norm"]))]
    if bad_logs:
        first = bad_logs[0]
        seen.append(f"loss {first['loss']} (gradient norm {first.get('grad_norm')}) at step {first['step']}, "
                    f"{len(bad_logs)} such steps")
    codes = {}
    for w in ev.warnings:
        codes.setdefault(w.get("code"), []).append(w)
    if "nan_eval" in codes:
        seen.append(f"evaluation loss not finite at step {codes['nan_eval'][0].get('step')}")
    for w in codes.get("divergence", [])[:1]:
        seen.append(f"divergence at step {w.get('step')}: {w.get('message', '').split(':')[0]}")
    spikes = codes.get("grad_spike", [])
    if len(spikes) >= MIN_GRAD_SPIKES:
        seen.append(f"{len(spikes)} gradient-norm spikes (steps {', '.join(str(w.get('step')) for w in spikes[:5])})")
    if not seen:
        return None
    lr = ev.learning_rate()
    broken = bool(bad_logs) or "nan_eval" in codes
    factor = 10 if broken else 3
    config = {"learning_rate": _lr(lr / factor)}
    warmup = ev.config.get("warmup_steps")
    if is_number(warmup) and warmup < 0.1:
        config["warmup_steps"] = 0.1
    if not ev.config.get("max_grad_norm") or ev.config.get("max_grad_norm", 1.0) > 1.0:
        config["max_grad_norm"] = 1.0
    advice = (f"lower the learning rate {factor}x ({lr:g} -> {config['learning_rate']:g}), warm up over 10% of the "
              "steps and keep gradient clipping at 1.0")
    if broken and ev.config.get("precision") == "fp16":
        advice += "; fp16 overflows where bf16 does not: use precision: bf16 where the GPU has it"
    return Finding("lr_too_high", "; ".join(seen), advice, config)


def _window(values: list[float]) -> tuple[float, float]:
    k = max(1, len(values) // 5)
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


def not_learning(ev: Evidence) -> Finding | None:
    losses = [e["loss"] for e in ev.logs if _finite(e["loss"])]
    data = (ev.data_ready or {}).get("train") or {}
    examples, no_target = data.get("examples") or 0, data.get("dropped_no_target") or 0
    share_empty = no_target / examples if examples else 0.0
    flat = False
    seen = []
    if len(losses) >= MIN_LOGS:
        first, last = _window(losses)
        fall = (first - last) / first if first > 0 else 0.0
        if fall < FLAT_FALL and first > ALREADY_LOW_LOSS:
            flat = True
            seen.append(f"train loss {first:.3f} -> {last:.3f} ({fall:+.1%} fall; means of the first and last "
                        f"{max(1, len(losses) // 5)} of {len(losses)} logged steps, to step {ev.logs[-1]['step']})")
    if share_empty > NO_TARGET_SHARE:
        seen.append(f"{no_target} of {examples} training examples ({share_empty:.0%}) had no trained tokens and "
                    "were dropped")
    if not flat and share_empty <= NO_TARGET_SHARE:
        return None
    if data.get("tokens"):
        seen.append(f"{data.get('trained_tokens', 0) / data['tokens']:.0%} of the tokens are trained")
    lr = ev.learning_rate()
    if share_empty > NO_TARGET_SHARE:
        advice = ("check the data format first: the rendered examples below show what is trained (between "
                  f"{MARK_OPEN} {MARK_CLOSE}); an answer cut off by max_seq_length or a template that hides the "
                  "assistant turn leaves nothing to learn")
        config = {"max_seq_length": int(ev.config.get("max_seq_length") or 1024) * 2} if data.get("truncated") else {}
    else:
        recipe = ev.recipe_learning_rate()
        if lr < recipe / 10:  # far below the method's published rates: go to them, not 3x of nothing
            raise_to, why = recipe, f"far below the {ev.config.get('method')} recipes' {recipe:g}"
        else:
            raise_to, why = _lr(lr * 3), "3x; the seeds say 2-10x"
        advice = (f"raise the learning rate ({lr:g} -> {raise_to:g}: {why}), and check in the rendered examples "
                  f"below that the answers are what is trained (between {MARK_OPEN} {MARK_CLOSE})")
        config = {"learning_rate": raise_to}
    return Finding("not_learning", "; ".join(seen), advice, config, {"examples": rendered_examples(ev)})


def rendered_examples(ev: Evidence, n: int = MASK_EXAMPLES) -> list[dict]:
    """The first training examples rendered with the model's chat template, trained text marked."""
    from engine.data.template import LightTokenizer

    examples = ev.training[:n]
    if not examples:
        return [{"error": f"cannot read the training examples of {ev.config.get('data')}"}]
    try:
        tokenizer = LightTokenizer(ev.config["model"])
    except Exception as exc:  # noqa: BLE001 - a view of the evidence; its absence is said, not raised
        return [{"error": f"cannot render examples: {exc}"}]
    shown = []
    for ex in examples:
        text, spans, tokens, trained = tokenizer.trained_view(ex.messages, ex.tools)
        marked, at = [], 0
        for start, end in spans:
            marked += [text[at:start], MARK_OPEN, text[start:end], MARK_CLOSE]
            at = end
        shown.append({"line": ex.line, "text": "".join(marked) + text[at:], "tokens": tokens, "trained": trained})
    return shown


def overfitting(ev: Evidence) -> Finding | None:
    evals = [e for e in ev.evals if _finite(e["eval_loss"])]
    if len(evals) < 3:
        return None
    best = min(evals, key=lambda e: e["eval_loss"])
    after = [e for e in evals if e["step"] > best["step"]]
    last = evals[-1]
    if len(after) < 2 or last["eval_loss"] <= best["eval_loss"] * (1 + EVAL_RISE):
        return None
    before = [e["loss"] for e in ev.logs if e["step"] <= best["step"] and _finite(e["loss"])]
    since = [e["loss"] for e in ev.logs if e["step"] > best["step"] and _finite(e["loss"])]
    if not before or not since:
        return None
    k = max(1, len(before) // 3)
    train_then, train_now = statistics.fmean(before[-k:]), statistics.fmean(since[-k:])
    if train_now >= train_then:
        return None  # both rose: that is instability, not overfitting
    rise = last["eval_loss"] / best["eval_loss"] - 1
    evidence = (f"eval loss was lowest at step {best['step']} ({best['eval_loss']:.4g}) and rose to "
                f"{last['eval_loss']:.4g} by step {last['step']} ({rise:+.0%}) while train loss fell "
                f"{train_then:.3g} -> {train_now:.3g}")
    config: dict = {}
    max_steps = ev.config.get("max_steps", -1)
    epoch = next((e.get("epoch") for e in reversed(ev.logs) if e["step"] <= best["step"] and is_number(e.get("epoch"))),
                 None)
    if is_number(max_steps) and max_steps > 0:
        config["max_steps"] = int(best["step"])
    elif epoch:
        config["num_train_epochs"] = max(0.1, math.ceil(float(epoch) * 10) / 10)
    if not is_number(ev.config.get("weight_decay")) or ev.config["weight_decay"] < 0.1:
        config["weight_decay"] = 0.1
    if ev.config.get("method") in ("lora", "qlora") and (ev.config.get("lora_dropout") in ("auto", None)
                                                         or float(ev.config["lora_dropout"]) < 0.1):
        config["lora_dropout"] = 0.1
    patience = ev.config.get("early_stopping_patience")
    if patience is None or patience > 2:
        config["early_stopping_patience"] = 2
    best_step = ev.status.get("best_step")
    kept = (f"the saved {'model' if ev.config.get('method') == 'full' else 'adapter'} is the step-{int(best_step)} "
            "one (the best evaluation is kept)" if is_number(best_step) else
            "the best evaluation's checkpoint is in checkpoints/")
    return Finding("overfitting", evidence,
                   f"{kept}; train for fewer steps, add weight decay or dropout, and stop early; more (or more "
                   "varied) training data is the lasting fix", config,
                   {"best_step": best["step"], "best_eval_loss": best["eval_loss"]})


# ---- held-out evaluation ------------------------------------------------------------
def _answers(examples) -> list[tuple[int, str]]:
    """(line, assistant text) of each training example."""
    return [(ex.line, "\n".join(m["content"] for m in ex.messages if m["role"] == "assistant"))
            for ex in examples]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def format_finding(ev: Evidence, training) -> Finding | None:
    tuned = (ev.report or {}).get("tuned") or {}
    rate = tuned.get("format_compliance")
    if not is_number(rate) or rate >= FORMAT_COMPLIANCE:
        return None
    rows = ev.report.get("rows") or []
    failing = [r for r in rows if r.get("tuned_format") is False]
    baseline = (ev.report.get("baseline") or {}).get("format_compliance")
    evidence = (f"format compliance {rate:.0%} on {ev.report.get('examples', len(rows))} held-out examples"
                + (f" (prompted baseline {baseline:.0%})" if is_number(baseline) else "")
                + (f"; failing answers, e.g. line {failing[0].get('line')}: {failing[0].get('tuned', '')[:80]!r}"
                   if failing else ""))
    similar = similar_training_examples(failing[:MAX_FAILURES_SEARCHED], training)
    return Finding("format", evidence,
                   "audit the training examples most like the failing answers (listed; open them on the Data "
                   "screen): inconsistent formats in the data teach inconsistent output; add more examples of the "
                   "target format if few show it", {},
                   {"similar": similar, "data": ev.config.get("data")})


def similar_training_examples(failing: list[dict], training) -> list[dict]:
    """For each failing output, the training answers sharing most of its words (Jaccard of word sets)."""
    answers = [(line, text, set(_words(text))) for line, text in _answers(training)]
    out = []
    for row in failing:
        words = set(_words(row.get("tuned", "")))
        if not words:
            continue
        scored = sorted(((len(words & w) / len(words | w), line, text) for line, text, w in answers if w),
                        reverse=True)[:SIMILAR_EXAMPLES]
        out.append({"line": row.get("line"), "output": row.get("tuned", ""),
                    "training": [{"line": line, "similarity": round(s, 3), "answer": text[:300]}
                                 for s, line, text in scored]})
    return out


def _ngrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + MEMO_NGRAM]) for i in range(len(words) - MEMO_NGRAM + 1)}


def memorization(ev: Evidence, training) -> Finding | None:
    rows = (ev.report or {}).get("rows") or []
    if not rows:
        return None
    answers = _answers(training)
    exact = {}
    for line, text in answers:
        exact.setdefault(" ".join(_words(text)), line)
    wanted: dict[tuple, list[int]] = {}  # n-gram of a candidate answer -> rows it occurs in
    candidates = {}
    for i, row in enumerate(rows):
        words = _words(row.get("tuned", ""))
        if len(words) < MEMO_WORDS or " ".join(words) == " ".join(_words(row.get("reference", ""))):
            continue  # short, or right: copying the right answer is no fault
        own = _ngrams(_words(row.get("prompt", ""))) | _ngrams(_words(row.get("reference", "")))
        grams = _ngrams(words) - own
        candidates[i] = (words, grams)
        for g in grams:
            wanted.setdefault(g, []).append(i)
    found: dict[int, set] = {}
    source: dict[int, int] = {}
    for line, text in answers:  # one pass over the training answers, holding only the candidates' n-grams
        for g in _ngrams(_words(text)) & wanted.keys():
            for i in wanted[g]:
                found.setdefault(i, set()).add(g)
                source.setdefault(i, line)
    copied = []
    for i, (words, grams) in candidates.items():
        line = exact.get(" ".join(words))
        all_grams = max(1, len(words) - MEMO_NGRAM + 1)
        coverage = len(found.get(i, ())) / all_grams
        if line is not None or coverage >= MEMO_COVERAGE:
            copied.append({"line": rows[i].get("line"), "output": rows[i].get("tuned", "")[:300],
                           "training_line": line if line is not None else source.get(i),
                           "coverage": 1.0 if line is not None else round(coverage, 3)})
    if len(copied) < max(MEMO_MIN, MEMO_SHARE * len(rows)):
        return None
    first = copied[0]
    config = {}
    epochs = ev.config.get("num_train_epochs")
    if is_number(ev.config.get("max_steps")) and ev.config["max_steps"] > 0:
        config["max_steps"] = max(1, int(ev.config["max_steps"]) // 2)
    elif is_number(epochs):
        config["num_train_epochs"] = max(1.0, float(epochs) / 2)
    if ev.config.get("method") in ("lora", "qlora"):
        config["lora_dropout"] = 0.1
    return Finding("memorization",
                   f"{len(copied)} of {len(rows)} held-out answers copy training answers "
                   f"({MEMO_NGRAM}-word overlap or the whole answer) instead of answering their own prompt; "
                   f"e.g. held-out line {first['line']} copies training line {first['training_line']}",
                   "train fewer epochs and add dropout; deduplicate the training data (`tunedeck data dedup`) and "
                   "add more varied examples: the model repeats answers it saw instead of generalising", config,
                   {"copied": copied[:20]})


def forgetting(ev: Evidence, general_data: str | None) -> Finding | None:
    f = (ev.report or {}).get("forgetting")
    if not f:
        return None
    regressed = f.get("regressed") or []
    ppl = f.get("perplexity") or {}
    base, tuned = ppl.get("base"), ppl.get("tuned")
    rise = tuned / base - 1 if _finite(base) and _finite(tuned) and base > 0 else None
    if len(regressed) < FORGOTTEN_PROBES and (rise is None or rise <= PERPLEXITY_RISE):
        return None
    config: dict = {}
    lr = ev.learning_rate()
    config["learning_rate"] = _lr(lr / 2)
    if ev.config.get("method") == "full":
        config["method"] = "lora"
        config["learning_rate"] = 2e-4 / 2  # a LoRA rate, halved (RunConfig's LoRA default is 2e-4)
    mix = ev.config.get("general_data") or general_data
    if mix:
        config["general_data"] = mix
        config["general_ratio"] = min(0.5, float(ev.config.get("general_ratio") or 0.1) + 0.2) \
            if ev.config.get("general_data") else 0.3
    advice = ("mix general examples into the training data (general_data: FILE, general_ratio: 0.3; "
              "`tunedeck data mix` writes such a file)" if not mix else
              f"mix in more general data ({config['general_ratio']:.0%} of the training split from {mix})")
    advice += (", use LoRA instead of full fine-tuning" if ev.config.get("method") == "full" else "") + \
        ", and lower the learning rate; then run `tunedeck eval` again to compare the probes"
    return Finding("forgetting", f.get("verdict", ""), advice, config,
                   {"regressed": regressed, "perplexity": ppl})


def healthy(ev: Evidence) -> Finding:
    seen = []
    losses = [e["loss"] for e in ev.logs if _finite(e["loss"])]
    if len(losses) >= 2:
        first, last = _window(losses)
        seen.append(f"train loss fell {first:.3f} -> {last:.3f}")
    if ev.evals:
        best = min(ev.evals, key=lambda e: e["eval_loss"])
        seen.append(f"eval loss best at step {best['step']} ({best['eval_loss']:.4g}) of "
                    f"{ev.evals[-1]['step']}")
    if ev.report:
        rate = (ev.report.get("tuned") or {}).get("format_compliance")
        if is_number(rate):
            seen.append(f"format compliance {rate:.0%}")
        if ev.report.get("forgetting"):
            seen.append(ev.report["forgetting"].get("verdict", ""))
    return Finding("healthy", "; ".join(seen) or "nothing recorded yet",
                   "nothing in this run's evidence calls for a change: keep this configuration"
                   + ("" if ev.report else ", and evaluate it (`tunedeck eval RUN --baseline`) before shipping"))
