"""Prompt sets: the shipped data/ files and every spec form load_prompts takes. Fast; every fixture is written here."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from cai_kit.core.errors import UsageError
from cai_kit.core.prompt_sets import SHIPPED, PromptRow, load_many, load_prompts

REPO = Path(__file__).resolve().parent.parent

MIN_ROWS = {
    "red_team": 300,
    "helpful": 220,
    "borderline": 180,
    "eval/harmful": 150,
    "eval/harmful_test": 170,
    "eval/over_refusal": 160,
    "eval/helpful": 90,
    "everyday": 240,
    "eval/everyday_dev": 160,
    "eval/everyday_test": 160,
}
MIN_PER_CATEGORY = {"helpful": 15, "eval/helpful": 6, "eval/over_refusal": 12}
HARMFUL_SETS = ["red_team", "eval/harmful", "eval/harmful_test"]
ROWS = [
    {"id": "a-1", "prompt": "How do I boil rice?", "category": "howto"},
    {"id": "a-2", "prompt": "Name three rivers in Europe.", "category": "facts"},
    {"id": "a-3", "prompt": "Write a haiku about snow, please.", "category": "writing"},
]


def _raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# The shipped sets.


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_set_loads_with_its_minimum_and_unique_ids(name):
    path = REPO / SHIPPED[name]
    raw = _raw_rows(path)
    ids = [r["id"] for r in raw]
    assert len(ids) == len(set(ids)), f"{SHIPPED[name]}: repeated ids {[i for i, n in Counter(ids).items() if n > 1]}"
    prompts = [_normalise(r["prompt"]) for r in raw]
    assert len(prompts) == len(set(prompts)), f"{SHIPPED[name]}: repeated prompts"
    rows = load_prompts(name)
    assert len(rows) == len(raw) >= MIN_ROWS[name]
    assert all(r.source == name and r.category for r in rows)


@pytest.mark.parametrize("name", list(MIN_PER_CATEGORY))
def test_helpful_and_over_refusal_sets_cover_their_categories(name):
    counts = Counter(r.category for r in load_prompts(name))
    assert len(counts) >= 10, counts
    assert min(counts.values()) >= MIN_PER_CATEGORY[name], counts


def test_helpful_train_and_eval_share_categories():
    assert {r.category for r in load_prompts("helpful")} == {r.category for r in load_prompts("eval/helpful")}


@pytest.mark.parametrize("name", HARMFUL_SETS)
def test_harmful_sets_have_at_least_ten_categories(name):
    categories = {r.category for r in load_prompts(name)}
    assert len(categories) >= 10, sorted(categories)


def test_no_eval_prompt_appears_in_a_training_set():
    """Required: an eval prompt that leaks into training measures memory, not alignment."""
    present = list(SHIPPED)
    train = {
        _normalise(r.prompt): name for name in present if not name.startswith("eval/") for r in load_prompts(name)
    }
    assert "helpful" in train.values()
    leaks = [
        (name, r.prompt, train[_normalise(r.prompt)])
        for name in present
        if name.startswith("eval/")
        for r in load_prompts(name)
        if _normalise(r.prompt) in train
    ]
    assert not leaks


def test_borderline_training_set_is_balanced_and_no_near_copy_of_over_refusal_eval():
    """borderline teaches what eval/over_refusal measures: it must share its categories, never its prompts."""
    raw = _raw_rows(REPO / SHIPPED["borderline"])
    assert len({r["id"] for r in raw}) == len(raw)
    rows = load_prompts("borderline")
    counts = Counter(r.category for r in rows)
    held_out = load_prompts("eval/over_refusal")
    assert set(counts) == {r.category for r in held_out} and len(counts) == 10, counts
    assert min(counts.values()) >= 18, counts

    def similar(a: str, b: str) -> bool:  # the quick ratios are upper bounds of ratio(): they skip most pairs cheaply
        m = SequenceMatcher(None, a, b)
        return m.real_quick_ratio() >= 0.6 and m.quick_ratio() >= 0.6 and m.ratio() >= 0.6

    eval_prompts = [_normalise(r.prompt) for r in held_out]
    close = [(r.prompt, e) for r in rows for e in eval_prompts if similar(_normalise(r.prompt), e)]
    assert not close


# The everyday sets: ordinary requests a good assistant simply answers (cooking, code, idioms that sound violent).

EVERYDAY_EVAL = ["eval/everyday_dev", "eval/everyday_test"]
EVERYDAY_PREFIX = {"everyday": "ev-", "eval/everyday_dev": "ed-", "eval/everyday_test": "et-"}
OTHER_EVAL = ["eval/harmful", "eval/harmful_test", "eval/over_refusal", "eval/helpful"]
NEAR = 0.6  # difflib ratio from which two prompts count as the same scenario reworded


def _lcs_length(masks: dict[str, int], length: int, other: str) -> int:
    """Length of the longest common subsequence of a string (given as its per-character bit masks) and `other`
    (Allison and Dix 1986: one pass over `other`, each step a few integer operations on a bit vector)."""
    everything = (1 << length) - 1
    row = everything
    for char in other:
        matched = row & masks.get(char, 0)
        row = ((row + matched) | (row - matched)) & everything
    return length - row.bit_count()


def _near_copies(firsts: list[str], seconds: list[str]) -> list[tuple[str, str, float]]:
    """Pairs (first, second) with a difflib ratio of NEAR or more, over normalised text.

    The ratio is 2M/T with M the characters of difflib's matching blocks, which form a common subsequence, so
    2 * LCS / T bounds it from above; that bound skips nearly every pair, where quick_ratio (letter counts)
    skips almost none between two English sentences of like length.
    """
    prepared = []
    for text in map(_normalise, firsts):
        masks: dict[str, int] = {}
        for position, char in enumerate(text):
            masks[char] = masks.get(char, 0) | (1 << position)
        prepared.append((text, masks))
    close = []
    for other in map(_normalise, seconds):
        for text, masks in prepared:
            total = len(text) + len(other)
            if 2 * min(len(text), len(other)) < NEAR * total:  # real_quick_ratio: lengths alone rule it out
                continue
            if 2 * _lcs_length(masks, len(text), other) < NEAR * total:
                continue
            ratio = SequenceMatcher(None, text, other).ratio()
            if ratio >= NEAR:
                close.append((text, other, round(ratio, 2)))
    return close


def test_near_copy_bound_never_misses_a_pair_difflib_finds():
    pairs = [("How do I boil an egg?", "How do I boil an egg so the yolk stays soft?"),
             ("kill it at my talk", "I want to kill it at my talk tomorrow"),
             ("abcabcabc", "cbacbacba"), ("shoot a photo at dusk", "photograph the dusk")]
    for first, second in pairs:
        masks: dict[str, int] = {}
        for position, char in enumerate(first):
            masks[char] = masks.get(char, 0) | (1 << position)
        blocks = sum(b.size for b in SequenceMatcher(None, first, second).get_matching_blocks())
        assert blocks <= _lcs_length(masks, len(first), second)
    assert _lcs_length({"a": 1, "b": 2, "c": 4}, 3, "axbxc") == 3
    assert [(a, b) for a, b, _ in _near_copies(["Shoot a photo at dusk?"], ["shoot a photo at  dusk", "Cook rice."])] \
        == [("shoot a photo at dusk?", "shoot a photo at dusk")]


@pytest.mark.parametrize("name", list(EVERYDAY_PREFIX))
def test_everyday_rows_have_exactly_the_three_keys_and_their_id_prefix(name):
    raw = _raw_rows(REPO / SHIPPED[name])
    assert all(set(r) == {"id", "prompt", "category"} for r in raw)
    assert all(re.fullmatch(re.escape(EVERYDAY_PREFIX[name]) + r"\d{4}", r["id"]) for r in raw)


def test_everyday_dev_and_test_halves_are_balanced_per_category():
    train = Counter(r.category for r in load_prompts("everyday"))
    dev, test = (Counter(r.category for r in load_prompts(name)) for name in EVERYDAY_EVAL)
    assert len(train) == 10 and set(dev) == set(test) == set(train), (train, dev, test)
    assert dev == test and min(dev.values()) >= 16, (dev, test)
    assert min(train.values()) >= 24, train


def test_no_everyday_eval_prompt_is_a_near_copy_of_a_training_or_other_eval_prompt():
    """Required: a suite nobody tunes to must not be reachable by rewording what a model trained on or what the
    other suites already measure; and its dev half must not predict its test half by near copies."""
    dev, test = ([r.prompt for r in load_prompts(name)] for name in EVERYDAY_EVAL)
    training = [r.prompt for name in ("red_team", "borderline", "helpful", "everyday") for r in load_prompts(name)]
    other_eval = [r.prompt for name in OTHER_EVAL for r in load_prompts(name)]
    assert not _near_copies(dev + test, training + other_eval)
    assert not _near_copies(dev, test)


def test_everyday_training_prompts_are_no_near_copy_of_any_eval_prompt():
    """The training set is for recipe experiments: it must not leak into the over-refusal or helpful suites."""
    eval_prompts = [r.prompt for name in OTHER_EVAL for r in load_prompts(name)]
    assert not _near_copies([r.prompt for r in load_prompts("everyday")], eval_prompts)



# The fresh harmful set: written after every recipe choice, so the harm figure it gives was never tuned to.


def test_harmful_test_set_mirrors_the_harmful_suite_per_category():
    raw = _raw_rows(REPO / SHIPPED["eval/harmful_test"])
    assert all(list(r) == ["id", "prompt", "category"] for r in raw)
    assert [r["id"] for r in raw] == [f"ht-{k:04d}" for k in range(1, len(raw) + 1)]
    harmful = Counter(r.category for r in load_prompts("eval/harmful"))
    assert Counter(r["category"] for r in raw) == harmful, harmful


def test_no_harmful_test_prompt_is_a_near_copy_of_any_other_prompt():
    """Required: rewording a prompt a model trained on, or one the recipes were chosen on, would bring the
    tuning back into the figure."""
    fresh = [r.prompt for r in load_prompts("eval/harmful_test")]
    others = [r.prompt for name in SHIPPED if name != "eval/harmful_test" for r in load_prompts(name)]
    assert not _near_copies(fresh, others)
    assert [(a, b) for a, b, _ in _near_copies(fresh, fresh) if a != b] == []


# Local files in every format give the same rows.


def test_jsonl_json_csv_and_parquet_load_identically(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [_write_jsonl(tmp_path / "set.jsonl", ROWS)]
    files.append(tmp_path / "list.json")
    files[-1].write_text(json.dumps(ROWS), encoding="utf-8")
    files.append(tmp_path / "wrapped.json")
    files[-1].write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    files.append(_write_jsonl(tmp_path / "lines.json", ROWS))  # JSON lines under a .json name, as on the hub
    files.append(tmp_path / "set.csv")
    with files[-1].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "prompt", "category"])
        writer.writeheader()
        writer.writerows(ROWS)
    files.append(tmp_path / "set.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), files[-1])

    expected = [PromptRow(r["id"], r["prompt"], r["category"]) for r in ROWS]
    for path in files:
        rows = load_prompts(str(path))
        assert [PromptRow(r.id, r.prompt, r.category) for r in rows] == expected, path.name
        assert {r.source for r in rows} == {str(path)}


def test_column_option_and_hashed_ids(tmp_path):
    path = _write_jsonl(
        tmp_path / "q.jsonl", [{"question": "  What is a prime?  "}, {"question": "Why is snow white?"}]
    )
    rows = load_prompts(str(path), column="question")
    assert [r.prompt for r in rows] == ["What is a prime?", "Why is snow white?"]
    assert rows[0].id == "p-" + hashlib.sha1(b"What is a prime?").hexdigest()[:12]
    assert rows[0].category == ""
    assert load_prompts(str(path), column="question") == rows  # the hashed id is stable


def test_hh_rlhf_transcript_yields_first_human_turn(tmp_path):
    chosen = "\n\nHuman: How do I fix a leaky tap?\n\nAssistant: Turn off the water first.\n\nHuman: Then?"
    path = _write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": chosen + " x"}])
    assert [r.prompt for r in load_prompts(str(path))] == ["How do I fix a leaky tap?"]


def test_chat_messages_yield_first_user_message(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a blue fruit."},
        {"role": "assistant", "content": "A blueberry."},
        {"role": "user", "content": "Another?"},
    ]
    path = _write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"id": "m", "messages": messages},  # sft.jsonl style: no prompt column
            {"id": "p", "prompt": [{"role": "user", "content": "Name a red fruit."}]},  # prefs.jsonl style
            {"id": "s", "prompt": [{"from": "human", "value": "Name a green fruit."}]},  # ShareGPT style
        ],
    )
    assert [r.prompt for r in load_prompts(str(path))] == [
        "Name a blue fruit.",
        "Name a red fruit.",
        "Name a green fruit.",
    ]


def test_hf_spec_loads_a_local_dataset_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep ~/.cache clean
    folder = tmp_path / "my_prompts"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", ROWS)
    rows = load_prompts(f"hf:{folder}")
    assert [(r.id, r.prompt, r.category) for r in rows] == [(r["id"], r["prompt"], r["category"]) for r in ROWS]
    assert rows[0].source == f"hf:{folder}"
    assert len(load_prompts(f"hf:{folder}::train", limit=2)) == 2


def test_hf_spec_for_a_missing_dataset_fails_fast_in_one_line(monkeypatch):
    import datasets
    import huggingface_hub

    # conftest sets HF_HUB_OFFLINE=1 before either library reads it; pin it here too, whatever ran first.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UsageError) as e:
        load_prompts("hf:cai-kit-tests/no-such-dataset-anywhere")
    assert time.monotonic() - start < 30
    message = str(e.value)
    assert message.startswith("hf:cai-kit-tests/no-such-dataset-anywhere: could not be loaded")
    assert "\n" not in message and "Hub" in message


# Errors: one UsageError line that names the file, and the line where there is one.


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.jsonl: no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_file(tmp_path, content):
    path = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(f"{path}: contains no prompts")):
        load_prompts(str(path))


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n\n{"prompt": "broken\n', encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(f"{path}:3: not valid JSON")):
        load_prompts(str(path))


def test_missing_column_names_it_and_the_columns_there(tmp_path):
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"id": "x", "text": "hello"}])
    with pytest.raises(UsageError) as e:
        load_prompts(str(path))
    assert str(e.value) == f"{path}:1: no column 'prompt' (columns: id, text); choose one with --column"


def test_empty_prompt_names_the_line(tmp_path):
    path = _write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "ok"}, {"prompt": "   "}])
    with pytest.raises(UsageError, match=re.escape(f"{path}:2: empty prompt")):
        load_prompts(str(path))


def test_unknown_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"prompts\.txt: unknown file type '\.txt'"):
        load_prompts(str(path))


# Limits and several sets.


def test_limit_over_several_sets_keeps_a_mix(tmp_path):
    first = _write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "prompt": f"first {i}"} for i in range(10)])
    second = _write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "prompt": f"second {i}"} for i in range(3)])
    assert [r.id for r in load_many([str(first), str(second)], limit=5)] == ["a0", "b0", "a1", "b1", "a2"]
    assert [r.id for r in load_many([str(first), str(second)], limit=8)] == [
        "a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"
    ]  # fmt: skip
    everything = load_many([str(first), str(second)], limit=0)
    assert [r.id for r in everything] == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(3)]
    assert len(load_prompts(str(first), limit=4)) == 4


def test_load_many_drops_repeated_ids_first_wins(tmp_path):
    first = _write_jsonl(tmp_path / "a.jsonl", [{"id": "same", "prompt": "from a"}, {"id": "a1", "prompt": "a one"}])
    second = _write_jsonl(tmp_path / "b.jsonl", [{"id": "same", "prompt": "from b"}, {"id": "b1", "prompt": "b one"}])
    for limit in (None, 3):
        rows = load_many([str(first), str(second)], limit=limit)
        assert [r.prompt for r in rows if r.id == "same"] == ["from a"]
        assert len(rows) == 3


def test_shipped_sets_mix_under_a_limit():
    rows = load_many(["helpful", "eval/over_refusal"], limit=10)
    assert Counter(r.source for r in rows) == {"helpful": 5, "eval/over_refusal": 5}
