"""The openvino engine: the IR export and its cache, batched generation against the transformers engine,
seeded sampling, log-probs for the judge, `--engine auto`, and `cai generate` on the default model.

Needs the openvino extra (`pip install -e ".[dev,openvino]"`); these tests fail, not skip, without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cai_kit.core import precision
from cai_kit.core.errors import UsageError
from cai_kit.engines import GenParams, load_engine, openvino, openvino_export, resolve_engine_name
from cai_kit.engines.chat import common_prefix_length, scoring_leads

FEW_SHOT = [
    {"role": "user", "content": "an example question " * 12},
    {"role": "assistant", "content": "an answer " * 12},
]


def chats(n: int) -> list[list[dict]]:
    """Rows sharing a few-shot prefix (what prefix caching is for), one of them a prefilled reply."""
    rows = [FEW_SHOT + [{"role": "user", "content": "question " * (k + 1)}] for k in range(n - 1)]
    return rows + [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer"}]]


@pytest.fixture(scope="module")
def engines(tiny_model_path):
    return {
        "openvino": load_engine("openvino", tiny_model_path, batch_size=3, inference_precision="f32", progress=False),
        "transformers": load_engine("transformers", tiny_model_path, batch_size=3, dtype="fp32", progress=False),
    }


def test_export_is_cached_under_cai_kit_cache_by_content_and_precision(engines, tiny_model_path, cai_cache):
    folder = engines["openvino"].folder
    assert folder.parent == cai_cache / "openvino"
    assert folder.name.endswith("-fp32")
    names = {p.name for p in folder.iterdir()}
    assert {"openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"} <= names
    assert openvino_export.exported_folder(Path(tiny_model_path), "fp16") != folder


def test_a_second_load_uses_the_cache(engines, tiny_model_path, monkeypatch):
    def no_export(*args):
        raise AssertionError("the cached IR should have been used")

    monkeypatch.setattr(openvino_export, "export", no_export)
    again = load_engine("openvino", tiny_model_path, progress=False)
    assert again.folder == engines["openvino"].folder
    again.close()


OVERLAP_SCRIPT = """
import sys, threading
import openvino_genai
from cai_kit.engines import openvino

compiling, seen = threading.Event(), {}
real_pipeline, real_load = openvino_genai.ContinuousBatchingPipeline, openvino.engine_tokenizer

def pipeline(*args):
    seen["torch"] = "torch" in sys.modules
    compiling.set()
    return real_pipeline(*args)

def engine_tokenizer(*args):
    assert compiling.wait(30), "the compile had not started when the tokenizer began to load"
    return real_load(*args)

openvino_genai.ContinuousBatchingPipeline, openvino.engine_tokenizer = pipeline, engine_tokenizer
engine = openvino.OpenVINOEngine(sys.argv[1], progress=False)
reply = engine.generate([[{"role": "user", "content": "Hi"}]], openvino.GenParams(max_new_tokens=4))[0]
print("torch imported before the compile:", seen["torch"], "| reply:", reply.tokens)
"""


def test_the_pipeline_compiles_while_the_tokenizer_loads_and_before_torch_is_imported(engines, tiny_model_path):
    """A fresh process (the IR is cached by the fixture): the compile starts before the tokenizer's load, which
    waits for it, so a serial load would stop at that wait; torch (~2 s to import) is not imported before it."""
    done = subprocess.run([sys.executable, "-c", OVERLAP_SCRIPT, tiny_model_path], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported before the compile: False | reply: " in done.stdout


def test_folder_hash_follows_the_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = openvino_export.folder_hash(tmp_path)
    assert openvino_export.folder_hash(tmp_path) == first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert openvino_export.folder_hash(tmp_path) != first


def test_the_folder_hash_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    model, memo = tmp_path / "model", tmp_path / "cache" / "hashes.json"
    model.mkdir()
    (model / "config.json").write_text("{}")
    first = openvino_export.remembered_folder_hash(model, memo)
    assert first == openvino_export.folder_hash(model) and memo.is_file()
    hashed = []
    real = openvino_export.folder_hash
    monkeypatch.setattr(openvino_export, "folder_hash", lambda folder: hashed.append(folder) or real(folder))
    assert openvino_export.remembered_folder_hash(model, memo) == first
    assert hashed == [], "read back, not hashed again"
    (model / "config.json").write_text('{"a": 1}')  # a new size
    assert openvino_export.remembered_folder_hash(model, memo) == real(model) != first
    (model / "extra.txt").write_text("x")  # a new file
    assert openvino_export.remembered_folder_hash(model, memo) == real(model)
    assert len(hashed) == 2
    memo.write_text("not json")  # a damaged memo is ignored and rewritten
    assert openvino_export.remembered_folder_hash(model, memo) == real(model)
    assert json.loads(memo.read_text())[str(model.resolve())]["sha256"] == real(model)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    (model / "more.txt").write_text("y")
    monkeypatch.setattr(openvino_export.json, "dump", full_disk)
    assert openvino_export.remembered_folder_hash(model, memo) == real(model), "the hash, memo or not"
    assert [p.name for p in memo.parent.iterdir()] == ["hashes.json"], "no half-written memo left"


def test_greedy_replies_match_the_transformers_engine(engines):
    params = GenParams(max_new_tokens=12)
    ov = engines["openvino"].generate(chats(5), params)
    tf = engines["transformers"].generate(chats(5), params)
    assert [(c.text, c.tokens, c.finish_reason) for c in ov] == [(c.text, c.tokens, c.finish_reason) for c in tf]
    assert any(c.text for c in ov), "the tiny model should write some text"
    assert engines["openvino"].generated_tokens >= sum(c.tokens for c in ov)


def test_a_shared_prefix_is_prefilled_once_in_whole_blocks_and_changes_no_reply(engines, tiny_model_path, monkeypatch):
    long_few_shot = FEW_SHOT * 4  # several KV blocks shared by every row
    rows = [long_few_shot + [{"role": "user", "content": "question " * (k + 1)}] for k in range(3)]
    params = GenParams(max_new_tokens=12)
    engine = engines["openvino"]
    warmed: list[int] = []
    original = engine.pipeline.generate

    def spy(inputs, configs):
        if configs[0].max_new_tokens == 1:
            warmed.append(inputs[0].shape[1])
        return original(inputs, configs)

    monkeypatch.setattr(engine, "pipeline", type("Spy", (), {"generate": staticmethod(spy)})())
    replies = [c.text for c in engine.generate(rows, params)]
    monkeypatch.undo()
    encoded = engine._encode([engine.render(c) for c in rows])
    shared = common_prefix_length(encoded)
    assert warmed == [shared - shared % openvino.CPU_KV_BLOCK] and warmed[0] >= 2 * openvino.CPU_KV_BLOCK
    assert replies == [c.text for c in engines["transformers"].generate(rows, params)]
    cold = load_engine("openvino", tiny_model_path, batch_size=3, warm_prefix=False, progress=False)
    assert replies == [c.text for c in cold.generate(rows, params)]
    cold.close()


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 2
    assert common_prefix_length([[7], [1, 2]]) == 0


def test_scoring_leads_share_a_pass_only_for_one_token_continuations_of_one_prompt():
    prompts = [[1, 2], [1, 2], [1, 2], [3], [1, 2], [3]]
    full = [[1, 2, 7], [1, 2, 8], [1, 2, 8, 9], [3, 7], [1, 5], [3, 8]]
    # row 2 is two tokens, row 4 does not extend its prompt unchanged (a merge at the boundary)
    assert scoring_leads(prompts, full) == [0, 0, 2, 3, 4, 3]


def test_repetition_penalty_and_max_new_tokens_are_applied(engines):
    params = GenParams(max_new_tokens=6, repetition_penalty=1.3)
    ov = engines["openvino"].generate(chats(3), params)
    tf = engines["transformers"].generate(chats(3), params)
    assert [c.text for c in ov] == [c.text for c in tf]
    assert all(c.tokens <= 6 for c in ov)


def test_seeded_sampling_repeats_and_the_seed_matters(engines):
    engine = engines["openvino"]

    def sample(seed: int) -> list[str]:
        params = GenParams(max_new_tokens=16, temperature=1.0, seed=seed)
        return [c.text for c in engine.generate(chats(4), params)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


class CountingRequest:
    """The scorer's infer request, counting its forward passes and keeping the positions each computed
    logits for, against the tokens it was given."""

    def __init__(self, request):
        self.request, self.passes, self.positions = request, 0, []

    def infer(self, inputs):
        self.passes += 1
        outputs = self.request.infer(inputs)
        self.positions.append((outputs["logits"].shape[1], inputs["input_ids"].shape[1]))
        return outputs

    def reset_state(self):
        self.request.reset_state()


def test_logprobs_match_the_transformers_engine(engines):
    conversations = chats(3) + chats(3)[:2]
    continuations = ["an answer", "A", " The", "B", "B"]  # A and B: one token each here
    engine = engines["openvino"]
    engine._scoring_request()
    engine._scorer = counting = CountingRequest(engine._scorer)
    ov = engine.logprobs(conversations, continuations)
    tf = engines["transformers"].logprobs(conversations, continuations)
    assert ov == pytest.approx(tf, abs=1e-3)
    assert counting.passes == 4, "the second prompt's A and B share one pass"
    # The head runs from the last prompt token on only: a one-token continuation ("A"; "B") needs 2 positions.
    assert counting.positions[1][0] == counting.positions[3][0] == 2
    assert all(logits < tokens for logits, tokens in counting.positions)
    engine._scorer = counting.request
    per_token = engines["openvino"].token_logprobs(conversations, continuations)
    assert [sum(row) for row in per_token] == pytest.approx(ov)
    assert all(value < 0 for row in per_token for value in row)


def test_int8_weights_keep_each_output_channel_to_half_a_step():
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    rows = rng.normal(size=(5, 64)).astype(np.float32)  # [out, in], as torch's Linear (transpose_b)
    rows[2] = 0.0
    cols = rng.normal(size=(64, 4)).astype(np.float32) * np.array([1, 100, 0.01, 1], dtype=np.float32)  # [in, out]
    source = ops.parameter([3, 64], ov.Type.f32)
    model = ov.Model([ops.matmul(source, ops.constant(rows), False, True),
                      ops.matmul(source, ops.constant(cols), False, False)], [source])
    assert openvino_export.compress_weights(model) == 2
    weights = [op for op in model.get_ops()
               if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    assert sorted(tuple(op.get_output_shape(0)) for op in weights) == [(5, 64), (64, 4)]
    # Weights only: the CPU's on-the-fly int8 activations (dynamic quantization) off for this check.
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                       "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    out_rows, out_cols = (compiled(x)[k] for k in range(2))
    for got, exact, step in [(out_rows, x @ rows.T, np.abs(rows).max(axis=1) / 127),
                             (out_cols, x @ cols, np.abs(cols).max(axis=0) / 127)]:
        bound = np.abs(x).sum(axis=1, keepdims=True) * step / 2 + 1e-4 * np.abs(exact) + 1e-5
        assert np.all(np.abs(got - exact) <= bound)  # per channel: the 0.01-scaled column keeps its precision
    assert np.all(out_rows[:, 2] == 0)


def test_an_int8_engine_loads_generates_and_scores_near_fp32(engines, tiny_model_path):
    import openvino as ov

    engine = load_engine("openvino", tiny_model_path, precision="int8", inference_precision="f32", progress=False)
    assert engine.folder.name.endswith("-int8")
    model = ov.Core().read_model(str(engine.folder / "openvino_model.xml"))
    weights = [op.input_value(1).get_node() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    assert not [w for w in weights if w.get_type_name() == "Constant"], "every weight matrix is int8"
    int8 = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    assert len(int8) == sum(w.get_type_name() == "Multiply" for w in weights) > 0
    replies = engine.generate(chats(3), GenParams(max_new_tokens=6))
    assert [0 < reply.tokens <= 6 for reply in replies] == [True] * 3
    conversations, continuations = chats(3), ["an answer", "A", " The"]
    int8 = engine.logprobs(conversations, continuations)
    fp32 = engines["openvino"].logprobs(conversations, continuations)
    assert int8 != fp32
    assert int8 == pytest.approx(fp32, abs=0.05)


def test_threads_limit_both_the_pipeline_and_the_scorer(engines, tiny_model_path):
    engine = load_engine("openvino", tiny_model_path, threads=1, inference_precision="f32", progress=False)
    assert engine.properties["INFERENCE_NUM_THREADS"] == 1
    conversations, continuations = chats(2), ["an answer", " The"]
    assert engine.logprobs(conversations, continuations) == pytest.approx(
        engines["openvino"].logprobs(conversations, continuations), abs=1e-4
    )
    assert engine._scorer.get_compiled_model().get_property("INFERENCE_NUM_THREADS") == 1
    engine.close()


def test_a_failed_export_is_one_line_and_leaves_no_folder(tiny_model_path, tmp_path, monkeypatch):
    def broken(source, target, precision):
        (target / "openvino_model.xml").write_text("partial")
        raise RuntimeError("Model wasn't fully converted\nmore detail")

    monkeypatch.setenv("CAI_KIT_CACHE", str(tmp_path))
    monkeypatch.setattr(openvino_export, "export", broken)
    with pytest.raises(UsageError, match=r"could not export .* \(Model wasn't fully converted\); use --engine transf"):
        openvino_export.ensure_exported(tiny_model_path)
    # Only the remembered folder hash (a whole file, rewritten by rename), no export folder, not even a temporary one.
    assert [p.name for p in (tmp_path / "openvino").iterdir()] == ["hashes.json"]


def test_without_the_extra_the_message_names_it(tiny_model_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino_genai", None)
    with pytest.raises(UsageError, match=r'engine .openvino. needs: pip install "cai-kit\[openvino\]"'):
        load_engine("openvino", tiny_model_path, progress=False)


def test_bad_options_are_one_line(tiny_model_path):
    with pytest.raises(UsageError, match="precision must be one of fp32, fp16"):
        load_engine("openvino", tiny_model_path, precision="int4", progress=False)
    with pytest.raises(UsageError, match="kv_cache_precision must be auto, f32, f16, u8 with inference_precision f32"):
        load_engine("openvino", tiny_model_path, inference_precision="f32", kv_cache_precision="bf16", progress=False)
    with pytest.raises(UsageError, match="inference_precision must be auto, f32 or bf16, got 'fp32'"):
        load_engine("openvino", tiny_model_path, inference_precision="fp32", progress=False)
    with pytest.raises(UsageError, match="has no option 'dtype'"):
        load_engine("openvino", tiny_model_path, dtype="fp32")


def test_precision_follows_the_cpu_and_the_kv_cache_follows_it(monkeypatch):
    """bf16 with AMX, else f32 (avx512_bf16 alone too, where OpenVINO's own default is bf16, which takes no f32
    KV cache); an explicit bf16 needs a native bf16 flag."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: "amx_bf16")
    assert openvino.cpu_precisions("auto", "auto") == ("bf16", "bf16")
    assert openvino.cpu_precisions("f32", "auto") == ("f32", "f32")
    assert openvino.cpu_precisions("auto", "u8") == ("bf16", "u8")
    with pytest.raises(UsageError, match="must be auto, bf16, f16, u8 with inference_precision bf16"):
        openvino.cpu_precisions("auto", "f32")
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: "avx512_bf16")
    assert openvino.cpu_precisions("auto", "auto") == ("f32", "f32")
    assert openvino.cpu_precisions("bf16", "auto") == ("bf16", "bf16")
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    assert openvino.cpu_precisions("auto", "auto") == ("f32", "f32")
    with pytest.raises(UsageError, match=r"inference_precision=bf16 needs a CPU with avx512_bf16 or AMX \(this one: "):
        openvino.cpu_precisions("bf16", "auto")


def test_each_precision_this_cpu_has_loads_and_generates(tiny_model_path):
    """Every option left alone, and bf16 where the CPU has a native bf16 flag, on whatever CPU runs the tests
    (an f32 KV cache under OpenVINO's own bf16 default once failed to load on CPUs with avx512_bf16)."""
    auto = "bf16" if precision.cpu_precision().bf16 else "f32"
    for option, expected in [("auto", auto)] + ([("bf16", "bf16")] if precision.cpu_bf16_flag() else []):
        engine = load_engine("openvino", tiny_model_path, inference_precision=option, progress=False)
        assert engine.inference_precision == expected
        assert engine.properties["KV_CACHE_PRECISION"] == expected
        replies = engine.generate(chats(3), GenParams(max_new_tokens=6))
        assert len(replies) == 3 and all(0 < c.tokens <= 6 for c in replies)
        assert all(value < 0 for value in engine.logprobs(chats(2), ["an answer", " The"]))
        engine.close()


def test_auto_picks_openvino_on_a_cpu_and_says_so(tiny_model_path, monkeypatch, capsys):
    import cai_kit.engines as engines_module

    monkeypatch.setattr(engines_module, "_vllm_usable", lambda: False)
    assert resolve_engine_name("auto") == "openvino"
    engine = load_engine("auto", tiny_model_path, progress=False)
    assert type(engine).__name__ == "OpenVINOEngine"
    assert "--engine auto: using the openvino engine" in capsys.readouterr().err
    engine.close()
    monkeypatch.setattr(engines_module, "_openvino_usable", lambda: False)
    assert resolve_engine_name("auto") == "transformers"


# Both engines in fp32 whatever the CPU: under `auto` a CPU with native bf16 runs both in bf16, whose kernels round
# differently, so their greedy replies may part there.
FP32 = {"openvino": ["--engine-option", "inference_precision=f32"], "transformers": ["--engine-option", "dtype=fp32"]}


@pytest.mark.slow
def test_cai_generate_on_the_default_model_writes_what_the_transformers_engine_writes(default_model_path, tmp_path):
    """The critique/revision pipeline, greedy in fp32: the same 16 rows, word for word, on both engines. On this
    model a shared prefix prefilled to a part-filled KV block changed half the critiques (a 16-token cut fails
    this test), so it guards the openvino engine's prefix prefill too."""
    rows = {}
    for engine in ("openvino", "transformers"):
        out = tmp_path / engine
        command = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", "harmless", "--engine", engine]
        result = subprocess.run(  # 64 new tokens, not 128: half the time, and the cut above still shows at 64
            [*command, *FP32[engine], "--limit", "16", "--max-new-tokens", "64", "-o", str(out)],
            capture_output=True, text=True, timeout=3600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        names = {p.name for p in out.iterdir()}
        assert names == {"README.md", "generations.jsonl", "manifest.json", "prefs.jsonl", "sft.jsonl"}
        rows[engine] = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows["openvino"]) == 16 and all(row["initial"] and row["steps"] for row in rows["openvino"])
    manifest = json.loads((tmp_path / "openvino" / "manifest.json").read_text())
    assert manifest["options"]["engine"] == "openvino" and "openvino-genai" in manifest["versions"]

    def texts(engine):
        return [(row["initial"], row["steps"], row["final"], row["finish_reason"]) for row in rows[engine]]

    assert texts("openvino") == texts("transformers")


@pytest.mark.slow
def test_the_laptop_recipe_makes_the_same_contrast_pairs_on_both_engines(default_model_path, tmp_path):
    """recipes/zephyr_cai.yaml generates with `engine: auto`, so openvino where the extra is installed. Its
    runs make contrast pairs (the default model fails cai judge-check); greedy, both engines in fp32 must
    write the same pairs, or the recipe's data would depend on what is installed."""
    from cai_kit.training.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "zephyr_cai.yaml")
    assert {run.engine for run in recipe.generate} == {"auto"}
    texts = {}
    for engine in ("transformers", "openvino"):
        out = tmp_path / engine
        command = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", "harmless", "-p", "red_team",
                   "--pairs", "contrast", "--limit", "6", "--max-new-tokens", "48", "--engine", engine, *FP32[engine],
                   "-o", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [json.loads(line) for line in (out / "prefs.jsonl").read_text().splitlines()]
        texts[engine] = {row["id"]: (row["chosen"], row["rejected"]) for row in rows}
    assert len(texts["transformers"]) == 6
    assert texts["openvino"] == texts["transformers"]


def test_the_load_benchmark_times_each_variant_in_fresh_processes(engines, tiny_model_path):
    """`benchmarks/openvino_load.py` on the tiny model (IR cached by the fixture): one run of each variant."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "openvino_load.py"
    done = subprocess.run([sys.executable, str(script), "--model", tiny_model_path, "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "-fp32, cpu " in lines[0]
    for label, line in zip(("(s) serial", "(t) overlap", "(e) engine"), lines[1:4]):
        assert line.startswith(label) and float(line.split()[3]) > 0
    assert lines[4].startswith("s/e = ") and " t/e = " in lines[4]
