"""`cai eval`: intervals, the pairwise judge, scoring with scripted engines, the report on the tiny model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import cai_kit.evaluation.evaluate
from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.core.stats import newcombe, wilson
from cai_kit.engines import Completion
from cai_kit.evaluation.eval_judge import judge_pairwise
from cai_kit.evaluation.evaluate import run_eval, select_prompts
from cai_kit.evaluation.options import EvalOptions, make_options, parse_prompt_overrides
from cai_kit.evaluation.report import summary_table
from cai_kit.evaluation.verdicts import LABELS

REPO = Path(__file__).resolve().parent.parent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- intervals


@pytest.mark.parametrize("k, n, low, high", [
    # Reference values computed apart from stats.py: the p where the score statistic |k/n - p| / sqrt(p(1-p)/n)
    # equals z, found by bisection (the definition, not the closed form); 0/10 -> 0.2775 is the textbook value.
    (0, 10, 0.0, 0.2775328),
    (5, 10, 0.2365931, 0.7634069),
    (10, 10, 0.7224672, 1.0),
    (1, 3, 0.0614919, 0.7923404),
    (12, 20, 0.3865815, 0.7811935),
])
def test_wilson_matches_reference(k, n, low, high):
    got_low, got_high = wilson(k, n)
    assert got_low == pytest.approx(low, abs=1e-6)
    assert got_high == pytest.approx(high, abs=1e-6)


def test_wilson_bounds_stay_in_range_and_contain_the_rate():
    assert wilson(0, 0) == (0.0, 1.0)
    for n in (1, 2, 7, 50):
        for k in [*range(n + 1), 0.5, n - 0.5]:
            low, high = wilson(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0


@pytest.mark.parametrize("k1, n1, k2, n2, low, high", [
    # Newcombe (1998) table II, method 10. By hand for the first: Wilson gives 56/70 = 0.8 in
    # [0.69183, 0.87695] and 48/80 = 0.6 in [0.49045, 0.70038]; the difference 0.2 goes down by
    # sqrt((0.8 - 0.69183)^2 + (0.70038 - 0.6)^2) = 0.14757 and up by sqrt((0.87695 - 0.8)^2 + (0.6 - 0.49045)^2)
    # = 0.13387, to [0.0524, 0.3339].
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0),
])
def test_newcombe_matches_the_published_intervals(k1, n1, k2, n2, low, high):
    got_low, got_high = newcombe(k1, n1, k2, n2)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)


def test_newcombe_is_antisymmetric_and_contains_the_difference():
    assert newcombe(0, 0, 3, 7) == (-1.0, 1.0)
    for k1, n1, k2, n2 in [(3, 7, 5, 9), (0, 4, 4, 4), (12, 40, 1, 30)]:
        low, high = newcombe(k1, n1, k2, n2)
        assert -1.0 <= low <= k1 / n1 - k2 / n2 <= high <= 1.0
        assert newcombe(k2, n2, k1, n1) == pytest.approx((-high, -low))


# --- the pairwise judge, driven by a scripted engine


class ScriptedEngine:
    """Replies by a rule; scores judge labels by a rule. No model is loaded.

    `reply(prompt) -> answer`; `label_score(chat_text, label) -> log-prob` for judge continuations.
    """

    def __init__(self, reply=lambda prompt: "Sure: " + prompt, label_score=lambda text, label: 0.0):
        self.model_name = "scripted"
        self.reply, self.label_score = reply, label_score
        self.generated = 0
        self.scored = 0

    def generate(self, conversations, params):
        self.generated += len(conversations)
        return [Completion(self.reply(c[-1]["content"]), "stop", 3) for c in conversations]

    def logprobs(self, conversations, continuations):
        self.scored += len(conversations)
        pairs = zip(conversations, continuations, strict=True)
        return [self.label_score(chat[-1]["content"], label) for chat, label in pairs]

    def close(self):
        pass


def _answer_at(text: str, label: str) -> str:
    return re.search(rf"Answer {label}: (.*?)\n\n", text, re.DOTALL).group(1)


def _judge(quality: float, position_bias: float) -> ScriptedEngine:
    """Log-prob of label X = quality if the answer at X says GOOD, plus position_bias if X is A."""
    def score(text, label):
        if label in ("A", "B"):
            return quality * ("GOOD" in _answer_at(text, label)) + position_bias * (label == "A")
        return 0.0
    return ScriptedEngine(label_score=score)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_pairwise_averages_both_orders():
    judge = _judge(quality=3.0, position_bias=1.0)
    [result] = judge_pairwise(judge, ["q"], ["GOOD answer"], ["plain answer"], ["Which is better?", "Which helps?"])
    # Model first: A (model) scores 3 + 1 against 0. Model second: B (model) scores 3 against A's bias 1.
    assert result["model_first"] == pytest.approx(sigmoid(4.0))
    assert result["model_second"] == pytest.approx(sigmoid(2.0))
    assert result["p_model"] == pytest.approx((sigmoid(4.0) + sigmoid(2.0)) / 2)
    assert result["verdict"] == "win"
    assert judge.scored == 2 * 2 * 2  # two orders x two questions x two labels


def test_pairwise_loss_when_both_orders_prefer_the_baseline():
    [result] = judge_pairwise(_judge(2.0, 0.0), ["q"], ["plain"], ["GOOD"], ["Which is better?"])
    assert result["verdict"] == "loss"
    assert result["p_model"] == pytest.approx(sigmoid(-2.0))


def test_a_judge_that_always_picks_the_first_answer_gives_ties():
    [result] = judge_pairwise(_judge(0.0, 1.0), ["q"], ["one answer"], ["another answer"], ["Which is better?"])
    assert result["verdict"] == "tie"
    assert result["p_model"] == pytest.approx(0.5)


def test_identical_answers_are_a_tie_without_asking_the_judge():
    judge = _judge(5.0, 0.0)
    results = judge_pairwise(judge, ["q1", "q2"], ["same  answer", "GOOD"], ["same answer", "GOOD"], ["Which?"])
    assert [r["verdict"] for r in results] == ["tie", "tie"]
    assert all(r["identical"] for r in results)
    assert judge.scored == 0


# --- options and prompt selection


def test_options_take_the_train_stage_keywords(tmp_path):
    recipe_eval_section = {"suites": "harmful", "limit": 2, "max_new_tokens": 32}
    options = EvalOptions(**recipe_eval_section, model=tmp_path / "final", baseline="default", out=tmp_path / "eval")
    assert options.suites == ["harmful"]
    assert options.out == str(tmp_path / "eval")
    assert EvalOptions(suites=["all"]).suites == ["harmful", "over_refusal", "helpful", "everyday"]
    with pytest.raises(UsageError) as err:
        make_options(suites=["harmfull"], max_tokens=3)
    assert len(err.value.problems) == 2
    assert "unknown suite 'harmfull'" in str(err.value)


def test_prompt_overrides_name_their_suite():
    assert parse_prompt_overrides(["harmful=mine.jsonl"], ["all"]) == {"harmful": "mine.jsonl"}
    assert parse_prompt_overrides(["everyday=eval/everyday_dev"], ["all"]) == {"everyday": "eval/everyday_dev"}
    assert parse_prompt_overrides(["hf:org/set:train"], ["helpful"]) == {"helpful": "hf:org/set:train"}
    with pytest.raises(UsageError, match="SUITE=SPEC"):
        parse_prompt_overrides(["mine.jsonl"], ["all"])


def test_a_limit_spreads_over_categories():
    rows = select_prompts("eval/harmful", 5)
    assert len(rows) == 5
    assert len({row.category for row in rows}) == 5


# --- the whole run with scripted engines: exact rates, report files, answer cache


PASSED_CHECK = {"judge": "judge", "n": 40, "accuracy": {"rate": 0.9, "k": 36, "n": 40},
                "consistency": {"rate": 0.8, "k": 32, "n": 40}, "first_position_bias": 0.5, "stopped_early": None}


def test_run_eval_scores_scripted_models(tmp_path, monkeypatch):
    def aligned(prompt):  # refuses everything from the harmful set, helps (well) with the rest
        return "I can't help with that." if prompt in harmful_prompts else "GOOD: here is how."

    # The scripted judge passes cai judge-check here (its check is tested below with a judge at chance).
    monkeypatch.setattr(cai_kit.evaluation.evaluate, "check_judge_once", lambda *args: PASSED_CHECK)
    harmful_prompts = {row.prompt for row in select_prompts("eval/harmful", 4)}
    model = ScriptedEngine(reply=aligned)
    baseline = ScriptedEngine(reply=lambda prompt: "Sure, here is how.")
    judge = _judge(quality=2.0, position_bias=0.5)
    options = EvalOptions(model="aligned", baseline="base", judge_model="judge", suites=["all"], limit=4,
                          out=str(tmp_path))
    engines = {"aligned": model, "base": baseline, "judge": judge}
    results = run_eval(options, engines=engines)

    harmful = results["suites"]["harmful"]["scores"]
    assert harmful["model"]["refused"]["rate"] == 1.0
    assert harmful["model"]["labels"]["full_refusal"]["k"] == 4
    assert harmful["baseline"]["refused"]["rate"] == 0.0
    assert harmful["baseline"]["complied"]["k"] == 4
    assert harmful["baseline"]["labels"]["full_compliance"]["k"] == 4
    assert results["suites"]["over_refusal"]["scores"]["model"]["refused"]["rate"] == 0.0
    pairwise = results["suites"]["helpful"]["pairwise"]
    assert (pairwise["wins"], pairwise["ties"], pairwise["losses"]) == (4, 0, 0)
    assert pairwise["win_rate"]["rate"] == 1.0
    assert results["suites"]["helpful"]["judge_check"] == PASSED_CHECK
    # Model first: A scores 2 + 0.5 against 0; model second: A (baseline) scores 0.5 against B's 2.
    assert pairwise["first_position_bias"] == pytest.approx((sigmoid(2.5) + 1 - sigmoid(1.5)) / 2)
    # The scripted judge says Yes and No alike (P = 0.5), so it calls nothing harmful: it agrees with the rules
    # on every refusal of the model and on none of the baseline's compliant answers.
    assert harmful["model"]["judge_harmful"]["k"] == 0
    assert harmful["model"]["judge_agreement"]["rate"] == 1.0
    assert harmful["baseline"]["judge_agreement"]["rate"] == 0.0
    for name in ["results.json", "details.jsonl", "report.md", "answers_model.jsonl", "answers_baseline.jsonl"]:
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "results.json").read_text())["suites"]["harmful"]["n"] == 4
    # Scripted engines have no per-token log-probs: retention says so instead of a number.
    retention = results["suites"]["helpful"]["retention"]
    assert retention["model"]["not_measured"].endswith("gives no per-token log-probs")
    assert "difference" not in retention

    # A rerun reuses the cached answers: the models are not asked again, unless a generation setting changed.
    generated = model.generated
    run_eval(options, engines=engines)
    assert model.generated == generated == 16
    run_eval(options.model_copy(update={"max_new_tokens": 64}), engines=engines)
    assert model.generated == 32


def test_a_failed_request_stops_the_eval_and_is_never_scored_as_an_answer(tmp_path):
    # An engine hands a request it could not answer back as a completion with finish_reason "error" whose text
    # says why. Scored as an answer, "HTTP 500" would count as complied; the run stops instead, keeping the rest.
    failing = {row.prompt for row in select_prompts("eval/harmful", 4)[2:3]}
    down = ScriptedEngine()
    down.generate = lambda conversations, params: [
        Completion("the server answered HTTP 500", "error", 0) if c[-1]["content"] in failing
        else Completion("I can't help with that.", "stop", 3) for c in conversations]
    options = EvalOptions(model="model", suites=["harmful"], limit=4, out=str(tmp_path))
    with pytest.raises(UsageError, match=r"a request of the model model failed \(the server answered HTTP 500\); "
                                         r"the 3 answers written so far are kept in .*answers_model.jsonl"):
        run_eval(options, engines={"model": down})
    kept = [json.loads(line) for line in (tmp_path / "answers_model.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and all(row["answer"] == "I can't help with that." for row in kept)
    assert not (tmp_path / "results.json").exists()

    # A rerun against a working engine asks only the missing prompt.
    up = ScriptedEngine(reply=lambda prompt: "I can't help with that.")
    results = run_eval(options, engines={"model": up})
    assert up.generated == 1
    assert results["suites"]["harmful"]["scores"]["model"]["refused"]["k"] == 4


def test_no_win_rate_from_a_judge_at_chance(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))  # the judge-check result is cached there
    judge = ScriptedEngine(label_score=lambda text, label: 0.0)  # every label equally likely: pure chance
    options = EvalOptions(model="model", baseline="base", judge_model="judge", suites=["helpful"], limit=6,
                          out=str(tmp_path / "eval"))
    engines = {"model": ScriptedEngine(reply=lambda p: "GOOD " + p), "base": ScriptedEngine(), "judge": judge}
    results = run_eval(options, engines=engines)
    helpful = results["suites"]["helpful"]
    assert "pairwise" not in helpful
    assert helpful["win_rate"]["not_measured"].startswith("not measured: judge at chance (accuracy 0.00, consistency")
    assert helpful["judge_check"]["accuracy"]["rate"] == 0.0
    table = summary_table(results)
    report = (tmp_path / "eval" / "report.md").read_text()
    for text in (table, report):
        assert "not measured: judge at chance" in text
        assert "ties count half" not in text and "0.50 [" not in text
    details = [json.loads(line) for line in (tmp_path / "eval" / "details.jsonl").read_text().splitlines()]
    assert not any("pairwise" in d["model"] for d in details)


class ScoringEngine(ScriptedEngine):
    """A scripted engine with per-token log-probs: each reference token costs `per_char` x its answer's length."""

    def __init__(self, per_char: float):
        super().__init__()
        self.per_char = per_char

    def token_logprobs(self, conversations, continuations):
        return [[-self.per_char * len(text)] * len(text.split()) for text in continuations]


def test_retention_compares_reference_nll_with_the_baseline(tmp_path):
    options = EvalOptions(model="model", baseline="base", suites=["helpful"], limit=5, out=str(tmp_path))
    engines = {"model": ScoringEngine(0.02), "base": ScoringEngine(0.01)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cai_kit.evaluation.evaluate, "check_judge_once", lambda *args: PASSED_CHECK)
        results = run_eval(options, engines=engines)
    references = {json.loads(line)["id"]: json.loads(line)["reference"]
                  for line in (REPO / "data" / "eval" / "helpful.jsonl").read_text().splitlines()}
    lengths = [len(references[row.id]) for row in select_prompts("eval/helpful", 5)]
    retention = results["suites"]["helpful"]["retention"]
    assert retention["model"]["mean"] == pytest.approx(sum(0.02 * n for n in lengths) / 5)
    assert retention["baseline"]["mean"] == pytest.approx(sum(0.01 * n for n in lengths) / 5)
    difference = retention["difference"]
    assert difference["mean"] == pytest.approx(sum(0.01 * n for n in lengths) / 5)
    assert min(0.01 * n for n in lengths) <= difference["low"] <= difference["mean"] <= difference["high"]
    assert difference["n"] == 5
    assert "NLL change vs baseline" in summary_table(results)
    # Cached: a rerun asks the engines for nothing.
    again = run_eval(options, engines={"model": ScriptedEngine(), "base": ScriptedEngine()})
    assert again["suites"]["helpful"]["retention"] == retention


# --- discrimination: harmful refused minus everyday refused


def test_discrimination_leads_the_results_and_the_report(tmp_path):
    everyday = select_prompts("eval/everyday_test", 6)
    refused = {row.prompt for row in select_prompts("eval/harmful", 6)} | {everyday[0].prompt}
    partly = {everyday[1].prompt}

    def cautious(prompt):  # refuses every harmful prompt, and two everyday ones: one fully, one in part
        if prompt in partly:
            return "I can't help with that, but here is a recipe: boil the rice for 12 minutes, then drain it."
        return "I can't help with that." if prompt in refused else "Sure, here is how."

    options = EvalOptions(model="cautious", baseline="base", suites=["harmful", "everyday"], limit=6,
                          out=str(tmp_path))
    results = run_eval(options, engines={"cautious": ScriptedEngine(reply=cautious), "base": ScriptedEngine()})

    assert results["suites"]["everyday"]["prompts"] == "eval/everyday_test"
    everyday_scores = results["suites"]["everyday"]["scores"]["model"]
    assert everyday_scores["labels"]["full_refusal"]["k"] == everyday_scores["labels"]["partial_refusal"]["k"] == 1
    model, baseline = results["discrimination"]["model"], results["discrimination"]["baseline"]
    assert model["harmful_refused"]["rate"] == 1.0 and model["everyday_refused"]["k"] == 2
    assert model["difference"] == pytest.approx(1.0 - 2 / 6)
    assert (model["low"], model["high"]) == pytest.approx(newcombe(6, 6, 2, 6))
    assert baseline["difference"] == 0.0 and baseline["low"] < 0.0 < baseline["high"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written).index("discrimination") < list(written).index("suites")
    assert written["discrimination"] == results["discrimination"]
    first_row = summary_table(results).splitlines()[2]
    assert first_row.startswith("| discrimination | harmful refused minus everyday refused")
    assert first_row.endswith(f"| +0.00 [{baseline['low']:+.2f}, {baseline['high']:+.2f}] (0.00 - 0.00) "
                              f"| +0.67 [{model['low']:+.2f}, {model['high']:+.2f}] (1.00 - 0.33) |")
    assert first_row in (tmp_path / "report.md").read_text()


def test_no_discrimination_without_both_suites(tmp_path):
    options = EvalOptions(model="m", suites=["everyday"], limit=3, out=str(tmp_path))
    results = run_eval(options, engines={"m": ScriptedEngine()})
    assert "discrimination" not in results and "discrimination" not in summary_table(results)
    assert results["suites"]["everyday"]["scores"]["model"]["refused"]["k"] == 0


def test_the_dev_half_is_chosen_with_prompts(tiny_model_path, tmp_path):
    result = CliRunner().invoke(main, ["eval", "-m", "tiny-random", "-s", "everyday", "-p",
                                       "everyday=eval/everyday_dev", "--limit", "2", "--max-new-tokens", "4",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["suites"]["everyday"]["prompts"] == "eval/everyday_dev"
    ids = [json.loads(line)["id"] for line in (tmp_path / "details.jsonl").read_text().splitlines()]
    assert len(ids) == 2 and all(i.startswith("ed-") for i in ids)


# --- through the CLI on the tiny model


def test_cli_report_on_the_tiny_model(tiny_model_path, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", tiny_model_path, "--baseline", tiny_model_path,
                                       "--suite", "all", "--limit", "4", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "full refusal: no compliance" in result.stdout
    for name in ["results.json", "report.md", "details.jsonl"]:
        assert (out / name).is_file(), name
    for name in ["tradeoff.png", "categories.png"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["suites"]) == {"harmful", "over_refusal", "helpful", "everyday"}
    assert set(results["discrimination"]) == {"baseline", "model"}
    report = (out / "report.md").read_text()
    assert "## Before and after" in report and "![tradeoff](tradeoff.png)" in report


def test_tiny_model_answers_get_three_way_labels(tiny_model_path, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "-m", "tiny-random", "-s", "harmful", "--limit", "2",
                                       "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "results.json").read_text())["suites"]["harmful"]["scores"]["model"]
    assert set(scores["labels"]) == set(LABELS)
    assert sum(scores["labels"][label]["k"] for label in LABELS) == 2
    for label in LABELS:
        entry = scores["labels"][label]
        assert entry["n"] == 2 and 0.0 <= entry["low"] <= entry["rate"] <= entry["high"] <= 1.0
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert len(details) == 2 and all(d["model"]["verdict"] in LABELS and d["model"]["evidence"] for d in details)


@pytest.mark.parametrize("args, message", [
    (["--suite", "harmfull"], "unknown suite 'harmfull'"),
    (["--model", "./no/such/model"], "model folder not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, ["eval", *args, "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_default_model_harm_and_over_refusal(default_model_path, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["eval", "--model", "default", "--suite", "harmful", "--suite", "over_refusal",
                                       "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    print("\n" + result.stdout)
    results = json.loads((out / "results.json").read_text())
    for suite in ["harmful", "over_refusal"]:
        scores = results["suites"][suite]["scores"]["model"]
        assert scores["refused"]["n"] == 3 and sum(scores["labels"][label]["k"] for label in LABELS) == 3
    assert (out / "report.md").is_file()
    assert (out / "tradeoff.png").read_bytes()[:8] == PNG_MAGIC


def test_default_suites_leave_everyday_to_all():
    from cai_kit.evaluation.options import DEFAULT_SUITES, SUITES, EvalOptions

    assert EvalOptions().suites == DEFAULT_SUITES == [s for s in SUITES if s != "everyday"]
    assert EvalOptions(suites=["all"]).suites == SUITES
