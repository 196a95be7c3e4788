"""TRL's options, passed through a recipe's `sft.trl` and `dpo.trl` sections and built into `trl.SFTConfig` /
`trl.DPOConfig` when the recipe loads, so a bad or renamed option fails at `cai validate` with its key, not
an hour into a run. `bf16: auto` (or no `bf16`) is resolved here from the hardware."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cai_kit.core.config_file import KeyPath
from cai_kit.core.precision import Precision, training_precision
from cai_kit.core.suggest import did_you_mean

# TRL and transformers options that went away, with what replaced them; difflib cannot guess these.
RENAMED = {
    "max_seq_length": "'max_length'",
    "max_prompt_length": "'max_length' (TRL no longer truncates prompts separately)",
    "warmup_ratio": "'warmup_steps' (a value below 1 is a fraction of the steps)",
    "evaluation_strategy": "'eval_strategy'",
    "torch_dtype": "'model_init_kwargs: {dtype: ...}'",
    "no_cuda": "'use_cpu'",
    "rpo_alpha": "'loss_type: [sigmoid, sft]' with 'loss_weights: [1.0, ALPHA]' (RPO: DPO plus the chosen NLL)",
}
# DPO losses that read `label_smoothing`; the others (sigmoid, ipo, ...) ignore it without a word.
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")


def trl_config_class(stage: str) -> type:
    from trl import DPOConfig, SFTConfig

    return SFTConfig if stage == "sft" else DPOConfig


def precision_of(trl: dict[str, Any]) -> Precision:
    """A `trl` section's precision: its `bf16` (true, false, or auto/absent: the hardware's choice)."""
    return training_precision(trl.get("bf16", "auto"), fp16=trl.get("fp16") is True)


def build_trl_config(stage: str, given: dict[str, Any], seed: int, trust_remote_code: bool,
           out: Path) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """Build a stage's TRL config from the recipe's `trl` options; return (config or None, problems)."""
    import torch

    config_class = trl_config_class(stage)
    fields = {field.name for field in dataclasses.fields(config_class) if field.init}
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {"seed": seed, "trust_remote_code": trust_remote_code}
    if not torch.cuda.is_available():
        # transformers refuses bf16 on a host without a GPU unless `use_cpu` is set, and there CPU is the
        # only choice anyway. (So a GPU recipe also validates on a laptop.)
        values["use_cpu"] = True
    problems: list[tuple[KeyPath, str]] = []
    try:  # `bf16: auto` (or no bf16): resolved here, so TRL sees true or false (TRL's own default is true)
        values["bf16"] = precision_of(given).bf16
    except ValueError as err:
        problems.append(((stage, "trl", "bf16"), str(err)))
    for key, value in given.items():
        key_path: KeyPath = (stage, "trl", key)
        if key == "bf16":
            continue
        if key == "output_dir":
            problems.append((key_path, f"set by cai-kit ({out / stage / 'checkpoints'}); set output_dir instead"))
        elif key not in fields:
            hint = f" (renamed: use {RENAMED[key]})" if key in RENAMED else did_you_mean(key, sorted(fields), 0.7)
            problems.append((key_path, f"not an option of trl.{config_class.__name__}{hint}"))
        else:
            # Dataclasses do not check types, and YAML reads `2e-5` as a string: coerce here, or TRL
            # would carry the string into the optimizer.
            if isinstance(value, str) and typing.get_origin(hints[key]) is list:
                value = [value]  # `loss_type: ipo`: TRL itself takes one name for a one-item list
            try:
                values[key] = TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as err:
                quote = " (YAML reads no/yes/off/on as booleans: quote it, 'no')" if isinstance(value, bool) else ""
                problems.append((key_path, f"{err.errors()[0]['msg']} (got {value!r}){quote}"))
    defaults = {field.name: field.default for field in dataclasses.fields(config_class)}
    named = {"activation_checkpointing", "gradient_checkpointing"} & given.keys()
    if not named and "activation_checkpointing" in fields:
        # TRL still sets its default under the deprecated name (DPO: on), and transformers warns about that name
        # on every build: pass the same default under the new name.
        values["activation_checkpointing"] = defaults.get("gradient_checkpointing")
    values["output_dir"] = str(out / stage / "checkpoints")
    try:
        # Built even after a problem above (the good keys only), so its own complaints show too.
        config = config_class(**{key: value for key, value in values.items() if (stage, "trl", key) not in
                                 {key_path for key_path, _ in problems}})
    except (TypeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, [*problems, (_blame(stage, given, message), message)]
    if stage == "dpo" and config.label_smoothing and not set(config.loss_type) & set(SMOOTHED_LOSSES):
        readers = ", ".join(SMOOTHED_LOSSES)
        problems.append(((stage, "trl", "label_smoothing"), f"ignored by loss_type {config.loss_type} (TRL reads it "
                         f"only for {readers}); for label-smoothed DPO set loss_type: robust"))
    return (None if problems else config), problems


def _blame(stage: str, given: dict[str, Any], message: str) -> KeyPath:
    """Point a config error at the key it names (by key or by value), else at the `trl` section."""
    for key, value in given.items():
        if key in message or (isinstance(value, str) and value and value in message):
            return (stage, "trl", key)
    return (stage, "trl")
