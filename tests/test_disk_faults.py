"""A full disk, a read-only or a forbidden folder: one line naming the path and what to do, exit status 2, no temporary
file left behind, and a rerun after freeing space resumes cleanly.

The disks are small tmpfs mounts made by the tests (`mount -t tmpfs -o size=...`, which needs root with
CAP_SYS_ADMIN: without it the tests skip and say why). Runs as root ignore file modes, so a read-only
folder is a tmpfs remounted read-only rather than a chmod. Generation talks to the fake OpenAI-compatible
server of tests/fake_openai_server.py, so no model is loaded; the training test runs recipes/tiny.yaml.
Permission denied is tested by running the CLI as `nobody` (setpriv), since root may write anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fake_openai_server import FakeServers

REPO = Path(__file__).resolve().parent.parent
CONSTITUTION = REPO / "constitutions" / "harmless.yaml"


@pytest.fixture
def fake(tmp_path):
    servers = FakeServers(tmp_path)
    yield servers.start
    servers.stop_all()


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size, *options)` mounts a fresh tmpfs under tmp_path and returns it; all are unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                                 str(point)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with one file until about `leave` bytes are free; return the file (delete it to free space)."""
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def generate(tmp_path: Path, url: str, out: Path, prompts: int = 40) -> subprocess.CompletedProcess:
    # Long prompts, so each row takes room and the disk fills after a few chunks.
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{k}", "prompt": f"question {k} " + "words " * 60}) + "\n"
                            for k in range(prompts)))
    args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-p", str(path), "-m", "m",
            "--limit", "0", "-o", str(out), "--engine", "openai", "--base-url", url, "--batch-size", "4",
            "--engine-option", "progress=false"]
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def temporary_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith((".tmp", ".partial"))]


def test_full_disk_mid_generate_is_one_line_and_a_rerun_after_freeing_space_resumes(tmp_path, fake, tmpfs):
    disk = tmpfs("96k")
    filler = fill(disk, 16 * 1024)
    url, _, _ = fake()
    out = disk / "out"
    result = generate(tmp_path, url, out)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = error_lines(result)
    assert line.startswith(f"error: {out}/") and ": no space left on the device: free some space and rerun" in line
    assert temporary_files(disk) == []
    written = (out / "generations.jsonl").read_text()
    assert 0 < written.count("\n") < 40, "the disk should fill mid-run"

    filler.unlink()
    rerun = generate(tmp_path, url, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]  # no torn line
    assert sorted(row["id"] for row in rows) == sorted(f"q{k}" for k in range(40))
    assert len((out / "sft.jsonl").read_text().splitlines()) == sum(row["status"] == "ok" for row in rows)
    assert temporary_files(disk) == []


def test_full_disk_before_the_first_row_leaves_nothing_behind(tmp_path, fake, tmpfs):
    disk = tmpfs("64k")
    fill(disk, 0)
    url, _, _ = fake()
    result = generate(tmp_path, url, disk / "out", prompts=4)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: {disk / 'out' / 'manifest.json'}: no space left on the device: free some space and rerun the same "
        "command (what was finished is kept and the run resumes)"
    ]
    assert sorted(path.name for path in disk.iterdir()) == ["filler"]


def test_read_only_folder_is_one_line(tmp_path, fake, tmpfs):
    disk = tmpfs("64k")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    url, _, _ = fake()
    result = generate(tmp_path, url, disk / "out", prompts=4)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result) == [
        f"error: {disk / 'out'}: the file system is read-only: choose an output folder on a writable one"
    ]


@pytest.mark.slow
def test_full_disk_while_training_is_one_line_and_a_rerun_resumes(tmp_path, tmpfs):
    disk = tmpfs("160k")  # room for the generated data, not for the first SFT checkpoint
    command = [sys.executable, "-m", "cai_kit.cli", "train", "recipes/tiny.yaml", "--set",
               f"output_dir={disk / 'run'}", "--stages", "generate,sft"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"error: {disk / 'run' / 'sft'}: no space left on the device: free some space and rerun the same command "
        "(what was finished is kept and the run resumes)"
    ]
    assert temporary_files(disk) == []

    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "generate[0]: complete, skipped" in rerun.stderr and "generate[1]: complete, skipped" in rerun.stderr
    assert "(incomplete: " in rerun.stderr, "the checkpoint the full disk cut short is skipped"
    assert (disk / "run" / "sft" / ".complete").is_file()


def test_permission_denied_folder_is_one_line(fake):
    """Root writes anywhere, so the CLI runs as `nobody` (setpriv) against a folder only root may write to."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    probe = subprocess.run([*nobody, "-c", "import cai_kit"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "HOME": "/tmp"})
    if probe.returncode:
        pytest.skip(f"`nobody` cannot run this Python: {probe.stderr.strip()[-200:]}")
    locked = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        locked.chmod(0o555)  # nobody may enter it, not write in it
        url, _, _ = fake()
        args = ["-m", "cai_kit.cli", "generate", "-c", str(CONSTITUTION), "-p", "red_team", "--limit", "2", "-m",
                "m", "-o", str(locked / "out"), "--engine", "openai", "--base-url", url]
        result = subprocess.run([*nobody, *args], capture_output=True, text=True, cwd=REPO, timeout=120,
                                env={**os.environ, "HOME": "/tmp"})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert error_lines(result) == [
            f"error: {locked / 'out'}: permission denied: choose an output folder you can write to, or fix its "
            "permissions"
        ]
    finally:
        locked.chmod(0o755)
        shutil.rmtree(locked)


def test_a_full_disk_reported_as_something_else_becomes_one_disk_error(tmp_path):
    """torch.save and safetensors report a full disk in their own words; other errors pass unchanged."""
    from cai_kit.core.errors import disk_errors_in, disk_problem

    with pytest.raises(OSError) as err:
        with disk_errors_in(tmp_path):
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert disk_problem(err.value) == f"{tmp_path}: " + (
        "no space left on the device: free some space and rerun the same command (what was finished is kept and the "
        "run resumes)")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # a write failure on a disk with room: not ENOSPC
        with disk_errors_in(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 35139 vs 35092")
    with pytest.raises(ValueError):
        with disk_errors_in(tmp_path):
            raise ValueError("something else")
