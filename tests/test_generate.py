"""The critique/revision loop, driven by a scripted fake engine (fast) and the tiny model (real CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion, GenParams
from cai_kit.generation.generate import run_generate
from cai_kit.generation.options import DEFAULT_FILTERS, GenerateOptions

CONSTITUTION = """\
name: test
description: a small constitution for tests
principles:
  - name: harm
    critique: Say how the answer could hurt someone.
    revision: Rewrite it so it is safe.
    opening: "I can't help with that, but"
    weight: 1.0
  - name: helpful
    critique: Say how the answer could help more.
    revision: Rewrite it to help more.
    tags: [over_refusal]
    weight: 1.0
examples:
  - prompt: EXAMPLE PROMPT
    answer: example answer
    critique: example critique
    revision: example revision
    principle: helpful
"""


def write_prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"question number {i}?", "category": "c"}) + "\n" for i in range(n)
        )
    )
    return path


class ScriptedEngine:
    """Answers by looking at the last user turn; records every conversation it was given."""

    model_name = "scripted"

    def __init__(self, revision=lambda prompt, chat: f"A safer answer to {prompt}", finish="stop"):
        self.calls: list[list[list[dict]]] = []
        self.revision = revision
        self.finish = finish

    def generate(self, conversations, params: GenParams):
        self.calls.append(conversations)
        out = []
        for chat in conversations:
            users = [m["content"] for m in chat if m["role"] == "user"]
            prompt = next(u for u in reversed(users) if u.startswith("question"))
            if chat[-1]["role"] == "user" and chat[-1]["content"] == prompt:
                text = f"First answer to {prompt}"
            elif "Rewrite" in users[-1]:
                text = self.revision(prompt, chat)
            else:
                text = f"That answer to {prompt} could be better."
            out.append(Completion(text=text, finish_reason=self.finish, tokens=len(text.split())))
        return out

    def logprobs(self, conversations, continuations):
        return [0.0 for _ in conversations]

    def close(self):
        pass


@pytest.fixture
def setup(tmp_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    return constitution, prompts, tmp_path / "out"


def options(setup, **extra) -> GenerateOptions:
    constitution, prompts, out = setup
    values = {"constitution": str(constitution), "prompts": [str(prompts)], "out": str(out), "batch_size": 4}
    return GenerateOptions(**{**values, **extra})


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_all_files_in_trl_formats(setup):
    out = run_generate(options(setup), engine=ScriptedEngine())
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "generations.jsonl",
        "manifest.json",
        "prefs.jsonl",
        "sft.jsonl",
    ]
    rows = read(out / "generations.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert {r["status"] for r in rows} == {"ok"}
    import datasets

    sft = datasets.load_dataset("json", data_files=str(out / "sft.jsonl"), split="train")
    prefs = datasets.load_dataset("json", data_files=str(out / "prefs.jsonl"), split="train")
    assert len(sft) == len(prefs) == 6
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    assert prefs[0]["prompt"][0]["role"] == "user" and prefs[0]["chosen"][0]["role"] == "assistant"
    assert prefs[0]["rejected"][0]["content"].startswith("First answer")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["constitution"] == "test" and len(manifest["constitution_sha256"]) == 64
    card = (out / "README.md").read_text()
    assert "sha256" in card and "kept: 6" in card
    # The filters it applied, each described from the one filter table; `partial` is off by default.
    assert "- `takes_back`: A refusal goes on, after its \"but\"" in card and "- `partial`" not in card


def test_rounds_and_deterministic_principles(setup, tmp_path):
    first = read(run_generate(options(setup, rounds=3), engine=ScriptedEngine()) / "generations.jsonl")
    assert all(len(r["steps"]) == 3 for r in first)
    again = options(setup, rounds=3, out=str(tmp_path / "again"))
    second = read(run_generate(again, engine=ScriptedEngine()) / "generations.jsonl")
    assert [s["principle"] for r in first for s in r["steps"]] == [s["principle"] for r in second for s in r["steps"]]
    other = options(setup, rounds=3, seed=7, out=str(tmp_path / "other"))
    third = read(run_generate(other, engine=ScriptedEngine()) / "generations.jsonl")
    assert [s["principle"] for r in first for s in r["steps"]] != [s["principle"] for r in third for s in r["steps"]]


def test_few_shot_examples_come_first_and_batches_are_per_stage(setup):
    engine = ScriptedEngine()
    run_generate(options(setup, few_shot=1), engine=engine)
    # 6 prompts in chunks of 4: each chunk makes one initial, one critique and one revision call.
    assert [len(call) for call in engine.calls] == [4, 4, 4, 2, 2, 2]
    critique_chat = engine.calls[1][0]
    assert critique_chat[0] == {"role": "user", "content": "EXAMPLE PROMPT"}
    assert critique_chat[3]["content"] == "example critique"
    assert critique_chat[6]["content"].startswith("question")

    engine = ScriptedEngine()
    run_generate(options(setup, few_shot=0, out=str(Path(setup[2]).parent / "noshot")), engine=engine)
    assert engine.calls[1][0][0]["content"].startswith("question")


def test_steering_opening_starts_the_reply_and_the_training_target(setup):
    engine = ScriptedEngine()
    out = run_generate(options(setup, rounds=1), engine=engine)
    rows = {r["id"]: r for r in read(out / "generations.jsonl")}
    sft = {r["id"]: r for r in read(out / "sft.jsonl")}
    steered = [r for r in rows.values() if r["steps"][0]["principle"] == "harm"]
    assert steered, "seed 0 should sample the harm principle for at least one of six prompts"
    for row in steered:
        assert row["final"].startswith("I can't help with that, but A safer answer")
        assert sft[row["id"]]["messages"][1]["content"] == row["final"]
    revision_chats = [chat for call in engine.calls for chat in call if chat[-1]["role"] == "assistant"]
    assert all(chat[-1]["content"] == "I can't help with that, but" for chat in revision_chats)
    # The instruction that asked for the rewrite never reaches the training data.
    assert not any("Rewrite" in json.dumps(r) for r in sft.values())


@pytest.mark.parametrize(
    ("revision", "finish", "status"),
    [
        (lambda p, chat: "", "stop", "empty"),
        (lambda p, chat: "A safer answer", "length", "truncated"),
        (lambda p, chat: "The revised response is better: do it safely.", "stop", "artefact"),
        (lambda p, chat: f"Your answer was too long for {p}", "stop", "artefact"),
        (lambda p, chat: f"First answer to {p}", "stop", "unchanged"),
        (lambda p, chat: "Same text for everyone.", "stop", "duplicate"),
    ],
)
def test_filters_keep_the_row_with_its_reason(setup, revision, finish, status):
    Path(setup[0]).write_text(CONSTITUTION.replace("""    opening: "I can't help with that, but"\n""", ""))
    out = run_generate(
        options(setup, filters=["empty", "truncated", "artefact", "unchanged", "duplicate"]),
        engine=ScriptedEngine(revision=revision, finish=finish),
    )
    rows = read(out / "generations.jsonl")
    assert len(rows) == 6
    expected = {status} if status != "duplicate" else {"ok", "duplicate"}
    assert {r["status"] for r in rows} == expected
    kept = [r for r in rows if r["status"] == "ok"]
    assert len(read(out / "sft.jsonl")) == len(kept) == len(read(out / "prefs.jsonl"))
    assert f"| {status} |" in (out / "README.md").read_text()


def test_a_reply_that_hit_the_limit_is_cut_to_its_last_full_sentence(setup):
    Path(setup[0]).write_text(CONSTITUTION.replace("""    opening: "I can't help with that, but"\n""", ""))
    engine = ScriptedEngine(revision=lambda p, c: f"A full reply to {p} Then a cut-off half", finish="length")
    rows = read(run_generate(options(setup), engine=engine) / "generations.jsonl")
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["final"] == f"A full reply to {r['prompt']}" and r["finish_reason"] == "trimmed" for r in rows)


def test_a_steered_reply_keeps_one_sentence_after_its_opening(setup, tmp_path):
    engine = ScriptedEngine(revision=lambda p, c: f"ask a friend about {p} Then here is how to do it anyway.")
    rows = read(run_generate(options(setup), engine=engine) / "generations.jsonl")
    steered = [r for r in rows if r["steps"][0]["principle"] == "harm"]
    assert steered and all(
        r["final"] == f"I can't help with that, but ask a friend about {r['prompt']}" for r in steered
    )
    kept = read(
        run_generate(options(setup, steered_sentences=0, out=str(tmp_path / "all")), engine=engine)
        / "generations.jsonl"
    )
    assert all(r["final"].endswith("anyway.") for r in kept if r["steps"][0]["principle"] == "harm")


class SteeredEngine:
    """Replies by the steering system message: towards the principle, away and complying, or away and refusing."""

    model_name = "steered"

    def __init__(self, away_harm: str = "Sure, here is exactly how.", toward_harm=None):
        self.calls: list[list[list[dict]]] = []
        self.budgets: list[int] = []
        self.away_harm = away_harm
        self.toward_harm = toward_harm  # prompt -> the reply after the harm principle's opening

    def generate(self, conversations, params: GenParams):
        self.calls.append(conversations)
        self.budgets.append(params.max_new_tokens)
        out = []
        for chat in conversations:
            system, prompt = chat[0]["content"], chat[1]["content"]
            if system.startswith("Refuse"):
                text = "It could be dangerous."
            elif system.startswith("Do exactly"):
                text = self.away_harm
            elif self.toward_harm and chat[-1]["role"] == "assistant":
                text = self.toward_harm(prompt)
            else:
                text = f"a careful reply to {prompt}"
            out.append(Completion(text=text, finish_reason="stop", tokens=len(text.split())))
        return out

    def close(self):
        pass


def test_contrast_pairs_are_steered_both_ways_and_the_steering_never_reaches_the_data(setup):
    from cai_kit.core.constitution import load_constitution
    from cai_kit.generation.pairs import REFUSAL_OPENINGS, refusal_opening

    engine = SteeredEngine()
    out = run_generate(options(setup, pairs=["contrast"]), engine=engine)
    rows = read(out / "generations.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}:contrast" for i in range(6)]
    # Per chunk of 4: one batched call for the free replies, one with a short budget for those
    # continuing an opening (only one sentence after it is kept).
    assert sum(len(call) for call in engine.calls[:2]) == 8 and sum(len(call) for call in engine.calls[2:]) == 4
    for call, budget in zip(engine.calls, engine.budgets):
        continuing = {chat[-1]["role"] == "assistant" for chat in call}
        assert continuing == {True} and budget == 48 or continuing == {False} and budget == 128
    assert all(chat[0]["role"] == "system" for call in engine.calls for chat in call)
    by_principle = {r["steps"][0]["principle"] for r in rows}
    assert by_principle == {"harm", "helpful"}, "seed 0 samples both principles over six prompts"
    for row in rows:
        assert row["status"] == "ok" and row["pair"] == "contrast"
        if row["steps"][0]["principle"] == "harm":
            assert row["final"] == f"I can't help with that, but a careful reply to {row['prompt']}"
            assert row["initial"] == "Sure, here is exactly how."
        else:
            assert row["final"] == f"a careful reply to {row['prompt']}"
            opening = refusal_opening(load_constitution(setup[0]), row["id"].split(":")[0], 0)
            assert row["initial"] == f"{opening} It could be dangerous."
    harmless = load_constitution(Path(__file__).resolve().parent.parent / "constitutions" / "harmless.yaml")
    drawn = {refusal_opening(harmless, f"p{i}", 0) for i in range(400)}
    assert set(REFUSAL_OPENINGS) < drawn and "I can't help deceive people, but" in drawn, "built-in and own forms"
    assert not {p.opening for p in harmless.principles if "over_refusal" in p.tags} & drawn
    assert refusal_opening(harmless, "p1", 0) == refusal_opening(harmless, "p1", 0)
    prefs = read(out / "prefs.jsonl")
    assert len(prefs) == 6 and prefs[0]["chosen"][0]["content"] == rows[0]["final"]
    written = (out / "sft.jsonl").read_text() + (out / "prefs.jsonl").read_text()
    assert "rule" not in written and "system" not in written and "Refuse" not in written


def test_contrast_pair_whose_sides_do_not_differ_is_filtered(setup):
    out = run_generate(options(setup, pairs=["contrast"]), engine=SteeredEngine(away_harm="I cannot help with that."))
    statuses = {r["steps"][0]["principle"]: r["status"] for r in read(out / "generations.jsonl")}
    assert statuses == {"harm": "no_contrast", "helpful": "ok"}


def test_partial_filter_keeps_only_full_refusals_under_a_harm_principle(setup):
    def toward(prompt):  # even prompts: the refusal goes on to help; odd ones: it stays on the safe side
        n = int(prompt.split()[-1].rstrip("?"))
        if n % 2 == 0:
            return f"here is how to do it: first mix the two and heat them {n} times."
        return f"please talk to someone you trust (friend {n})."

    # `takes_back` (on by default) drops the "but here is how" refusals too: left out, to see `partial` alone.
    base = [name for name in DEFAULT_FILTERS if name != "takes_back"]
    rows = read(run_generate(options(setup, pairs=["contrast"], filters=base),
                             engine=SteeredEngine(toward_harm=toward)) / "generations.jsonl")
    assert {r["status"] for r in rows} == {"ok"}, "off by default: the same rows all kept"
    out = setup[2].parent / "partial"
    filters = [*base, "partial"]
    rows = read(run_generate(options(setup, pairs=["contrast"], filters=filters, out=str(out)),
                             engine=SteeredEngine(toward_harm=toward)) / "generations.jsonl")
    harm = {r["prompt"]: r["status"] for r in rows if r["steps"][0]["principle"] == "harm"}
    assert {p for p, s in harm.items() if s == "partial"} == {p for p in harm if int(p.split()[-1][:-1]) % 2 == 0}
    assert "ok" in harm.values() and "partial" in harm.values(), "seed 0 gives the harm principle both kinds"
    helping = [r["status"] for r in rows if r["steps"][0]["principle"] == "helpful"]
    assert helping and set(helping) == {"ok"}, "a helping principle's chosen answer is never judged a refusal"
    kept = {r["prompt"][0]["content"] for r in read(out / "prefs.jsonl")}
    assert kept == {r["prompt"] for r in rows if r["status"] == "ok"}


def test_revision_and_contrast_rows_together_resume_without_duplicates(setup):
    class Both(ScriptedEngine):
        def generate(self, conversations, params):
            if conversations[0][0]["role"] == "system":
                return SteeredEngine().generate(conversations, params)
            return super().generate(conversations, params)

    out = run_generate(options(setup, pairs=["revision", "contrast"], limit=4), engine=Both())
    run_generate(options(setup, pairs=["revision", "contrast"]), engine=Both())
    ids = [r["id"] for r in read(out / "generations.jsonl")]
    assert sorted(ids) == sorted([f"q{i}" for i in range(6)] + [f"q{i}:contrast" for i in range(6)])
    engine = Both()
    run_generate(options(setup, pairs=["revision", "contrast"]), engine=engine)
    assert engine.calls == []


def test_unknown_pair_mode_is_rejected_by_the_options(setup):  # the CLI and recipes: tests/test_options_once.py
    with pytest.raises(ValueError, match="pairs.0"):
        options(setup, pairs=["judge-me"])


def test_refusal_under_a_helping_principle_is_filtered(setup):
    def revision(prompt, chat):
        return "I'm sorry, but I cannot help with that."

    out = run_generate(options(setup), engine=ScriptedEngine(revision=revision))
    rows = read(out / "generations.jsonl")
    by_principle = {r["steps"][0]["principle"]: r["status"] for r in rows}
    assert by_principle.get("helpful") == "refusal"


def test_preamble_is_stripped_from_the_final_answer(setup):
    out = run_generate(
        options(setup), engine=ScriptedEngine(revision=lambda p, c: f"Revised answer: Safe reply to {p}")
    )
    finals = [r["final"] for r in read(out / "generations.jsonl") if r["steps"][0]["principle"] == "helpful"]
    assert finals and all(f.startswith("Safe reply") for f in finals)


def test_resume_skips_finished_ids_and_repairs_a_torn_line(setup):
    run_generate(options(setup, limit=4), engine=ScriptedEngine())
    out = Path(setup[2])
    with (out / "generations.jsonl").open("a") as handle:
        handle.write('{"id": "q4", "prompt": "torn')  # what a kill mid-write leaves behind
    engine = ScriptedEngine()
    run_generate(options(setup, limit=0), engine=engine)
    assert sum(len(call) for call in engine.calls[:1]) == 2  # only q4 and q5 were generated
    ids = [r["id"] for r in read(out / "generations.jsonl")]
    assert sorted(ids) == [f"q{i}" for i in range(6)]
    assert sorted(r["id"] for r in read(out / "sft.jsonl")) == sorted(ids)


def test_changed_constitution_is_refused_unless_force_new(setup):
    run_generate(options(setup), engine=ScriptedEngine())
    constitution = Path(setup[0])
    constitution.write_text(CONSTITUTION.replace("Rewrite it so it is safe.", "Rewrite it to be safe."))
    with pytest.raises(UsageError, match="different constitution_sha256"):
        run_generate(options(setup), engine=ScriptedEngine())
    out = run_generate(options(setup, force_new=True), engine=ScriptedEngine())
    assert len(read(out / "generations.jsonl")) == 6


def test_error_rows_are_kept_then_retried(setup):
    with pytest.raises(UsageError, match="a request failed .* rerun the same command to resume"):
        run_generate(options(setup), engine=ScriptedEngine(finish="error"))  # on_error: stop, the default
    out = run_generate(options(setup, on_error="skip"), engine=ScriptedEngine(finish="error"))
    assert all(r["status"].startswith("error") for r in read(out / "generations.jsonl"))
    run_generate(options(setup), engine=ScriptedEngine())
    rows = read(out / "generations.jsonl")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}


@pytest.mark.parametrize("content", [None, ""])
def test_missing_or_empty_prompt_file_exits_2_and_writes_nothing(tmp_path, setup, content):
    prompts = tmp_path / "none.jsonl"
    if content is not None:
        prompts.write_text(content)
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["generate", "-c", str(setup[0]), "-p", str(prompts), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "none.jsonl" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_unknown_filter_is_rejected_by_the_options(setup):
    with pytest.raises(ValueError, match="filters.0"):
        options(setup, filters=["emtpy"])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cai_kit.cli", "generate", *args]


def test_tiny_model_through_the_real_cli(setup, tiny_model_path):
    constitution, prompts, out = setup
    result = subprocess.run(
        _cli(
            "-c",
            str(constitution),
            "-p",
            str(prompts),
            "-m",
            tiny_model_path,
            "-o",
            str(out),
            "--max-new-tokens",
            "8",
            "--batch-size",
            "4",
            "--temperature",
            "1.0",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = read(out / "generations.jsonl")
    assert len(rows) == 6 and all(r["initial"] for r in rows)
    assert "total" in result.stderr  # the summary table


def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_prompts(tmp_path / "p.jsonl", 40)
    out = tmp_path / "out"
    args = _cli(
        "-c",
        str(constitution),
        "-p",
        str(prompts),
        "-m",
        tiny_model_path,
        "-o",
        str(out),
        "--limit",
        "0",
        "--max-new-tokens",
        "24",
        "--batch-size",
        "2",
        "--temperature",
        "1.0",
    )
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    generations = out / "generations.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not generations.exists() or generations.read_text().count("\n") < 4):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = generations.read_text().count("\n")
    assert 4 <= written < 40, "the kill should land mid-run"
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ids = [r["id"] for r in read(generations)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(40))
    assert len(ids) == len(set(ids))
    for name in ("sft.jsonl", "prefs.jsonl"):
        derived = [r["id"] for r in read(out / name)]
        assert len(derived) == len(set(derived)) and set(derived) <= set(ids)


@pytest.mark.slow
def test_default_model_writes_a_row(setup, default_model_path):
    constitution, prompts, out = setup
    write_prompts(prompts, 2)
    result = subprocess.run(
        _cli("-c", str(constitution), "-p", str(prompts), "-o", str(out), "--max-new-tokens", "32"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = read(out / "generations.jsonl")
    assert len(rows) == 2 and all(r["initial"] and r["steps"][0]["critique"] for r in rows)


def test_push_to_hub_uploads_the_finished_folder(setup, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, repo_type, exist_ok):
            calls.append(("create", repo_id, repo_type))

        def upload_folder(self, folder_path, repo_id, repo_type):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), repo_type))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run_generate(options(setup, push_to_hub="me/cai-data"), engine=ScriptedEngine())
    assert calls[0] == ("create", "me/cai-data", "dataset")
    assert calls[1][0] == "upload" and "sft.jsonl" in calls[1][1] and calls[1][2] == "dataset"


def test_failed_push_keeps_the_rows_and_is_one_line(setup, monkeypatch):
    class BrokenApi:
        def create_repo(self, *args, **kwargs):
            raise OSError("could not connect")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", BrokenApi)
    with pytest.raises(UsageError, match="upload failed .*the run is complete in"):
        run_generate(options(setup, push_to_hub="me/cai-data"), engine=ScriptedEngine())
    assert len(read(Path(setup[2]) / "generations.jsonl")) == 6


class JudgedEngine:
    """Samples alternate a good and a bad answer; as a judge it prefers whichever label holds GOOD."""

    model_name = "judged"

    def __init__(self, margin: float = 5.0):
        self.margin, self.calls, self.judged, self.temperatures = margin, 0, 0, set()

    def generate(self, conversations, params: GenParams):
        self.temperatures.add(params.temperature)
        out = []
        for chat in conversations:
            self.calls += 1
            text = f"GOOD, careful and complete answer to {chat[-1]['content']}" if self.calls % 2 else "BAD."
            out.append(Completion(text=text, finish_reason="stop", tokens=4))
        return out

    def logprobs(self, conversations, continuations):
        self.judged += len(conversations)
        scores = []
        for chat, label in zip(conversations, continuations):
            text = chat[-1]["content"]
            good_first = text.index("GOOD") < text.index("BAD")
            wanted = "A" if good_first else "B"
            scores.append(0.0 if label.strip() == wanted else -self.margin)
        return scores

    def close(self):
        pass


def test_judge_pairs_keep_the_judged_better_answer_with_its_score(setup):
    Path(setup[0]).write_text(CONSTITUTION + "judge:\n  - Which answer is safer?\n")
    engine = JudgedEngine()
    out = run_generate(options(setup, pairs=["judge"], trust_judge=True), engine=engine)
    rows = read(out / "generations.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}:judge" for i in range(6)]
    assert engine.calls == 12 and engine.judged == 6 * 2 * 2  # 2 orders x 2 labels per pair
    assert engine.temperatures == {0.8}  # the answers are sampled
    for row in rows:
        assert row["status"] == "ok" and row["final"].startswith("GOOD") and row["initial"].startswith("BAD")
        assert row["score"] > 0.99 and row["judge"]["question"] == "Which answer is safer?"
        assert row["judge"]["consistent"] and row["models"]["judge"] == "default"
    prefs = read(out / "prefs.jsonl")
    assert prefs[0]["score"] == rows[0]["score"] and prefs[0]["chosen"][0]["content"].startswith("GOOD")


def test_judge_pairs_too_close_to_call_are_dropped(setup):
    out = run_generate(
        options(setup, pairs=["judge"], judge_margin=0.2, trust_judge=True), engine=JudgedEngine(margin=0.1)
    )
    rows = read(out / "generations.jsonl")
    assert {r["status"] for r in rows} == {"low_margin"} and all(0.5 < r["score"] < 0.7 for r in rows)
    assert read(out / "prefs.jsonl") == []


def test_a_named_judge_model_is_loaded_and_asked(setup, monkeypatch):
    judge = JudgedEngine()
    loaded = []
    monkeypatch.setattr(
        "cai_kit.generation.generate.load_engine", lambda name, model, **kw: loaded.append(model) or judge
    )

    class Writer(JudgedEngine):
        def logprobs(self, conversations, continuations):
            raise AssertionError("the writer must not judge when --judge-model names another model")

    out = run_generate(options(setup, pairs=["judge"], judge_model="other-judge", trust_judge=True), engine=Writer())
    assert loaded == ["other-judge"] and judge.judged > 0
    rows = read(out / "generations.jsonl")
    assert all(r["models"]["judge"] == "other-judge" and r["final"].startswith("GOOD") for r in rows)


def test_all_three_pair_modes_through_the_real_cli_on_the_tiny_model(setup, tiny_model_path):
    constitution, prompts, out = setup
    args = ["-c", str(constitution), "-p", str(prompts), "-m", tiny_model_path, "-o", str(out)]
    args += [
        "--max-new-tokens",
        "8",
        "--pairs",
        "revision",
        "--pairs",
        "contrast",
        "--pairs",
        "judge",
        "--trust-judge",
    ]
    result = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read(out / "generations.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}{s}" for i in range(6) for s in ("", ":contrast", ":judge"))
    judged = [r for r in rows if r.get("pair") == "judge"]
    assert all(0.5 <= r["score"] <= 1 and len(r["judge"]["samples"]) == 2 for r in judged)


class PositionBiasedJudge(JudgedEngine):
    """Always prefers the answer shown first: accuracy near chance, order consistency zero."""

    def logprobs(self, conversations, continuations):
        self.judged += len(conversations)
        return [0.0 if label.strip() == "A" else -5.0 for label in continuations]


def test_a_judge_that_fails_judge_check_stops_the_run_before_anything_is_written(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))
    failed = r"failed cai judge-check: accuracy 0\.\d{3} \(\d+/\d+\) .*consistency 0\.000 \(0/\d+\)"
    with pytest.raises(UsageError, match=failed):
        run_generate(options(setup, pairs=["judge"]), engine=PositionBiasedJudge())
    assert not Path(setup[2]).exists()
    cached = list((tmp_path / "cache" / "judge-check").glob("*.json"))
    assert cached, "the check is cached per judge"
    summary = json.loads(cached[0].read_text())
    # consistency 0/42 has a 95% upper bound far below 0.6: the gate stops after the first quarter
    assert summary["stopped_early"] == summary["n"] == 42 and summary["consistency"]["k"] == 0


def test_a_failed_judge_falls_back_and_the_card_says_so(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))
    engine = PositionBiasedJudge()
    out = run_generate(options(setup, pairs=["judge"], judge_fallback="revision"), engine=engine)
    rows = read(out / "generations.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(6)]  # revision rows, not judged ones
    assert all("judge" not in r["models"] for r in rows), "the failed judge labelled nothing"
    card = (out / "README.md").read_text()
    assert "failed cai judge-check" in card and "revision pairs were made instead" in card
    judged_before = engine.judged
    again = PositionBiasedJudge()
    run_generate(options(setup, pairs=["judge"], judge_fallback="revision"), engine=again)
    assert again.judged == 0 and judged_before > 0  # the cached check is reused, nothing left to do


def test_a_judge_that_passes_its_check_labels_the_pairs(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))

    from cai_kit.judging.judge_check import load_check_set

    known = {p.better: p.worse for p in load_check_set()}

    class KnowsTheCheckSet(JudgedEngine):
        def logprobs(self, conversations, continuations):
            self.judged += len(conversations)
            scores = []
            for chat, label in zip(conversations, continuations):
                text = chat[-1]["content"]
                better, worse = next(((b, w) for b, w in known.items() if b in text and w in text), ("GOOD", "BAD."))
                a_is_better = text.index(better) < text.index(worse)
                scores.append(0.0 if (label.strip() == "A") == a_is_better else -5.0)
            return scores

    engine = KnowsTheCheckSet()
    out = run_generate(options(setup, pairs=["judge"]), engine=engine)
    rows = read(out / "generations.jsonl")
    assert [r["id"] for r in rows] == [f"q{i}:judge" for i in range(6)] and {r["status"] for r in rows} == {"ok"}
    assert engine.judged == len(known) * 4 + 6 * 4  # the whole check set, then the six pairs


class BestOfEngine(SteeredEngine):
    """Sampled chosen answers cycle through fixed candidates; everything else as SteeredEngine."""

    def __init__(self, harm_candidates, help_candidates):
        super().__init__()
        self.harm, self.help, self.drawn = harm_candidates, help_candidates, 0

    def generate(self, conversations, params: GenParams):
        if params.temperature == 0:
            return super().generate(conversations, params)
        self.calls.append(conversations)
        out = []
        for chat in conversations:
            pool = self.harm if chat[-1]["role"] == "assistant" else self.help
            text = pool[self.drawn % len(pool)].format(p=chat[1]["content"].rstrip("?"))
            self.drawn += 1
            out.append(Completion(text=text, finish_reason="stop", tokens=len(text.split())))
        return out


def test_best_of_n_keeps_the_candidate_the_cheap_scorer_ranks_first(setup):
    engine = BestOfEngine(
        harm_candidates=["Sure, here is exactly how.", "ask a trusted adult about {p} instead.", ""],
        help_candidates=["I'm sorry, but I can't help with that.", "Here is a clear reply to {p}.", ""],
    )
    out = run_generate(options(setup, pairs=["contrast"], best_of=3), engine=engine)
    rows = read(out / "generations.jsonl")
    assert engine.drawn == 6 * 3
    for row in rows:
        assert row["best_of"]["candidates"] == 3 and row["status"] == "ok"
        if row["steps"][0]["principle"] == "harm":  # both refuse after the opening; one restates the harm
            assert (
                row["final"] == f"I can't help with that, but ask a trusted adult about {row['prompt'][:-1]} instead."
            )
            assert row["best_of"]["passed"] == 2
        else:  # a helping principle: the refusal and the empty answer fail
            assert row["final"] == f"Here is a clear reply to {row['prompt'][:-1]}." and row["best_of"]["passed"] == 1


def test_best_of_n_with_no_passing_candidate_is_filtered(setup):
    engine = BestOfEngine(harm_candidates=["fine."], help_candidates=["I'm sorry, but I can't help with that."])
    rows = read(run_generate(options(setup, pairs=["contrast"], best_of=2), engine=engine) / "generations.jsonl")
    helping = [r for r in rows if r["steps"][0]["principle"] == "helpful"]
    assert helping and all(r["status"] == "refusal" and r["best_of"]["passed"] == 0 for r in helping)
