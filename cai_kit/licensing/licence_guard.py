"""The licence guard: `cai generate` and `cai train` check whose outputs a model will be trained on.

For every (producer, trained model) pair, before any work: a forbidden combination stops with one
line naming the clause and how to override it (`--accept-licence-risk`), a restricted one warns, an
unknown licence warns once, and self-alignment (the trained model is the producer or derives from
it) passes. The terms themselves live in cai_kit/licensing/licences.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cai_kit.core.errors import UsageError
from cai_kit.licensing.licences import (
    UNKNOWN,
    derives_from,
    licence_or_unknown,
    licences_of,
    normalise,
    resolve_licence,
    summary,
    terms_for,
)


class Producer(NamedTuple):
    """A model whose outputs end up in training data: its role, spec and licence."""

    role: str
    spec: str
    licence: str


class Finding(NamedTuple):
    level: Literal["allowed", "restricted", "forbidden", "unknown"]
    producer: Producer
    message: str


def verdict(producer: Producer, target: str, target_licence: str) -> Finding:
    """May `producer`'s outputs train `target`? One finding, with the clause that decides it."""
    who = f"outputs of {producer.spec} ({producer.role}; {producer.licence})"
    if derives_from(target, producer.spec):
        return Finding("allowed", producer, f"{who}: self-alignment ({target} is or derives from it)")
    terms = terms_for(producer.licence)
    if terms is None:
        return Finding("unknown", producer, unknown_message(producer.spec, producer.licence))
    if terms.outputs == "family" and normalise(target_licence) not in terms.family:
        return Finding(
            "forbidden", producer, f"{who} may not train {target} ({target_licence}): {terms.clause}: {terms.rule}"
        )
    if terms.outputs == "any" or (terms.outputs == "family" and not terms.name_prefix):
        return Finding("allowed", producer, f"{who} may train {target}: {terms.clause}: {terms.rule}")
    return Finding("restricted", producer, f"{who} training {target}: {terms.clause}: {terms.rule}; {terms.duties}")


def check_outputs(producers: list[Producer], target: str, target_licence: str) -> list[Finding]:
    """A verdict for each distinct producer of data that will train `target`."""
    seen: dict[tuple[str, str], list[str]] = {}
    for producer in producers:
        seen.setdefault((producer.spec, normalise(producer.licence)), []).append(producer.role)
    return [
        verdict(Producer(", ".join(roles), spec, licence), target, target_licence)
        for (spec, licence), roles in seen.items()
    ]


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"cai: licence warning: {message}", file=sys.stderr)


def enforce(findings: list[Finding], accept_risk: bool, how_to_override: str) -> None:
    """Stop on a forbidden combination (unless the risk is accepted); warn on restricted and unknown ones."""
    forbidden = [finding for finding in findings if finding.level == "forbidden"]
    if forbidden and not accept_risk:
        raise UsageError(
            [
                f"licence: {finding.message}. If you have permission, or read the licence otherwise, {how_to_override}"
                for finding in forbidden
            ]
        )
    for finding in findings:
        if finding.level == "forbidden":
            warn_once(f"{finding.message} (going ahead: the licence risk was accepted)")
        elif finding.level in ("restricted", "unknown"):
            warn_once(finding.message)


def unknown_message(spec: str, licence: str) -> str:
    known = licence != UNKNOWN
    what = f"licence '{licence}' is not in cai-kit's table" if known else "licence unknown (no `license:` in its card)"
    return (
        f"{spec}: {what}, so what its outputs may train was not checked; pass --model-licence {spec}=ID "
        "if you know it (see `cai licence`)"
    )


def warn_unknown(specs: dict[str, str]) -> None:
    """One warning per model whose licence is unknown or not in the table."""
    for spec, licence in specs.items():
        if terms_for(licence) is None:
            warn_once(unknown_message(spec, licence))


def guard(
    producers: list[Producer], target: str, target_licence: str, accept_risk: bool, how_to_override: str
) -> list[Finding]:
    """The whole check: unknown licences warn once, forbidden pairs stop, restricted pairs warn."""
    warn_unknown({**{p.spec: normalise(p.licence) for p in producers}, target: normalise(target_licence)})
    findings = check_outputs(producers, target, target_licence)
    enforce(findings, accept_risk, how_to_override)
    return findings


def parse_overrides(values: list[str] | tuple[str, ...], bare_for: str | None) -> dict[str, str]:
    """`--model-licence MODEL=ID` (or a bare `ID`, for `bare_for`) -> {spec: licence}."""
    out: dict[str, str] = {}
    for value in values:
        spec, sep, licence = value.rpartition("=")
        if not sep:
            if bare_for is None:
                raise UsageError(f"--model-licence {value}: name the model, as MODEL=LICENCE")
            spec = bare_for
        if not spec or not licence.strip():
            raise UsageError(f"--model-licence {value}: expected MODEL=LICENCE (e.g. default=apache-2.0)")
        out[spec] = licence.strip()
    return out


# -- provenance: which models a recipe's training data came from --------------------------------


def model_roles(options: Any) -> dict[str, str]:
    """Which model wrote, critiqued and revised each row of a `cai generate` run (its GenerateOptions):
    provenance, and what the licence guard checks."""
    roles = {"writer": options.model, "critic": options.model, "reviser": options.model}
    if "judge" in options.pairs:
        roles["judge"] = options.judge_model or options.model
    return roles


def dataset_producers(path: Path, label: str) -> list[Producer] | None:
    """The models that wrote a data file, from the `cai generate` manifest.json beside it; None if there is none."""
    manifest_path = path.parent / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    roles = manifest.get("models") or ({"writer": manifest["model"]} if manifest.get("model") else {})
    recorded = manifest.get("licences") or {}
    return [
        Producer(f"{label} {role}", spec, recorded.get(spec) or licence_or_unknown(spec))
        for role, spec in roles.items()
    ]


def recipe_producers(recipe: Any) -> tuple[list[Producer], list[str]]:
    """Every model whose outputs a recipe trains on; and data files whose producers are unknown."""
    producers: list[Producer] = []
    for index, run in enumerate(recipe.generate):
        label = f"generate[{index}]"
        options = run.model_copy(update={"model": recipe.model})
        producers += [
            Producer(f"{label} {role}", spec, licence_or_unknown(spec, recipe.model_licences))
            for role, spec in model_roles(options).items()
        ]
    unknown: list[str] = []
    for kind in ("sft", "prefs"):
        for index, item in enumerate(getattr(recipe.data, kind)):
            found = dataset_producers(Path(item.path), f"data.{kind}[{index}]")
            if found is None:
                unknown.append(item.path)
            else:
                producers += [p._replace(licence=recipe.model_licences.get(p.spec, p.licence)) for p in found]
    return producers, unknown


def check_generate(options: Any) -> list[Finding]:
    """`cai generate`'s check, before any work. The model trained later is not known here: self-alignment
    trains the writer, so every other role (a critic or judge that differs from it) is checked against it."""
    roles = model_roles(options)
    licences = licences_of({**roles, "target": options.model}, options.model_licences)
    producers = [Producer(role, spec, licences[spec]) for role, spec in roles.items()]
    return guard(
        producers, options.model, licences[options.model], options.accept_licence_risk, "pass --accept-licence-risk"
    )


def check_recipe(recipe: Any) -> list[Finding]:
    """`cai train`'s check, before any work: every producer of the recipe's data against the recipe's model."""
    producers, unknown = recipe_producers(recipe)
    for path in unknown:
        warn_once(
            f"data file {path} has no cai-kit manifest.json beside it, so the models that wrote it are "
            "unknown and their licences were not checked"
        )
    target_licence = resolve_licence(recipe.model, recipe.model_licences)[0]
    return guard(
        producers,
        recipe.model,
        target_licence,
        recipe.accept_licence_risk,
        "pass --accept-licence-risk (or set accept_licence_risk: true in the recipe)",
    )


def licence_report(specs: list[str], target: str | None, overrides: dict[str, str]) -> str:
    """What `cai licence` prints: each model's licence and its source, what it allows, and verdicts on a target."""
    lines = []
    resolved = {spec: resolve_licence(spec, overrides) for spec in specs}
    for spec, (licence, source) in resolved.items():
        lines += [f"{spec}: {licence} ({source})", f"  {summary(licence)}"]
    if target:
        target_licence, source = resolve_licence(target, overrides)
        lines.append(f"training {target} ({target_licence}, {source}) on their outputs:")
        for finding in check_outputs(
            [Producer("model", spec, lic) for spec, (lic, _) in resolved.items()], target, target_licence
        ):
            lines.append(f"  {finding.level}: {finding.message}")
    return "\n".join(lines)
