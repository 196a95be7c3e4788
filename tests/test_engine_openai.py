"""The openai engine against a real `transformers serve` (tiny model, 127.0.0.1 only), mostly through the real CLI.

The servers are separate processes that the tests start, kill with SIGKILL and restart; every wait is
bounded and every server is killed in a fixture's teardown. `transformers serve` keeps strictly to
OpenAI's schema, so these runs also exercise the fallback for vllm's extra fields (prefilled replies
through /v1/completions with the chat template applied locally).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cai_kit.core.errors import UsageError
from cai_kit.engines import GenParams, load_engine

REPO = Path(__file__).resolve().parent.parent
TRANSFORMERS_CLI = Path(sys.executable).parent / "transformers"
CONSTITUTION = REPO / "constitutions" / "harmless.yaml"  # its principles have openings: prefilled revisions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `transformers serve MODEL` on 127.0.0.1:port, in its own process group."""

    def __init__(self, model: str, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self, wait_s: float = 180) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [str(TRANSFORMERS_CLI), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise AssertionError(f"transformers serve did not answer within {wait_s} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def requests_seen(self) -> int:
        """Generation requests answered, from uvicorn's access log (transformers' own "[Request received]" line
        went away in 5.25)."""
        return self.log.read_text().count('"POST /v1/')


@pytest.fixture
def servers(tmp_path, tiny_model_path):
    """Makes servers on free ports; all of them are killed at teardown, whatever happened."""
    made: list[Server] = []

    def make(port: int | None = None) -> Server:
        server = Server(tiny_model_path, port or free_port(), tmp_path / f"serve-{len(made)}.log")
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def write_prompts(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{k}", "prompt": f"question number {k}"}) + "\n" for k in range(count))
    )
    return path


def cli(out: Path, prompts: Path, model: str, urls: list[str], *extra: str) -> list[str]:
    args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-p", str(prompts)]
    args += ["-m", model, "-o", str(out), "--limit", "0", "--engine", "openai", "--max-new-tokens", "8"]
    for url in urls:
        args += ["--base-url", url]
    # Short retries so a dead server is given up on in about a second.
    return args + ["--engine-option", "retries=2", "--engine-option", "backoff=0.2", *extra]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """The CLI in a child process; its stderr goes to a file, so a full pipe can never block it."""
    with log.open("w") as handle:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle, cwd=REPO)


def finish(process: subprocess.Popen, log: Path, wait_s: float) -> str:
    try:
        process.wait(timeout=wait_s)
    finally:
        if process.poll() is None:
            process.kill()
    return log.read_text()


def wait_for_rows(path: Path, count: int, process: subprocess.Popen, wait_s: float = 240) -> None:
    deadline = time.time() + wait_s
    while time.time() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows in {path} within {wait_s} s (exit {process.poll()})")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_model_path):
    server = Server(tiny_model_path, free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.mark.slow
def test_server_killed_mid_run_stops_cleanly_and_a_rerun_resumes(tmp_path, servers, tiny_model_path):
    server = servers().start()
    prompts, out = write_prompts(tmp_path / "p.jsonl", 30), tmp_path / "out"
    args = cli(out, prompts, tiny_model_path, [server.url], "--batch-size", "2")
    generations = out / "generations.jsonl"
    process = start_cli(args, tmp_path / "cli.log")
    try:
        wait_for_rows(generations, 2, process)
        server.kill()
    finally:
        stderr = finish(process, tmp_path / "cli.log", 120)
    assert process.returncode == 2, stderr
    errors = re.findall(r"error: .*", stderr)  # progress bars may share the line
    assert len(errors) == 1 and "no server answers any more" in errors[0] and "rerun" in errors[0], stderr
    kept = rows(generations)
    assert 2 <= len(kept) < 30, "the kill should land mid-run"
    assert not [r for r in kept if r["status"].startswith("error")]  # the unfinished chunk was not written

    servers(server.port).start()  # the same URL comes back
    rerun = subprocess.run(
        args + ["--engine-option", "progress=false"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    final = rows(generations)
    ids = [r["id"] for r in final]
    assert sorted(ids) == sorted(f"q{k}" for k in range(30)) and len(ids) == len(set(ids))
    assert final[: len(kept)] == kept, "rows finished before the kill are kept as they were"
    assert not [r for r in final if r["status"].startswith("error")]


@pytest.mark.slow
def test_two_urls_one_killed_mid_run_finishes_on_the_other(tmp_path, servers, live_server, tiny_model_path):
    doomed, survivor = servers().start(), live_server
    prompts, out = write_prompts(tmp_path / "p.jsonl", 24), tmp_path / "out"
    args = cli(out, prompts, tiny_model_path, [doomed.url, survivor.url], "--batch-size", "2")
    generations = out / "generations.jsonl"
    process = start_cli(args, tmp_path / "cli.log")
    try:
        wait_for_rows(generations, 2, process)
        # A request is logged once answered: on a busy machine the warm survivor can finish two rows while the
        # doomed server's first answer (which holds a row back) is still on its way.
        deadline = time.time() + 120
        while doomed.requests_seen() == 0 and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        before = survivor.requests_seen()
        assert doomed.requests_seen() > 0 and before > 0, "requests should be spread over both URLs"
        doomed.kill()
    finally:
        stderr = finish(process, tmp_path / "cli.log", 300)
    assert process.returncode == 0, stderr
    assert f"{doomed.url} stopped answering" in stderr
    final = rows(generations)
    assert sorted(r["id"] for r in final) == sorted(f"q{k}" for k in range(24))
    assert not [r for r in final if r["status"].startswith("error")]
    assert survivor.requests_seen() > before


@pytest.mark.slow
def test_replies_match_the_in_process_engine_in_order_with_prefill(live_server, tiny_model_path):
    remote = load_engine("openai", tiny_model_path, base_urls=live_server.url, progress=False, max_concurrency=4)
    local = load_engine("transformers", tiny_model_path, dtype="fp32", progress=False, prefix_cache=False)
    openings = ["I can", "The answer", "Sure, here", "No", "Let me", "It is"]
    chats = [
        [{"role": "user", "content": f"question {k}"}, {"role": "assistant", "content": o}]
        for k, o in enumerate(openings)
    ]
    params = GenParams(max_new_tokens=10)  # greedy, no repetition penalty: both must give the same tokens
    over_http, in_process = remote.generate(chats, params), local.generate(chats, params)
    assert [c.text for c in over_http] == [c.text for c in in_process]
    assert len({c.text for c in over_http}) > 1, "different prefills should give different replies"
    assert [c.tokens for c in over_http] == [c.tokens for c in in_process]
    assert remote.generated_tokens == sum(c.tokens for c in over_http)


@pytest.mark.slow
def test_logprobs_on_a_server_without_them_is_one_clear_line(live_server, tiny_model_path):
    engine = load_engine("openai", tiny_model_path, base_urls=[live_server.url], progress=False)
    with pytest.raises(UsageError, match="cannot score log-probs .* use --engine transformers or vllm"):
        engine.logprobs([[{"role": "user", "content": "Is this safe?"}]], ["Yes"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cai_kit.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_unreachable_url_unknown_option_and_bad_engine_exit_2_with_one_line(tmp_path, tiny_model_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    base = ["generate", "-c", str(CONSTITUTION), "-p", str(prompts), "-m", tiny_model_path]
    cases = {
        "no server answers at " + dead: [*base, "-o", str(tmp_path / "a"), "--engine", "openai", "--base-url", dead,
                                         "--engine-option", "startup_timeout=0"],
        "engine 'openai' has no option 'max_concurency'": [
            *base,
            "-o",
            str(tmp_path / "b"),
            "--engine",
            "openai",
            "--engine-option",
            "max_concurency=4",
        ],
        "must start with http:// or https://": [
            *base,
            "-o",
            str(tmp_path / "d"),
            "--engine",
            "openai",
            "--base-url",
            "127.0.0.1:8000/v1",
        ],
        "api_key_env names CAI_TEST_UNSET_KEY, which is not set": [
            *base,
            "-o",
            str(tmp_path / "e"),
            "--engine",
            "openai",
            "--base-url",
            dead,
            "--engine-option",
            "api_key_env=CAI_TEST_UNSET_KEY",
        ],
    }
    for expected, args in cases.items():
        result = run_cli(*args)
        assert result.returncode == 2, (expected, result.stderr)
        assert len(error_lines(result)) == 1 and expected in error_lines(result)[0], (expected, result.stderr)
        assert "Traceback" not in result.stderr
        out = Path(args[args.index("-o") + 1])
        assert not out.exists(), (expected, sorted(p.name for p in out.iterdir()))  # nothing left behind
    # An engine name is one of a closed set: click refuses a typo itself, with a suggestion.
    result = run_cli(*base, "-o", str(tmp_path / "c"), "--engine", "vlm")
    assert result.returncode == 2 and "'vlm' is not one of" in result.stderr
    assert "Did you mean 'vllm'?" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "c").exists()


class KeyCheckingHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in server that only checks the bearer token: it refuses every key but the right one."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.seen.append(self.headers.get("Authorization", ""))
        ok = self.headers.get("Authorization") == "Bearer right-key"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"data": [{"id": "m"}]} if ok else {"error": "bad key"}).encode())

    def log_message(self, *args):
        pass


def test_api_key_comes_from_the_named_variable_and_is_never_printed(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeyCheckingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        monkeypatch.setenv("CAI_TEST_KEY", "right-key")
        engine = load_engine("openai", "m", base_urls=url, api_key_env="CAI_TEST_KEY")
        assert engine.model_name == "m" and KeyCheckingHandler.seen[-1] == "Bearer right-key"

        prompts = write_prompts(tmp_path / "p.jsonl", 1)
        env_args = [
            "generate",
            "-c",
            str(CONSTITUTION),
            "-p",
            str(prompts),
            "-m",
            "m",
            "-o",
            str(tmp_path / "o"),
            "--engine",
            "openai",
            "--base-url",
            url,
            "--engine-option",
            "api_key_env=CAI_TEST_KEY",
        ]
        monkeypatch.setenv("CAI_TEST_KEY", "wrong-secret-value")
        result = run_cli(*env_args)
        assert result.returncode == 2
        assert error_lines(result) == [
            f"error: engine 'openai': the server at {url} refused the key in CAI_TEST_KEY (HTTP 401)"
        ]
        assert "wrong-secret-value" not in result.stderr + result.stdout
        assert KeyCheckingHandler.seen[-1] == "Bearer wrong-secret-value"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_default_model_name_must_be_given_as_the_server_names_it(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeyCheckingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("CAI_TEST_KEY", "right-key")
    try:
        with pytest.raises(UsageError, match=r"pass --model as the server names it \(it serves: m\)"):
            load_engine("openai", "default", base_urls=url, api_key_env="CAI_TEST_KEY")
        with pytest.raises(UsageError, match="does not serve 'other'; it serves: m"):
            load_engine("openai", "other", base_urls=url, api_key_env="CAI_TEST_KEY")
    finally:
        server.shutdown()
        thread.join(timeout=10)
