"""A server that fails makes a failed run: `cai generate --engine openai` against a fake OpenAI-compatible
server (tests/fake_openai_server.py, its own process on 127.0.0.1) that answers HTTP 500, an HTML page,
nothing at all, or dies mid-run.

By default the first request that fails after its retries stops the run with one line and exit status 2,
the rows finished before it kept; a rerun against a working server resumes. With `--on-error skip` the
failed rows are written as errors, and their error text is never sent on to be critiqued or revised.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai_server import FakeServers

from cai_kit.core.constitution import load_constitution
from cai_kit.core.errors import UsageError
from cai_kit.engines.openai import OpenAIEngine
from cai_kit.training.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "constitutions" / "harmless.yaml"  # principles with openings: their revisions are prefilled
OPENINGS = [principle.opening for principle in load_constitution(CONSTITUTION).principles if principle.opening]


@pytest.fixture
def fake(tmp_path):
    """`fake(*flags, port=...)` starts a fake server and returns (url, process, request log); all are killed at
    teardown."""
    servers = FakeServers(tmp_path)
    yield servers.start
    servers.stop_all()


def write_prompts(path: Path, count: int) -> Path:
    lines = [json.dumps({"id": f"q{k}", "prompt": f"question number {k}"}) + "\n" for k in range(count)]
    path.write_text("".join(lines))
    return path


def generate(tmp_path: Path, url: str, prompts: int, *extra: str, wait_s: float = 120) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-m", "m", "--limit", "0",
            "-p", str(write_prompts(tmp_path / "prompts.jsonl", prompts)), "-o", str(tmp_path / "out"),
            "--engine", "openai", "--base-url", url, "--batch-size", "2", "--engine-option", "backoff=0",
            "--engine-option", "progress=false", *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=wait_s)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def requests(log: Path) -> list[dict]:
    return rows(log)


def test_http_500_after_retries_stops_the_run_keeps_finished_rows_and_a_rerun_resumes(tmp_path, fake):
    # The first chunk (2 prompts: 2 answers, 2 critiques, 2 revisions) is answered; then every request fails.
    url, server, log = fake("--fail", "500", "--after", "6")
    result = generate(tmp_path, url, 4, "--engine-option", "retries=1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result)
    assert "HTTP 500" in line and "failed after 2 tries" in line and "2 rows finished so far are kept" in line
    assert "rerun the same command to resume" in line and "--on-error skip" in line
    assert "(try 1 of 2); retrying, giving up after 1 more try" in result.stderr  # the progress line
    kept = rows(tmp_path / "out" / "generations.jsonl")
    assert [r["id"] for r in kept] == ["q0", "q1"] and all(r["status"] != "error" for r in kept)
    assert len(requests(log)) == 6 + 2 * 2, "the failing chunk's 2 first answers, 2 tries each, then it stopped"

    FakeServers.kill(server)
    url, _, _ = fake(port=int(url.split(":")[2].split("/")[0]))  # the same URL answers again
    rerun = generate(tmp_path, url, 4)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = rows(tmp_path / "out" / "generations.jsonl")
    assert sorted(r["id"] for r in final) == ["q0", "q1", "q2", "q3"] and final[:2] == kept
    assert not [r for r in final if r["status"].startswith("error")]


def test_an_answer_that_is_not_json_stops_the_run(tmp_path, fake):
    url, _, log = fake("--fail", "html")
    result = generate(tmp_path, url, 4, "--engine-option", "retries=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = error_lines(result)
    assert "HTTP 200 but the answer is not JSON" in line and "0 rows finished so far are kept" in line
    assert rows(tmp_path / "out" / "generations.jsonl") == []
    assert len(requests(log)) == 2 * 2, "no critique was asked for after the first answers failed"


@pytest.mark.parametrize("command", [
    ["try", "-c", str(CONSTITUTION), "how do I pick a lock?"],
    ["eval", "-s", "harmful", "--limit", "2"],
])
def test_try_and_eval_stop_on_a_failed_request_instead_of_reading_its_error_as_an_answer(command, tmp_path, fake):
    url, _, log = fake("--fail", "500")
    out = ["-o", str(tmp_path / "eval")] if command[0] == "eval" else []
    args = [sys.executable, "-m", "cai_kit.cli", *command, "-m", "m", "--engine", "openai", "--base-url", url,
            "--engine-option", "backoff=0", "--engine-option", "retries=1", *out]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = error_lines(result)
    assert "engine 'openai'" in line and "HTTP 500" in line, line
    assert "CRITIQUE" not in result.stdout and not (tmp_path / "eval" / "results.json").exists()
    assert len(requests(log)) <= 2 * 2, "nothing was asked after the first answers failed"


def test_judge_check_takes_the_server_and_its_options_and_stops_on_a_failed_request(tmp_path, fake, tiny_model_path):
    url, _, log = fake("--fail", "500")
    args = [sys.executable, "-m", "cai_kit.cli", "judge-check", "--judge-model", "m", "--limit", "2", "--engine",
            "openai", "--base-url", url, "--engine-option", "backoff=0", "--engine-option", "retries=1",
            "--engine-option", f"tokenizer={tiny_model_path}", "-o", str(tmp_path / "check")]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = error_lines(result)
    assert "engine 'openai'" in line and "HTTP 500" in line, line
    assert not (tmp_path / "check" / "results.json").exists()
    # 2 pairs x 2 orders x 2 labels scored, each tried twice (retries=1): nothing more was asked
    assert 1 <= len(requests(log)) <= 16


def test_a_server_that_never_answers_times_out_and_stops(tmp_path, fake):
    url, _, log = fake("--fail", "hang")
    started = time.time()
    result = generate(tmp_path, url, 2, "--engine-option", "timeout=1", "--engine-option", "retries=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = error_lines(result)
    assert "no answer within 1 s" in line and "failed after 2 tries" in line
    assert "retrying, giving up after 1 more try (at most 1 s)" in result.stderr
    assert time.time() - started < 60
    assert len(requests(log)) == 2 * 2


def test_server_killed_mid_run_stops_with_one_line_and_a_rerun_resumes(tmp_path, fake):
    url, server, _ = fake("--delay", "0.2")
    args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-m", "m", "--limit", "0",
            "-p", str(write_prompts(tmp_path / "prompts.jsonl", 12)), "-o", str(tmp_path / "out"), "--engine",
            "openai", "--base-url", url, "--batch-size", "2", "--engine-option", "retries=1",
            "--engine-option", "backoff=0"]
    generations = tmp_path / "out" / "generations.jsonl"
    with (tmp_path / "cli.log").open("w") as stderr:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
    try:
        deadline = time.time() + 120
        while len(rows(generations)) < 2:
            assert process.poll() is None and time.time() < deadline, (tmp_path / "cli.log").read_text()[-2000:]
            time.sleep(0.05)
        FakeServers.kill(server)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    text = (tmp_path / "cli.log").read_text()
    assert process.returncode == 2 and "Traceback" not in text, text[-2000:]
    errors = [line[line.index("error:"):] for line in text.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no server answers any more" in errors[0] and "rerun" in errors[0], text[-2000:]
    kept = rows(generations)
    assert 2 <= len(kept) < 12 and not [r for r in kept if r["status"].startswith("error")]

    url, _, _ = fake(port=int(url.split(":")[2].split("/")[0]))
    rerun = generate(tmp_path, url, 12)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(r["id"] for r in rows(generations)) == sorted(f"q{k}" for k in range(12))


def test_on_error_skip_writes_error_rows_that_are_never_critiqued_revised_or_trained_on(tmp_path, fake):
    # Every critique request fails (its body holds the critique instruction; no few-shot examples, which hold it
    # too); first answers work.
    url, _, log = fake("--fail", "500", "--match", "Write only the critique")
    result = generate(tmp_path, url, 4, "--engine-option", "retries=1", "--on-error", "skip", "--few-shot", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 rows failed (status error); rerun the same command" in result.stderr
    written = rows(tmp_path / "out" / "generations.jsonl")
    assert len(written) == 4
    for row in written:
        assert row["finish_reason"] == "error" and row["final"] == "" and row["steps"] == []
        assert row["initial"].startswith("answer ")  # the first answer did come, and is kept as it was
        assert row["status"].startswith("error: ") and "HTTP 500" in row["status"] and "HTTP 500" in row["error"]
        assert not any(opening in row["status"] for opening in OPENINGS)
    sent = requests(log)
    assert len(sent) == 4 + 4 * 2, "4 first answers, 4 critiques tried twice, no revision"
    assert not any("Write only the new answer" in json.dumps(r["body"]) for r in sent)
    assert not any("HTTP 500" in json.dumps(r["body"]) for r in sent), "error text was sent on"
    for name in ("sft.jsonl", "prefs.jsonl"):
        assert (tmp_path / "out" / name).read_text() == ""


def test_on_error_skip_when_first_answers_fail_sends_nothing_on(tmp_path, fake):
    url, _, log = fake("--fail", "500")
    result = generate(tmp_path, url, 4, "--engine-option", "retries=1", "--on-error", "skip")
    assert result.returncode == 0, result.stderr[-2000:]
    written = rows(tmp_path / "out" / "generations.jsonl")
    assert [(r["initial"], r["final"], r["finish_reason"]) for r in written] == [("", "", "error")] * 4
    assert len(requests(log)) == 4 * 2, "no critique or revision of an error"


def test_contrast_pairs_with_on_error_skip_write_error_rows_with_no_error_text_as_an_answer(tmp_path, fake):
    url, _, _ = fake("--fail", "500")
    result = generate(tmp_path, url, 2, "--engine-option", "retries=0", "--on-error", "skip", "--pairs", "contrast")
    assert result.returncode == 0, result.stderr[-2000:]
    written = rows(tmp_path / "out" / "generations.jsonl")
    assert [(r["initial"], r["final"], r["finish_reason"]) for r in written] == [("", "", "error")] * 2
    for row in written:
        assert row["status"].startswith("error: failed after 1 try: ") and "HTTP 500" in row["error"]
        assert not any(opening in row["status"] for opening in OPENINGS)


def test_default_timeouts_give_up_on_a_silent_server_within_ten_minutes():
    defaults = {name: p.default for name, p in inspect.signature(OpenAIEngine).parameters.items()}
    waits = sum(min(defaults["backoff"] * 2**k, 60.0) for k in range(defaults["retries"]))
    assert defaults["timeout"] <= 120 and 1 <= defaults["retries"] <= 4
    assert defaults["timeout"] * (defaults["retries"] + 1) + waits <= 600


def test_on_error_in_a_recipe_generate_run(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: tiny-random\ngenerate:\n  - constitution: {CONSTITUTION}\n    on_error: skip\n")
    assert load_recipe(recipe).generate[0].on_error == "skip"
    recipe.write_text(f"model: tiny-random\ngenerate:\n  - constitution: {CONSTITUTION}\n    on_error: ignore\n")
    with pytest.raises(UsageError) as err:
        load_recipe(recipe)
    assert err.value.problems == [f"{recipe}:4: generate[0].on_error: Input should be 'stop' or 'skip'"]
