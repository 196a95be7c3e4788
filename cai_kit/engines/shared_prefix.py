"""Cascade attention over a prefix that every row of a batch shares (the few-shot demonstrations).

Copying the prefix's KV cache into every row makes each decode step read batch-size copies of it,
and transformers' `DynamicCache` grows by `torch.cat`, which rewrites the whole cache every step;
on a 2-core CPU at batch 32 with a ~450-token prefix those two took ~70% of a decode step. Here the
prefix is kept once, each row's own tokens go into a preallocated buffer, and attention runs twice:
every query of the batch against the single prefix (no mask: the prefix comes before every token
and holds no padding), and each row against its own tokens (causal and padding mask). The two
partial results merge exactly through their log-sum-exps (the softmax split used by FlashAttention,
Dao et al. 2022, and by cascade inference kernels such as FlashInfer's).

Only the CPU path is written: it needs the log-sum-exp that torch's CPU flash-attention kernel
returns. Ordinary tensors fall through to transformers' SDPA attention unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "cai_shared_prefix"


class Split(NamedTuple):
    """Keys (or values) of one layer: the shared prefix [1, heads, P, dim] and each row's own [B, heads, S, dim]."""

    prefix: torch.Tensor
    own: torch.Tensor


class SharedPrefixLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch: int, room: int):
        super().__init__()
        self.prefix_keys, self.prefix_values = keys, values
        shape = (batch, keys.shape[1], room, keys.shape[3])
        self.own_keys = keys.new_empty(shape)
        self.own_values = values.new_empty(shape)
        self.length = 0
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple:
        end = self.length + key_states.shape[-2]
        if end > self.own_keys.shape[-2]:  # more tokens than planned: grow by doubling, not every step
            room = max(end, 2 * self.own_keys.shape[-2])
            self.own_keys, self.own_values = _grow(self.own_keys, room), _grow(self.own_values, room)
        self.own_keys[:, :, self.length : end] = key_states
        self.own_values[:, :, self.length : end] = value_states
        self.length = end
        return (
            Split(self.prefix_keys, self.own_keys[:, :, :end]),
            Split(self.prefix_values, self.own_values[:, :, :end]),
        )

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2] + self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only these rows (the decode loop drops finished ones); the shared prefix stays."""
        self.own_keys, self.own_values = self.own_keys[indices], self.own_values[indices]


def _grow(buffer: torch.Tensor, room: int) -> torch.Tensor:
    grown = buffer.new_empty(buffer.shape[0], buffer.shape[1], room, buffer.shape[3])
    grown[:, :, : buffer.shape[2]] = buffer
    return grown


def _layers(cache: Cache) -> list[Any]:
    """The cache's layers, typed loosely: transformers types them as a union of layer kinds without
    the key/value attributes (or our own buffers) that full-attention layers have."""
    return list(cache.layers)


def shared_prefix_cache(
    prefix: Cache, batch: int, room: int, own: list[tuple[torch.Tensor, torch.Tensor]] | None = None
) -> Cache:
    """A cache for `batch` rows that all start with `prefix` (a batch-1 cache), with room for `room` tokens
    each; `own` (per layer, keys and values [batch, heads, C, dim]) fills each row's first C own tokens."""
    layers: list[Any] = [SharedPrefixLayer(layer.keys, layer.values, batch, room) for layer in _layers(prefix)]
    for layer, (keys, values) in zip(layers, own or []):
        layer.own_keys[:, :, : keys.shape[2]] = keys
        layer.own_values[:, :, : keys.shape[2]] = values
        layer.length = keys.shape[2]
    return Cache(layers=layers)


class SavedRow(NamedTuple):
    """A finished row of the last generate call: its tokens (prompt and reply) and the KV of its tokens
    after the shared prefix, per layer [heads, n, dim]; n is one short of the tokens (the last reply
    token was never fed back)."""

    tokens: list[int]
    prefix_len: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def save_rows(
    cache: Cache, places: list[int], rows: list[list[int]], prefix_len: int, own_masks: list[torch.Tensor]
) -> list[SavedRow]:
    """The own KV of finished rows of a batch cache. `places` are the rows' places in the cache's batch,
    `rows` their full token lists (prompt and reply, the reply ending at its stop token), `own_masks`
    their input masks after the prefix (1 for a real token, 0 for padding; all of the same width).
    Every cache column after the input holds a fed reply token, and all but a reply's last were fed."""
    saved = []
    for place, tokens, own_mask in zip(places, rows, own_masks):
        given = own_mask.nonzero()[:, 0]
        fed = len(tokens) - prefix_len - len(given) - 1
        cols = torch.cat([given, torch.arange(len(own_mask), len(own_mask) + fed)])
        kv = [(layer.own_keys[place][:, cols], layer.own_values[place][:, cols]) for layer in _layers(cache)]
        saved.append(SavedRow(tokens[: prefix_len + len(cols)], prefix_len, kv))
    return saved


def common_length(a: list[int], b: list[int], start: int = 0) -> int:
    n = min(len(a), len(b))
    k = start
    while k < n and a[k] == b[k]:
        k += 1
    return k


def best_saved(saved: list[SavedRow], row: list[int], prefix_len: int) -> tuple[SavedRow | None, int]:
    """The saved row that shares the most tokens with `row` past the batch's prefix, and how many of
    `row`'s tokens (counted from the start) its KV covers; every row keeps at least one token to feed."""
    best, covered = None, prefix_len
    for entry in saved:
        if entry.prefix_len > prefix_len or entry.tokens[: prefix_len + 1] != row[: prefix_len + 1]:
            continue
        shared = min(common_length(entry.tokens, row, prefix_len + 1), len(row) - 1)
        if shared > covered:
            best, covered = entry, shared
    return best, covered


def _attend(query, key, value, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and its log-sum-exp (float32), from torch's CPU flash-attention kernel."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=mask, scale=scale)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    if not isinstance(key, Split):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_heads, prefix_len, own_len = key.own.shape[1], key.prefix.shape[2], key.own.shape[2]
    # Grouped-query attention without copying K/V: the query heads that share a KV head become
    # extra query rows of it, [B, kv_heads, group * q_len, dim].
    grouped = query.reshape(batch, kv_heads, -1, dim)
    # Every query of the batch against the one prefix, as one batch row.
    prefix_out, prefix_lse = _attend(
        grouped.transpose(0, 1).reshape(1, kv_heads, -1, dim), key.prefix, value.prefix, None, scaling
    )
    prefix_out = prefix_out.reshape(kv_heads, batch, -1, dim).transpose(0, 1)
    prefix_lse = prefix_lse.reshape(kv_heads, batch, -1).transpose(0, 1)
    # Each row against its own tokens. The mask covers prefix + own positions; the prefix part is all visible.
    if attention_mask is None:
        visible = torch.ones(q_len, own_len, dtype=torch.bool, device=query.device).tril(own_len - q_len)[None, None]
    else:
        visible = attention_mask[..., prefix_len:]
        if visible.dtype != torch.bool:  # an additive float mask: 0 where visible
            visible = visible == 0
    group = heads // kv_heads
    additive = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
    # finfo.min rather than -inf: a padding query that sees none of its own tokens gets a finite,
    # hugely negative log-sum-exp and so no weight in the merge (the kernel returns lse 0 for -inf rows).
    additive = additive.masked_fill(~visible, torch.finfo(query.dtype).min).repeat(1, 1, group, 1)
    own_out, own_lse = _attend(grouped, key.own, value.own, additive, scaling)
    # The two softmax parts merge with weights exp(lse_part - lse_total); the prefix's weight is
    # sigmoid(prefix_lse - own_lse). One lerp in the model's dtype costs far less than an fp32 merge.
    weight = torch.sigmoid(prefix_lse - own_lse).to(query.dtype)[..., None]
    out = torch.lerp(own_out, prefix_out, weight).reshape(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
