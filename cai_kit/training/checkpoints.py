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
        problem = _weights_problem(folder)
        for name in TORCH_FILES:
            if problem:
                break
            if not (folder / name).is_file():
                problem = f"no {name}"
            elif not _whole_zip(folder / name):
                problem = f"{name} is cut short"
        return problem
    except OSError as err:  # removed while we looked (another rank), or unreadable
        return f"cannot be read ({err.strerror or err})"


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
