"""The recipe: one YAML file that names every stage of `cai train` (generate, sft, dpo, eval).

We type only what cai-kit interprets. `sft.trl` and `dpo.trl` pass through to `trl.SFTConfig` and
`trl.DPOConfig`, which are built here, when the recipe loads, so a bad or renamed TRL option (TRL
renames often: `max_seq_length`, `warmup_ratio`, `max_prompt_length` all went) fails at
`cai validate`, with its file and line, not an hour into a run.

Relative paths in a recipe (constitutions, data files, output_dir, accelerate_config) are relative
to the directory `cai` runs in, as they are for `cai generate`. Constitutions and accelerate configs may
also be shipped names (`harmless`, `deepspeed_zero3`: core/shipped.py), so the shipped recipes run
anywhere, and `cai train tiny` finds the shipped recipe itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from cai_kit.core.config_file import KeyPath, format_key_path, line_of, read_yaml, validation_problems
from cai_kit.core.errors import UsageError
from cai_kit.core.precision import Precision
from cai_kit.core.shipped import resolve_yaml
from cai_kit.evaluation.options import RECIPE_OWNED as EVAL_OWNED
from cai_kit.evaluation.options import EvalSettings
from cai_kit.generation.options import GenerateOptions
from cai_kit.training.accelerate_config import config_problems
from cai_kit.training.overrides import blame_overrides, parse_key, path_problem, round_data, set_path
from cai_kit.training.recipe_inputs import input_problems
from cai_kit.training.trl_options import build_trl_config, precision_of

Stage = Literal["generate", "sft", "dpo", "eval"]
STAGES: tuple[Stage, ...] = ("generate", "sft", "dpo", "eval")
# Keys of a generate run that the recipe sets itself: one model trains on its own data, and each run
# writes under output_dir so a rerun finds it.
RECIPE_OWNED = {"model": "set once, by the recipe's top-level 'model'",
                "out": "set by the recipe (output_dir/generate/<index>-<constitution>)",
                "model_licences": "set once, by the recipe's top-level 'model_licences'",
                "accept_licence_risk": "set once, by the recipe's top-level 'accept_licence_risk'"}


class Lora(BaseModel):
    """LoRA adapter settings (Hu et al. 2021); ignored when `full_finetune` is on."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class TrainStage(BaseModel):
    """The `sft` or `dpo` section: LoRA by default, a full fine-tune on request, TRL options passed through."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    full_finetune: bool = False
    lora: Lora = Field(default_factory=lambda: Lora())
    trl: dict[str, Any] = Field(default_factory=dict)


class GenerateRun(GenerateOptions):
    """One `cai generate` run inside a recipe; `model` and `out` are set by the recipe."""

    weight: float = Field(
        default=1.0, ge=0.0, description="Share of this run's rows in training: 0.5 keeps half, 2 repeats them."
    )
    # 0 lets only DPO, which also sees the rejected side, learn from a run's chosen answers.
    sft_weight: float | None = Field(
        default=None, ge=0.0, description="Share of this run's rows in SFT alone (unset: weight); 0 keeps them out "
        "of SFT, so only DPO learns from them."
    )

    @property
    def trains_nothing(self) -> bool:
        """Weight 0 in SFT and DPO alike: nothing of this run would be trained on, so it is not generated."""
        return self.weight == 0 and not self.sft_weight


class DataFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    weight: float = Field(default=1.0, ge=0.0)


class DataSection(BaseModel):
    """Extra JSONL files mixed in with the generated data, and the held-out fraction."""

    model_config = ConfigDict(extra="forbid")

    sft: list[DataFile] = Field(default_factory=list)  # rows {"messages": [...]} or {"prompt", "completion"}
    prefs: list[DataFile] = Field(default_factory=list)  # rows {"prompt", "chosen", "rejected"}
    test_split: float = Field(default=0.1, ge=0.0, lt=1.0)
    # Pairs whose judge `score` (the judge's preference for `chosen`, from `--pairs judge`) is below this
    # are left out of DPO; pairs without a score (revision, contrast) are always kept.
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    # Soft labels: each scored pair is flipped (chosen and rejected swapped) with probability 1 - score,
    # seeded, so the DPO loss is, in expectation, the soft-label loss -(s log sig(b h) + (1 - s) log sig(-b h))
    # of conservative DPO: a 0.6 pair pulls weakly, a 0.95 pair strongly. Unscored pairs are never flipped.
    soft_labels: bool = False


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    output_dir: str | None = None  # default: runs/<recipe file name>
    seed: int = 0
    trust_remote_code: bool = False
    model_licences: dict[str, str] = Field(default_factory=dict)  # {model spec: licence id} where a card lacks one
    accept_licence_risk: bool = False  # train even where a producer's licence forbids it (licensing/)
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    generate: list[GenerateRun] = Field(default_factory=list)
    data: DataSection = Field(default_factory=lambda: DataSection())
    sft: TrainStage = Field(default_factory=TrainStage)
    dpo: TrainStage = Field(default_factory=TrainStage)
    eval: EvalSettings | None = None  # `cai eval`'s options; the recipe sets the model, baseline and folder
    processes: int = Field(
        default=1, ge=1, description="Training processes on each machine (one per GPU); more than one process "
        "in all runs the training stages under `accelerate launch`.")
    accelerate_config: str | None = Field(
        default=None, description="An accelerate config file or shipped name (deepspeed_zero3, fsdp) for GPUs; "
        "none: DDP (gloo ranks on a CPU).")
    num_machines: int | None = Field(
        default=None, ge=1, description="Machines that train together; default: $SLURM_NNODES, else 1. Generate "
        "stages, data mixing and eval run on machine 0 only.")
    machine_rank: int | None = Field(
        default=None, ge=0, description="This machine's rank (0 runs generate and eval); default: $SLURM_NODEID "
        "or $NODE_RANK. Usually given per machine: --set machine_rank=N.")
    main_process_ip: str | None = Field(
        default=None, description="Address of machine 0, where the ranks meet; default: $MASTER_ADDR.")
    main_process_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port on machine 0 where the ranks meet; default: $MASTER_PORT, "
        "else 29500 with several machines (a free port with one).")
    # Iterative self-alignment: round r > 1 regenerates the data with round r-1's model and trains that
    # model again, in output_dir/round-<r>, each round evaluated against the recipe's base model.
    rounds: int = Field(default=1, ge=1)
    # Changes for round r and every round after it ({2: {"sft.lora.r": 4}}), as `--set` would make them.
    round_overrides: dict[int, dict[str, Any]] = Field(default_factory=dict)

    _base_model: str | None = PrivateAttr(default=None)  # set on the recipes of rounds after the first
    _round: int = PrivateAttr(default=1)  # which round this recipe runs (for_round sets 2, 3, ...)

    @property
    def out(self) -> Path:
        return Path(self.output_dir or "runs/train")

    @property
    def base_model(self) -> str:
        """The model round 1 started from: every round's eval baseline."""
        return self._base_model or self.model

    @property
    def round_index(self) -> int:
        return self._round

    def for_round(self, index: int, model: str) -> Recipe:
        """The recipe of round `index` (2, 3, ...): starts from `model`, writes under output_dir/round-<index>,
        with the `round_overrides` of rounds 2 to `index` applied."""
        data = round_data(self.model_dump(exclude_unset=True), self.round_overrides, index)
        data.pop("round_overrides", None)  # applied: the round's recipe.yaml holds the values it ran with
        data.update(model=model, output_dir=str(self.out / f"round-{index}"), seed=self.seed + index - 1)
        later = Recipe.model_validate(data)
        later._base_model = self.base_model
        later._round = index
        return later

    def round_changes(self, index: int) -> list[str]:
        """The `round_overrides` in force in round `index`, as `key=value` strings (for the log)."""
        return [f"{key}={value}" for entry in sorted(self.round_overrides) if entry <= index
                for key, value in self.round_overrides[entry].items()]

    def generate_dir(self, index: int) -> Path:
        return self.out / "generate" / f"{index}-{Path(self.generate[index].constitution).stem}"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (`key.path=value`), validate and check a recipe; raise UsageError with every problem.

    This builds `trl.SFTConfig` and `trl.DPOConfig` from the `trl` sections, but loads no model.
    """
    path = resolve_yaml(path, ("recipe",))
    data, lines = read_yaml(path)
    if data is None:
        raise UsageError(f"{path}:1: (top level): the file is empty; a recipe names at least its generate runs or "
                         "data files (see `cai cp tiny my_recipe.yaml`)")
    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: (top level): expected a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    problems = _owned_key_problems(path, data, lines)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems += validation_problems(path, err, lines, Recipe)
    output_dir = str(Path(recipe.output_dir if recipe and recipe.output_dir else Path("runs") / Path(path).stem))
    # Checked even when the rest of the recipe is broken, so every problem shows at once.
    problems += [f"{path}:{line_of(lines, key)}: {format_key_path(key)}: {message}" for key, message in
                 _trl_problems(data, recipe.seed if recipe else 0, bool(recipe and recipe.trust_remote_code),
                               Path(output_dir))]
    # Files and engines are checked on the raw data, so they show even when the schema has problems too.
    problems += _file_problems(path, data, lines) + _engine_problems(path, data, lines)
    problems += config_problems(path, data, lines)  # the accelerate config, read by accelerate's own parser
    problems += input_problems(path, data, lines)  # constitutions, prompt sets, data rows, models
    problems += _round_problems(path, data, lines, Path(output_dir))
    out = Path(str(data.get("output_dir") or output_dir))  # the raw value: checked when the schema fails too
    if out.exists() and not out.is_dir():
        problems.append(f"{path}:{line_of(lines, ('output_dir',))}: output_dir: {out} is a file, not a folder; "
                        "name a folder (new, or one to resume)")
    if problems or recipe is None:
        raise UsageError(sorted(blame_overrides(problems, path, overrides), key=_line_number))
    recipe.output_dir = output_dir
    return recipe


def _trl_problems(data: dict[str, Any], seed: int, trust: bool, out: Path) -> list[tuple[KeyPath, str]]:
    """The `sft.trl` and `dpo.trl` sections built into TRL configs: the problems, each with its key path."""
    problems = []
    for stage in ("sft", "dpo"):
        section = data.get(stage)
        given = section.get("trl") if isinstance(section, dict) else None
        problems += build_trl_config(stage, given if isinstance(given, dict) else {}, seed, trust, out)[1]
    return problems


# Keys a round may not change: they are what makes it a round.
ROUND_FIXED = {"model": "each round starts from the model of the round before it",
               "output_dir": "each round writes to output_dir/round-<r>",
               "rounds": "set once, for the whole run", "round_overrides": "set once, for the whole run"}


def _round_problems(path: str | Path, data: dict[str, Any], lines: dict[KeyPath, int], out: Path) -> list[str]:
    """`round_overrides`: later rounds only, keys that exist, and a valid recipe in every round it changes."""
    given = data.get("round_overrides")
    if not isinstance(given, dict):
        return []  # the schema reports it
    problems = []
    given = {int(key) if isinstance(key, str) and key.isdigit() else key: value for key, value in given.items()}
    for index, changes in given.items():
        where: KeyPath = ("round_overrides", str(index))  # read_yaml keeps mapping keys as written
        at = f"{path}:{line_of(lines, where)}: round_overrides.{index}"
        if not isinstance(index, int) or index < 2:
            # A round past `rounds` is checked but not run, so `--set rounds=1` keeps working.
            problems.append(f"{at}: not a later round: round 1 is the recipe itself, and later rounds are 2, 3, ...")
            continue
        if not isinstance(changes, dict):
            continue
        named = [(key, ROUND_FIXED.get(str(parse_key(str(key))[0])) or path_problem(Recipe, data, parse_key(str(key))))
                 for key in changes]
        problems += [f"{path}:{line_of(lines, (*where, key))}: round_overrides.{index}.{key}: {problem}"
                     for key, problem in named if problem]
    if problems:
        return problems
    for index in sorted(key for key in given if isinstance(given[key], dict)):
        merged = round_data(data, given, index)
        found: list[tuple[KeyPath, str]] = []
        try:
            Recipe.model_validate(merged)
        except ValidationError as err:
            found += [(tuple(error["loc"]), error["msg"]) for error in err.errors()]
        found += _trl_problems(merged, merged.get("seed", 0), merged.get("trust_remote_code", False), out)
        for key_path, message in found:
            # The line of the change that made the problem, where one did (else the round's own line).
            key = next((key for key in given[index] if _overlaps(parse_key(str(key)), key_path)), None)
            line = line_of(lines, ("round_overrides", str(index)) + ((str(key),) if key is not None else ()))
            problems.append(f"{path}:{line}: round_overrides.{index}: in round {index}, "
                            f"{format_key_path(key_path)}: {message}")
    return problems


def _overlaps(parts: list[str | int], key_path: KeyPath) -> bool:
    shorter = min(len(parts), len(key_path))
    return tuple(parts[:shorter]) == tuple(key_path[:shorter])


def _line_number(problem: str) -> int:
    parts = problem.split(":", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def parse_stages(text: str) -> list[str]:
    """`--stages sft,dpo` -> ["sft", "dpo"]; an unknown stage is an error."""
    stages = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise UsageError(f"--stages {text}: choose from {','.join(STAGES)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return stages


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, as written plus overrides (defaults left out), so it can be loaded again."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (value parsed as YAML); an unknown key path is an error."""
    problems = []
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = parse_key(key)
        problem = "expected key.path=value" if not sep or not key.strip() else path_problem(Recipe, data, parts)
        if problem:
            problems.append(f"--set {override}: {problem}")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problems.append(f"--set {override}: value is not valid YAML ({str(err).splitlines()[0]})")
            continue
        set_path(data, parts, value)
    if problems:
        raise UsageError(problems)
    return data


def _owned_key_problems(path: str | Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> list[str]:
    """Keys the recipe sets itself, set in a generate run or the eval section: one problem each (then dropped,
    so the schema does not report them a second time)."""
    eval_owned = "set by the recipe (the trained model, the recipe's model, output_dir/eval)"
    sections: list[tuple[KeyPath, Any, dict[str, str]]] = [
        (("generate", index), run, RECIPE_OWNED) for index, run in enumerate(_list(data.get("generate")))
    ]
    sections.append((("eval",), data.get("eval"), dict.fromkeys(EVAL_OWNED, eval_owned)))
    problems = []
    for where, section, owned in sections:
        for key in owned.keys() & (section.keys() if isinstance(section, dict) else set()):
            key_path = (*where, key)
            problems.append(f"{path}:{line_of(lines, key_path)}: {format_key_path(key_path)}: {owned[key]}")
            del section[key]
    return problems


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _file_problems(path: str | Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> list[str]:
    """Files the recipe names that do not exist (read from the raw data: a schema problem elsewhere must not
    hide them). Constitutions and accelerate configs may be shipped names."""
    checks: list[tuple[KeyPath, Any]] = []
    section = data.get("data")
    section = section if isinstance(section, dict) else {}
    for kind in ("sft", "prefs"):
        checks += [(("data", kind, index, "path"), item.get("path") if isinstance(item, dict) else None)
                   for index, item in enumerate(_list(section.get(kind)))]
    problems = [f"{path}:{line_of(lines, key)}: {format_key_path(key)}: file not found: {file}"
                for key, file in checks if isinstance(file, str) and not Path(file).is_file()]
    named: list[tuple[KeyPath, Any, str]] = [
        (("accelerate_config",), data.get("accelerate_config"), "accelerate config")]
    named += [(("generate", index, "constitution"), run.get("constitution"), "constitution")
              for index, run in enumerate(_list(data.get("generate"))) if isinstance(run, dict)]
    if isinstance(data.get("eval"), dict):
        named.append((("eval", "constitution"), data["eval"].get("constitution"), "constitution"))
    for key, spec, kind in named:
        if not isinstance(spec, str):
            continue
        try:
            resolve_yaml(spec, (kind,))
        except UsageError as err:
            problems += [f"{path}:{line_of(lines, key)}: {format_key_path(key)}: {line}" for line in err.problems]
    return problems


def _engine_problems(path: str | Path, data: dict[str, Any], lines: dict[KeyPath, int]) -> list[str]:
    """Engine names and engine options, checked without loading an engine."""
    from cai_kit.engines import engine_problems

    runs = enumerate(_list(data.get("generate")))
    sections: list[tuple[KeyPath, Any]] = [(("generate", index), run) for index, run in runs]
    sections.append((("eval",), data.get("eval")))
    problems = []
    for where, section in sections:
        if not isinstance(section, dict):
            continue
        engine, options = section.get("engine", "transformers"), section.get("engine_options") or {}
        for message in engine_problems(str(engine), options if isinstance(options, dict) else {}):
            key = (*where, "engine" if message.startswith("unknown engine") else "engine_options")
            problems.append(f"{path}:{line_of(lines, key)}: {format_key_path(key)}: {message}")
    return problems


def trl_config(recipe: Recipe, stage: str) -> Any:
    """Build the `trl.SFTConfig` / `trl.DPOConfig` for a stage; raise UsageError naming the key on failure."""
    config, problems = build_trl_config(
        stage, getattr(recipe, stage).trl, recipe.seed, recipe.trust_remote_code, recipe.out
    )
    if problems:
        raise UsageError([f"{format_key_path(key)}: {message}" for key, message in problems])
    return config


def stage_precision(recipe: Recipe, stage: str) -> Precision:
    """The precision a stage trains in: its `trl.bf16` (true, false, or auto/absent: the hardware's choice)."""
    return precision_of(getattr(recipe, stage).trl)
