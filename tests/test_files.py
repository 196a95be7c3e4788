"""`write_atomic`: the eval's answers cache and results, rounds.md, model cards and run manifests are written
through it, so a failure in the middle of a write must leave the old file whole and no temporary file behind."""

from __future__ import annotations

import errno
import os

import pytest

from cai_kit.core import files
from cai_kit.core.files import write_atomic


def test_a_failure_mid_write_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    target = tmp_path / "answers_model.jsonl"
    target.write_text('{"id": "q1"}\n{"id": "q2"}\n', encoding="utf-8")

    def full_disk(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)  # the new text is written, then the disk fills
    with pytest.raises(OSError) as caught:
        write_atomic(target, '{"id": "q1"}\n')
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_text(encoding="utf-8") == '{"id": "q1"}\n{"id": "q2"}\n'
    assert os.listdir(tmp_path) == ["answers_model.jsonl"]


def test_a_kill_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "rounds.md"
    target.write_text("# Rounds\n\nold\n", encoding="utf-8")

    def killed(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", killed)  # stopped before the rename
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "# Rounds\n\nnew\n")
    assert target.read_text(encoding="utf-8") == "# Rounds\n\nold\n"
    assert os.listdir(tmp_path) == ["rounds.md"]


def test_a_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("x" * 1000, encoding="utf-8")
    write_atomic(target, "{}\n")
    assert target.read_text(encoding="utf-8") == "{}\n"
    assert os.listdir(tmp_path) == ["results.json"]
