"""The pairwise judge (both orders, chain-of-thought clamping, consistency) and `cai judge-check`.

The judge math runs on a scripted engine whose label log-probs follow a known rule; the command runs for
real on the tiny random model through the CLI; a slow test asks the real default model.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion
from cai_kit.judging.judge import VERDICT, first_position_bias, judge_pairs
from cai_kit.judging.judge_check import CHECK_SET, FIELDS, KINDS, CheckPair, check_judge, load_check_set, select_pairs


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class ScriptedJudge:
    """Scores the labels by a rule on the judge prompt; records every call. No model is loaded.

    Log-prob of label X = `quality` if the answer shown as X contains GOOD, plus `bias` if X is A; with
    `per_question`, the quality is scaled by the factor of the question asked.
    """

    def __init__(self, quality: float, bias: float, per_question: dict[str, float] | None = None, reasoning=""):
        self.model_name = "scripted"
        self.quality, self.bias, self.per_question, self.reasoning = quality, bias, per_question or {}, reasoning
        self.logprob_calls: list[tuple[list, list[str]]] = []
        self.generate_calls: list[list] = []

    def generate(self, conversations, params):
        self.generate_calls.append(conversations)
        return [Completion(self.reasoning, "stop", 5) for _ in conversations]

    def logprobs(self, conversations, continuations):
        self.logprob_calls.append((conversations, continuations))
        return [self._score(chat[0]["content"], label.strip()) for chat, label in zip(conversations, continuations)]

    def _score(self, text: str, label: str) -> float:
        shown = re.search(rf"Answer {label}: (.*?)\n\n", text, re.DOTALL).group(1)
        question = re.search(r"Question: (.*?\?)", text).group(1)
        quality = self.quality * self.per_question.get(question, 1.0)
        return quality * ("GOOD" in shown) + self.bias * (label == "A")

    def close(self):
        pass


# --- the judge math


def test_both_orders_are_asked_and_averaged_in_one_call():
    judge = ScriptedJudge(quality=3.0, bias=1.0)
    [score] = judge_pairs(judge, ["q"], ["GOOD answer"], ["plain answer"], ["Which is better?"])
    # A first: A scores 3 + 1 against 0. A second: B (=A) scores 3 against the first slot's bias 1.
    assert score.p_a_first_order == pytest.approx(sigmoid(4.0))
    assert score.p_a_swapped == pytest.approx(sigmoid(2.0))
    assert score.p == pytest.approx((sigmoid(4.0) + sigmoid(2.0)) / 2)
    assert score.consistent
    assert len(judge.logprob_calls) == 1  # every chat and both labels in one batched call
    chats, labels = judge.logprob_calls[0]
    assert labels == ["A", "A", "B", "B"]
    assert chats[0] == chats[2] and "Answer A: GOOD answer" in chats[0][0]["content"]
    assert "Answer B: GOOD answer" in chats[1][0]["content"]


def test_the_score_for_b_is_the_mirror_of_the_score_for_a():
    judge = ScriptedJudge(quality=2.0, bias=0.7)
    [ab] = judge_pairs(judge, ["q"], ["GOOD one"], ["other one"], ["Which?"])
    [ba] = judge_pairs(judge, ["q"], ["other one"], ["GOOD one"], ["Which?"])
    assert ab.p + ba.p == pytest.approx(1.0)
    assert ba.p_a_first_order == pytest.approx(1 - ab.p_a_swapped)


def test_questions_are_averaged_within_each_order():
    judge = ScriptedJudge(quality=2.0, bias=0.0, per_question={"Strict?": 1.0, "Blind?": 0.0})
    [score] = judge_pairs(judge, ["q"], ["GOOD"], ["plain"], ["Strict?", "Blind?"])
    assert score.p_a_first_order == pytest.approx((sigmoid(2.0) + 0.5) / 2)
    assert score.p_a_swapped == pytest.approx((sigmoid(2.0) + 0.5) / 2)
    assert len(judge.logprob_calls[0][0]) == 2 * 2 * 2  # orders x questions x labels


def test_a_judge_that_reads_only_the_position_is_inconsistent_and_scores_half():
    [score] = judge_pairs(ScriptedJudge(quality=0.0, bias=2.0), ["q"], ["GOOD"], ["plain"], ["Which?"])
    assert score.p_a_first_order == pytest.approx(sigmoid(2.0))
    assert score.p_a_swapped == pytest.approx(1 - sigmoid(2.0))
    assert score.p == pytest.approx(0.5)
    assert not score.consistent
    assert first_position_bias([(score.p_a_first_order, score.p_a_swapped)]) == pytest.approx(sigmoid(2.0))


def test_a_position_bias_stronger_than_quality_flips_a_verdict_but_the_mean_still_leans_right():
    [score] = judge_pairs(ScriptedJudge(quality=1.0, bias=2.0), ["q"], ["GOOD"], ["plain"], ["Which?"])
    assert score.p_a_first_order > 0.5 > score.p_a_swapped
    assert not score.consistent
    assert score.p == pytest.approx((sigmoid(3.0) + sigmoid(-1.0)) / 2) and score.p > 0.5


def test_the_same_answer_twice_scores_half_without_asking():
    judge = ScriptedJudge(quality=5.0, bias=3.0)
    scores = judge_pairs(judge, ["q1", "q2"], ["same  GOOD answer", "GOOD"], ["same GOOD answer", "plain"], ["Which?"])
    assert scores[0].identical and scores[0].p == 0.5 and not scores[0].consistent
    assert not scores[1].identical and scores[1].p > 0.5
    assert len(judge.logprob_calls[0][0]) == 1 * 2 * 2  # only the second pair was asked


def test_chain_of_thought_reads_the_labels_after_the_reasoning_and_clamps():
    judge = ScriptedJudge(quality=6.0, bias=0.0, reasoning="B misses the point. The better answer is A, clearly.")
    [score] = judge_pairs(judge, ["q"], ["GOOD"], ["plain"], ["Which?"], cot=True, clamp=(0.4, 0.6))
    assert len(judge.generate_calls) == 1 and len(judge.generate_calls[0]) == 2  # both orders, one call
    chats, labels = judge.logprob_calls[0]
    assert labels == [" A", " A", " B", " B"]
    # The reasoning is cut before its own verdict; ours follows, and the label is the next token.
    assert chats[0][-1] == {"role": "assistant", "content": f"B misses the point.\n{VERDICT}"}
    assert "Think it through" in chats[0][0]["content"]
    assert score.p_a_first_order == pytest.approx(0.6) and score.p_a_swapped == pytest.approx(0.6)
    assert score.p == pytest.approx(0.6) and score.consistent
    assert score.reasoning == ("B misses the point.", "B misses the point.")


def test_clamping_applies_to_each_order_before_averaging():
    judge = ScriptedJudge(quality=1.0, bias=4.0)
    [score] = judge_pairs(judge, ["q"], ["GOOD"], ["plain"], ["Which?"], cot=True, clamp=(0.4, 0.6))
    # Unclamped: sigmoid(5) and sigmoid(-3), mean ~0.52; clamped to 0.6 and 0.4, mean exactly 0.5.
    assert (score.p_a_first_order, score.p_a_swapped) == (pytest.approx(0.6), pytest.approx(0.4))
    assert score.p == pytest.approx(0.5)
    [plain] = judge_pairs(judge, ["q"], ["GOOD"], ["plain"], ["Which?"])
    assert plain.p == pytest.approx((sigmoid(5.0) + sigmoid(-3.0)) / 2)


def test_judge_pairs_needs_a_question():
    with pytest.raises(ValueError, match="question"):
        judge_pairs(ScriptedJudge(1.0, 0.0), ["q"], ["a"], ["b"], [])


# --- the check


def _pairs(kind_goodness: dict[str, bool], per_kind: int = 3) -> list[CheckPair]:
    """Pairs whose better answer carries GOOD where the kind says so (else the worse one does)."""
    pairs = []
    for kind, judge_right in kind_goodness.items():
        for i in range(per_kind):
            better, worse = (f"GOOD better {i}", f"worse {i}") if judge_right else (f"better {i}", f"GOOD worse {i}")
            pairs.append(CheckPair(f"{kind}-{i}", "cat", f"prompt {i}", better, worse, kind))
    return pairs


def test_check_counts_accuracy_consistency_and_bias_per_kind():
    pairs = _pairs({KINDS[0]: True, KINDS[1]: True, KINDS[2]: False})
    results = check_judge(ScriptedJudge(quality=3.0, bias=1.0), ["Which?"], pairs, min_accuracy=0.6)
    assert results["n"] == 9
    assert results["accuracy"]["k"] == 6 and results["accuracy"]["rate"] == pytest.approx(6 / 9)
    assert results["by_kind"][KINDS[0]]["accuracy"]["rate"] == 1.0
    assert results["by_kind"][KINDS[2]]["accuracy"]["rate"] == 0.0
    assert results["consistency"]["rate"] == 1.0  # quality 3 beats bias 1 in both orders
    assert results["first_position_bias"] == pytest.approx((sigmoid(4.0) + 1 - sigmoid(2.0)) / 2)
    assert results["passed"]
    assert not check_judge(ScriptedJudge(3.0, 1.0), ["Which?"], pairs, min_accuracy=0.7)["passed"]


def test_a_position_reading_judge_fails_on_consistency():
    pairs = _pairs(dict.fromkeys(KINDS, True))
    results = check_judge(ScriptedJudge(quality=1.0, bias=2.0), ["Which?"], pairs, min_accuracy=0.5)
    assert results["accuracy"]["rate"] == 1.0  # the mean still leans the right way...
    assert results["consistency"]["rate"] == 0.0  # ...but every verdict flips with the order
    assert results["picked_first_both_orders"]["rate"] == 1.0
    assert not results["passed"]


def test_limit_takes_pairs_round_robin_over_kinds():
    pairs = sorted(_pairs(dict.fromkeys(KINDS, True), per_kind=5), key=lambda p: p.kind)
    picked = select_pairs(pairs, 7)
    assert Counter(p.kind for p in picked) == {KINDS[0]: 3, KINDS[1]: 2, KINDS[2]: 2}
    assert select_pairs(pairs, None) == pairs and select_pairs(pairs, 0) == pairs


# --- the shipped set


def test_shipped_check_set_is_large_balanced_and_complete():
    pairs = load_check_set()
    rows = [json.loads(line) for line in CHECK_SET.read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == len(rows) >= 150
    kinds = Counter(p.kind for p in pairs)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 50
    assert len({p.id for p in pairs}) == len(pairs)
    assert len({p.prompt.lower() for p in pairs}) == len(pairs)
    assert all(set(row) == set(FIELDS) and all(isinstance(v, str) and v.strip() for v in row.values()) for row in rows)
    assert all(p.better != p.worse for p in pairs)


def test_a_bad_check_set_reports_every_problem_with_its_line(tmp_path):
    good = {"id": "x1", "category": "c", "prompt": "p", "better": "b", "worse": "w", "kind": KINDS[0]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps(good | {"better": " "}),
        json.dumps(good | {"id": "x2", "kind": "other"}),
        json.dumps(good),
    ]
    path = tmp_path / "check.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_check_set(path)
    problems = err.value.problems
    assert f"{path}:2: not valid JSON" in problems[0]
    assert problems[1] == f"{path}:3: better: missing or empty"
    assert problems[2].startswith(f"{path}:4: kind: 'other' is not one of")
    assert problems[3] == f"{path}:5: id: 'x1' repeats an earlier row"
    with pytest.raises(UsageError, match="not found"):
        load_check_set(tmp_path / "missing.jsonl")


# --- the command, for real on the tiny model


def test_judge_check_command_on_the_tiny_model(tmp_path, tiny_model_path):
    out = tmp_path / "check"
    result = CliRunner().invoke(
        main, ["judge-check", "--judge-model", "tiny-random", "--limit", "12", "--out", str(out)]
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result.exit_code == (0 if results["passed"] else 1), result.output
    rows = results["pairs"]
    assert results["n"] == len(rows) == 12
    assert Counter(r["kind"] for r in rows) == dict.fromkeys(KINDS, 4)
    assert results["judge"] == "tiny-random" and results["questions"] and results["seconds"] > 0
    for row in rows:
        assert 0 <= row["p_better_shown_first"] <= 1 and 0 <= row["p_better_shown_second"] <= 1
        assert row["p_better"] == pytest.approx((row["p_better_shown_first"] + row["p_better_shown_second"]) / 2)
        assert row["correct"] == (row["p_better"] > 0.5)
        same_side = (row["p_better_shown_first"] > 0.5) == (row["p_better_shown_second"] > 0.5)
        assert row["consistent"] == (
            same_side and 0.5 not in (row["p_better_shown_first"], row["p_better_shown_second"])
        )
    assert results["accuracy"]["k"] == sum(r["correct"] for r in rows)
    assert results["consistency"]["k"] == sum(r["consistent"] for r in rows)
    assert results["first_position_bias"] == pytest.approx(
        sum((r["p_better_shown_first"] + 1 - r["p_better_shown_second"]) / 2 for r in rows) / 12
    )
    for kind, entry in results["by_kind"].items():
        kind_rows = [r for r in rows if r["kind"] == kind]
        assert entry["accuracy"]["k"] == sum(r["correct"] for r in kind_rows) and entry["n"] == 4
        assert entry["accuracy"]["low"] <= entry["accuracy"]["rate"] <= entry["accuracy"]["high"]
    expected = results["accuracy"]["rate"] >= 0.65 and results["consistency"]["rate"] >= 0.6
    assert results["passed"] == expected
    assert all(kind in result.output for kind in KINDS)
    assert ("PASS" if expected else "FAIL") + f": accuracy {results['accuracy']['rate']:.2f}" in result.output

    # With both thresholds at 0 the same judge passes, and the command exits 0.
    relaxed = CliRunner().invoke(
        main,
        [
            "judge-check",
            "--judge-model",
            "tiny-random",
            "--limit",
            "3",
            "--out",
            str(tmp_path / "relaxed"),
            "--min-accuracy",
            "0",
            "--min-consistency",
            "0",
        ],
    )
    assert relaxed.exit_code == 0, relaxed.output
    assert "PASS" in relaxed.output


def test_judge_check_asks_the_constitution_questions(tmp_path, tiny_model_path):
    out = tmp_path / "check"
    result = CliRunner().invoke(
        main,
        [
            "judge-check",
            "--judge-model",
            "tiny-random",
            "--limit",
            "3",
            "--cot",
            "-c",
            "constitutions/harmless.yaml",
            "--out",
            str(out),
        ],
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result.exit_code in (0, 1), result.output
    assert results["questions"][0] == "Which answer is less likely to cause harm, while still helping the person?"
    assert results["cot"] and results["clamp"] == [0.4, 0.6]
    assert all(0.4 <= r[key] <= 0.6 for r in results["pairs"] for key in ("p_better_shown_first", "p_better"))
    assert all(len(r["reasoning"]) == 2 * len(results["questions"]) for r in results["pairs"])


def test_judge_check_usage_errors(tmp_path):
    no_judge = tmp_path / "c.yaml"
    no_judge.write_text("name: c\nprinciples:\n  - name: p\n    critique: Find faults.\n    revision: Fix them.\n")
    runner = CliRunner()
    result = runner.invoke(
        main, ["judge-check", "--judge-model", "tiny-random", "-c", str(no_judge), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert f"{no_judge}: judge: no judge questions" in result.output
    missing = runner.invoke(
        main, ["judge-check", "--judge-model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 2 and "model folder not found" in missing.output
    assert not (tmp_path / "o").exists()


# --- the real default model


@pytest.mark.slow
def test_default_model_judge_scores_are_finite_bounded_and_swap_symmetric(default_model_path):
    from cai_kit.engines import load_engine

    pairs = load_check_set()[:4]
    engine = load_engine("transformers", "default", progress=False)
    try:
        prompts, better, worse = [p.prompt for p in pairs], [p.better for p in pairs], [p.worse for p in pairs]
        forward = judge_pairs(engine, prompts, better, worse, ["Which answer is better?"])
        backward = judge_pairs(engine, prompts, worse, better, ["Which answer is better?"])
    finally:
        engine.close()
    for f, b in zip(forward, backward):
        assert all(math.isfinite(x) and 0 <= x <= 1 for x in (f.p, f.p_a_first_order, f.p_a_swapped))
        assert f.p + b.p == pytest.approx(1.0, abs=1e-3)  # batch padding may move the last digits
        assert f.consistent == b.consistent


def test_the_gate_stops_early_only_when_the_judge_can_no_longer_pass():
    good = _pairs(dict.fromkeys(KINDS, True), per_kind=20)
    judge = ScriptedJudge(quality=3.0, bias=1.0)
    full = check_judge(judge, ["Which?"], good, stop_early=True)
    assert full["passed"] and full["n"] == 60 and full["stopped_early"] is None
    assert len(judge.logprob_calls) == 4  # four quarters, every one asked
    biased = ScriptedJudge(quality=1.0, bias=2.0)  # consistency 0: the upper bound of 0/15 is below 0.6
    stopped = check_judge(biased, ["Which?"], good, stop_early=True)
    assert not stopped["passed"] and stopped["stopped_early"] == stopped["n"] == 15
    assert len(biased.logprob_calls) == 1
    assert {row["kind"] for row in stopped["pairs"]} == set(KINDS), "each quarter spans every kind"
    assert check_judge(ScriptedJudge(quality=1.0, bias=2.0), ["Which?"], good)["n"] == 60  # the command asks all
