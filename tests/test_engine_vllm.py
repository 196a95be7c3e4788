"""The vllm engine: option mapping and guards everywhere; real generation only where vllm and a CUDA GPU exist.

vllm wheels are CUDA builds, so on a CPU machine the tests marked `vllm` and `gpu` are skipped (and
reported as skipped, not passed). The rest check what runs without vllm: the arguments given to
`vllm.LLM` and `SamplingParams`, option errors, the log-prob arithmetic, and the missing-extra line.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from cai_kit.core.errors import UsageError
from cai_kit.engines import GenParams, engine_problems, load_engine, resolve_engine_name
from cai_kit.engines.vllm import check_options, continuation_logprob, llm_kwargs, sampling_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_llm_arguments_turn_prefix_caching_on_and_map_the_options():
    kwargs = llm_kwargs("/models/m", "bfloat16", 4, 0.85, 4096, True, 7, False, {"enforce_eager": True})
    assert kwargs == {
        "model": "/models/m",
        "dtype": "bfloat16",
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.85,
        "enable_prefix_caching": True,
        "seed": 7,
        "trust_remote_code": False,
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    assert "max_model_len" not in llm_kwargs("m", "auto", 1, 0.9, None, True, 0, False, {})
    with pytest.raises(UsageError, match="set tensor_parallel_size as engine options, not inside llm_options"):
        llm_kwargs("m", "auto", 1, 0.9, None, True, 0, False, {"tensor_parallel_size": 2})


def test_sampling_arguments_are_greedy_at_temperature_zero():
    greedy = sampling_kwargs(GenParams(max_new_tokens=64, top_p=0.5, repetition_penalty=1.1), seed=3)
    assert greedy == {"n": 1, "max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.1, "seed": 3}
    sampled = sampling_kwargs(GenParams(temperature=0.7, top_p=0.9), seed=0)
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9


def test_bad_options_are_one_line_each_before_vllm_is_imported():
    problems = check_options(0, 1.5, -1)
    assert len(problems) == 3
    assert "tensor_parallel_size must be an integer >= 1" in problems[0]
    assert "gpu_memory_utilization is a fraction in (0, 1]" in problems[1]
    assert "max_model_len must be a positive integer" in problems[2]
    assert engine_problems("vllm", {"tensor_parallel": 2}) == [
        "engine 'vllm' has no option 'tensor_parallel'; its options: tensor_parallel_size, gpu_memory_utilization, "
        "max_model_len, dtype, enable_prefix_caching, seed, llm_options, chat_template, batch_size, "
        "trust_remote_code, progress"
    ]


def test_continuation_logprob_sums_the_positions_after_the_prompt():
    def entry(logprob: float) -> SimpleNamespace:
        return SimpleNamespace(logprob=logprob)

    full = [5, 8, 9, 2]
    # vllm's shape: None for the first position, then {token id: Logprob} holding the real token (and the top-k).
    prompt_logprobs = [None, {8: entry(-0.5)}, {9: entry(-1.0), 4: entry(-0.2)}, {2: entry(-2.0), 9: entry(-0.1)}]
    assert continuation_logprob(prompt_logprobs, 2, full) == pytest.approx(-3.0)
    assert continuation_logprob(prompt_logprobs, 4, full) == 0.0


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the missing-extra message cannot be seen")
def test_missing_vllm_is_one_actionable_line():
    with pytest.raises(UsageError, match=r'engine \'vllm\' needs: pip install "cai-kit\[vllm\]"'):
        load_engine("vllm", "tiny-random")


def test_auto_is_transformers_without_vllm_and_a_gpu_or_openvino():
    import importlib.util

    openvino = importlib.util.find_spec("openvino_genai") is not None
    expected = "vllm" if HAS_VLLM and _cuda() else "openvino" if openvino else "transformers"
    assert resolve_engine_name("auto") == expected


@pytest.mark.vllm
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and _cuda()), reason="needs vllm and a CUDA GPU")
def test_vllm_generates_continues_prefills_and_scores(tiny_model_path):
    engine = load_engine("vllm", tiny_model_path, gpu_memory_utilization=0.3, progress=False)
    chats = [
        [{"role": "user", "content": "hello"}],
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "I can"}],
        [{"role": "user", "content": "question two"}],
    ]
    replies = engine.generate(chats, GenParams(max_new_tokens=8))
    assert len(replies) == 3 and all(r.finish_reason in ("stop", "length") and r.tokens <= 8 for r in replies)
    again = engine.generate([chats[1]], GenParams(max_new_tokens=8))[0]
    assert again.text == replies[1].text  # greedy and in order: the prefilled chat kept its place
    transformers = load_engine("transformers", tiny_model_path, dtype="fp32", progress=False)
    expected = transformers.logprobs(chats[:1] * 2, ["Yes", "Yes no maybe"])
    scores = engine.logprobs(chats[:1] * 2, ["Yes", "Yes no maybe"])
    assert scores == pytest.approx(expected, abs=0.05)


def test_recipe_engines_and_options_are_checked_at_validate(tmp_path, monkeypatch):
    from pathlib import Path

    from cai_kit.training.recipe import load_recipe

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    assert load_recipe(repo / "recipes" / "zephyr_cai_mistral7b.yaml").generate[0].engine == "vllm"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: tiny-random\n"
        "generate:\n"
        "  - constitution: constitutions/harmless.yaml\n"
        "    engine: vllm\n"
        "    engine_options: {tensor_parallel_size: 2, gpu_mem: 0.5}\n"
        "  - constitution: constitutions/helpful.yaml\n"
        "    engine: vlm\n"
    )
    with pytest.raises(UsageError) as caught:
        load_recipe(recipe)
    assert caught.value.problems == [
        f"{recipe}:5: generate[0].engine_options: engine 'vllm' has no option 'gpu_mem'; its options: "
        "tensor_parallel_size, gpu_memory_utilization, max_model_len, dtype, enable_prefix_caching, seed, "
        "llm_options, chat_template, batch_size, trust_remote_code, progress",
        f"{recipe}:7: generate[1].engine: unknown engine 'vlm'; choose one of: "
        "auto, transformers, vllm, openai, openvino",
    ]
