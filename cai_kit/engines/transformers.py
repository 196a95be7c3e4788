"""In-process generation with transformers: runs anywhere, the default engine.

Batches are sorted by prompt length and left-padded so each `generate` call wastes little on
padding; bf16 is used where the CPU has native bf16 (AMX / avx512_bf16), which measured ~1.75x
faster than fp32 on a 2-core CPU at batch 64 (FINDINGS.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cai_kit.engines import Completion, Conversation, GenParams


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_bf16() else torch.float32
    return {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }[dtype]


class TransformersEngine:
    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        device: str | None = None,
        progress: bool = True,
    ):
        import torch

        from cai_kit.models import load_model

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = load_model(
            model, dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code, device=self.device
        )
        self.model_name = model
        self.batch_size = batch_size
        self.progress = progress
        self.tokenizer.padding_side = "left"
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.stop_ids = sorted(i for i in eos_ids if i is not None)
        self.generated_tokens = 0  # running total, read by progress displays and benchmarks

    def render(self, conversation: Conversation) -> str:
        """The chat-template text of a conversation, ready for the model to write the assistant turn."""
        continuing = conversation[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
        )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        # The chat template already holds any BOS token; adding special tokens again would double it.
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        import torch
        from tqdm import tqdm

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
        started, produced = time.perf_counter(), 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(
                self.device
            )
            sampling = params.temperature > 0
            if sampling:
                torch.manual_seed(params.seed + start)
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=params.max_new_tokens,
                    do_sample=sampling,
                    temperature=params.temperature if sampling else None,
                    top_p=params.top_p if sampling else None,
                    top_k=None,
                    repetition_penalty=params.repetition_penalty,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
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
        self.generated_tokens += produced
        return [r for r in results if r is not None]

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        import torch

        prompts = self._encode([self.render(c) for c in conversations])
        full = self._encode([self.render(c) + cont for c, cont in zip(conversations, continuations)])
        scores: list[float] = []
        for start in range(0, len(full), self.batch_size):
            rows = full[start : start + self.batch_size]
            width = max(len(r) for r in rows)
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for k, row in enumerate(rows):
                begin = len(prompts[start + k])
                scores.append(float(logp[k, begin - 1 : len(row) - 1].sum()))
        return scores

    def close(self) -> None:
        self.model = None
