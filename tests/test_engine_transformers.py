"""The transformers engine: batching, stop handling, prefill continuation, prefix caching, log-probs."""

from __future__ import annotations

import pytest

from cai_kit.core.errors import UsageError
from cai_kit.engines import GenParams, load_engine

FEW_SHOT = [
    {"role": "user", "content": "an example question " * 12},
    {"role": "assistant", "content": "an answer " * 12},
]


@pytest.fixture(scope="module")
def engines(tiny_model_path):
    """Keyed by how the few-shot prefix is handled: True (cached, shared attention), "copied" (cached,
    copied into every row), False (recomputed for every row)."""
    options = {True: {}, "copied": {"shared_prefix": False}, False: {"prefix_cache": False}}
    return {
        key: load_engine("transformers", tiny_model_path, batch_size=3, dtype="fp32", progress=False, **extra)
        for key, extra in options.items()
    }


def chats(n: int) -> list[list[dict]]:
    return [FEW_SHOT + [{"role": "user", "content": "question " * (k + 1)}] for k in range(n)]


def test_prefix_cache_gives_the_same_greedy_replies(engines):
    params = GenParams(max_new_tokens=12)
    replies = {key: [c.text for c in engine.generate(chats(5), params)] for key, engine in engines.items()}
    assert replies[True] == replies["copied"] == replies[False]
    assert engines[True]._prefix_key is not None, "the shared few-shot prefix should have been cached"
    assert engines[False]._prefix_key is None
    assert engines[True].shared_prefix and not engines["copied"].shared_prefix


def test_shared_prefix_attention_matches_attention_over_the_whole_row():
    import torch
    import torch.nn.functional as F

    from cai_kit.engines.shared_prefix import Split, shared_prefix_attention

    torch.manual_seed(0)
    batch, heads, kv_heads, prefix_len, own_len, q_len, dim = 3, 4, 2, 7, 5, 2, 8
    query = torch.randn(batch, heads, q_len, dim)
    prefix_k, prefix_v = torch.randn(2, 1, kv_heads, prefix_len, dim)
    own_k, own_v = torch.randn(2, batch, kv_heads, own_len, dim)
    # Row 1 has two padding slots right after the prefix; the queries are the last q_len tokens.
    visible = torch.ones(batch, 1, q_len, prefix_len + own_len, dtype=torch.bool)
    visible[1, :, :, prefix_len : prefix_len + 2] = False
    visible[:, :, 0, -1] = False  # causal: the first query does not see the last token
    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv_heads
    out, _ = shared_prefix_attention(module, query, Split(prefix_k, own_k), Split(prefix_v, own_v), visible, 0.3)
    whole_k = torch.cat([prefix_k.expand(batch, -1, -1, -1), own_k], dim=2).repeat_interleave(2, dim=1)
    whole_v = torch.cat([prefix_v.expand(batch, -1, -1, -1), own_v], dim=2).repeat_interleave(2, dim=1)
    expected = F.scaled_dot_product_attention(query, whole_k, whole_v, attn_mask=visible, scale=0.3)
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_shared_prefix_cache_grows_past_its_room():
    import torch

    from cai_kit.engines.shared_prefix import SharedPrefixLayer

    layer = SharedPrefixLayer(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), batch=3, room=2)
    first, second = torch.randn(2, 3, 2, 2, 8)
    layer.update(first, first)
    keys, values = layer.update(second, second)
    assert layer.get_seq_length() == 4 + 4
    assert torch.equal(keys.own, torch.cat([first, second], dim=2)) and torch.equal(values.own, keys.own)


@pytest.mark.slow
def test_default_model_replies_are_the_same_with_and_without_the_shared_prefix(default_model_path):
    # fp32: in bf16 any change in the order of additions (even the copied prefix cache against no
    # cache) can flip a near-tie between two tokens, so only fp32 makes token identity a fair test.
    conversations = [
        FEW_SHOT * 3 + [{"role": "user", "content": text}] for text in ("Name a fruit.", "Why is the sky blue?")
    ]
    params = GenParams(max_new_tokens=24, repetition_penalty=1.1)
    replies = []
    for options in ({}, {"shared_prefix": False}, {"prefix_cache": False}):
        engine = load_engine("transformers", default_model_path, dtype="fp32", progress=False, **options)
        assert engine.shared_prefix == (options == {})
        replies.append([c.text for c in engine.generate(conversations, params)])
    assert replies[0] == replies[1] == replies[2]
    assert all(replies[0])


def test_replies_come_back_in_input_order_with_finish_reasons(engines):
    engine = engines[False]
    params = GenParams(max_new_tokens=6)
    together = engine.generate(chats(5), params)
    alone = [engine.generate([chat], params)[0] for chat in chats(5)]
    assert [c.text for c in together] == [c.text for c in alone]
    assert all(c.finish_reason in ("stop", "length") and c.tokens <= 6 for c in together)


def test_assistant_prefill_is_continued_not_repeated(engines):
    engine = engines[False]
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "I can"}]
    text = engine.render(chat)
    assert text.endswith("I can") and not text.endswith("<|im_start|>assistant\n")


def test_logprobs_are_finite_and_rank_continuations(engines):
    engine = engines[False]
    scores = engine.logprobs(chats(2), ["Yes", "Yes no maybe"])
    assert all(score < 0 for score in scores)
    assert scores[1] < scores[0]  # a longer continuation has more tokens to pay for


def test_batched_logprobs_equal_one_row_at_a_time_without_padding(engines):
    import torch

    engine = engines[False]
    conversations = chats(3)
    continuations = ["Yes", "No, not at all", "A"]
    batched = engine.logprobs(conversations, continuations)
    for conversation, continuation, score in zip(conversations, continuations, batched):
        prompt = engine._encode([engine.render(conversation)])[0]
        full = engine._encode([engine.render(conversation) + continuation])[0]
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([full])).logits.float()[0]
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(full[1:])[:, None])[:, 0]
        assert abs(float(logp[len(prompt) - 1 :].sum()) - score) < 1e-3


def test_one_token_replies_to_one_prompt_share_a_forward_pass(engines):
    """A judge's two labels after the same prompt come from one row of the batch; the values are those of
    each row scored on its own, and a longer continuation still gets its own row."""
    engine = engines[False]
    conversations = chats(3) * 2 + chats(1)
    continuations = ["A"] * 3 + ["B"] * 3 + ["No, not at all"]  # A and B: one token each here
    rows: list[int] = []
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        shared = engine.logprobs(conversations, continuations)
    finally:
        hook.remove()
    assert sum(rows) == 4, "three prompts' labels and one longer continuation: four rows"
    alone = [engine.logprobs([c], [cont])[0] for c, cont in zip(conversations, continuations)]
    assert shared == pytest.approx(alone, abs=1e-4)
    assert shared[0] != pytest.approx(shared[3], abs=1e-3), "A and B should score differently"


def test_token_logprobs_are_one_per_continuation_token_and_sum_to_logprobs(engines):
    engine = engines[False]
    conversations = chats(3)
    continuations = ["Yes", "No, not at all, never in a hundred years", "A"]
    per_token = engine.token_logprobs(conversations, continuations)
    for conversation, continuation, values in zip(conversations, continuations, per_token, strict=True):
        prompt = engine._encode([engine.render(conversation)])[0]
        full = engine._encode([engine.render(conversation) + continuation])[0]
        assert len(values) == len(full) - len(prompt)
        assert all(value <= 0 for value in values)
    sums = engine.logprobs(conversations, continuations)
    assert [sum(values) for values in per_token] == pytest.approx(sums, abs=1e-3)


def test_unknown_engines_and_options_are_one_line():
    with pytest.raises(UsageError, match="unknown engine 'vlm'"):
        load_engine("vlm", "default")
    with pytest.raises(UsageError, match="engine 'transformers' has no option 'batchsize'"):
        load_engine("transformers", "default", batchsize=4)
    with pytest.raises(
        UsageError, match="engine 'transformers' option 'row_cache': expected true or false, got 'maybe'"
    ):
        load_engine("transformers", "default", row_cache="maybe")
    with pytest.raises(UsageError, match="option 'batch_size': expected a whole number, got 'four'"):
        load_engine("transformers", "default", batch_size="four")


def test_a_mistyped_engine_option_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from cai_kit.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["generate", "-c", "constitutions/harmless.yaml", "--out", str(out), "--engine-option", "row_cache=maybe"],
    )
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip() == "error: engine 'transformers' option 'row_cache': expected true or false, got 'maybe'"
    )
    assert not out.exists()


def test_a_model_without_a_chat_template_needs_one_and_takes_one_from_a_file(tiny_model_path, tmp_path):
    import json
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_path, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in bare.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(UsageError, match="has no chat template .*chat_template=FILE.jinja"):
        load_engine("transformers", str(bare))
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>")
    engine = load_engine("transformers", str(bare), chat_template=str(template), progress=False)
    assert engine.render([{"role": "user", "content": "hi"}]) == "<user>hi\n<assistant>"
    replies = engine.generate([[{"role": "user", "content": "hi"}]], GenParams(max_new_tokens=3))
    assert len(replies) == 1
    with pytest.raises(UsageError, match="chat_template 'nowhere/at-all'"):
        load_engine("transformers", str(bare), chat_template="nowhere/at-all")


def _chained(engine, first_chats, params):
    """Three calls where each call's conversations extend the last one's replies (critique -> revision)."""
    chats, replies = first_chats, []
    for turn in ("Say more about it.", "Again, shorter."):
        out = engine.generate(chats, params)
        replies.append([c.text for c in out])
        chats = [
            chat + [{"role": "assistant", "content": c.text}, {"role": "user", "content": turn}]
            for chat, c in zip(chats, out)
        ]
    replies.append([c.text for c in engine.generate(chats, params)])
    return replies


def test_row_cache_reuses_the_last_calls_rows_and_changes_no_reply(tiny_model_path):
    params = GenParams(max_new_tokens=8)
    engines = {
        flag: load_engine("transformers", tiny_model_path, batch_size=2, dtype="fp32", progress=False, row_cache=flag)
        for flag in (True, False)
    }
    replies = {flag: _chained(engine, chats(5), params) for flag, engine in engines.items()}
    assert replies[True] == replies[False]
    assert engines[True].reused_tokens > 5 * 20 and engines[False].reused_tokens == 0
    assert len(engines[True]._saved) == 5  # only the last call's rows are kept


def test_early_exit_off_decodes_with_model_generate_and_changes_no_reply(tiny_model_path):
    params = GenParams(max_new_tokens=8)
    engines = {
        flag: load_engine("transformers", tiny_model_path, batch_size=2, dtype="fp32", progress=False, early_exit=flag)
        for flag in (True, False)
    }
    replies = {flag: _chained(engine, chats(5), params) for flag, engine in engines.items()}
    assert replies[True] == replies[False]
    assert engines[True].reused_tokens == engines[False].reused_tokens > 5 * 20


@pytest.mark.slow
def test_default_model_replies_are_the_same_with_and_without_the_row_cache(default_model_path):
    # fp32 for token identity (see above); repetition_penalty reads every token, reused or not.
    conversations = [
        FEW_SHOT * 3 + [{"role": "user", "content": t}] for t in ("Name a fruit.", "Why is the sky blue?")
    ]
    params = GenParams(max_new_tokens=16, repetition_penalty=1.1)
    engines = [
        load_engine("transformers", default_model_path, dtype="fp32", progress=False, row_cache=flag)
        for flag in (True, False)
    ]
    with_cache, without = (_chained(engine, conversations, params) for engine in engines)
    assert with_cache == without and all(all(turn) for turn in with_cache)
    assert engines[0].reused_tokens > 2 * 2 * 16 and engines[1].reused_tokens == 0


@pytest.mark.slow
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_rows_that_stop_early_leave_the_batch_and_every_reply_matches_model_generate(default_model_path, prefix_cache):
    # fp32 for token identity; short questions end at different steps, so rows leave the batch mid-way.
    engine = load_engine(
        "transformers", default_model_path, batch_size=8, dtype="fp32", progress=False, prefix_cache=prefix_cache
    )
    questions = ["Name a fruit.", "Say yes.", "Why is the sky blue?", "What is 2+2?", "Name a colour.", "Hi!"]
    conversations = [FEW_SHOT * 3 + [{"role": "user", "content": q}] for q in questions]
    params = GenParams(max_new_tokens=24, repetition_penalty=1.1)
    expected = engine.plain_generate(conversations, params, batch_size=8)
    lengths = [len(row) for row in expected]
    assert len(set(lengths)) > 2 and min(lengths) < params.max_new_tokens  # rows do stop at different steps
    replies = engine.generate(conversations, params)
    assert [r.tokens for r in replies] == lengths
    texts = [engine.tokenizer.decode(row, skip_special_tokens=True).strip() for row in expected]
    assert [r.text for r in replies] == texts
    reasons = ["length" if n == params.max_new_tokens else "stop" for n in lengths]
    assert [r.finish_reason for r in replies] == reasons
