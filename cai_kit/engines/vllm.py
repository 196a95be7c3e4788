"""In-process vllm on CUDA GPUs: `vllm.LLM` with the model's own chat template and prefix caching.

Prefix caching is on because every critique and revision carries the same few-shot turns: vllm keeps
their KV blocks and shares them across requests (the transformers engine does the same by hand).
`tensor_parallel_size` splits one model over that many GPUs of a node. For data parallelism, run one
`vllm serve` per GPU or node and give the openai engine their base URLs.

Coded against vllm's documented offline API (`LLM`, `LLM.chat`, `LLM.generate`, `SamplingParams`);
needs `pip install "cai-kit[vllm]"` and a CUDA GPU. `LLM.chat` takes `add_generation_prompt` and
`continue_final_message` per call, so conversations that end with an assistant message (a prefilled
reply) go in a call of their own.
"""

from __future__ import annotations

from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion, Conversation, GenParams


def check_options(tensor_parallel_size: Any, gpu_memory_utilization: Any, max_model_len: Any) -> list[str]:
    problems = []
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        problems.append(f"engine 'vllm': tensor_parallel_size must be an integer >= 1, got {tensor_parallel_size!r}")
    if not isinstance(gpu_memory_utilization, (int, float)) or not 0 < gpu_memory_utilization <= 1:
        problems.append(
            f"engine 'vllm': gpu_memory_utilization is a fraction in (0, 1], got {gpu_memory_utilization!r}"
        )
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        problems.append(f"engine 'vllm': max_model_len must be a positive integer, got {max_model_len!r}")
    return problems


def llm_kwargs(
    model_path: str,
    dtype: str,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    enable_prefix_caching: bool,
    seed: int,
    trust_remote_code: bool,
    llm_options: dict[str, Any],
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`; `llm_options` passes any other engine argument through."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": enable_prefix_caching,
        "seed": seed,
        "trust_remote_code": trust_remote_code,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    clash = sorted(set(kwargs) & set(llm_options))
    if clash:
        raise UsageError(f"engine 'vllm': set {', '.join(clash)} as engine options, not inside llm_options")
    return {**kwargs, **llm_options}


def sampling_kwargs(params: GenParams, seed: int) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (temperature 0 is greedy in vllm too)."""
    return {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p if params.temperature > 0 else 1.0,
        "repetition_penalty": params.repetition_penalty,
        "seed": seed,
    }


def continuation_logprob(prompt_logprobs: list[Any], prompt_length: int, full_ids: list[int]) -> float:
    """Sum of the log-probs of `full_ids[prompt_length:]` from vllm's per-position `prompt_logprobs`.

    vllm returns, for each prompt position, a dict from token id to an object with `.logprob`, always
    including the token that is really there (position 0 has None: nothing precedes it).
    """
    return sum(float(prompt_logprobs[pos][full_ids[pos]].logprob) for pos in range(prompt_length, len(full_ids)))


class VLLMEngine:
    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        seed: int = 0,
        llm_options: dict[str, Any] | None = None,
        chat_template: str | None = None,  # a .jinja file, or a model to borrow the template from
        batch_size: int = 32,  # not used: vllm schedules every request of a call itself
        trust_remote_code: bool = False,
        progress: bool = True,
    ):
        problems = check_options(tensor_parallel_size, gpu_memory_utilization, max_model_len)
        if problems:
            raise UsageError(problems)
        import torch
        import vllm  # ImportError here becomes `pip install "cai-kit[vllm]"` in load_engine

        if not torch.cuda.is_available():
            raise UsageError("engine 'vllm' needs a CUDA GPU and none is visible; use --engine transformers or openai")
        from cai_kit.core.models import resolve_model

        self._vllm = vllm
        self.llm = vllm.LLM(
            **llm_kwargs(
                resolve_model(model),
                dtype,
                tensor_parallel_size,
                gpu_memory_utilization,
                max_model_len,
                enable_prefix_caching,
                seed,
                trust_remote_code,
                dict(llm_options or {}),
            )
        )
        self.tokenizer = self.llm.get_tokenizer()
        if chat_template:
            from cai_kit.core.models import load_chat_template

            self.tokenizer.chat_template = load_chat_template(chat_template)
        self.chat_template = self.tokenizer.chat_template  # passed to LLM.chat, which takes one per call
        self.model_name = model
        self.progress = progress
        self.generated_tokens = 0

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        results: list[Completion | None] = [None] * len(conversations)
        for continuing in (False, True):
            picked = [k for k, c in enumerate(conversations) if (c[-1]["role"] == "assistant") == continuing]
            if not picked:
                continue
            sampling = [self._vllm.SamplingParams(**sampling_kwargs(params, params.seed + k)) for k in picked]
            outputs = self.llm.chat(
                [conversations[k] for k in picked],
                sampling,
                use_tqdm=self.progress,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                chat_template=self.chat_template,
            )
            for k, output in zip(picked, outputs):
                choice = output.outputs[0]
                tokens = len(choice.token_ids)
                self.generated_tokens += tokens
                finish = "length" if choice.finish_reason == "length" else "stop"
                results[k] = Completion(text=choice.text.strip(), finish_reason=finish, tokens=tokens)
        return [r for r in results if r is not None]

    def render(self, conversation: Conversation) -> str:
        continuing = conversation[-1]["role"] == "assistant"
        return self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
        )

    def logprobs(self, conversations: list[Conversation], continuations: list[str]) -> list[float]:
        # The chat template already holds any BOS token, as in the transformers engine.
        prompts = [self.tokenizer.encode(self.render(c), add_special_tokens=False) for c in conversations]
        full = [
            self.tokenizer.encode(self.render(c) + cont, add_special_tokens=False)
            for c, cont in zip(conversations, continuations)
        ]
        scoring = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in full], scoring, use_tqdm=self.progress)
        return [continuation_logprob(out.prompt_logprobs, len(p), ids) for out, p, ids in zip(outputs, prompts, full)]

    def close(self) -> None:
        self.llm = None
