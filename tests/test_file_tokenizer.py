"""The openvino engine's tokenizer read from the exported folder without transformers: it renders, tokenizes and
decodes as the transformers tokenizer does, is used only where a kept check says so, and a fresh process loading
the engine then imports neither transformers nor torch.

Needs the openvino extra for the engine tests (`pip install -e ".[dev,openvino]"`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cai_kit.engines import GenParams, load_engine
from cai_kit.engines.chat import encode_rendered, render_chat
from cai_kit.engines.file_tokenizer import (
    CHECK_FILE,
    PROBES,
    FileTokenizer,
    check_against,
    disagreement,
    kept_verdict,
    library_versions,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
MORE = [
    [{"role": "user", "content": "Explain why the sky is blue.\n\nUse two sentences."}],
    [
        {"role": "system", "content": "Critique the reply against the principle."},
        {"role": "user", "content": "Q: what is 2+2?\nA: 5"},
        {"role": "assistant", "content": "Critique: the answer is wrong"},
    ],
]


def tokenizer_folder(model: str, target: Path) -> Path:
    """The tokenizer files of a model folder, as the export copies them beside the IR."""
    target.mkdir()
    for name in TOKENIZER_FILES:
        if (Path(model) / name).is_file():
            shutil.copyfile(Path(model) / name, target / name)
    return target


@pytest.mark.parametrize("model", ["tiny_model_path", "default_model_path"])
def test_it_renders_tokenizes_and_decodes_as_transformers_does(model, request, tmp_path):
    source = request.getfixturevalue(model)
    reference = AutoTokenizer.from_pretrained(source)
    mine = FileTokenizer(tokenizer_folder(source, tmp_path / "tok"))
    assert disagreement(tmp_path / "tok", reference) is None
    assert mine.eos_token_id == reference.eos_token_id
    for conversation in PROBES + MORE:
        text = render_chat(mine, conversation)
        assert text == render_chat(reference, conversation)
        ids = encode_rendered(mine, [text])[0]
        assert ids == encode_rendered(reference, [text])[0]
        assert mine.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    prefilled = render_chat(mine, MORE[1])
    assert prefilled.endswith("Critique: the answer is wrong")  # the reply goes on from there


def test_a_template_it_renders_differently_fails_the_check(default_model_path, tmp_path):
    """A template using transformers' `generation` tag (which it does not handle) and one changed after the check
    are both caught: the kept verdict says to use transformers."""
    folder = tokenizer_folder(default_model_path, tmp_path / "tok")
    reference = AutoTokenizer.from_pretrained(default_model_path)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    assert disagreement(folder, reference).startswith("not loadable")
    assert check_against(folder, reference) is False
    assert kept_verdict(folder) is False
    (folder / "chat_template.jinja").write_text("{% for m in messages %}<{{ m['role'] }}>{{ m.content }}{% endfor %}")
    assert disagreement(folder, reference).startswith("rendered text differs")


def test_the_verdict_holds_only_for_the_versions_it_was_made_with(default_model_path, tmp_path):
    folder = tokenizer_folder(default_model_path, tmp_path / "tok")
    assert kept_verdict(folder) is None
    assert check_against(folder, AutoTokenizer.from_pretrained(default_model_path)) is True
    assert kept_verdict(folder) is True
    verdict = json.loads((folder / CHECK_FILE).read_text())
    assert verdict["versions"] == library_versions()
    verdict["versions"]["tokenizers"] = "0.0.1"
    (folder / CHECK_FILE).write_text(json.dumps(verdict))
    assert kept_verdict(folder) is None
    (folder / CHECK_FILE).write_text("{not json")
    assert kept_verdict(folder) is None


def test_what_it_does_not_handle_is_refused(default_model_path, tmp_path):
    folder = tokenizer_folder(default_model_path, tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    with pytest.raises(ValueError, match="clean_up_tokenization_spaces"):
        FileTokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink()
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="chat template"):
        FileTokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    FileTokenizer(folder)  # a template in tokenizer_config.json is read
    (folder / "tokenizer.json").unlink()  # a model with a slow tokenizer only
    with pytest.raises(ValueError, match="tokenizer.json"):
        FileTokenizer(folder)
    assert disagreement(folder, AutoTokenizer.from_pretrained(default_model_path)).startswith("not loadable")


FRESH_LOAD = """
import sys
from cai_kit.engines import load_engine
engine = load_engine("openvino", sys.argv[1], inference_precision="f32", progress=False)
from cai_kit.engines import GenParams
reply = engine.generate([[{"role": "user", "content": "Hi"}]], GenParams(max_new_tokens=4))[0]
print(type(engine.tokenizer).__name__, "transformers" in sys.modules, "torch" in sys.modules, reply.text)
"""


def test_after_the_first_load_the_engine_loads_without_transformers(tiny_model_path):
    """The first load checks the exported folder's tokenizer (with transformers); a fresh process then loads the
    engine and generates without importing transformers or torch, and writes the same reply."""
    first = load_engine("openvino", tiny_model_path, inference_precision="f32", progress=False)
    assert kept_verdict(first.folder) is True
    expected = first.generate([[{"role": "user", "content": "Hi"}]], GenParams(max_new_tokens=4))[0].text
    first.close()
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, tiny_model_path], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kind, transformers_imported, torch_imported, text = done.stdout.rstrip("\n").split(" ", 3)
    assert (kind, transformers_imported, torch_imported) == ("FileTokenizer", "False", "False")
    assert text == expected


def test_a_chat_template_option_or_a_failed_check_loads_the_transformers_tokenizer(tiny_model_path, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    engine = load_engine("openvino", tiny_model_path, chat_template=str(template), progress=False)
    assert type(engine.tokenizer).__name__ != "FileTokenizer"
    assert engine.render([{"role": "user", "content": "Hi"}]) == "user: Hi\nassistant:"
    folder = engine.folder
    engine.close()
    verdict = json.loads((folder / CHECK_FILE).read_text())
    (folder / CHECK_FILE).write_text(json.dumps({**verdict, "agrees": False}))
    try:
        engine = load_engine("openvino", tiny_model_path, progress=False)
        assert type(engine.tokenizer).__name__ != "FileTokenizer"
        engine.close()
    finally:
        (folder / CHECK_FILE).write_text(json.dumps(verdict))

