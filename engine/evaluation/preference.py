"""Reward accuracy and margin on held-out preference pairs, with rewards as DPO defines them.

A completion's reward is beta * (log p_policy(completion | prompt) - log p_reference(completion | prompt)),
the log-probabilities summed over the completion's tokens; the policy is the tuned model and the reference
the model it started from (the base with the adapter disabled, engine.evaluation.run.Models). Reward
accuracy is the share of pairs whose chosen completion earns the higher reward (strictly, as TRL's
`rewards/accuracies`), the margin the mean of chosen minus rejected reward: TRL's `rewards/*` metrics,
measured on pairs the run never trained on. Prompt and completion are tokenised apart and joined, as TRL's
trainers do, so the same tokens are scored. Heavy (torch): runs in the evaluation's process.
"""

from __future__ import annotations

from engine.data.rows import completion_start


def chat(messages: list[dict]) -> list[dict]:
    """What the chat template reads of a message (tool rows are refused before this)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def pair_parts(example, system: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) messages of a pair example, with the run's system prompt as it trained."""
    start = completion_start(example.messages)
    prompt = [m for m in example.messages[:start] if m["role"] != "system"]
    prompt = ([{"role": "system", "content": system}] if system else []) + prompt
    return chat(prompt), chat(example.messages[start:]), chat(example.rejected)


def completion_ids(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """Token ids of prompt plus completion, and where the completion begins."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not whole.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently once an answer follows it: "
                         "completion log-probabilities cannot be told apart from the prompt's")
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    return ids + tokenizer(whole[len(prompt_text):], add_special_tokens=False)["input_ids"], len(ids)


def completion_logp(model, ids: list[int], start: int) -> float:
    """Sum of log p(token | everything before it) over the tokens from `start` on (teacher forcing)."""
    import torch

    with torch.no_grad():
        input_ids = torch.tensor([ids], device=model.device)
        logits = model(input_ids=input_ids, use_cache=False).logits[0, start - 1:-1].float()
        return float(logits.log_softmax(-1).gather(-1, input_ids[0, start:, None]).sum())


def pair_rewards(models, pairs: list[tuple], beta: float, max_length: int) -> tuple[list[dict], int]:
    """Per pair: policy and reference log-probabilities and rewards of the chosen and the rejected completion;
    and how many sequences were cut to `max_length` (from the end, as TRL's keep_start)."""
    results, truncated = [], 0
    for prompt, chosen, rejected in pairs:
        scored = {}
        for side, completion in (("chosen", chosen), ("rejected", rejected)):
            ids, start = completion_ids(models.tokenizer, prompt, completion)
            if len(ids) > max_length:
                truncated += 1
                ids = ids[:max(max_length, start + 1)]
            policy = completion_logp(models.tuned, ids, start)
            with models.base_context():
                reference = completion_logp(models.as_base(), ids, start)
            scored.update({f"{side}_logp": round(policy, 4), f"{side}_ref_logp": round(reference, 4),
                           f"{side}_reward": round(beta * (policy - reference), 6)})
        results.append(scored)
    return results, truncated


def summarise(results: list[dict], beta: float, truncated: int) -> dict:
    """The report's `preference` object (README: Evaluation, preference pairs)."""
    n = len(results)
    mean = lambda key: round(sum(r[key] for r in results) / n, 6)
    return {"pairs": n, "beta": beta,
            "reward_accuracy": round(sum(r["chosen_reward"] > r["rejected_reward"] for r in results) / n, 4),
            "reward_margin": round(sum(r["chosen_reward"] - r["rejected_reward"] for r in results) / n, 6),
            "chosen_reward": mean("chosen_reward"), "rejected_reward": mean("rejected_reward"),
            "chosen_logp": mean("chosen_logp"), "rejected_logp": mean("rejected_logp"),
            "truncated": truncated}


def preference_metrics(models, examples: list, beta: float, max_length: int,
                       system: str | None) -> tuple[dict | None, list[dict | None]]:
    """Reward accuracy and margin on the pairs among `examples` (None when there are none), and each
    example's log-probabilities and rewards (None for an example that is not a pair)."""
    at = [i for i, ex in enumerate(examples) if ex.kind == "pair"]
    if not at:
        return None, [None] * len(examples)
    results, truncated = pair_rewards(models, [pair_parts(examples[i], system) for i in at], beta, max_length)
    per_example: list[dict | None] = [None] * len(examples)
    for i, result in zip(at, results):
        per_example[i] = result
    return summarise(results, beta, truncated), per_example
