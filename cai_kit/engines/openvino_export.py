"""Export a model folder to the OpenVINO IR that OpenVINO GenAI runs, once, cached like the default model.

GenAI's pipelines take a folder holding a *stateful* decoder (`openvino_model.xml`: inputs input_ids,
attention_mask, position_ids and beam_idx, output logits, the KV cache kept as internal state), the
tokenizer and detokenizer as OpenVINO models, and the model's config files. This module builds that
folder with OpenVINO's own tools only: the transformers model, wrapped so its KV cache is plain tensors
in and out, goes through `openvino.convert_model` (TorchScript tracing; torch's attention becomes
OpenVINO's ScaledDotProductAttention, which GenAI turns into paged attention for continuous batching);
each cache input gets a Gather by `beam_idx`, and OpenVINO's make-stateful pass turns each (past, present)
pair into a state. `openvino_tokenizers.convert_tokenizer` writes the tokenizers, with the chat template.

The folder goes under `CAI_KIT_CACHE/openvino/`, keyed by a hash of the model folder's files (remembered in
`hashes.json` while the files' sizes and modification times stay the same) and the weights' precision,
and is written to a temporary folder first and renamed into place, so a second run (or a concurrent one)
finds it whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from cai_kit.core.errors import UsageError

# The weights as stored in the IR: fp32; fp16 (computed in fp32 on a CPU without native half precision); int8,
# each matrix multiply's weights per output channel (`compress_weights`), which the CPU plugin multiplies in
# int8 (activations quantized on the fly, per group of 32) where the CPU has VNNI.
PRECISIONS = ("fp32", "fp16", "int8")
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def folder_hash(folder: Path) -> str:
    """sha256 over every file's relative path and content (README and licence files included: cheap)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def remembered_folder_hash(folder: Path, memo: Path) -> str:
    """`folder_hash`, read back from `memo` while every file's path, size and modification time are as they
    were when it was computed: a 7B model's 14 GB are hashed once, not on every load."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = str(folder.resolve())
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("files") == stats and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = folder_hash(folder)
    known[key] = {"files": stats, "sha256": digest}
    try:  # a memo that cannot be written (a full disk) costs the next load a hash, nothing else
        memo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=memo.parent, prefix=".hashes-", delete=False) as handle:
            staged = Path(handle.name)
            json.dump(known, handle)
        os.replace(staged, memo)
    except OSError:
        for leftover in memo.parent.glob(".hashes-*"):
            leftover.unlink(missing_ok=True)
    return digest


def exported_folder(source: Path, precision: str) -> Path:
    from cai_kit.core.models import cache_dir

    root = cache_dir() / "openvino"
    return root / f"{source.name}-{remembered_folder_hash(source, root / 'hashes.json')[:16]}-{precision}"


def ensure_exported(source: str | Path, precision: str = "fp32") -> Path:
    """The IR folder for the model folder `source`, exported now if the cache does not hold it yet."""
    if precision not in PRECISIONS:
        raise UsageError(f"engine 'openvino': precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    source = Path(source)
    target = exported_folder(source, precision)
    if (target / "openvino_model.xml").is_file():
        return target
    print(f"cai: exporting {source.name} to OpenVINO ({precision}; once, later runs load the cache)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        try:
            export(source, staged, precision)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:  # the converters' failures
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise UsageError(
                f"engine 'openvino': could not export {source} to OpenVINO ({detail}); use --engine transformers"
            ) from None
        try:
            os.rename(staged, target)
        except OSError:  # another process exported it first: keep theirs
            if not (target / "openvino_model.xml").is_file():
                raise
    return target


def export(source: Path, target: Path, precision: str) -> None:
    """Write the stateful decoder IR, the tokenizer models and the config files of `source` into `target`."""
    import openvino as ov

    decoder = convert_decoder(source)
    if precision == "int8":
        compress_weights(decoder)
    ov.save_model(decoder, target / "openvino_model.xml", compress_to_fp16=precision == "fp16")
    write_tokenizers(source, target)
    for name in CONFIG_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def compress_weights(model) -> int:
    """Replace each matrix multiply's 2-D f32 weight constant by int8 values and a per-output-channel scale
    (symmetric: w ~ scale * q, q in [-127, 127]), the Convert-Multiply pattern the CPU plugin fuses into an
    int8-weight FullyConnected; embeddings (a Gather) stay f32. Returns how many were compressed."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    compressed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node()
        if weight.get_type_name() != "Constant" or weight.get_element_type() != ov.Type.f32:
            continue
        values = weight.get_data()
        if values.ndim != 2:
            continue
        # transpose_b: the weight is [out, in] (torch's Linear) and a channel is a row; else a column.
        axis = 1 if op.get_attributes()["transpose_b"] else 0
        scale = np.abs(values).max(axis=axis, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
        restored = ops.multiply(
            ops.convert(ops.constant(quantized), ov.Type.f32),
            ops.constant(scale.astype(np.float32)),
        )
        op.input(1).replace_source_output(restored.output(0))
        compressed += 1
    return compressed


def convert_decoder(source: Path):
    """The model as a stateful OpenVINO decoder (see the module docstring)."""
    import openvino as ov
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.config).layers}
    if kinds != {DynamicLayer.__name__}:
        raise UsageError(
            f"engine 'openvino': {source.name} has cache layers of kind {', '.join(sorted(kinds))}; "
            "the exporter handles full-attention decoders only (use --engine transformers)"
        )
    wrapper = _flat_cache_decoder(model)
    config = model.config
    layers = config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, past, new = 2, 3, 2
    # A padded row in the example keeps the traced graph's mask general (no "all ones" shortcut).
    mask = torch.ones(batch, past + new, dtype=torch.int64)
    mask[0, 0] = 0
    example = (
        torch.ones(batch, new, dtype=torch.int64),
        mask,
        torch.arange(past, past + new, dtype=torch.int64).expand(batch, new).contiguous(),
        *[torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)],
    )
    dynamic = ov.PartialShape([-1, -1])
    cache_shape = ov.PartialShape([-1, kv_heads, -1, head_dim])
    shapes = [(dynamic, ov.Type.i64)] * 3 + [(cache_shape, ov.Type.f32)] * (2 * layers)
    # Tracing warns about every Python branch on a shape; each is checked by the tests (greedy replies and
    # log-probs match the transformers engine), so the warnings are noise to a user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = ov.convert_model(wrapper, example_input=example, input=shapes)
    cache_in = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    cache_out = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    for port, name in zip(decoder.inputs, ["input_ids", "attention_mask", "position_ids", *cache_in]):
        port.get_tensor().set_names({name})
    for port, name in zip(decoder.outputs, ["logits", *cache_out]):
        port.get_tensor().set_names({name})
    _make_stateful(decoder, cache_in, cache_out)
    return decoder


def _flat_cache_decoder(model):
    """`model` as a torch module whose KV cache is a flat list of tensors (key, value per layer) in and out;
    defined here so torch is imported only when exporting."""
    import torch
    from transformers import DynamicCache

    class FlatCacheDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *flat_cache):
            # The layers are filled by hand: `update` on an empty layer concatenates onto a 1-D empty
            # tensor, which the PyTorch frontend cannot convert.
            cache = DynamicCache(config=self.model.config)
            for index, layer in enumerate(cache.layers):
                layer.keys, layer.values = flat_cache[2 * index], flat_cache[2 * index + 1]
                layer.device, layer.is_initialized = layer.keys.device, True
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            present = getattr(out, "cache", None) or out.past_key_values
            return (out.logits, *[t for layer in present.layers for t in (layer.keys, layer.values)])

    return FlatCacheDecoder()


def _make_stateful(decoder, cache_in: list[str], cache_out: list[str]) -> None:
    """Add the beam_idx input (a Gather on every cache input, for GenAI's beam reordering) and turn each
    (past, present) pair into a state that starts empty at each new sequence."""
    import numpy as np
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([-1]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    decoder.add_parameters([beam_idx])
    for name in cache_in:
        port = decoder.input(name)
        consumers = port.get_target_inputs()
        gather = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    decoder.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(decoder, dict(zip(cache_in, cache_out)))
    # Each state starts as zeros of shape [batch, heads, 0, head_dim], the batch read from input_ids.
    ids = decoder.input("input_ids")
    batch = opset13.gather(opset13.shape_of(ids, output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in decoder.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [dim.min_length for dim in op.get_output_partial_shape(0)]
            parts = [batch if k == 0 else opset13.constant(np.array([d], dtype=np.int64)) for k, d in enumerate(dims)]
            zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zero, opset13.concat(parts, 0))])
    decoder.validate_nodes_and_infer_types()


def write_tokenizers(source: Path, target: Path) -> None:
    """openvino_tokenizer.xml and openvino_detokenizer.xml from the folder's tokenizer (chat template kept)."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(encoder, target / "openvino_tokenizer.xml")
    ov.save_model(decoder, target / "openvino_detokenizer.xml")
