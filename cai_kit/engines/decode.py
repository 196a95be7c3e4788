"""The transformers engine's decode loop: like `model.generate`, but finished rows leave the batch.

`model.generate` runs every row of a batch until its longest row ends, feeding the finished ones pad
tokens. On a CPU each row costs its share of every decode step, and a batch of critiques (~30 tokens
each, a few much longer) spent about half its steps on rows that had already stopped. Here, once a
quarter of the live rows have stopped, they are dropped: their cache rows, ids and mask go, and
later steps run on the live rows only (the same idea as the early exit of continuous batching in
vllm and TGI, without refilling the batch).

Greedy decoding gives the tokens `model.generate` gives (fp32, tested). Sampling uses the same
processors (repetition penalty, temperature, top-p) and is seeded, but its draws differ from
`model.generate`'s because the batch shrinks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from cai_kit.engines import GenParams

# Called with (cache, places, rows, replies) before finished rows are dropped: their places in the
# cache's batch, their indices in the input batch and their new tokens; each row is reported once.
OnFinished = Callable[[object, list[int], list[int], list[list[int]]], None]


def _processors(params: GenParams) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature > 0:
        processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors


def decode(
    model,
    inputs: dict,
    params: GenParams,
    stop_ids: list[int],
    pad_id: int,
    on_finished: OnFinished | None = None,
) -> list[list[int]]:
    """New tokens of each row of `inputs` (input_ids, attention_mask and optionally a `cache` that already
    holds the rows' first tokens), each ending at its first stop token (kept) or at max_new_tokens."""
    ids, mask, cache = inputs["input_ids"], inputs["attention_mask"], inputs.get("cache")
    done_before = cache.get_seq_length() if cache is not None else 0
    # Positions from the mask, so padding anywhere in a row changes no real token's position.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    stops = torch.tensor(stop_ids, device=ids.device)
    processors, sampling = _processors(params), params.temperature > 0
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    live = list(range(ids.shape[0]))  # each batch place's row in the input
    finished = torch.zeros(len(live), dtype=torch.bool, device=ids.device)
    step_ids, step_positions = ids[:, done_before:], positions[:, done_before:]
    for step in range(params.max_new_tokens):
        output = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = getattr(output, "cache", None) or output.past_key_values
        scores = processors(ids, output.logits[:, -1].to(dtype=torch.float32))
        if sampling:
            chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[:, 0]
        else:
            chosen = scores.argmax(dim=-1)
        chosen = chosen.masked_fill(finished, pad_id)
        for place, (token, done) in enumerate(zip(chosen.tolist(), finished.tolist())):
            if not done:
                out[live[place]].append(token)
        finished |= torch.isin(chosen, stops)
        last = step == params.max_new_tokens - 1 or bool(finished.all())
        if last or int(finished.sum()) >= max(1, len(live) // 4):
            places = (torch.ones_like(finished) if last else finished).nonzero()[:, 0].tolist()
            if on_finished:
                rows = [live[p] for p in places]
                on_finished(cache, places, rows, [out[r] for r in rows])
            if last:
                break
            keep = (~finished).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            ids, mask, positions, chosen = ids[keep], mask[keep], positions[keep], chosen[keep]
            live = [live[p] for p in keep.tolist()]
            finished = finished[keep]
        ids = torch.cat([ids, chosen[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        step_ids, step_positions = chosen[:, None], positions[:, -1:]
    return out


def generate_whole_batch(
    model,
    inputs: dict,
    params: GenParams,
    stop_ids: list[int],
    pad_id: int,
    on_finished: OnFinished | None = None,
) -> list[list[int]]:
    """`decode`'s contract through plain `model.generate`, which keeps every row to the end (the
    `early_exit: false` engine option, and the baseline the benchmark compares against)."""
    sampling = params.temperature > 0
    output = model.generate(
        **inputs,
        max_new_tokens=params.max_new_tokens,
        do_sample=sampling,
        temperature=params.temperature if sampling else None,
        top_p=params.top_p if sampling else None,
        top_k=None,
        repetition_penalty=params.repetition_penalty,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    replies = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        stop = next((k for k, token in enumerate(row) if token in stop_ids), None)
        replies.append(row if stop is None else row[: stop + 1])
    if on_finished and "cache" in inputs:
        on_finished(inputs["cache"], list(range(len(replies))), list(range(len(replies))), replies)
    return replies
