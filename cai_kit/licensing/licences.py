"""Model licences: what each one lets a model's outputs train, and how a model's licence is found.

Self-alignment trains a model on its own outputs, and that is what keeps it clear of most terms of
use: several open-weight licences limit what a model's outputs may be used to train (the Llama 2
community licence, section 1.b.v, lets them improve only Llama 2 and its derivatives). A critic,
judge or dataset from another family mixed into training can break such terms unnoticed;
cai_kit/licensing/licence_guard.py checks every combination against `TERMS`.

A model's licence comes from a `--model-licence` override (or the recipe's `model_licences`), else
the `license:` in its model card's front matter (a local folder, or a hub model already in the
Hugging Face cache), else it is 'unknown'. The embedded default model is Apache-2.0.

`TERMS` is our own summary of the clauses about outputs and derived models, checked against the
licence texts named in each entry. It is a guide for spotting risk, not legal advice; the licence
text decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from cai_kit.core.errors import UsageError

UNKNOWN = "unknown"
Outputs = Literal["any", "family", "conditions"]


@dataclass(frozen=True)
class Terms:
    """What a licence says about training other models on its model's outputs.

    `outputs`: "any" (no conditions), "family" (only models under a licence in `family` may be
    improved with them; any other target is forbidden), or "conditions" (any model, but the result
    inherits duties: a name prefix, a notice, non-commercial use, passed-on terms).
    """

    name: str
    url: str
    clause: str  # where the licence says it
    outputs: Outputs
    rule: str  # the clause on outputs, in our words
    family: tuple[str, ...] = ()
    name_prefix: str | None = None  # a distributed model trained on the outputs must have a name starting with this
    notice: str | None = None  # text the trained model's documentation must display
    duties: str = ""  # anything else the trained model must carry
    non_commercial: bool = False


def _llama(version: str, url: str) -> Terms:
    """Llama 3.1 and later: outputs may train any model, which then carries Llama's name and notice."""
    return Terms(
        f"Llama {version} Community License",
        url,
        f"Llama {version} Community License, section 1.b.i",
        "conditions",
        "outputs may train any model",
        name_prefix="Llama",
        notice="Built with Llama",
        duties="a distributed model trained on the outputs must have a name starting with 'Llama', display "
        "'Built with Llama' in its documentation and ship a copy of the licence",
    )


_CC_NC = {
    "": "its weights may be used and shared for non-commercial purposes only, with credit; whether outputs count "
    "as adapted material is unsettled, so treat the data and any model trained on it as non-commercial",
    "-sa": "as CC BY-NC, and adapted material must be shared under the same licence",
    "-nd": "as CC BY-NC, and adapted material may not be shared at all: keep a model adapted from it to yourself",
}

TERMS: dict[str, Terms] = {
    "apache-2.0": Terms(
        "Apache License 2.0",
        "https://www.apache.org/licenses/LICENSE-2.0",
        "Apache License 2.0",
        "any",
        "no conditions on outputs; a fine-tune of the weights keeps the licence text and NOTICE file",
    ),
    "mit": Terms(
        "MIT License",
        "https://opensource.org/license/mit",
        "MIT License",
        "any",
        "no conditions on outputs; copies of the weights keep the copyright notice",
    ),
    "llama2": Terms(
        "Llama 2 Community License",
        "https://ai.meta.com/llama/license/",
        "Llama 2 Community License, section 1.b.v",
        "family",
        "outputs may not be used to improve any other large language model, except Llama 2 and works derived from it",
        family=("llama2",),
        duties="only a Llama 2 model, or one derived from it, may be trained on the outputs",
    ),
    "llama3": Terms(
        "Meta Llama 3 Community License",
        "https://www.llama.com/llama3/license/",
        "Meta Llama 3 Community License, section 1.b.v",
        "family",
        "outputs may not be used to improve any other large language model, except Meta Llama 3 and works derived "
        "from it",
        family=("llama3",),
        name_prefix="Llama 3",
        notice="Built with Meta Llama 3",
        duties="a distributed model built with it must have a name starting with 'Llama 3' and display "
        "'Built with Meta Llama 3' (section 1.b.i)",
    ),
    "llama3.1": _llama("3.1", "https://www.llama.com/llama3_1/license/"),
    "llama3.2": _llama("3.2", "https://www.llama.com/llama3_2/license/"),
    "llama3.3": _llama("3.3", "https://www.llama.com/llama3_3/license/"),
    "llama4": _llama("4", "https://www.llama.com/llama4/license/"),
    "gemma": Terms(
        "Gemma Terms of Use",
        "https://ai.google.dev/gemma/terms",
        "Gemma Terms of Use, sections 1.1(e) and 3.1",
        "conditions",
        "a model trained on Gemma's synthetic outputs to perform like Gemma is a Gemma Model Derivative",
        notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms",
        duties="distribute it only with Gemma's use restrictions as an enforceable term, a copy of the terms "
        "and a Notice file",
    ),
    "qwen": Terms(
        "Qwen License Agreement",
        "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE",
        "Qwen License Agreement, section 5.b",
        "conditions",
        "outputs may train other models",
        notice="Built with Qwen",
        duties="a distributed model trained on the outputs must display 'Built with "
        "Qwen' or 'Improved using Qwen' in its documentation; above 100 million monthly users ask Alibaba Cloud",
    ),
    "qwen-research": Terms(
        "Qwen Research License Agreement",
        "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE",
        "Qwen Research License Agreement",
        "conditions",
        "the model may be used for non-commercial research only, and outputs may train other models",
        notice="Built with Qwen",
        non_commercial=True,
        duties="non-commercial research use only; a distributed model trained on the outputs must display "
        "'Built with Qwen' or 'Improved using Qwen'",
    ),
    "tongyi-qianwen": Terms(
        "Tongyi Qianwen License Agreement",
        "https://github.com/QwenLM/Qwen/blob/main/Tongyi%20Qianwen%20LICENSE%20AGREEMENT",
        "Tongyi Qianwen License Agreement, section 5.b",
        "family",
        "outputs may not be used to improve any other large language model, except Tongyi Qianwen and works "
        "derived from it",
        family=("tongyi-qianwen",),
        duties="only a Tongyi Qianwen model, or one derived from it, may be trained on the outputs",
    ),
    "mistral-research": Terms(
        "Mistral AI Research License",
        "https://mistral.ai/licenses/MRL-0.1.md",
        "Mistral AI Research License, sections 3.2 and 4.2",
        "conditions",
        "the model, its derivatives and its outputs may be used for research purposes only (personal, scientific "
        "or academic, non-commercial)",
        non_commercial=True,
        duties="research use only, no commercial activity of any kind",
    ),
}
for _version in ("2.0", "3.0", "4.0"):
    for _kind, _rule in _CC_NC.items():
        TERMS[f"cc-by-nc{_kind}-{_version}"] = Terms(
            f"CC BY-NC{_kind.upper()} {_version}",
            f"https://creativecommons.org/licenses/by-nc{_kind}/{_version}/",
            f"CC BY-NC{_kind.upper()} {_version}, NonCommercial term",
            "conditions",
            _rule,
            non_commercial=True,
            duties="non-commercial use only; credit the licensor",
        )

ALIASES = {
    "apache 2.0": "apache-2.0",
    "apache2": "apache-2.0",
    "apache-2": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "llama-2": "llama2",
    "llama 2": "llama2",
    "llama-3": "llama3",
    "llama 3": "llama3",
    "llama-3.1": "llama3.1",
    "llama-3.2": "llama3.2",
    "llama-3.3": "llama3.3",
    "llama-4": "llama4",
    "gemma-terms": "gemma",
    "mrl": "mistral-research",
    "mrl-0.1": "mistral-research",
    "qianwen": "tongyi-qianwen",
}


def normalise(licence: str) -> str:
    """A licence id as the table spells it: lower case, known aliases mapped."""
    text = str(licence).strip().lower()
    return ALIASES.get(text, text) or UNKNOWN


def terms_for(licence: str) -> Terms | None:
    return TERMS.get(normalise(licence))


# -- resolving a model's licence ---------------------------------------------------------------


def _card_metadata(folder: Path) -> dict[str, Any]:
    """The YAML front matter of a model folder's README.md (its model card), or {}."""
    card = folder / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _metadata(spec: str) -> dict[str, Any]:
    """Card metadata of a model: its folder, or the Hugging Face cache for a hub id (never the network)."""
    from cai_kit.core.models import resolve_model

    source = resolve_model(spec)
    if Path(source).is_dir():
        return _card_metadata(Path(source))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "README.md")
    except Exception:  # an id the hub library rejects has no cached card either
        return {}
    return _card_metadata(Path(cached).parent) if isinstance(cached, str) else {}


def resolve_licence(spec: str, overrides: dict[str, str] | None = None) -> tuple[str, str]:
    """(licence, where it came from) for a model spec: an override, the model card, or 'unknown'."""
    from cai_kit.core.models import DEFAULT_MODEL_LICENCE

    if overrides and spec in overrides:
        return normalise(overrides[spec]), "--model-licence"
    if spec == "default":
        return DEFAULT_MODEL_LICENCE, "embedded default model"
    meta = _metadata(spec)
    licence = meta.get("license")
    if isinstance(licence, list):
        licence = licence[0] if licence else None
    if licence == "other" and meta.get("license_name"):  # Hugging Face spells custom licences this way
        licence = meta["license_name"]
    if not licence:
        return UNKNOWN, "no `license:` in its model card"
    return normalise(str(licence)), "model card"


def lineage(spec: str, depth: int = 4) -> set[str]:
    """Names a model goes by, and those of the models it derives from (`base_model` in its card)."""
    from cai_kit.core.models import DEFAULT_MODEL_NAME, resolve_model

    if spec == "default":
        return {"default", DEFAULT_MODEL_NAME}
    names = {spec}
    try:
        source = resolve_model(spec)
    except UsageError:
        return names
    if Path(source).is_dir():
        names.add(str(Path(source).resolve()))
    bases = _metadata(spec).get("base_model") if depth else None
    for base in bases if isinstance(bases, list) else [bases] if bases else []:
        names |= lineage(str(base), depth - 1)
    return names


def _identity(spec: str) -> set[str]:
    from cai_kit.core.models import DEFAULT_MODEL_NAME, resolve_model

    if spec in ("default", DEFAULT_MODEL_NAME):
        return {"default", DEFAULT_MODEL_NAME}
    try:
        source = resolve_model(spec)
    except UsageError:
        return {spec}
    return {spec, str(Path(source).resolve())} if Path(source).is_dir() else {spec}


def derives_from(target: str, producer: str) -> bool:
    """Self-alignment: the target is the producer, or was trained from it."""
    return bool(_identity(producer) & lineage(target))


def licences_of(roles: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """{spec: licence} for every model in a {role: spec} mapping."""
    return {spec: resolve_licence(spec, overrides)[0] for spec in dict.fromkeys(roles.values())}


def licence_or_unknown(spec: str, overrides: dict[str, str] | None = None) -> str:
    """For records and cards: a model that is gone (a deleted folder) has an unknown licence, not an error."""
    try:
        return resolve_licence(spec, overrides)[0]
    except (UsageError, OSError):
        return UNKNOWN


# -- what to print and write --------------------------------------------------------------------


def summary(licence: str) -> str:
    """One line: what the licence lets outputs train, and what a trained model must carry."""
    terms = terms_for(licence)
    if terms is None:
        return "not in cai-kit's table: read its terms on outputs yourself"
    may = {
        "any": "outputs may train any model",
        "family": "outputs may train only " + " / ".join(terms.family) + " models",
        "conditions": "outputs may train other models, with conditions",
    }[terms.outputs]
    return f"{may}. {terms.clause}: {terms.rule}" + (f"; {terms.duties}" if terms.duties else "")


def notices(licences: list[str]) -> list[str]:
    """What a model trained with these licences' models must carry, one line per licence that asks anything."""
    lines = []
    for licence in dict.fromkeys(normalise(item) for item in licences):
        terms = terms_for(licence)
        if terms is not None and (terms.duties or terms.notice):
            shown = f' Display: "{terms.notice}".' if terms.notice else ""
            lines.append(f"{terms.name} ({licence}): {terms.duties or 'see the licence'}.{shown} {terms.url}")
    return lines


def contributors_markdown(contributors: list[tuple[str, str, str]]) -> list[str]:
    """Card lines: a table of every (role, spec, licence) contributor, grouped by model, then the notices owed.

    A role may name its source first ("generate[0] critic"); the table groups roles and sources per model.
    """
    grouped: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {}
    for role, spec, licence in contributors:
        first, _, rest = role.partition(" ")
        source, name = (first, rest) if "[" in first and rest else ("", role)
        roles, sources = grouped.setdefault((spec, normalise(licence)), ({}, {}))
        roles[name] = None
        if source:
            sources[source] = None
    lines = ["| model | role | licence | what the licence says |", "| --- | --- | --- | --- |"]
    for (spec, licence), (roles, sources) in grouped.items():
        where = f" ({', '.join(sources)})" if sources else ""
        lines.append(f"| `{spec}` | {', '.join(roles)}{where} | {licence} | {summary(licence)} |")
    owed = notices([licence for _, licence in grouped])
    lines += ["", "Notices and duties these licences attach to a model trained with these models' outputs:", ""]
    lines += [f"- {line}" for line in owed] or ["- none beyond keeping each licence's own text with copies of it"]
    return lines
