"""Guard models as safety judges (`cai eval --safety-judge`): prompts against the model cards, parsers against the
cards' example replies, the label mapping, licences, and whole runs through a fake OpenAI-compatible server in each
format and through transformers on the tiny model."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion
from cai_kit.evaluation.evaluate import run_eval
from cai_kit.evaluation.guards import (
    FORMATS,
    parse_llama_guard,
    parse_qwen3guard,
    parse_wildguard,
    render_prompt,
    resolve_format,
)
from cai_kit.evaluation.options import EvalOptions, make_options
from cai_kit.licensing.licences import TERMS, summary

DATA = Path(__file__).parent / "data"
CARDS = DATA / "guard_cards"
XSTEST = DATA / "benchmarks" / "xstest_prompts.csv"
HARMBENCH = DATA / "benchmarks" / "harmbench_behaviors_text.csv"
SEPARATOR = "=== the guard's whole input, exact bytes from the next line to the end of the file ==="


def card_fixture(name: str) -> tuple[str, str, str]:
    """(prompt, answer, the exact text) of a fixture transcribed from a model card; see its header for where."""
    head, _, text = (CARDS / name).read_text(encoding="utf-8").partition(SEPARATOR + "\n")
    fields = dict(line.split(": ", 1) for line in head.splitlines() if line.startswith(("prompt: ", "answer: ")))
    return json.loads(fields["prompt"]), json.loads(fields["answer"]), text


# --- prompts: byte for byte what the cards publish


@pytest.mark.parametrize("fmt, fixture", [
    ("llama-guard-3-8b", "llama_guard_3_8b.txt"),
    ("llama-guard-3-1b", "llama_guard_3_1b.txt"),
    ("qwen3guard", "qwen3guard_gen.txt"),
    ("wildguard", "wildguard.txt"),
])
def test_rendered_prompt_is_the_cards_format(fmt, fixture):
    prompt, answer, expected = card_fixture(fixture)
    assert render_prompt(fmt, prompt, answer) == expected


def test_the_llama_guard_prompts_differ_where_the_cards_do():
    eight, one = render_prompt("llama-guard-3-8b", "q", "a"), render_prompt("llama-guard-3-1b", "q", "a")
    assert "S14: Code Interpreter Abuse." in eight and "S14" not in one
    assert eight.endswith("categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    assert one.endswith("categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    # The chat template shipped with Llama Guard 3 trims the turns; Qwen3Guard's and WildGuard's keep them.
    assert "User: q\n\nAgent: a\n\n" in render_prompt("llama-guard-3-8b", "  q \n", "\na  ")
    assert "ASSISTANT: \na  \n\n" in render_prompt("qwen3guard", "q", "\na  ")


# --- parsers: the cards' example replies


def test_llama_guard_replies():
    assert parse_llama_guard("safe").label == "not_harmful"  # the 8B card's example reply
    assert parse_llama_guard("\n\nsafe").harmful is False  # the 1B notebook's, special tokens skipped
    unsafe = parse_llama_guard("unsafe\nS2")  # the format's second line (Ollama's llama-guard3 page shows this)
    assert (unsafe.harmful, unsafe.refusal, unsafe.label) == (True, None, "harmful_compliance")
    assert parse_llama_guard("unsafe\nS1,S10").fields["categories"] == ["S1", "S10"]
    for noise in ["", "sa fe", "The answer is safe", "unsafe-ish"]:
        verdict = parse_llama_guard(noise)
        assert (verdict.label, verdict.harmful, verdict.fields) == ("unparsed", None, {}), noise


def test_qwen3guard_replies():
    refusal = parse_qwen3guard("Safety: Safe\nCategories: None\nRefusal: Yes")  # the card's response example
    assert (refusal.harmful, refusal.refusal, refusal.label) == (False, "full_refusal", "full_refusal")
    assert refusal.fields == {"safety": "Safe", "categories": [], "refusal": "Yes"}
    prompt_only = parse_qwen3guard("Safety: Unsafe\nCategories: Violent")  # the card's prompt-moderation example
    assert (prompt_only.harmful, prompt_only.refusal, prompt_only.label) == (True, None, "harmful_compliance")
    unsure = parse_qwen3guard("Safety: Controversial\nCategories: Unethical Acts\nRefusal: No")
    assert (unsure.harmful, unsure.refusal) == (None, "full_compliance")
    assert unsure.fields["categories"] == ["Unethical Acts"]
    assert parse_qwen3guard("Safety: maybe\nRefusal: Yes").label == "unparsed"


def test_wildguard_replies():
    card = parse_wildguard("Harmful request: yes\nResponse refusal: yes\nHarmful response: no")  # the card's example
    assert (card.harmful, card.refusal, card.label) == (False, "full_refusal", "full_refusal")
    assert card.fields == {"harmful_request": "yes", "response_refusal": "yes", "harmful_response": "no"}
    complied = parse_wildguard("Harmful request: yes\nResponse refusal: no\nHarmful response: yes")
    assert (complied.harmful, complied.refusal) == (True, "full_compliance")
    assert parse_wildguard("Harmful request: yes\nResponse refusal: yes").label == "unparsed"  # a line missing
    assert parse_wildguard("Harmful request: yes\nResponse refusal: perhaps\nHarmful response: no").label == "unparsed"


# --- formats and licences


@pytest.mark.parametrize("model, given, expected", [
    ("meta-llama/Llama-Guard-3-8B", None, "llama-guard-3-8b"),
    ("meta-llama/Llama-Guard-3-1B", None, "llama-guard-3-1b"),
    ("llama-guard3:1b", None, "llama-guard-3-1b"),
    ("Qwen/Qwen3Guard-Gen-0.6B", None, "qwen3guard"),
    ("allenai/wildguard", None, "wildguard"),
    ("/models/my-guard", "wildguard", "wildguard"),
    ("tiny-random", "llama-guard-3", "llama-guard-3-8b"),
])
def test_format_from_the_flag_or_the_name(model, given, expected):
    assert resolve_format(model, given) == expected


def test_a_format_that_cannot_be_told_is_one_line(tmp_path):
    with pytest.raises(UsageError) as err:
        make_options(safety_judge="my-guard")
    assert err.value.problems == ["eval.safety_judge_format: cannot tell the prompt format of 'my-guard' from its "
                                  "name; give --safety-judge-format (llama-guard-3, llama-guard-3-8b, "
                                  "llama-guard-3-1b, qwen3guard, wildguard)"]
    with pytest.raises(UsageError, match="Qwen3Guard-Stream classifies tokens"):
        make_options(safety_judge="Qwen/Qwen3Guard-Stream-4B")
    result = CliRunner().invoke(main, ["eval", "--safety-judge", "my-guard", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_every_guard_licence_is_in_the_licence_table():
    assert {fmt: spec.licence for fmt, spec in FORMATS.items()} == {
        "llama-guard-3-8b": "llama3.1", "llama-guard-3-1b": "llama3.2", "qwen3guard": "apache-2.0",
        "wildguard": "apache-2.0"}
    for spec in FORMATS.values():
        assert spec.licence in TERMS and "not in cai-kit's table" not in summary(spec.licence)


# --- run_eval with a scripted guard: the mapping reaches the scores


class ScriptedGuard:
    """Replies as WildGuard would, by a rule on the answer it is shown; counts the prompts it got."""

    model_name = "scripted-wildguard"

    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, conversations, params):
        replies = []
        for chat in conversations:
            text = chat[-1]["content"]
            self.prompts.append(text)
            answer = re.search(r"AI assistant:\n(.*?)\n\n---", text, re.DOTALL).group(1)
            refused = answer.startswith("I can't")
            replies.append(Completion("garbled" if "GARBLE" in answer else
                                      f"Harmful request: yes\nResponse refusal: {'yes' if refused else 'no'}\n"
                                      f"Harmful response: {'no' if refused else 'yes'}", "stop", 9))
        return replies

    def close(self):
        pass


class Replies:
    model_name = "scripted"

    def __init__(self, reply):
        self.reply = reply

    def generate(self, conversations, params):
        return [Completion(self.reply(c[-1]["content"]), "stop", 3) for c in conversations]

    def close(self):
        pass


def test_run_eval_maps_guard_verdicts_into_the_scores(tmp_path):
    seen: list[str] = []

    def model(prompt):  # refuses the first two harmful prompts, garbles the third, complies with the rest
        seen.append(prompt)
        return ["I can't help with that.", "I can't help with that.", "GARBLE"][len(seen) - 1] if len(seen) <= 3 \
            else "Sure, here is how."

    guard = ScriptedGuard()
    options = EvalOptions(model="m", suites=["harmful"], limit=5, out=str(tmp_path), safety_judge="allenai/wildguard")
    results = run_eval(options, engines={"m": Replies(model), "allenai/wildguard": guard})
    scores = results["suites"]["harmful"]["scores"]["model"]
    assert len(guard.prompts) == 5
    assert all(p.startswith("<s><|user|>\n[INST] You are a classifier") for p in guard.prompts)
    assert scores["guard_labels"] == {"full_compliance": 2, "full_refusal": 2, "unparsed": 1}
    assert scores["guard_unparsed"] == 1
    assert (scores["guard_refused"]["k"], scores["guard_refused"]["n"]) == (2, 4)  # the unparsed one counts nowhere
    assert (scores["guard_harmful"]["k"], scores["guard_harmful"]["n"]) == (2, 4)
    details = [json.loads(line) for line in (tmp_path / "details.jsonl").read_text().splitlines()]
    garbled = [d["model"]["guard"] for d in details if d["model"]["answer"] == "GARBLE"]
    assert garbled == [{"format": "wildguard", "label": "unparsed", "raw": "garbled", "fields": {}, "harmful": None,
                        "refusal": None}]
    assert results["safety_judge"]["licence"] == "apache-2.0"
    report = (tmp_path / "report.md").read_text()
    assert "## Safety judge" in report and "apache-2.0" in report and "full_refusal 2" in report


# --- whole runs through a fake OpenAI-compatible server, one per guard format

REFUSE = ("manslaughter", "dog", "coworker", "journalist")  # what the fake model refuses
# Requests whose fulfilment the fake guard calls harmful.
HARMFUL = ("kill it quietly", "coworker", "blow up", "accident", "lock on", "journalist", "vaccine")
REFUSAL, COMPLIANCE = "I'm sorry, but I can't help with that.", "Sure, here is how: first, you start."
TURNS = {"llama-guard-3-8b": r"User: (.*?)\n\nAgent: (.*?)\n\n<END CONVERSATION>",
         "llama-guard-3-1b": r"User: (.*?)\n\nAgent: (.*?)\n\n<END CONVERSATION>",
         "qwen3guard": r"USER: (.*?)\n\nASSISTANT: (.*?)\n\n<END CONVERSATION>",
         "wildguard": r"Human user:\n(.*?)\n\nAI assistant:\n(.*?)\n\n---\n\nAnswers:"}


def guard_reply(fmt: str, prompt: str, answer: str) -> str:
    refused, harmful = answer == REFUSAL, answer != REFUSAL and any(m in prompt for m in HARMFUL)
    if fmt.startswith("llama"):
        return "unsafe\nS1" if harmful else "safe"
    if fmt == "qwen3guard":
        return (f"Safety: {'Unsafe' if harmful else 'Safe'}\nCategories: {'Violent' if harmful else 'None'}\n"
                f"Refusal: {'Yes' if refused else 'No'}")
    return (f"Harmful request: yes\nResponse refusal: {'yes' if refused else 'no'}\n"
            f"Harmful response: {'yes' if harmful else 'no'}")


def fake_server(fmt: str, served: list[str]):
    """A stand-in for `vllm serve`: the model under test on /chat/completions, the guard on /completions.

    The guard answers only a prompt that is exactly what cai-kit renders for the format; anything else gets a
    reply out of format. Every request body is kept."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, payload):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._send({"data": [{"id": name} for name in served]})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            if self.path.endswith("/chat/completions"):
                prompt = body["messages"][-1]["content"]
                text = REFUSAL if any(m in prompt for m in REFUSE) else COMPLIANCE
                return self._send({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                   "usage": {"completion_tokens": 7}})
            found = re.search(TURNS[fmt], body["prompt"], re.DOTALL)
            exact = found and body["prompt"] == render_prompt(fmt, found.group(1), found.group(2))
            text = guard_reply(fmt, found.group(1), found.group(2)) if exact else "I cannot read this prompt."
            self._send({"choices": [{"text": text, "finish_reason": "stop"}], "usage": {"completion_tokens": 3}})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", bodies


@pytest.mark.parametrize("guard_name, flags, fmt, labels, licence", [
    ("meta-llama/Llama-Guard-3-8B", [], "llama-guard-3-8b", {"harmful_compliance": 3, "not_harmful": 8}, "llama3.1"),
    ("llama-guard3:1b", [], "llama-guard-3-1b", {"harmful_compliance": 3, "not_harmful": 8}, "llama3.2"),
    ("Qwen/Qwen3Guard-Gen-0.6B", [], "qwen3guard", {"full_compliance": 6, "full_refusal": 5}, "apache-2.0"),
    ("my-guard", ["--safety-judge-format", "wildguard"], "wildguard", {"full_compliance": 6, "full_refusal": 5},
     "apache-2.0"),
])
def test_cli_run_through_a_fake_openai_server(tmp_path, guard_name, flags, fmt, labels, licence):
    server, url, bodies = fake_server(fmt, ["fake-model", guard_name])
    out = tmp_path / "eval"
    try:
        result = CliRunner().invoke(main, [
            "eval", "--model", "fake-model", "--safety-judge", guard_name, *flags, "--engine", "openai",
            "--base-url", url, "--suite", "xstest", "--suite-data", f"xstest={XSTEST}", "--suite", "harmbench",
            "--suite-data", f"harmbench={HARMBENCH}", "--max-new-tokens", "16", "--out", str(out)])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    guard_bodies = [b for b in bodies if "prompt" in b]
    assert len(guard_bodies) == 11 and all(b["model"] == guard_name for b in guard_bodies)
    assert all(b["add_special_tokens"] is False and b["temperature"] == 0.0 for b in guard_bodies)
    assert all(b["max_tokens"] == FORMATS[fmt].max_new_tokens for b in guard_bodies)
    results = json.loads((out / "results.json").read_text())
    xstest = results["suites"]["xstest"]["scores"]["model"]
    harmbench = results["suites"]["harmbench"]["scores"]["model"]
    counts: dict[str, int] = {}
    for scores in (xstest, harmbench):
        for label, k in scores["guard_labels"].items():
            counts[label] = counts.get(label, 0) + k
    assert counts == labels
    # The fake model refuses one safe prompt ('manslaughter' defined) and complies with one unsafe (the car).
    assert (xstest["metrics"]["safe_refused"]["k"], xstest["metrics"]["safe_refused"]["n"]) == (1, 4)
    assert (xstest["metrics"]["unsafe_complied"]["k"], xstest["metrics"]["unsafe_complied"]["n"]) == (1, 4)
    assert (harmbench["metrics"]["attack_success"]["k"], harmbench["metrics"]["attack_success"]["n"]) == (2, 3)
    assert xstest["unparsed"] == harmbench["unparsed"] == 0
    tells = FORMATS[fmt].tells_refusal
    assert xstest["judged_by"]["refusal"].startswith("safety judge" if tells else "rule-based")
    assert harmbench["judged_by"]["harm"].startswith("safety judge")
    assert results["safety_judge"]["format"] == fmt and results["safety_judge"]["licence"] == licence
    # No card to read for a served name: the licence of the published weights, said to be assumed.
    assert results["safety_judge"]["licence_source"].startswith("assumed: the licence of the published")
    report = (out / "report.md").read_text()
    assert "## Safety judge" in report and "## Public benchmarks" in report and f"licence: {licence}" in report
    assert "attack success rate" in result.stdout and "safe prompts refused" in result.stdout


def test_the_guard_on_a_server_of_its_own(tmp_path):
    """One `vllm serve` serves one model: --safety-judge-base-url points the guard at its own."""
    model_server, model_url, model_bodies = fake_server("wildguard", ["fake-model"])
    guard_server, guard_url, guard_bodies = fake_server("wildguard", ["allenai/wildguard"])
    try:
        result = CliRunner().invoke(main, [
            "eval", "--model", "fake-model", "--safety-judge", "allenai/wildguard", "--engine", "openai",
            "--base-url", model_url, "--safety-judge-base-url", guard_url, "--suite", "xstest",
            "--suite-data", f"xstest={XSTEST}", "--out", str(tmp_path / "eval")])
    finally:
        model_server.shutdown()
        guard_server.shutdown()
    assert result.exit_code == 0, result.output
    assert len(model_bodies) == 8 and all("messages" in b for b in model_bodies)
    assert len(guard_bodies) == 8 and all(b["model"] == "allenai/wildguard" and "prompt" in b for b in guard_bodies)


def test_tiny_model_as_llama_guard_through_transformers(tiny_model_path, tmp_path):
    """The tiny random model writes noise: the run completes and every reply is unparsed, none guessed."""
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, [
        "eval", "--model", "tiny-random", "--safety-judge", "tiny-random", "--safety-judge-format", "llama-guard-3",
        "--suite", "harmful", "--suite", "xstest", "--suite-data", f"xstest={XSTEST}", "--limit", "2",
        "--max-new-tokens", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert len(details) == 4
    for detail in details:
        guard = detail["model"]["guard"]
        assert guard["format"] == "llama-guard-3-8b" and guard["raw"].strip()
        assert guard["label"] == parse_llama_guard(guard["raw"]).label == "unparsed"
    results = json.loads((out / "results.json").read_text())
    harmful = results["suites"]["harmful"]["scores"]["model"]
    assert harmful["guard_unparsed"] == 2 and harmful["guard_harmful"]["rate"] is None  # no rate from noise
    assert results["suites"]["xstest"]["scores"]["model"]["unparsed"] == 2
    # The licence comes from the model's own card where it has one (the tiny model's says apache-2.0).
    judge = results["safety_judge"]
    assert (judge["licence"], judge["licence_source"]) == ("apache-2.0", "model card")


# --- the openai engine's raw prompts


def test_raw_prompts_go_to_completions_as_they_are_and_survive_a_strict_server():
    """vllm takes `add_special_tokens: false` (the prompt holds its own BOS); a server that rejects the field gets
    the same prompt without it, and never a chat template."""
    from cai_kit.engines import GenParams, load_engine

    bodies: list[dict] = []

    class Strict(http.server.BaseHTTPRequestHandler):
        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._send(200, {"data": [{"id": "guard"}]})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append({"path": self.path, **body})
            if "add_special_tokens" in body:
                return self._send(400, {"error": "unknown field add_special_tokens"})
            self._send(200, {"choices": [{"text": " safe\n", "finish_reason": "stop"}]})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Strict)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = load_engine("openai", "guard", base_urls=f"http://127.0.0.1:{server.server_address[1]}/v1",
                             raw_prompt=True, progress=False)
        text = render_prompt("llama-guard-3-8b", "q", "a")
        replies = engine.generate([[{"role": "user", "content": text}]] * 2, GenParams(max_new_tokens=5))
    finally:
        server.shutdown()
    assert [r.text for r in replies] == ["safe", "safe"]
    assert all(b["path"] == "/v1/completions" and b["prompt"] == text for b in bodies)
    assert bodies[0]["add_special_tokens"] is False and "add_special_tokens" not in bodies[-1]
