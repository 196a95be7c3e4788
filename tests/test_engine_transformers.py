"""The transformers engine: batching, stop handling, prefill continuation, prefix caching, log-probs."""

from __future__ import annotations

import pytest

from cai_kit.engines import GenParams, load_engine
from cai_kit.errors import UsageError

FEW_SHOT = [
    {"role": "user", "content": "an example question " * 12},
    {"role": "assistant", "content": "an answer " * 12},
]


@pytest.fixture(scope="module")
def engines(tiny_model_path):
    return {
        cached: load_engine(
            "transformers", tiny_model_path, batch_size=3, dtype="fp32", progress=False, prefix_cache=cached
        )
        for cached in (True, False)
    }


def chats(n: int) -> list[list[dict]]:
    return [FEW_SHOT + [{"role": "user", "content": "question " * (k + 1)}] for k in range(n)]


def test_prefix_cache_gives_the_same_greedy_replies(engines):
    params = GenParams(max_new_tokens=12)
    cached = engines[True].generate(chats(5), params)
    plain = engines[False].generate(chats(5), params)
    assert [c.text for c in cached] == [c.text for c in plain]
    assert engines[True]._prefix_key is not None, "the shared few-shot prefix should have been cached"
    assert engines[False]._prefix_key is None


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


def test_unknown_engines_and_options_are_one_line():
    with pytest.raises(UsageError, match="unknown engine 'vlm'"):
        load_engine("vlm", "default")
    with pytest.raises(UsageError, match="engine 'transformers' has no option 'batchsize'"):
        load_engine("transformers", "default", batchsize=4)


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
