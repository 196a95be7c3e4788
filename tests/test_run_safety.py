"""No silent corruption: one process per run folder, any Unicode in the data, no resume with other settings.

The lock tests run real processes: a second `cai generate`, `cai eval` or `cai train` on a folder that
another process holds; the Unicode tests carry every character that `str.splitlines()` splits on through
generate, its rerun, `cai view`, the training data reader and the eval answers cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_generate import CONSTITUTION, ScriptedEngine, options, write_prompts

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.core.files import jsonl_text, numbered_lines
from cai_kit.core.run_lock import LOCK_FILE, run_lock
from cai_kit.engines import Completion
from cai_kit.evaluation.evaluate import run_eval
from cai_kit.evaluation.options import EvalOptions
from cai_kit.generation.generate import run_generate
from cai_kit.training.data_mix import read_rows

# Every character besides "\n" that str.splitlines() takes for a line break.
BREAKS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]
ODD = "".join(BREAKS)

HOLDER = """
import sys, time
from pathlib import Path
from cai_kit.core.run_lock import run_lock
with run_lock(Path(sys.argv[1]), "--out"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def setup(tmp_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    return constitution, prompts, tmp_path / "out"


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another process holds; yields (folder, holder's PID)."""
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder.pid
    holder.kill()
    holder.wait()


def _cai(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cai_kit.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    return result, time.perf_counter() - started


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_two_generate_processes_on_one_folder_the_second_stops_at_once(tmp_path, tiny_model_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = write_prompts(tmp_path / "p.jsonl", 24)
    out = tmp_path / "out"
    args = [
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
        "16",
        "--batch-size",
        "2",
        "--temperature",
        "1.0",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "cai_kit.cli", "generate", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "generations.jsonl").exists():
        time.sleep(0.05)
    assert first.poll() is None, "the first run should still be going"
    second, seconds = _cai("generate", *args)
    line = _one_error_line(second)
    assert f"PID {first.pid} is writing this folder" in line and str(out) in line
    # The lock is taken before any model loads: what the second process spends is start-up and option checks.
    assert "Loading" not in second.stderr and seconds < 60
    assert first.wait(timeout=300) == 0, first.stderr.read()
    ids = [json.loads(line)["id"] for _, line in numbered_lines((out / "generations.jsonl").read_text())]
    assert sorted(ids) == sorted(f"q{i}" for i in range(24))
    assert not (out / LOCK_FILE).exists()


def test_eval_and_train_stop_with_one_line_on_a_folder_another_process_holds(held, recipe_path):
    folder, pid = held
    result, _ = _cai("eval", "-m", "tiny-random", "-s", "harmful", "--limit", "2", "--out", str(folder))
    assert f"{folder}: PID {pid} is writing this folder" in _one_error_line(result)
    result, _ = _cai("train", str(recipe_path), "--set", f"output_dir={folder}")
    assert f"{folder}: PID {pid} is writing this folder" in _one_error_line(result)
    assert sorted(path.name for path in folder.iterdir()) == [LOCK_FILE]  # nothing written beside it


def test_a_lock_left_by_a_dead_process_is_taken_over(setup):
    out = Path(setup[2])
    out.mkdir()
    (out / LOCK_FILE).write_text("999999\n")  # what a killed run leaves: the file, but no lock on it
    run_generate(options(setup), engine=ScriptedEngine())
    assert len((out / "generations.jsonl").read_text().splitlines()) == 6
    assert not (out / LOCK_FILE).exists()


def test_the_same_process_may_take_a_folder_again_and_releases_it_last(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder, "--out"), run_lock(folder, "--out"):
        assert (folder / LOCK_FILE).read_text().strip().isdigit()
    assert not folder.exists()  # made by the lock, left empty: removed again


def test_an_output_path_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a folder")
    with pytest.raises(UsageError, match="is a file, not a folder; give --out a folder"):
        with run_lock(path, "--out"):
            pass


def test_jsonl_lines_escape_every_break_and_split_on_newline_only():
    text = jsonl_text([{"a": f"x{ODD}y"}, {"b": 1}])
    assert text.count("\n") == 2 and len(text.splitlines()) == 2  # readable by splitlines() readers too
    assert [json.loads(line) for _, line in numbered_lines(text)] == [{"a": f"x{ODD}y"}, {"b": 1}]
    raw = '{"a": "x' + "\u2028\u2029\x85" + 'y"}\n\n{"b": 1}\n'  # valid JSONL as another tool writes it
    assert [number for number, _ in numbered_lines(raw)] == [1, 3]


def test_every_line_break_survives_generate_rerun_view_and_training_data(setup, tmp_path):
    constitution, prompts, out = setup
    prompts.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"question {i} {ODD} end?"}, ensure_ascii=False) + "\n"
            for i in range(6)
        )
    )
    engine = ScriptedEngine(revision=lambda prompt, chat: f"I can help.{ODD}Here is a safer answer.")
    run_generate(options(setup), engine=engine)
    rerun = ScriptedEngine()
    run_generate(options(setup), engine=rerun)
    assert rerun.calls == []  # every row was read back as done
    rows = [json.loads(line) for _, line in numbered_lines((out / "generations.jsonl").read_text())]
    assert len(rows) == 6 and all(ODD in row["prompt"] for row in rows)
    assert any(ODD in row["final"] for row in rows)

    page = CliRunner().invoke(main, ["view", str(out)])
    assert page.exit_code == 0, page.output
    assert (out / "view.html").read_text().count("question 5") >= 1

    sft, prefs = read_rows(out / "sft.jsonl", "sft"), read_rows(out / "prefs.jsonl", "dpo")
    assert len(sft) == len(prefs) == sum(row["status"] == "ok" for row in rows) > 0
    assert ODD in sft[0]["prompt"][0]["content"]
    # A user's own file holding the raw characters (valid JSONL) is read as well.
    user = tmp_path / "user_sft.jsonl"
    user.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": f"hi{ODD}"}, {"role": "assistant", "content": f"hello{ODD}"}]},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    assert read_rows(user, "sft")[0]["completion"][0]["content"] == f"hello{ODD}"


def test_eval_keeps_answers_holding_line_breaks_in_its_cache(tmp_path):
    class Engine:
        model_name = "scripted"
        generated = 0

        def generate(self, conversations, params):
            self.generated += len(conversations)
            return [Completion(f"I can't help with that.{ODD}", "stop", 3) for _ in conversations]

        def close(self):
            pass

    options = EvalOptions(model="model", suites=["harmful"], limit=4, out=str(tmp_path))
    engine = Engine()
    run_eval(options, engines={"model": engine})
    run_eval(options, engines={"model": engine})
    assert engine.generated == 4  # the rerun read every cached answer back


def test_resuming_with_settings_that_shape_the_rows_is_refused(setup):
    run_generate(options(setup, limit=3), engine=ScriptedEngine())
    for change, shown in [
        ({"max_new_tokens": 64}, "max_new_tokens 128 -> 64"),
        ({"temperature": 0.7}, "temperature 0.0 -> 0.7"),
        ({"rounds": 2}, "rounds 1 -> 2"),
        ({"few_shot": 0}, "few_shot 2 -> 0"),
    ]:
        with pytest.raises(UsageError, match=f"its rows were made with other settings \\({shown}\\); rerun with "):
            run_generate(options(setup, limit=0, **change), engine=ScriptedEngine())
    out = Path(setup[2])
    assert len(out.joinpath("generations.jsonl").read_text().splitlines()) == 3  # nothing was mixed in
    # More prompts, another batch size: the same rows, so the run resumes.
    engine = ScriptedEngine()
    run_generate(options(setup, limit=0, batch_size=2), engine=engine)
    assert sum(len(call) for call in engine.calls[:1]) == 2
    # --force-new discards the rows and starts again with the new settings.
    run_generate(options(setup, limit=0, max_new_tokens=64, force_new=True), engine=ScriptedEngine())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["max_new_tokens"] == 64
    assert len(out.joinpath("generations.jsonl").read_text().splitlines()) == 6


def test_a_folder_that_holds_an_id_twice_keeps_the_first_row_on_rerun(setup, capsys):
    run_generate(options(setup), engine=ScriptedEngine())
    out = Path(setup[2])
    generations = out / "generations.jsonl"
    first = generations.read_text()
    twice = first + first.replace("A safer answer", "Another answer")  # what two unlocked runs left behind
    generations.write_text(twice)
    run_generate(options(setup), engine=ScriptedEngine())
    assert generations.read_text() == first
    assert "6 rows repeat an earlier row's id; the first of each is kept" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in (out / "sft.jsonl").read_text().splitlines()] == [
        json.loads(line)["id"] for line in first.splitlines()
    ]
