"""A model folder's tokenizer read with the `tokenizers` library alone, its chat template rendered by jinja2 as
transformers renders it: what the openvino engine needs, without transformers' tokenizer, whose imports pull in
torch (about 3 s of a fresh process's 5 s engine load, while OpenVINO compiled the model beside it).

It is used only for an exported folder where it was checked against the transformers tokenizer on the same files
(`check_against`): the check runs on the folder's first load (with the transformers tokenizer, which that load
uses), and its verdict is kept beside the IR (`tokenizer_check.json`, with the transformers, tokenizers and jinja2
versions it held for). Anything else (a check that failed, other versions, a chat template given as an engine option, a
template that tokenizer_config.json holds as a list of named templates, clean_up_tokenization_spaces) loads the
transformers tokenizer as before.
"""

from __future__ import annotations

import json
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cai_kit.engines import Conversation

CHECK_FILE = "tokenizer_check.json"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CONTINUE_TAG = "CAI_CONTINUE_FINAL_MESSAGE "  # marks where a prefilled assistant reply ends in the rendered text

# What the check renders, tokenizes and decodes with both tokenizers: every turn kind the pipeline sends (a system
# turn, several turns, a prefilled reply to go on with), and text that tokenizers split in different ways.
PROBES: list[Conversation] = [
    [{"role": "user", "content": "How do I keep basil alive on a windowsill?"}],
    [
        {"role": "system", "content": "You are a careful assistant.\nAnswer briefly."},
        {"role": "user", "content": "Café crème, naïve façade, 日本語, emoji 🙂 and tabs\tand  double  spaces."},
        {"role": "assistant", "content": "Here is the answer:\n\n```python\nprint('hi')\n```\n"},
        {"role": "user", "content": "Critique that reply. 3.14159 / 2 = 1.5708; x**2 >= 10?"},
    ],
    [
        {"role": "user", "content": "Rewrite the reply.  Keep it short.   "},
        {"role": "assistant", "content": "Revision: I can't help with that, but"},
    ],
    [
        {"role": "user", "content": "End with spaces"},
        {"role": "assistant", "content": "Sure.  \n"},
    ],
]


def library_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("transformers", "tokenizers", "jinja2")}


def special_token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an added token's dict with its content."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def compile_template(template: str):
    """The chat template compiled in a sandbox with the options and helpers transformers gives chat templates."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class FileTokenizer:
    """The parts of a transformers tokenizer the engines call (`apply_chat_template`, `__call__`, `decode`,
    `eos_token_id`, `chat_template`), read from `folder`. Raises ValueError where the folder has something it does
    not handle, so that the caller loads the transformers tokenizer instead."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        if config.get("clean_up_tokenization_spaces"):
            raise ValueError("clean_up_tokenization_spaces is set")
        template_file = folder / "chat_template.jinja"  # where transformers 5 saves it
        template = config.get("chat_template")
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        if not isinstance(template, str):
            raise ValueError("no chat template as a single string")
        self.chat_template = template
        try:
            self._template = compile_template(template)
        except Exception as err:  # noqa: BLE001 - jinja2's syntax errors, or a tag transformers adds (generation)
            raise ValueError(f"chat template: {err}") from None
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a missing or bad file
            raise ValueError(f"tokenizer.json: {err}") from None
        self.special_tokens = {
            name: token for name in SPECIAL_TOKENS if (token := special_token(config.get(name))) is not None
        }
        eos = self.special_tokens.get("eos_token")
        self.eos_token_id = None if eos is None else self._tokenizer.token_to_id(eos)

    def apply_chat_template(self, conversation: Conversation, tokenize: bool = False,
                            add_generation_prompt: bool = False, continue_final_message: bool = False) -> str:
        if tokenize:
            raise ValueError("FileTokenizer renders text only")
        messages = [dict(message) for message in conversation]
        final = messages[-1]["content"] if continue_final_message else ""
        if continue_final_message:
            messages[-1]["content"] = final + CONTINUE_TAG
        rendered = self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens)
        if continue_final_message:
            if final.strip() not in rendered or CONTINUE_TAG.strip() not in rendered:
                raise ValueError("the chat template drops part of the final message")
            end = rendered.rindex(CONTINUE_TAG.strip())
            kept_spacing = rendered[end : end + len(CONTINUE_TAG)] == CONTINUE_TAG
            rendered = rendered[:end] if kept_spacing else rendered[:end].rstrip()
        return rendered

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [row.ids for row in encoded]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def disagreement(folder: Path, reference: Any) -> str | None:
    """Where a FileTokenizer of `folder` differs from `reference` (the transformers tokenizer of the same files)
    on the probes; None where it agrees on all of them."""
    from cai_kit.engines.chat import encode_rendered, render_chat

    try:
        mine = FileTokenizer(folder)
    except (OSError, ValueError, ImportError) as err:
        return f"not loadable: {err}"
    if mine.eos_token_id != reference.eos_token_id:
        return f"eos_token_id {mine.eos_token_id} != {reference.eos_token_id}"
    for conversation in PROBES:
        try:
            text = render_chat(reference, conversation)
        except Exception:  # noqa: BLE001 - a template that refuses this conversation (no system turn, say)
            text = None
        try:
            if render_chat(mine, conversation) != text:
                return f"rendered text differs for {conversation[-1]['content']!r}"
        except Exception as err:  # noqa: BLE001 - a failure where transformers renders: use transformers
            if text is not None:
                return f"template: {type(err).__name__}: {err}"
        if text is None:
            continue
        ids = encode_rendered(mine, [text])[0]
        if ids != encode_rendered(reference, [text])[0]:
            return f"token ids differ for {conversation[-1]['content']!r}"
        for skip in (True, False):
            if mine.decode(ids, skip_special_tokens=skip) != reference.decode(ids, skip_special_tokens=skip):
                return f"decoded text differs for {conversation[-1]['content']!r}"
    return None


def check_against(folder: Path, reference: Any) -> bool:
    """Check a FileTokenizer of `folder` against `reference` and keep the verdict in the folder."""
    from cai_kit.core.files import write_atomic

    problem = disagreement(folder, reference)
    verdict = {"agrees": problem is None, "problem": problem, "versions": library_versions()}
    try:
        write_atomic(folder / CHECK_FILE, json.dumps(verdict, indent=1) + "\n")
    except OSError:  # a read-only or full cache: the next load checks again
        pass
    return problem is None


def kept_verdict(folder: Path) -> bool | None:
    """Whether a kept check found the folder's FileTokenizer agreeing with transformers; None where the folder was
    not checked under the versions installed now."""
    try:
        verdict = json.loads((folder / CHECK_FILE).read_text(encoding="utf-8"))
        if not isinstance(verdict, dict) or verdict.get("versions") != library_versions():
            return None
    except (OSError, ValueError, metadata.PackageNotFoundError):
        return None
    return verdict.get("agrees") is True
