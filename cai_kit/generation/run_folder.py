"""The output folder of one `cai generate` run: append-only JSONL that survives `kill -9`.

`generations.jsonl` is the source of truth, appended (and fsynced) as prompts finish.
`sft.jsonl` and `prefs.jsonl` are appended alongside and rebuilt from it whenever a run starts,
so an interruption between two appends can never leave them out of step.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import append_synced, jsonl_text, numbered_lines, write_atomic
from cai_kit.core.run_lock import LOCK_FILE

GENERATIONS, SFT, PREFS, CARD, MANIFEST = "generations.jsonl", "sft.jsonl", "prefs.jsonl", "README.md", "manifest.json"
# Manifest fields that must match to resume into an existing folder.
IDENTITY = ["constitution_sha256", "model"]
# Options that a run may change and still resume: which prompts and pair modes, how fast, where, what to do
# on errors. Every other option shapes the rows (max_new_tokens, temperature, rounds, few_shot, filters...),
# so resuming with another value would mix rows made two ways under one manifest and data card.
RESUMABLE = {
    "constitution",
    "model",
    "prompts",
    "limit",
    "pairs",
    "batch_size",
    "engine",
    "engine_options",
    "out",
    "force_new",
    "on_error",
    "trust_remote_code",
    "push_to_hub",
    "model_licences",
    "accept_licence_risk",
    "judge_min_accuracy",
    "judge_min_consistency",
    "trust_judge",
    "judge_fallback",
    "shard",
    "lockstep",
}


def sft_row(row: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational format."""
    return {
        "id": row["id"],
        "messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["final"]}],
    }


def pref_row(row: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational preference format: chosen = the final revision, rejected = the first answer."""
    pref = {
        "id": row["id"],
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row.get("chosen", row["final"])}],
        "rejected": [{"role": "assistant", "content": row.get("rejected", row["initial"])}],
    }
    if "score" in row:
        pref["score"] = row["score"]
    return pref


def changed_settings(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`name old -> new` for each option that shapes the rows and differs from the folder's manifest."""
    if before is None:  # a manifest written before options were recorded: nothing to compare
        return []
    now = json.loads(json.dumps(now))  # compare as the manifest stores them (tuples become lists)
    return [
        f"{key} {before.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if key not in RESUMABLE and key in before and before[key] != value
    ]


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def open(self, manifest: dict[str, Any], force_new: bool) -> list[dict[str, Any]]:
        """Create or reopen the folder for this run; return the rows already finished.

        A folder written by another constitution or model is refused unless `force_new`, which
        discards its files (the user asked for it by name).
        """
        old_path = self.path / MANIFEST
        if old_path.is_file():
            old = json.loads(old_path.read_text(encoding="utf-8"))
            changed = [key for key in IDENTITY if old.get(key) != manifest.get(key)]
            if changed and not force_new:
                raise UsageError(
                    f"{self.path}: this folder holds a run with a different {' and '.join(changed)} "
                    f"({', '.join(str(old.get(k)) for k in changed)}); use a new --out folder, or --force-new "
                    "to discard its rows"
                )
            settings = [] if changed else changed_settings(old.get("options"), manifest["options"])
            if settings and not force_new and self.read_rows():
                raise UsageError(
                    f"{self.path}: its rows were made with other settings ({'; '.join(settings)}); rerun with "
                    "the same settings to resume, or use a new --out folder, or --force-new to discard its rows"
                )
            changed += settings
            if changed:
                for name in (GENERATIONS, SFT, PREFS, CARD, MANIFEST):
                    (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        except OSError:  # a full disk or read-only folder: no empty run folder left behind
            self.remove_if_empty()
            raise
        rows = self.read_rows()
        # Rows that failed (a dead server, say) are dropped here and generated again; an id written twice (by
        # two processes on one folder before runs were locked) keeps its first row.
        kept, seen, repeated = [], set(), 0
        for row in rows:
            if row["id"] in seen:
                repeated += 1
            elif not row["status"].startswith("error"):
                kept.append(row)
                seen.add(row["id"])
        if len(kept) != len(rows):
            if repeated:
                print(
                    f"cai generate: {self.path}: {repeated} rows repeat an earlier row's id; the first of each is "
                    "kept",
                    file=sys.stderr,
                )
            rows = kept
            write_atomic(self.path / GENERATIONS, jsonl_text(rows))
        self.rebuild(rows)
        return rows

    def read_rows(self) -> list[dict[str, Any]]:
        """Rows of generations.jsonl; a line torn by a kill mid-write is cut off the file."""
        path = self.path / GENERATIONS
        if not path.is_file():
            return []
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            with path.open("r+b") as handle:
                handle.truncate(keep)
        return [json.loads(line) for _, line in numbered_lines(data[:keep].decode("utf-8"))]

    def rebuild(self, rows: list[dict[str, Any]]) -> None:
        ok = [row for row in rows if row["status"] == "ok"]
        write_atomic(self.path / SFT, jsonl_text([sft_row(row) for row in ok]))
        write_atomic(self.path / PREFS, jsonl_text([pref_row(row) for row in ok]))

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append finished rows: generations first, so it is always the fuller record."""
        ok = [row for row in rows if row["status"] == "ok"]
        for name, lines in ((GENERATIONS, rows), (SFT, [sft_row(r) for r in ok]), (PREFS, [pref_row(r) for r in ok])):
            append_synced(self.path / name, jsonl_text(lines))

    def write_card(self, text: str) -> None:
        write_atomic(self.path / CARD, text)

    def discard_if_rowless(self) -> None:
        """Remove the files `open` wrote and the folder, when no row was ever written (a run that failed to start)."""
        if self.read_rows():
            return
        for name in (GENERATIONS, SFT, PREFS, CARD, MANIFEST):
            (self.path / name).unlink(missing_ok=True)
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        if self.path.is_dir() and all(entry.name == LOCK_FILE for entry in self.path.iterdir()):
            shutil.rmtree(self.path)


def push_folder(path: Path, repo_id: str) -> None:
    """Upload a finished run folder as a Hugging Face dataset (sft and prefs configs, card, manifest)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()  # reads HF_TOKEN from the environment; the token is never printed or stored
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="dataset")
    except Exception as err:  # the rows are safe on disk; say so instead of a traceback
        raise UsageError(
            f"--push-to-hub {repo_id}: upload failed ({str(err).splitlines()[0][:200]}); the run is complete in {path}"
        ) from None
    print(f"pushed {path} to the dataset repo {repo_id}", file=sys.stderr)
