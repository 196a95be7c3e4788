"""The licence guard: the table's verdicts, licence resolution, self-alignment, the stop and its override, cards.

Model folders with a given licence are copies of the tiny random model (built in code) whose README front
matter names that licence, the way a Hugging Face model card does.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main
from cai_kit.core.errors import UsageError
from cai_kit.engines import Completion
from cai_kit.generation import data_card  # noqa: F401  imported before a test patches it (see below)
from cai_kit.generation.generate import run_generate
from cai_kit.generation.options import GenerateOptions
from cai_kit.licensing import licence_guard
from cai_kit.licensing.licence_guard import Producer, check_outputs, guard, parse_overrides, verdict
from cai_kit.licensing.licences import TERMS, normalise, notices, resolve_licence

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = """\
name: test
description: a small constitution for tests
principles:
  - name: harm
    critique: Say how the answer could hurt someone.
    revision: Rewrite it so it is safe.
"""

# What each table entry's outputs get when they would train an unrelated Apache-2.0 model. Written out
# by hand from the licence texts (not derived from the table), so a wrong table entry fails here.
EXPECTED = {
    "apache-2.0": "allowed",
    "mit": "allowed",
    "llama2": "forbidden",
    "llama3": "forbidden",
    "llama3.1": "restricted",
    "llama3.2": "restricted",
    "llama3.3": "restricted",
    "llama4": "restricted",
    "gemma": "restricted",
    "qwen": "restricted",
    "qwen-research": "restricted",
    "tongyi-qianwen": "forbidden",
    "mistral-research": "restricted",
    **{f"cc-by-nc{kind}-{version}": "restricted" for kind in ("", "-sa", "-nd") for version in ("2.0", "3.0", "4.0")},
}


@pytest.fixture(autouse=True)
def fresh_warnings():
    licence_guard._WARNED.clear()


@pytest.fixture
def licensed(tmp_path, tiny_model_path):
    """Make a copy of the tiny model whose card says `license: <licence>` (and optionally a base_model)."""

    def make(name: str, licence: str | None, base_model: str | None = None) -> str:
        folder = tmp_path / name
        shutil.copytree(tiny_model_path, folder)
        meta = (f"license: {licence}\n" if licence else "") + (f"base_model: {base_model}\n" if base_model else "")
        (folder / "README.md").write_text(f"---\n{meta}---\nA test model.\n" if meta else "A test model.\n")
        return str(folder)

    return make


def test_every_table_entry_has_an_expected_verdict():
    assert set(EXPECTED) == set(TERMS)


@pytest.mark.parametrize("licence", sorted(EXPECTED))
def test_table_verdict_for_training_another_model(licence):
    finding = verdict(Producer("critic", "org/producer", licence), "org/target", "apache-2.0")
    assert finding.level == EXPECTED[licence], finding.message
    assert TERMS[licence].clause in finding.message


@pytest.mark.parametrize(
    ("producer", "target", "level"),
    [
        ("llama2", "llama2", "allowed"),  # section 1.b.v excepts Llama 2 and its derivatives
        ("llama2", "llama3", "forbidden"),  # Llama 3 is not a Llama 2 derivative
        ("llama3", "llama3", "restricted"),  # allowed, with the 'Llama 3' name prefix and notice
        ("tongyi-qianwen", "tongyi-qianwen", "allowed"),
        ("llama2", "unknown", "forbidden"),  # cannot show the target is a Llama 2 model
    ],
)
def test_family_licences_allow_their_own_family(producer, target, level):
    assert verdict(Producer("judge", "org/a", producer), "org/b", target).level == level


def test_llama_3_1_outputs_carry_the_name_prefix_and_notice():
    finding = verdict(Producer("critic", "meta-llama/Llama-3.1-8B-Instruct", "llama3.1"), "org/b", "mit")
    assert finding.level == "restricted"
    assert "'Llama'" in finding.message and "Built with Llama" in finding.message
    assert any('Display: "Built with Llama"' in line for line in notices(["llama3.1"]))
    assert any("Gemma Terms of Use found at ai.google.dev/gemma/terms" in line for line in notices(["gemma"]))
    assert notices(["apache-2.0", "mit"]) == []


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("Apache 2.0", "apache-2.0"),
        ("MIT", "mit"),
        ("MRL", "mistral-research"),
        ("llama-2", "llama2"),
        ("", "unknown"),
    ],
)
def test_licence_names_are_normalised(written, expected):
    assert normalise(written) == expected


def test_resolution_order_card_override_unknown(licensed, tmp_path):
    llama = licensed("llama", "llama2")
    assert resolve_licence(llama) == ("llama2", "model card")
    assert resolve_licence(llama, {llama: "MIT"}) == ("mit", "--model-licence")
    assert resolve_licence(licensed("bare", None)) == ("unknown", "no `license:` in its model card")
    assert resolve_licence("default")[0] == "apache-2.0"
    custom = licensed("custom", "other")
    text = Path(custom, "README.md").read_text().replace("license: other\n", "license: other\nlicense_name: qwen\n")
    Path(custom, "README.md").write_text(text)
    assert resolve_licence(custom) == ("qwen", "model card")
    assert resolve_licence("org/not-cached-anywhere")[0] == "unknown"
    with pytest.raises(UsageError, match="not found"):
        resolve_licence(str(tmp_path / "missing"))


def test_self_alignment_passes_even_under_a_family_licence(licensed):
    llama = licensed("llama", "llama2")
    assert verdict(Producer("writer", llama, "llama2"), llama, "llama2").level == "allowed"
    # A model trained from the producer (its card names it as base_model) is the same lineage.
    child = licensed("child", "apache-2.0", base_model=llama)
    finding = verdict(Producer("critic", llama, "llama2"), child, "apache-2.0")
    assert finding.level == "allowed" and "self-alignment" in finding.message
    grandchild = licensed("grandchild", "apache-2.0", base_model=child)
    assert verdict(Producer("critic", llama, "llama2"), grandchild, "apache-2.0").level == "allowed"
    # The default model is known by its hub name too.
    trained = licensed("trained", "apache-2.0", base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert verdict(Producer("writer", "default", "apache-2.0"), trained, "apache-2.0").level == "allowed"
    # An unrelated model is not.
    other = licensed("other", "apache-2.0")
    assert verdict(Producer("critic", llama, "llama2"), other, "apache-2.0").level == "forbidden"


def test_forbidden_stops_with_one_line_naming_the_clause_and_override():
    producers = [Producer("critic", "org/llama", "llama2"), Producer("writer", "org/mine", "apache-2.0")]
    with pytest.raises(UsageError) as err:
        guard(producers, "org/mine", "apache-2.0", False, "pass --accept-licence-risk")
    assert len(err.value.problems) == 1
    line = err.value.problems[0]
    assert "section 1.b.v" in line and "--accept-licence-risk" in line and "org/llama" in line and "\n" not in line
    findings = guard(producers, "org/mine", "apache-2.0", True, "pass --accept-licence-risk")
    assert [f.level for f in findings] == ["forbidden", "allowed"]


def test_restricted_warns_and_goes_on(capsys):
    findings = guard([Producer("judge", "google/gemma-2-2b-it", "gemma")], "org/mine", "apache-2.0", False, "x")
    assert [f.level for f in findings] == ["restricted"]
    err = capsys.readouterr().err
    assert "licence warning" in err and "Gemma Model Derivative" in err and "google/gemma-2-2b-it" in err


def test_unknown_licence_warns_once_and_does_not_stop(capsys):
    producers = [Producer("critic", "org/mystery", "unknown"), Producer("judge", "org/mystery", "unknown")]
    for _ in range(3):
        findings = guard(producers, "org/mine", "apache-2.0", False, "x")
    assert [f.level for f in findings] == ["unknown"]  # one finding for one model, roles merged
    assert findings[0].producer.role == "critic, judge"
    err = capsys.readouterr().err
    assert err.count("org/mystery: licence unknown") == 1 and "--model-licence org/mystery=ID" in err
    check_outputs([Producer("critic", "org/odd", "wtfpl")], "org/mine", "mit")
    guard([Producer("critic", "org/odd", "wtfpl")], "org/mine", "mit", False, "x")
    assert "licence 'wtfpl' is not in cai-kit's table" in capsys.readouterr().err


def test_parse_overrides():
    assert parse_overrides(["llama2", "org/x=MIT"], "m") == {"m": "llama2", "org/x": "MIT"}
    with pytest.raises(UsageError, match="MODEL=LICENCE"):
        parse_overrides(["mit"], None)
    with pytest.raises(UsageError, match="MODEL=LICENCE"):
        parse_overrides(["org/x="], None)


# -- cai generate -----------------------------------------------------------------------------------


class NumberedEngine:
    """A stand-in engine: a different sentence for every conversation it is given."""

    def __init__(self):
        self.count = 0

    def generate(self, conversations, params):
        self.count += len(conversations)
        return [
            Completion(text=f"Answer number {self.count + k}.", finish_reason="stop", tokens=3)
            for k in range(len(conversations))
        ]


@pytest.fixture
def generate_setup(tmp_path):
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}?"}) + "\n" for i in range(4)))
    return constitution, prompts, tmp_path / "out"


def test_generate_stops_before_any_work_when_a_critic_forbids_it(generate_setup, licensed, monkeypatch):
    # A separate critic is not an option yet; model_roles is where it will come from.
    constitution, prompts, out = generate_setup
    llama = licensed("llama", "llama2")
    roles = lambda options: {"writer": options.model, "critic": llama, "reviser": options.model}  # noqa: E731
    # Every module that imported model_roles by name is patched; each must already be imported (as at the top of
    # this file), or its first import here would copy the patched function in and keep it after the test.
    for module in ("licensing.licence_guard", "generation.generate", "generation.rows", "generation.data_card"):
        monkeypatch.setattr(f"cai_kit.{module}.model_roles", roles)
    options = GenerateOptions(constitution=str(constitution), prompts=[str(prompts)], out=str(out), batch_size=4)
    with pytest.raises(UsageError, match=r"section 1\.b\.v.*--accept-licence-risk"):
        run_generate(options, engine=NumberedEngine())
    assert not out.exists()  # nothing written
    accepted = options.model_copy(update={"accept_licence_risk": True})
    run_generate(accepted, engine=NumberedEngine())
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert all(row["models"] == {"writer": "default", "critic": llama, "reviser": "default"} for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["licences"] == {"default": "apache-2.0", llama: "llama2"}
    card = (out / "README.md").read_text()
    assert "| `default` | writer, reviser | apache-2.0 |" in card
    assert f"| `{llama}` | critic | llama2 |" in card and "section 1.b.v" in card


def test_generate_through_the_cli_records_provenance_and_licence(generate_setup, licensed):
    constitution, prompts, out = generate_setup
    model = licensed("gemma-like", "gemma")
    args = ["generate", "-c", str(constitution), "-p", str(prompts), "-m", model, "-o", str(out)]
    args += ["--max-new-tokens", "4", "--temperature", "1.0", "--few-shot", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert rows and all(row["models"] == {"writer": model, "critic": model, "reviser": model} for row in rows)
    card = (out / "README.md").read_text()
    assert f"| `{model}` | writer, critic, reviser | gemma |" in card
    assert "Gemma is provided under and subject to the Gemma Terms of Use" in card  # the notice it requires
    # An override replaces what the card says, and is recorded.
    result = CliRunner().invoke(main, [*args, "--model-licence", "mit", "--force-new"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["licences"] == {model: "mit"}


# -- cai train --------------------------------------------------------------------------------------


def _recipe(tmp_path: Path, data: Path, model: str, extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""model: {model}
output_dir: {tmp_path / "run"}
stages: [sft]
{extra}
data:
  test_split: 0.0
  sft: [{{path: {data}}}]
sft:
  lora: {{r: 2, alpha: 4, dropout: 0.0}}
  trl: {{max_steps: 1, per_device_train_batch_size: 2, bf16: false, activation_checkpointing: false,
         disable_tqdm: true, save_strategy: 'no', report_to: none}}
""")
    return path


def _dataset(folder: Path, models: dict[str, str], licences: dict[str, str]) -> Path:
    """An SFT file beside a manifest like `cai generate` writes."""
    folder.mkdir(parents=True)
    rows = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(4)
    ]
    (folder / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = {"model": models["writer"], "models": models, "licences": licences}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "sft.jsonl"


def test_train_stops_on_a_llama2_dataset_then_trains_with_the_override(tmp_path, licensed):
    llama = licensed("llama", "llama2")
    data = _dataset(tmp_path / "data", {"writer": llama, "critic": llama, "reviser": llama}, {llama: "llama2"})
    recipe = _recipe(tmp_path, data, "tiny-random")
    result = CliRunner().invoke(main, ["train", str(recipe)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "section 1.b.v" in errors[0] and "--accept-licence-risk" in errors[0]
    assert "accept_licence_risk: true" in errors[0]
    assert not (tmp_path / "run").exists()  # stopped before any work

    result = CliRunner().invoke(main, ["train", str(recipe), "--accept-licence-risk"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "| `tiny-random` | trained base model | apache-2.0 |" in card
    assert f"| `{llama}` | writer, critic, reviser (data.sft[0]) | llama2 |" in card


def test_train_self_alignment_on_its_own_data_passes(tmp_path, licensed):
    llama = licensed("llama", "llama2")
    data = _dataset(tmp_path / "data", {"writer": llama, "critic": llama, "reviser": llama}, {llama: "llama2"})
    from cai_kit.licensing.licence_guard import check_recipe
    from cai_kit.training.recipe import load_recipe

    findings = check_recipe(load_recipe(_recipe(tmp_path, data, llama)))
    assert [f.level for f in findings] == ["allowed"] and "self-alignment" in findings[0].message
    # The recipe key does what the flag does, and a licence override in the recipe is honoured.
    other = licensed("other", "apache-2.0")
    with pytest.raises(UsageError, match="section 1.b.v"):
        check_recipe(load_recipe(_recipe(tmp_path, data, other)))
    assert check_recipe(load_recipe(_recipe(tmp_path, data, other, "accept_licence_risk: true")))
    relabelled = load_recipe(_recipe(tmp_path, data, other, f"model_licences: {{{llama}: mit}}"))
    assert [f.level for f in check_recipe(relabelled)] == ["allowed"]


def test_train_warns_once_about_data_without_a_manifest(tmp_path, capsys):
    data = tmp_path / "loose.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    )
    from cai_kit.licensing.licence_guard import check_recipe
    from cai_kit.training.recipe import load_recipe

    recipe = load_recipe(_recipe(tmp_path, data, "tiny-random"))
    check_recipe(recipe)
    check_recipe(recipe)
    assert capsys.readouterr().err.count("has no cai-kit manifest.json") == 1


def test_train_checks_each_generate_run_once_before_its_first_stage(tmp_path, monkeypatch):
    """`cai train` checks every producer of the recipe's data up front (check_recipe); its generate runs do
    not check the same models a second time."""
    from cai_kit.generation import generate
    from cai_kit.licensing import licence_guard
    from cai_kit.training import train
    from cai_kit.training.recipe import load_recipe

    calls: list[str] = []
    real_guard = licence_guard.guard
    monkeypatch.setattr(licence_guard, "guard", lambda *a, **k: calls.append("guard") or real_guard(*a, **k))
    monkeypatch.setattr(generate, "check_generate", lambda options: calls.append("generate") or [])
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml", [f"output_dir={tmp_path / 'run'}", "generate.0.limit=2",
                                                          "generate.1.limit=2"])
    monkeypatch.chdir(REPO)
    train.run_train(recipe, ["generate"])
    assert calls == ["guard"]  # one check of the whole recipe, none per generate run
    assert len(list((tmp_path / "run" / "generate").iterdir())) == 2


def test_recipe_licence_keys_are_top_level_only(tmp_path):
    from cai_kit.training.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("generate:\n  - constitution: constitutions/harmless.yaml\n    accept_licence_risk: true\n")
    with pytest.raises(UsageError, match=r"generate\[0\]\.accept_licence_risk: set once"):
        load_recipe(path)


# -- cai licence ------------------------------------------------------------------------------------


def test_licence_command_prints_licences_and_verdicts(licensed):
    llama = licensed("llama", "llama2")
    result = CliRunner().invoke(main, ["licence", "default", llama, "--target", "tiny-random"])
    assert result.exit_code == 0, result.output
    assert "default: apache-2.0 (embedded default model)" in result.output
    assert f"{llama}: llama2 (model card)" in result.output
    assert f"forbidden: outputs of {llama}" in result.output and "section 1.b.v" in result.output
    assert "allowed: outputs of default" in result.output
    result = CliRunner().invoke(main, ["licence", llama, "--model-licence", "llama3.1"])
    assert "llama3.1 (--model-licence)" in result.output and "Built with Llama" in result.output
    result = CliRunner().invoke(main, ["licence", "./no/such/folder"])
    assert result.exit_code == 2 and "not found" in result.output


def test_docs_table_lists_every_entry():
    readme = (REPO / "docs" / "licence-guard.md").read_text()
    # The 2.0 and 3.0 Creative Commons versions are listed with their 4.0 row.
    shown = {re.sub(r"^(cc-.*)-[23]\.0$", r"\1-4.0", licence) for licence in TERMS}
    missing = [licence for licence in shown if f"`{licence}`" not in readme]
    assert not missing
