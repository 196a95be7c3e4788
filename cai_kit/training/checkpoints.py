"""Which checkpoint an interrupted trainer resumes from: the newest complete one.

transformers writes a checkpoint file by file into `checkpoint-<step>` (weights, optimizer, scheduler,
RNG state, and `trainer_state.json` last), and its `get_last_checkpoint` takes the highest-numbered
folder whether or not the save finished: a kill during a save left a folder that every rerun failed on
("Can't find a valid checkpoint"). Here a checkpoint counts when `SaveMarker` wrote its marker after
the whole save (the trainer calls `on_save` once every file is written), or, without the marker (a
checkpoint of an older cai-kit, or a kill between the last file and the marker), when every file a
resume reads is there and whole. Newer incomplete folders are removed, said on stderr, so the run
writes them again from scratch instead of into a half-written folder.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from cai_kit.core.files import whole_safetensors, write_atomic

MARKER = "cai-kit-saved.json"
STATE = "trainer_state.json"
# Saved by torch.save, a zip archive whose directory is written last: a file cut short does not open.
TORCH_FILES = ("optimizer.pt", "scheduler.pt")
FSDP_MODEL = "pytorch_model_fsdp"  # accelerate's name for an FSDP model state
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class SaveMarker(TrainerCallback):
    """Writes `cai-kit-saved.json` into each checkpoint once the trainer has saved all of it."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            record = {"step": state.global_step, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_atomic(folder / MARKER, json.dumps(record) + "\n")


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (the first thing missing or cut short), or None if it can."""
    try:
        state = folder / STATE
        if not state.is_file():
            return f"no {STATE}"
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"{STATE} is not valid JSON"
        if (folder / MARKER).is_file():
            return None
        if (folder / "latest").is_file():
            return _deepspeed_problem(folder)
        if any(folder.glob(f"{FSDP_MODEL}*")) or any(folder.glob("optimizer*.bin")):
            return _fsdp_problem(folder)
        return _weights_problem(folder) or _torch_files_problem(folder, TORCH_FILES)
    except OSError as err:  # removed while we looked (another rank), or unreadable
        return f"cannot be read ({err.strerror or err})"


def _torch_files_problem(folder: Path, names: tuple[str, ...] | list[str]) -> str | None:
    for name in names:
        if not (folder / name).is_file():
            return f"no {name}"
        if not _whole_zip(folder / name):
            return f"{name} is cut short"
    return None


def _deepspeed_problem(folder: Path) -> str | None:
    """A DeepSpeed checkpoint: `latest` names a `global_step<N>` folder holding every rank's model and optimizer
    states (ZeRO-3 shards them; transformers writes no optimizer.pt, and a scheduler.pt only for its own
    scheduler)."""
    tag = (folder / "latest").read_text(encoding="utf-8").strip()
    states = sorted((folder / tag).glob("*_states.pt")) if tag else []
    if not any(path.name.endswith("optim_states.pt") for path in states):
        return f"no optimizer states in {tag or 'the folder `latest` names'}/ (DeepSpeed)"
    problem = _torch_files_problem(folder / tag, [path.name for path in states])
    if problem:
        return f"{tag}/{problem}"
    return _torch_files_problem(folder, ["scheduler.pt"] if (folder / "scheduler.pt").exists() else [])


def _fsdp_problem(folder: Path) -> str | None:
    """An FSDP checkpoint: model and optimizer as one torch file each (`pytorch_model_fsdp.bin`, `optimizer.bin`)
    or as torch.distributed.checkpoint folders (`pytorch_model_fsdp_0/`, `optimizer_0/`), whose `.metadata` is
    written last; and scheduler.pt."""
    for prefix in (FSDP_MODEL, "optimizer"):
        files = sorted(folder.glob(f"{prefix}*.bin"))
        folders = sorted(path for path in folder.glob(f"{prefix}_*") if path.is_dir())
        if not files and not folders:
            return f"no {prefix}.bin or {prefix}_0/ (FSDP)"
        problem = _torch_files_problem(folder, [path.name for path in files])
        if problem:
            return problem
        cut = next((path for path in folders if not (path / ".metadata").is_file()), None)
        if cut:
            return f"{cut.name}/ has no .metadata (cut short)"
    return _torch_files_problem(folder, ["scheduler.pt"])


def _weights_problem(folder: Path) -> str | None:
    """The model or adapter weights: one safetensors file, or the shards an index names, each whole."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return f"{index.name} is not valid JSON"
    else:
        names = [name for name in ("adapter_model.safetensors", "model.safetensors") if (folder / name).is_file()]
        if not names:
            return "no model weights (adapter_model.safetensors or model.safetensors)"
    for name in names:
        if not (folder / name).is_file():
            return f"no {name}"
        if not whole_safetensors(folder / name):
            return f"{name} is cut short"
    return None


def _whole_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


def newest_complete(folder: Path, say: Callable[[str], None], remove: bool = False) -> Path | None:
    """The highest-numbered complete `checkpoint-*` in `folder` (None if there is none); every newer one is
    said to be skipped, with why, and with `remove` deleted so the trainer writes it again."""
    if not folder.is_dir():
        return None
    found = [(int(match.group(1)), path) for path in folder.iterdir()
             if (match := CHECKPOINT.match(path.name)) and path.is_dir()]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        say(f"skipped {path} (incomplete: {problem})" + ("; removed it, the run writes it again" if remove else ""))
        if remove:
            shutil.rmtree(path, ignore_errors=True)
    return None
