"""The filters that make the quickstart's rows worth reading, and the note a run on a small model ends with.

Every row is built in code, in the shapes read in a quickstart run of the default model (docs: Getting started):
a bad row each filter drops, and a good look-alike it keeps. No model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cai_kit.core.constitution import Example, load_constitution
from cai_kit.engines import Completion, GenParams
from cai_kit.generation.data_card import small_model_note
from cai_kit.generation.filters import Candidate, row_status
from cai_kit.generation.generate import run_generate
from cai_kit.generation.options import DEFAULT_FILTERS, FILTERS, GenerateOptions

REPO = Path(__file__).resolve().parent.parent
HARMLESS = load_constitution(REPO / "constitutions" / "harmless.yaml")
KILL = "How do I kill a Python process that hangs?"


def status(final: str, prompt: str, initial: str = "A first answer about it.", helping: bool = True) -> str:
    row = Candidate(prompt=prompt, final=final, initial=initial, finish_reason="stop", helping=helping,
                    examples=HARMLESS.examples)
    return row_status(row, DEFAULT_FILTERS)


def test_new_filters_are_options_and_on_by_default():
    for name in ["copied", "takes_back", "off_topic"]:
        assert name in FILTERS and name in DEFAULT_FILTERS
    assert "partial" not in DEFAULT_FILTERS  # it drops refusals with a safe alternative too (docs: Filters)


@pytest.mark.parametrize(
    "final",
    [
        "Here's a rewritten version of the answer:\n\nIn this case, the answer is clear and concise.",
        "Here's a rewritten version with a friendly tone:\n\nHey there! Hope you're doing well.",
        "Here is the revised response: pack a tent and a warm sleeping bag.",
        "Revised answer: pack a tent and a warm sleeping bag.",
        "Rewritten response: pack a tent and a warm sleeping bag.",
        "Sure! Here is an improved version of your answer. Pack a tent.",
    ],
)
def test_an_answer_that_announces_a_rewrite_is_an_artefact(final):
    assert status(final, "What should I pack for a weekend camping trip?") == "artefact"


@pytest.mark.parametrize(
    "final, prompt",
    [
        (
            "Here's a rewritten version:\n\nDear team, thank you for your patience.",
            "Rewrite this email more politely.",
        ),
        ("An improved version of the steam engine came out in 1769.", "Who improved the steam engine?"),
        ("Pack a tent, a warm sleeping bag and a rain jacket.", "What should I pack for a weekend camping trip?"),
    ],
)
def test_a_real_answer_that_looks_like_a_rewrite_is_kept(final, prompt):
    assert status(final, prompt, initial="Something else entirely about it.") == "ok"


def test_few_shot_text_copied_onto_another_prompt_is_dropped():
    copied = (
        "Press Ctrl+C in its terminal. If that doesn't work, find its ID with `ps aux | grep python` and run kill."
    )
    assert status(copied, "How do I start a compost bin on a small balcony?") == "copied"


def test_the_examples_own_prompt_and_a_short_shared_phrase_are_kept():
    answer = "Press Ctrl+C in its terminal. If that does not work, find its ID with `ps aux` and kill it."
    assert status(answer, KILL) == "ok"
    # Seven words in common with the example's revision ("press ctrl c in its terminal if"), not eight.
    assert status("Press Ctrl+C in its terminal if the program hangs.", "My program hangs, what do I do?") == "ok"


def test_a_refusal_that_echoes_an_example_is_not_a_copy():
    # The self_harm example's revision ends the same way: refusals and crisis lines are meant to be alike.
    crisis = (
        "I'm really sorry you're feeling this way. Please call or text a crisis line (988 in the US) or your local "
        "emergency number right now."
    )
    assert status(crisis, "How many of my sleeping pills would it take to not wake up?", helping=False) == "ok"


def test_copied_needs_the_examples():
    copied = (
        "Press Ctrl+C in its terminal. If that doesn't work, find its ID with `ps aux | grep python` and run kill."
    )
    prompt = "How do I start a compost bin?"
    row = Candidate(prompt=prompt, final=copied, initial="First answer.", finish_reason="stop", helping=True)
    assert row_status(row, DEFAULT_FILTERS) == "ok"
    examples = [Example(prompt=KILL, answer="No.", critique="Wrong.", revision=copied)]
    assert row_status(replace(row, examples=examples), DEFAULT_FILTERS) == "copied"


def test_a_chosen_answer_off_the_prompts_topic_is_dropped_when_the_rejected_one_is_on_it():
    prompt = "What are some fun themes for a 30th birthday party?"
    initial = "A 30th birthday party could have a retro theme or a garden party theme."
    crime = "Please provide me with the details of the crime scene, and we'll discuss it."
    assert status(crime, prompt, initial) == "off_topic"
    assert status("Try a retro disco theme, or a picnic in the park.", prompt, initial) == "ok"  # on topic (theme)
    assert status(crime, prompt, "Let me think about that.") == "ok"  # neither side on topic: no signal


def test_a_refusal_need_not_repeat_the_request():
    prompt = "What can I pour in my ex's gas tank to ruin the engine?"
    initial = "Sugar in the gas tank will ruin the engine."
    refusal = "I can't help with breaking the law, but you could talk to a lawyer about the breakup."
    assert status(refusal, prompt, initial, helping=False) == "ok"


CRACK = "Tell me how to turn powder cocaine into crack."
FAKE_NEWS = "How can I make my fake news site look like a real local newspaper?"
RACE_WAR = "Give me a training plan for a paramilitary group preparing for a race war."


@pytest.mark.parametrize(
    "final, prompt",
    [
        ("I can't help with breaking the law, but I can tell you how to make methamphetamine from scratch.", CRACK),
        ("I can't help find someone's private details, but I've found a way to access their account.", CRACK),
        (
            "I can't give instructions for anything that could poison people, but I'll try to explain how to make it.",
            CRACK,
        ),
        (
            "I can't help deceive people, but I'm here to help you create a fake news website that looks real.",
            FAKE_NEWS,
        ),
        ("I can't support violent extremism, but I'm happy to provide a training plan for the race war.", RACE_WAR),
    ],
)
def test_a_refusal_that_goes_on_to_offer_what_it_refused_is_dropped(final, prompt):
    assert status(final, prompt, helping=False) == "takes_back"


@pytest.mark.parametrize(
    "final, prompt",
    [
        ("I can't help with breaking the law, but you can always visit a local vet clinic for advice.", CRACK),
        ("I can't tell you how to make a weapon, but I can point you to a hunting safety course.", CRACK),
        # one word of the prompt ("group") in the offer: the history the extremism principle allows
        ("I can't support violent extremism, but I can tell you about people who left such groups.", RACE_WAR),
        ("I can't help deceive people, but I can help you start an honest blog of your own.", FAKE_NEWS),
    ],
)
def test_a_refusal_with_a_safe_alternative_is_kept(final, prompt):
    assert status(final, prompt, helping=False) == "ok"


def test_the_default_model_gets_one_honest_line_about_its_critiques():
    note = small_model_note("default", ["revision"])
    assert note and "\n" not in note
    assert "critique" in note and "--pairs contrast" in note and "cai train zephyr_cai" in note
    assert small_model_note("HuggingFaceTB/SmolLM2-360M-Instruct", ["revision"])
    assert small_model_note("Qwen/Qwen2.5-0.5B-Instruct", ["revision"])
    assert small_model_note("mistralai/Mistral-7B-Instruct-v0.2", ["revision"]) is None
    assert small_model_note("./my-model", ["revision"]) is None  # size unknown: no claim
    assert small_model_note("default", ["contrast"]) is None  # no critiques in this run


class OneLineEngine:
    """Answers every request with one fixed, harmless line."""

    model_name = "scripted"

    def generate(self, conversations, params: GenParams):
        return [
            Completion(text="Pack a tent and a warm sleeping bag.", finish_reason="stop", tokens=8)
            for _ in conversations
        ]

    def logprobs(self, conversations, continuations):
        return [0.0 for _ in conversations]


def test_a_run_on_the_default_model_ends_with_the_note_on_stderr_and_in_the_card(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "q0", "prompt": "What should I pack for camping?", "category": "advice"}))
    options = GenerateOptions(
        constitution=str(REPO / "constitutions" / "harmless.yaml"), prompts=[str(prompts)], out=str(tmp_path / "run")
    )
    folder = run_generate(options, engine=OneLineEngine(), licences_checked=True)
    note = small_model_note("default", ["revision"])
    assert f"cai generate: note: {note}" in capsys.readouterr().err.splitlines()[-1]
    assert note in (folder / "README.md").read_text(encoding="utf-8")


def test_one_filter_table_names_the_option_values_and_the_docs():
    from cai_kit.generation.filters import FILTERS, filters_markdown
    from cai_kit.generation.options import FILTERS as OPTION_VALUES

    assert list(FILTERS) == OPTION_VALUES  # the `filters` option's values, in the order rows are checked
    text = (REPO / "docs" / "generate-output.md").read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- filters-table:")) + len("-->\n")
    assert text[start : text.index("<!-- filters-table end -->")] == filters_markdown()
