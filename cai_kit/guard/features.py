"""The features a guard reads: the model's hidden states at the prompt, one forward pass per prompt, no generation.

The prompt is the chat-templated user turn, rendered as the engines render it (`engines/chat.py`), so the
probe sees what the model sees before it answers. Two poolings per layer: the last token (where the model is
about to write the assistant turn) and the mean over the tokens after the template's shared prefix (a default
system prompt, the same for every prompt, would otherwise dilute the mean). Prompts are batched, sorted by
length and left-padded with matching position ids, so a prompt's features do not depend on its neighbours
beyond float rounding. Whatever engine answers, the features come from transformers on the same model folder
(an openvino or openai engine cannot return hidden states); it runs in fp32 (a 135M model needs no less).
"""

from __future__ import annotations

import sys
from typing import Any

from cai_kit.engines.chat import common_prefix_length, encode_rendered, render_chat

POOLINGS = ("last", "mean")
LAYER_STEP = 4  # layers tried on the dev split: every 4th, and the last


def candidate_layers(num_layers: int) -> list[int]:
    """Layers (1 = the first block's output, `num_layers` the last) whose hidden states a probe may read."""
    return sorted({*range(LAYER_STEP, num_layers + 1, LAYER_STEP), num_layers})


class FeatureModel:
    """A causal LM loaded for its hidden states: `features(prompts, layers)` -> {(layer, pooling): [n, d] tensor}."""

    def __init__(self, spec: str, trust_remote_code: bool = False, batch_size: int = 16):
        import torch

        from cai_kit.core.models import load_model

        self.model, self.tokenizer = load_model(spec, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                device="cpu")
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.num_layers = int(self.model.config.num_hidden_layers)
        # Tokens every prompt shares before the user's words (BOS, a default system prompt, the user header).
        self.prefix = common_prefix_length(self._encode(["a", "b"]))

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        texts = [render_chat(self.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        return encode_rendered(self.tokenizer, texts)

    def features(self, prompts: list[str], layers: list[int], progress: bool = False) -> dict[tuple[int, str], Any]:
        import torch
        from tqdm import tqdm

        encoded = self._encode(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out = {(layer, pool): torch.zeros(len(prompts), self.model.config.hidden_size)
               for layer in layers for pool in POOLINGS}
        bar = tqdm(total=len(prompts), desc="cai guard: forward passes", unit="prompt", file=sys.stderr,
                   disable=not progress)
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch])
                mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    output_hidden_states=True).hidden_states
                # The user's own tokens: after the shared prefix, at least the last token.
                lengths = torch.tensor([len(encoded[i]) for i in batch])
                starts = width - lengths + torch.clamp(torch.full_like(lengths, self.prefix), max=lengths - 1)
                keep = (torch.arange(width)[None, :] >= starts[:, None]).float()[..., None]
                for layer in layers:
                    states = hidden[layer].float()
                    out[(layer, "last")][batch] = states[:, -1]
                    out[(layer, "mean")][batch] = (states * keep).sum(1) / keep.sum(1)
                bar.update(len(batch))
        bar.close()
        return out
