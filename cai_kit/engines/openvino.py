"""In-process generation with OpenVINO GenAI on a CPU: continuous batching with prefix caching.

The model folder is exported to OpenVINO IR once (`openvino_export.py`, cached under CAI_KIT_CACHE)
and run by `openvino_genai.ContinuousBatchingPipeline`: requests join and leave the running batch
one by one, attention is paged, and with `enable_prefix_caching` the KV blocks of the few-shot
prefix that every critique and revision shares are computed once and reused across requests and calls.
The cache holds only blocks that a finished prefill has written, so requests submitted together would
each compute the shared prefix themselves: `generate` first runs the batch's common prefix alone (a
request for one token), then the batch, which finds it cached: the critique stage ran 2.2x faster.

Prompts are rendered and tokenized here, exactly as the transformers engine does (the chat template, a
prefilled assistant reply), and given to the pipeline as token ids; replies are decoded the same way. The
tokenizer is read from the exported folder with the `tokenizers` library (`file_tokenizer.py`) once a check
has found it agreeing with the model's transformers tokenizer, which a fresh process would spend ~3 s importing.
Log-probs for the judge come from the same IR run directly by the OpenVINO runtime (GenAI scores only the
tokens it generates), one row at a time, with the output head cut to the continuation's positions
(`scoring_model`).

Precision follows the hardware as the transformers engine's dtype `auto` does: bf16 compute and KV cache on a
CPU with AMX, f32 elsewhere; in f32 the greedy replies match the transformers engine's in fp32 word for word.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion, Conversation, GenParams
from cai_kit.engines.chat import (
    common_prefix_length,
    encode_rendered,
    render_chat,
    scoring_leads,
    stop_token_ids,
)

CPU_KV_BLOCK = 32  # tokens per block of GenAI's paged KV cache on a CPU (16 on a GPU); Python cannot read it


# The KV cache precisions OpenVINO's CPU paged attention takes with each inference precision (2026.4; others
# fail at load with an internal check, e.g. an f32 cache with bf16 inference, OpenVINO's default on avx512_bf16).
KV_CACHE_PRECISIONS = {"f32": ("f32", "f16", "u8"), "bf16": ("bf16", "f16", "u8")}


def cpu_precisions(inference: str, kv_cache: str) -> tuple[str, str]:
    """The (inference, KV cache) precisions to run: `auto` inference is bf16 where the transformers engine's
    `auto` is (a CPU with AMX) and f32 elsewhere, on avx512_bf16 alone too, where OpenVINO's own default is
    bf16 but f32 ran faster (docs: Benchmarks); `auto` KV cache follows it."""
    from cai_kit.core.precision import cpu_bf16_flag, cpu_capability, cpu_prefers_bf16

    if inference not in ("auto", *KV_CACHE_PRECISIONS):
        raise UsageError(f"engine 'openvino': inference_precision must be auto, f32 or bf16, got {inference!r}")
    if inference == "auto":
        inference = "bf16" if cpu_prefers_bf16() else "f32"
    elif inference == "bf16" and not cpu_bf16_flag():
        raise UsageError(
            f"engine 'openvino': inference_precision=bf16 needs a CPU with avx512_bf16 or AMX "
            f"(this one: {cpu_capability()}, no native bf16); use f32"
        )
    if kv_cache == "auto":
        kv_cache = inference
    if kv_cache not in KV_CACHE_PRECISIONS[inference]:
        raise UsageError(
            f"engine 'openvino': kv_cache_precision must be auto, {', '.join(KV_CACHE_PRECISIONS[inference])} "
            f"with inference_precision {inference}, got {kv_cache!r}"
        )
    return inference, kv_cache


SCORED_FROM = "scored_from"  # the scorer's extra input: the first position whose logits it computes


def scoring_model(model):
    """The decoder with the output head applied only from position `scored_from` on: the judge needs the
    logits of a continuation's few tokens, not of the whole prompt's (the head, hidden x vocabulary, was about
    a fifth of a pass over a judge prompt). Expects the logits to be a MatMul of the hidden states, as the
    exporter writes them; any other graph is refused, not guessed at."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    head = model.output("logits").get_node().input_value(0).get_node()
    if head.get_type_name() != "MatMul":
        raise UsageError(f"engine 'openvino': the IR's logits come from a {head.get_type_name()}, not the output "
                         "head's MatMul; delete the cached export to make it again")
    start = ops.parameter([1], ov.Type.i64, name=SCORED_FROM)
    start.output(0).get_tensor().set_names({SCORED_FROM})
    hidden = head.input_value(0)
    kept = ops.slice(hidden, start, ops.constant(np.array([np.iinfo(np.int64).max])), ops.constant(np.array([1])),
                     ops.constant(np.array([1])))
    head.input(0).replace_source_output(kept.output(0))
    model.add_parameters([start])
    return model


def load_tokenizer(source: Any, model: str, chat_template: str | None) -> Any:
    """The model's transformers tokenizer, with `chat_template` (a file or a model) in place of its own."""
    from transformers import AutoTokenizer

    from cai_kit.core.models import load_chat_template

    tokenizer = AutoTokenizer.from_pretrained(source)
    if chat_template:
        tokenizer.chat_template = load_chat_template(chat_template)
    if not tokenizer.chat_template:
        raise UsageError(
            f"model {model!r} has no chat template (a base model?); give it one with --engine-option "
            "chat_template=FILE.jinja"
        )
    return tokenizer


def engine_tokenizer(source: str, folder: Any, model: str, chat_template: str | None) -> Any:
    """The exported folder's FileTokenizer where a kept check says it agrees with transformers' (no transformers
    import: the load takes half the time), else transformers' tokenizer; a folder not checked yet under the
    installed versions is checked now, so the next load takes the fast path."""
    from cai_kit.engines.file_tokenizer import FileTokenizer, check_against, kept_verdict

    verdict = None if chat_template else kept_verdict(folder)
    if verdict:
        try:
            return FileTokenizer(folder)
        except (OSError, ValueError):
            pass
    tokenizer = load_tokenizer(source, model, chat_template)
    if verdict is None and not chat_template:
        check_against(folder, tokenizer)
    return tokenizer


class OpenVINOEngine:
    def __init__(
        self,
        model: str,
        precision: str = "fp32",  # the IR's weights: fp32, fp16 (half the disk), or int8 (faster with VNNI, not exact)
        inference_precision: str = "auto",  # f32, bf16, or auto: bf16 on a CPU with AMX, else f32
        kv_cache_precision: str = "auto",  # auto (the inference precision), f32, bf16, f16 or u8 (smaller, not exact)
        cache_size_gb: int = 2,  # the paged KV cache's size
        max_num_batched_tokens: int = 2048,  # tokens one scheduler step may run (prefill chunks included)
        enable_prefix_caching: bool = True,
        warm_prefix: bool = True,  # prefill a batch's shared prefix once before the batch (needs prefix caching)
        num_streams: int = 1,
        threads: int = 0,  # CPU threads for inference; 0: OpenVINO's choice (every core)
        chat_template: str | None = None,  # a .jinja file, or a model to borrow the template from
        batch_size: int = 32,  # requests submitted together; the pipeline schedules within them
        trust_remote_code: bool = False,
        progress: bool = True,
    ):
        self.inference_precision, kv_cache_precision = cpu_precisions(inference_precision, kv_cache_precision)
        import openvino_genai  # ImportError here becomes `pip install "cai-kit[openvino]"` in load_engine

        from cai_kit.core.models import resolve_model
        from cai_kit.engines.openvino_export import ensure_exported

        if trust_remote_code:
            raise UsageError("engine 'openvino' exports only models transformers builds itself (no trust_remote_code)")
        source = resolve_model(model)
        self.folder = ensure_exported(source, precision)
        started = time.perf_counter()
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.cache_size = cache_size_gb
        scheduler.enable_prefix_caching = enable_prefix_caching
        scheduler.max_num_batched_tokens = max_num_batched_tokens
        scheduler.dynamic_split_fuse = True
        self.properties: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            "KV_CACHE_PRECISION": kv_cache_precision,
            "NUM_STREAMS": num_streams,
        }
        if threads:
            self.properties["INFERENCE_NUM_THREADS"] = threads
        # The compile (~2 s of CPU for the default model) releases the GIL: it runs beside the tokenizer's load
        # and transformers' imports (~1-3 s in a fresh process) instead of after them.
        with ThreadPoolExecutor(max_workers=1) as pool:
            compiling = pool.submit(
                openvino_genai.ContinuousBatchingPipeline, str(self.folder), scheduler, "CPU", self.properties
            )
            self.tokenizer: Any = engine_tokenizer(source, self.folder, model, chat_template)
            self.pipeline = compiling.result()
        self._genai = openvino_genai
        self._scorer: Any = None  # the IR compiled for log-probs, on first use
        self.load_seconds = time.perf_counter() - started
        self.model_name = model
        self.batch_size = batch_size
        self.warm_prefix = warm_prefix and enable_prefix_caching
        self.progress = progress
        self.stop_ids = self._stop_ids()
        self.generated_tokens = 0

    def _stop_ids(self) -> list[int]:
        """The generation config's end-of-sequence id(s) (the file as transformers' GenerationConfig reads it) and
        the tokenizer's."""
        try:
            eos = json.loads((self.folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            eos = None
        return stop_token_ids(eos, self.tokenizer)

    def render(self, conversation: Conversation) -> str:
        return render_chat(self.tokenizer, conversation)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return encode_rendered(self.tokenizer, texts)

    def generation_config(self, params: GenParams, seed: int):
        config = self._genai.GenerationConfig()
        config.max_new_tokens = params.max_new_tokens
        config.stop_token_ids = set(self.stop_ids)
        config.repetition_penalty = params.repetition_penalty
        config.do_sample = params.temperature > 0
        if config.do_sample:
            config.temperature = params.temperature
            config.top_p = params.top_p
            config.top_k = 0
            config.rng_seed = seed
        return config

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        import numpy as np
        import openvino as ov
        from tqdm import tqdm

        encoded = self._encode([self.render(c) for c in conversations])
        results: list[Completion] = []
        bar = tqdm(total=len(encoded), unit="reply", leave=False, file=sys.stderr, disable=not self.progress)
        for start in range(0, len(encoded), self.batch_size):
            rows = encoded[start : start + self.batch_size]
            if self.warm_prefix:
                self._prefill_shared_prefix(rows)
            inputs = [ov.Tensor(np.array([row], dtype=np.int64)) for row in rows]
            configs = [self.generation_config(params, params.seed + start + k) for k in range(len(rows))]
            for output in self.pipeline.generate(inputs, configs):
                tokens = list(output.m_generation_ids[0])
                stop_at = next((k for k, token in enumerate(tokens) if token in self.stop_ids), None)
                kept = tokens if stop_at is None else tokens[:stop_at]
                finished = stop_at is not None or len(tokens) < params.max_new_tokens
                text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
                results.append(Completion(text=text, finish_reason="stop" if finished else "length", tokens=len(kept)))
                self.generated_tokens += len(kept)
            bar.update(len(rows))
        bar.close()
        return results

    def _prefill_shared_prefix(self, rows: list[list[int]]) -> None:
        """Put the rows' common prefix, in whole KV blocks, into the prefix cache with a one-token request."""
        import numpy as np
        import openvino as ov

        if len(rows) < 2:
            return
        length = common_prefix_length(rows)
        length -= length % CPU_KV_BLOCK  # the cache matches whole blocks; a part-filled one broke greedy agreement
        if length < 2 * CPU_KV_BLOCK:
            return
        config = self._genai.GenerationConfig()
        config.max_new_tokens = 1
        self.pipeline.generate([ov.Tensor(np.array([rows[0][:length]], dtype=np.int64))], [config])

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        """Sum of log-probs of each continuation after its rendered conversation."""
        return [sum(row) for row in self.token_logprobs(conversations, continuations)]

    def token_logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[list[float]]:
        """Each continuation token's log-prob, from one full forward pass of the IR per row; rows that differ
        only in a one-token continuation (a judge's labels) share one pass (`scoring_leads`)."""
        import numpy as np

        scorer = self._scoring_request()
        prompts = self._encode([self.render(c) for c in conversations])
        full = self._encode([self.render(c) + cont for c, cont in zip(conversations, continuations)])
        leads = scoring_leads(prompts, full)
        shared: dict[int, Any] = {lead: None for k, lead in enumerate(leads) if lead != k}  # -> log-probs after it
        rows: list[list[float]] = []
        for k, (prompt, ids) in enumerate(zip(prompts, full)):
            if leads[k] != k:
                rows.append([float(shared[leads[k]][ids[-1]])])
                continue
            scorer.reset_state()
            length = len(ids)
            logits = scorer.infer(
                {
                    "input_ids": np.array([ids], dtype=np.int64),
                    "attention_mask": np.ones((1, length), dtype=np.int64),
                    "position_ids": np.arange(length, dtype=np.int64)[None],
                    "beam_idx": np.zeros(1, dtype=np.int32),
                    SCORED_FROM: np.array([len(prompt) - 1], dtype=np.int64),
                }
            )["logits"][0, :-1].astype(np.float64)
            top = logits.max(axis=-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
            if k in shared:
                shared[k] = logp[0]
            rows.append([float(logp[j, token]) for j, token in enumerate(ids[len(prompt) :])])
        return rows

    def _scoring_request(self):
        if self._scorer is None:
            import openvino as ov

            properties = {"INFERENCE_PRECISION_HINT": self.inference_precision}
            if "INFERENCE_NUM_THREADS" in self.properties:
                properties["INFERENCE_NUM_THREADS"] = self.properties["INFERENCE_NUM_THREADS"]
            core = ov.Core()
            compiled = core.compile_model(scoring_model(core.read_model(self.folder / "openvino_model.xml")), "CPU",
                                          properties)
            self._scorer = compiled.create_infer_request()
        return self._scorer

    def close(self) -> None:
        self.pipeline = None
        self._scorer = None
