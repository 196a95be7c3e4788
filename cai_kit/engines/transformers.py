"""In-process generation with transformers: runs anywhere, the default engine.

Batches are sorted by prompt length and left-padded so each `generate` call wastes little on
padding; dtype `auto` is bf16 where the hardware computes it faster than fp32 (`core.precision`: a CUDA
GPU, or a CPU with AMX), which measured ~1.75x faster than fp32 on a 2-core CPU with AMX at batch 64
(docs: Benchmarks), and fp32 elsewhere (avx512_bf16 alone included, where bf16 matmuls ran ~2x slower).
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

from cai_kit.core.precision import hardware_precision
from cai_kit.engines import Completion, Conversation, GenParams
from cai_kit.engines.chat import common_prefix_length, encode_rendered, render_chat, scoring_leads, stop_token_ids


def pick_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if hardware_precision().bf16 else torch.float32
    return {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }[dtype]


MIN_PREFIX = 32  # shorter shared prefixes are not worth a separate forward pass
ROW_CACHE_BATCHES = 4  # rows kept for reuse by the next call: 4 batches' worth (~7 MB a row, default model)


class TransformersEngine:
    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        device: str | None = None,
        progress: bool = True,
        prefix_cache: bool = True,
        chat_template: str | None = None,  # a .jinja file, or a model to borrow the template from
        shared_prefix: bool = True,
        row_cache: bool = True,
        early_exit: bool = True,
    ):
        import torch

        from cai_kit.core.models import load_model

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(
            model,
            dtype=pick_dtype(dtype),
            trust_remote_code=trust_remote_code,
            device=self.device,
            chat_template=chat_template,
        )
        self.model_name = model
        self.batch_size = batch_size
        self.progress = progress
        self.prefix_cache = prefix_cache
        # Cascade attention over the cached prefix instead of a copy per row (engines/shared_prefix.py);
        # written for the CPU kernel only.
        self.shared_prefix = prefix_cache and shared_prefix and self.device == "cpu"
        if self.shared_prefix:
            from cai_kit.engines.shared_prefix import ATTENTION

            self.model.set_attn_implementation(ATTENTION)
        self._prefix_key: list[int] | None = None
        self._prefix_kv: Any = None  # the shared prefix's batch-1 cache
        # Each row's KV from the last generate call, reused by rows of the next call that extend it (a
        # revision extends its critique's conversation); shared-prefix path only, at most ROW_CACHE_BATCHES
        # batches of rows kept.
        self.row_cache = row_cache and self.shared_prefix
        self._saved: list[Any] = []
        # Finished rows leave the batch (engines/decode.py); false decodes with model.generate.
        self.early_exit = early_exit
        self.tokenizer.padding_side = "left"
        self.stop_ids = stop_token_ids(self.model.generation_config.eos_token_id, self.tokenizer)
        self.generated_tokens = 0  # running total, read by progress displays and benchmarks
        self.reused_tokens = 0  # prompt tokens whose KV came from the last call's rows (row_cache)

    def render(self, conversation: Conversation) -> str:
        """The chat-template text of a conversation, ready for the model to write the assistant turn."""
        return render_chat(self.tokenizer, conversation)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return encode_rendered(self.tokenizer, texts)

    def _batch_inputs(self, rows: list[list[int]], max_new_tokens: int) -> dict:
        """Model inputs for one batch, reusing the KV cache of the prefix all rows share.

        On a CPU the prefill dominates: every critique and revision carries the same few-shot
        demonstrations (~600 tokens), which a plain batch recomputes for every row. Here the shared
        prefix runs once and its cache is copied across the batch (vllm's prefix caching does the
        same on GPUs). Padding goes between the prefix and each row's own suffix; position ids come
        from the attention mask, so every token keeps the position it would have unpadded. With
        `shared_prefix` the rows attend to the one prefix cache instead of copies of it.
        """
        import torch

        pad = self.tokenizer.pad_token_id
        shared = common_prefix_length(rows)
        shared = min(shared, min(len(r) for r in rows) - 1)  # every row keeps a token to feed the model
        if not self.prefix_cache or shared < MIN_PREFIX:
            width = max(len(r) for r in rows)
            ids = [[pad] * (width - len(r)) + r for r in rows]
            mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
            return {
                "input_ids": torch.tensor(ids, device=self.device),
                "attention_mask": torch.tensor(mask, device=self.device),
            }
        prefix = rows[0][:shared]
        if self._prefix_key != prefix:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            self._prefix_key, self._prefix_kv = prefix, getattr(out, "cache", None) or out.past_key_values
        own, cached = self._reused(rows, shared) if self.row_cache else (None, [0] * len(rows))
        known, rest = max(cached), [len(r) - shared - c for r, c in zip(rows, cached)]
        width = max(rest)
        if self.shared_prefix:
            from cai_kit.engines.shared_prefix import shared_prefix_cache

            cache = shared_prefix_cache(self._prefix_kv, len(rows), room=known + width + max_new_tokens, own=own)
        else:
            cache = copy.deepcopy(self._prefix_kv)
            cache.batch_repeat_interleave(len(rows))
        # Each row after the prefix: [pad][tokens whose KV is reused][pad][tokens to prefill]; positions
        # come from the mask, so padding in the middle changes nothing.
        ids, mask = [], []
        for r, c, n in zip(rows, cached, rest):
            ids.append(prefix + [pad] * (known - c) + r[shared : shared + c] + [pad] * (width - n) + r[shared + c :])
            mask.append([1] * shared + [0] * (known - c) + [1] * c + [0] * (width - n) + [1] * n)
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
            "cache": cache,
        }

    def _reused(self, rows: list[list[int]], shared: int) -> tuple[list | None, list[int]]:
        """KV of the last call's rows that these rows extend: per layer (keys, values) [batch, heads, C,
        dim], each row's part right-aligned, and how many of each row's own tokens it covers."""
        from cai_kit.engines.shared_prefix import best_saved

        found = [best_saved(self._saved, row, shared) for row in rows]
        cached = [covered - shared for _, covered in found]
        self.reused_tokens += sum(cached)
        known = max(cached)
        if not known:
            return None, cached
        own = []
        for index, layer in enumerate(self._prefix_kv.layers):
            _, heads, _, dim = layer.keys.shape
            keys, values = (layer.keys.new_zeros(len(rows), heads, known, dim) for _ in range(2))
            for k, ((entry, _), c) in enumerate(zip(found, cached)):
                if c and entry is not None:
                    start = shared - entry.prefix_len
                    keys[k, :, known - c :] = entry.kv[index][0][:, start : start + c]
                    values[k, :, known - c :] = entry.kv[index][1][:, start : start + c]
            own.append((keys, values))
        return own, cached

    def _keeper(self, batch: list[int], encoded: list[list[int]], inputs: dict, saved: list):
        """The decode loop's callback that keeps finished rows' KV for the next call (row_cache), or None."""
        if not (self.row_cache and "cache" in inputs):
            return None
        from cai_kit.engines.shared_prefix import save_rows

        shared = len(self._prefix_key or [])
        own_masks = inputs["attention_mask"][:, shared:]

        def finished(cache, places, rows, replies) -> None:
            if len(saved) < ROW_CACHE_BATCHES * self.batch_size:
                full = [encoded[batch[k]] + reply for k, reply in zip(rows, replies)]
                saved.extend(save_rows(cache, places, full, shared, [own_masks[k] for k in rows]))

        return finished

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        import torch
        from tqdm import tqdm

        from cai_kit.engines.decode import decode, generate_whole_batch

        run = decode if self.early_exit else generate_whole_batch
        encoded = self._encode([self.render(c) for c in conversations])
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[Completion | None] = [None] * len(encoded)
        bar = tqdm(
            total=len(encoded),
            unit="reply",
            leave=False,
            file=sys.stderr,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        saved: list[Any] = []
        started, produced = time.perf_counter(), 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self._batch_inputs([encoded[i] for i in batch], params.max_new_tokens)
            if params.temperature > 0:
                torch.manual_seed(params.seed + start)
            finished = self._keeper(batch, encoded, inputs, saved)
            with torch.inference_mode():
                new_tokens = run(
                    self.model, inputs, params, self.stop_ids, self.tokenizer.pad_token_id, on_finished=finished
                )
            for index, tokens in zip(batch, new_tokens):
                stop_at = next((k for k, token in enumerate(tokens) if token in self.stop_ids), None)
                kept = tokens if stop_at is None else tokens[:stop_at]
                text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
                results[index] = Completion(
                    text=text, finish_reason="length" if stop_at is None else "stop", tokens=len(kept)
                )
                produced += len(kept)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{produced / max(time.perf_counter() - started, 1e-9):.0f}")
        bar.close()
        self._saved = saved
        self.generated_tokens += produced
        return [r for r in results if r is not None]

    def plain_generate(self, conversations: list[Conversation], params: GenParams, batch_size: int) -> list[list[int]]:
        """Replies (token ids before the stop token) from plain `model.generate` on left-padded batches,
        with none of this engine's caches or its decode loop: the baseline that the throughput benchmark
        and the tests compare `generate` against."""
        import torch

        from cai_kit.engines.decode import generate_whole_batch

        replies = []
        for start in range(0, len(conversations), batch_size):
            texts = [self.render(c) for c in conversations[start : start + batch_size]]
            inputs = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
            with torch.inference_mode():
                rows = generate_whole_batch(
                    self.model, dict(inputs.to(self.device)), params, self.stop_ids, self.tokenizer.pad_token_id
                )
            replies += [row[:-1] if row and row[-1] in self.stop_ids else row for row in rows]
        return replies

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        """Sum of log-probs of each continuation after its rendered conversation."""
        return [float(row.sum()) for row in self._continuation_logps(conversations, continuations, self.batch_size)]

    def token_logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[list[float]]:
        """The log-prob of every token of each continuation (an answer's mean NLL needs its token count).

        Batches of at most 8: a continuation here is a whole answer, so the kept logits are wide.
        """
        rows = self._continuation_logps(conversations, continuations, min(self.batch_size, 8))
        return [row.tolist() for row in rows]

    def _continuation_logps(self, conversations: list[Conversation], continuations: list[str], batch_size: int):
        """Per continuation, a 1-D tensor of its tokens' log-probs after its rendered conversation.

        Rows are left-padded so every continuation ends the row, and only the last positions' logits
        are computed (`logits_to_keep`): a full [batch, length, vocabulary] float tensor is ~4 GB at
        batch 32 for a 49k vocabulary, which made the judge the memory peak of a whole recipe. Rows that
        differ only in a one-token continuation (a judge's labels) share one row of the batch (`scoring_leads`).
        """
        import torch

        prompts = self._encode([self.render(c) for c in conversations])
        full = self._encode([self.render(c) + cont for c, cont in zip(conversations, continuations)])
        leads = scoring_leads(prompts, full)
        own = [k for k, lead in enumerate(leads) if lead == k]
        shared = {lead for k, lead in enumerate(leads) if lead != k}
        out: dict[int, Any] = {}
        after_prompt: dict[int, Any] = {}  # lead row -> log-probs of every token after its prompt
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(own), batch_size):
            batch = own[start : start + batch_size]
            rows = [full[k] for k in batch]
            lengths = [len(full[k]) - len(prompts[k]) for k in batch]
            width, keep = max(len(r) for r in rows), max(lengths) + 1
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
                ).logits.float()
            # logits[:, j] predicts the token at width - keep + j + 1
            every = torch.log_softmax(logits[:, :-1], dim=-1)
            logp = every.gather(-1, ids[:, width - keep + 1 :, None])[..., 0]
            for j, (k, n) in enumerate(zip(batch, lengths)):
                out[k] = logp[j, keep - 1 - n : keep - 1]
                if k in shared:
                    after_prompt[k] = every[j, keep - 1 - n]
        for k, lead in enumerate(leads):
            if lead != k:
                out[k] = after_prompt[lead][full[k][-1:]]
        return [out[k] for k in range(len(full))]

    def close(self) -> None:
        self.model = None
