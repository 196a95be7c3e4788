"""`cai generate` on a fleet of OpenAI-compatible servers: fake servers (tests/fake_openai_server.py, each its
own process on 127.0.0.1) answering the openai engine, with `run_generate` in this process.

Rows are pipelined (each goes on to its next step as soon as its last one returns) and written once each, in
the order they finish; a URL that is down at start, or added to `base_urls_file` during the run, is used
once it answers; a 429's Retry-After is waited out; `--shard I/N` splits a prompt set with no overlap and no
gap.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_openai_server import FakeServers

from cai_kit.cli import main
from cai_kit.engines import GenParams, load_engine
from cai_kit.engines import servers as servers_module
from cai_kit.generation.generate import run_generate
from cai_kit.generation.options import GenerateOptions, in_shard

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "constitutions" / "harmless.yaml"


@pytest.fixture
def fake(tmp_path):
    """`fake(*flags, port=...)` starts a fake server and returns (url, process, request log); all are killed at
    teardown."""
    servers = FakeServers(tmp_path)
    yield servers.start
    servers.stop_all()


def write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{k}", "prompt": f"question number {k}."}) + "\n" for k in range(count))
    )
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def engine_for(*urls: str, **options):
    return load_engine("openai", "m", base_urls=list(urls), progress=False, backoff=0, **options)


def generate(out: Path, prompts: Path, engine, **options) -> list[dict]:
    settings = {"few_shot": 0, "batch_size": 4, **options}
    run_generate(
        GenerateOptions(
            constitution=str(CONSTITUTION),
            prompts=[str(prompts)],
            model="m",
            engine="openai",
            limit=0,
            out=str(out),
            **settings,
        ),
        engine=engine,
    )
    return rows(out / "generations.jsonl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipelined_rows_are_each_written_once_with_their_own_answers(tmp_path, fake):
    (first, _, log_a), (second, _, log_b) = fake(), fake()
    written = generate(tmp_path / "out", write_prompts(tmp_path / "p.jsonl", 12), engine_for(first, second))
    assert sorted(r["id"] for r in written) == sorted(f"q{k}" for k in range(12))
    sent = rows(log_a) + rows(log_b)
    assert len(sent) == 12 * 3 and rows(log_a) and rows(log_b), "an answer, a critique and a revision per row"
    for row in written:
        # the row's first answer and critique are the answers to its own requests, and the critique was asked
        # of this prompt and this first answer
        [asked] = [e for e in sent if e["body"]["messages"][-1]["content"] == row["prompt"]]
        assert row["initial"] == f"answer {asked['n']}."
        [critique] = [
            e
            for e in sent
            if "Write only the critique" in e["body"]["messages"][-1]["content"]
            and e["body"]["messages"][-3]["content"] == row["prompt"]
        ]
        assert critique["body"]["messages"][-2]["content"] == row["initial"]
        [step] = row["steps"]
        assert step["critique"] == f"answer {critique['n']}." and row["finish_reason"] == "stop"


def test_a_slow_row_does_not_hold_back_the_others(tmp_path, fake):
    url, _, _ = fake("--delay", "0.4", "--delay-match", "question number 0.")
    written = generate(tmp_path / "out", write_prompts(tmp_path / "p.jsonl", 8), engine_for(url))
    ids = [r["id"] for r in written]
    assert sorted(ids) == sorted(f"q{k}" for k in range(8)) and ids[-1] == "q0", ids


def test_a_url_down_at_start_or_added_to_the_file_later_is_used(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(servers_module, "PROBE_FIRST", 0.2)
    monkeypatch.setattr(servers_module, "PROBE_MOST", 0.4)
    monkeypatch.setattr(servers_module, "REREAD_EVERY", 0.2)
    up, _, log_up = fake("--delay", "0.05")
    late_port = free_port()
    url_file = tmp_path / "servers.txt"
    url_file.write_text(f"# the fleet\n{up}\nhttp://127.0.0.1:{late_port}/v1  # not started yet\n")
    engine = load_engine("openai", "m", base_urls_file=str(url_file), progress=False, backoff=0, max_concurrency=6)
    out, prompts = tmp_path / "out", write_prompts(tmp_path / "p.jsonl", 40)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            generate(out, prompts, engine, batch_size=8)
        except BaseException as err:  # noqa: BLE001 (handed to the test's thread)
            failures.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        while not rows(out / "generations.jsonl") and thread.is_alive():
            time.sleep(0.02)
        _, _, log_late = fake("--delay", "0.05", port=late_port)
        added, _, log_added = fake("--delay", "0.05")
        with url_file.open("a") as handle:
            handle.write(f"{added}\n")
    finally:
        thread.join(timeout=120)
    assert not failures and not thread.is_alive()
    assert sorted(r["id"] for r in rows(out / "generations.jsonl")) == sorted(f"q{k}" for k in range(40))
    assert rows(log_up) and rows(log_late) and rows(log_added), "every server got requests once it answered"


def test_a_429_with_retry_after_is_waited_out(tmp_path, fake):
    url, _, log = fake("--fail", "429", "--times", "1", "--retry-after", "1")
    engine = engine_for(url, retries=2)
    [reply] = engine.generate([[{"role": "user", "content": "hello"}]], GenParams(max_new_tokens=8))
    assert reply.finish_reason == "stop" and reply.text == "answer 2."
    first, second = rows(log)
    assert first["answer"] == "429" and second["answer"] == "ok" and second["t"] - first["t"] >= 0.95


def test_shards_cover_every_prompt_exactly_once(tmp_path, fake):
    ids = [f"q{k}" for k in range(20)]
    assert sorted(i for s in range(3) for i in ids if in_shard(i, f"{s}/3")) == sorted(ids)
    assert all(sum(in_shard(i, f"{s}/3") for s in range(3)) == 1 for i in ids)
    url, _, _ = fake()
    prompts = write_prompts(tmp_path / "p.jsonl", 20)
    shards = [
        [r["id"] for r in generate(tmp_path / f"shard{s}", prompts, engine_for(url), shard=f"{s}/3")] for s in range(3)
    ]
    assert all(shards) and sorted(i for shard in shards for i in shard) == sorted(ids)


@pytest.mark.parametrize("value", ["3/3", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_one_line_and_exit_2(value):
    result = CliRunner().invoke(main, ["generate", "-c", "harmless", "--shard", value])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert errors == [f"error: --shard: write I/N with 0 <= I < N, e.g. 0/4; got '{value}'"], result.output
