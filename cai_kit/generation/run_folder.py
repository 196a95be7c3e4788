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
from cai_kit.core.files import append_synced, jsonl_text, write_atomic

GENERATIONS, SFT, PREFS, CARD, MANIFEST = "generations.jsonl", "sft.jsonl", "prefs.jsonl", "README.md", "manifest.json"
# Manifest fields that must match to resume into an existing folder.
IDENTITY = ["constitution_sha256", "model"]


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
        failed = [row for row in rows if row["status"].startswith("error")]
        if failed:  # rows that failed (a dead server, say) are dropped here and generated again
            rows = [row for row in rows if not row["status"].startswith("error")]
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
        rows = []
        for line in data[:keep].decode("utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows

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
        if self.path.is_dir() and not any(self.path.iterdir()):
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
