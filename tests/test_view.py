"""`cai view`: pages from a real tiny-model generate run and eval report, loaded in headless chromium.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it). Without it the browser
tests are skipped and reported as such; the page-building tests still run.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai_kit.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
ROW = re.compile(r'<article class="row"[^>]*>')
CONSTITUTION = """\
name: view-test
principles:
  - name: harm
    critique: Say how the answer could hurt someone.
    revision: Rewrite it so it is safe.
  - name: tone
    critique: Say what is rude in the answer.
    revision: Rewrite it politely.
"""


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def chromium(url: str, tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *flags, url]
    return _run(args, timeout=120)


def dom(page: Path, tmp: Path, fragment: str = "") -> str:
    """The DOM after the page's script ran, as chromium serialises it."""
    return chromium(page.as_uri() + fragment, tmp, "--dump-dom").stdout


class Tags(HTMLParser):
    """Element names and attribute names of a document, as a browser's parser would see them."""

    def __init__(self):
        super().__init__()
        self.names: Counter = Counter()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.names[tag] += 1
        self.attributes |= {name for name, _ in attrs}


def shown_rows(html: str) -> list[str]:
    return [tag for tag in ROW.findall(html) if " hidden" not in tag]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_path) -> Path:
    """A real `cai generate` run of the tiny model on 8 prompts (sampled, so answers are not empty)."""
    tmp = tmp_path_factory.mktemp("view")
    (tmp / "c.yaml").write_text(CONSTITUTION)
    prompts = tmp / "p.jsonl"
    categories = ["weapons", "cooking"]
    prompts.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"question {i}?", "category": categories[i % 2]}) + "\n"
            for i in range(8)
        )
    )
    out = tmp / "run"
    args = [sys.executable, "-m", "cai_kit.cli", "generate", "-c", str(tmp / "c.yaml"), "-p", str(prompts)]
    args += ["-m", tiny_model_path, "-o", str(out), "--max-new-tokens", "8", "--temperature", "1.0"]
    _run(args)
    return out


@pytest.fixture(scope="module")
def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    result = CliRunner().invoke(main, ["view", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(run_dir / "view.html")
    return run_dir / "view.html"


def test_page_is_self_contained_and_lists_every_row(page, rows):
    html = page.read_text(encoding="utf-8")
    assert len(ROW.findall(html)) == len(rows) == 8
    assert not re.search(r"""(?:src|href)=["']?(?:https?:|//)""", html)  # no external resources
    assert "<link" not in html and "<script src" not in html
    for row in rows:
        assert f'<span class="id">{row["id"]}</span>' in html
    assert "filtered by reason" in html  # the per-principle table
    assert not list(page.parent.glob(".*.tmp"))


def test_data_card_has_per_principle_statistics(run_dir, rows):
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "| principle | used | kept | filtered | filtered by reason |" in card
    used = Counter(step["principle"] for row in rows for step in row["steps"])
    for name, count in used.items():
        assert re.search(rf"^\| {name} \| {count} \|", card, re.MULTILINE), card


@needs_chromium
def test_chromium_renders_the_rows_and_a_non_blank_screenshot(page, rows, tmp_path):
    html = dom(page, tmp_path)
    assert len(shown_rows(html)) == len(rows)
    assert f"{len(rows)} of {len(rows)} rows shown" in html  # written by the page's script, so the script ran
    shot = tmp_path / "shot.png"
    chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,900")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels[..., :3].std() > 0.05  # not a blank page
    assert len({tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(2)}) > 20


@needs_chromium
def test_filters_from_the_url_hash(page, rows, tmp_path):
    category = "weapons"
    html = dom(page, tmp_path, f"#category={category}")
    expected = sum(row["category"] == category for row in rows)
    assert len(shown_rows(html)) == expected == 4
    assert f"{expected} of {len(rows)} rows shown" in html

    status = Counter(row["status"] for row in rows).most_common(1)[0][0]
    principle = rows[0]["steps"][0]["principle"]
    html = dom(page, tmp_path, f"#status={status}&principle={principle}")
    expected = sum(row["status"] == status and row["steps"][0]["principle"] == principle for row in rows)
    assert len(shown_rows(html)) == expected >= 1
    filtered = sum(row["status"] != "ok" for row in rows)
    assert len(shown_rows(dom(page, tmp_path, "#status=!ok"))) == filtered


@needs_chromium
def test_model_output_cannot_run_in_the_page(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    attack = "</script><script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
    row = {
        "id": "x1",
        "prompt": attack,
        "category": attack,
        "initial": attack,
        "final": attack,
        "status": "ok",
        "steps": [{"principle": attack, "critique": attack, "revision": attack}],
        "score": 0.75,
    }
    (run / "generations.jsonl").write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(main, ["view", str(run), "-o", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    html = dom(tmp_path / "page.html", tmp_path)
    assert "<title>cai view: " in html and "pwned</title>" not in html
    tags = Tags()
    tags.feed(html)
    assert tags.names["img"] == 0 and tags.names["script"] == 1  # only the page's own script
    assert "onerror" not in tags.attributes
    assert html.count("&lt;script&gt;document.title=") >= 5  # shown as text
    assert "judge score 0.75" in html and "mean judge score" in html
    assert len(shown_rows(html)) == 1


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, tiny_model_path) -> Path:
    out = tmp_path_factory.mktemp("eval") / "report"
    args = [sys.executable, "-m", "cai_kit.cli", "eval", "-m", tiny_model_path, "-s", "harmful", "-s", "over_refusal"]
    _run(args + ["--limit", "2", "--max-new-tokens", "8", "-o", str(out)])
    return out


def test_eval_page_embeds_tables_plots_and_answers(eval_dir, tmp_path):
    page = tmp_path / "eval.html"
    result = CliRunner().invoke(main, ["view", str(eval_dir), "--out", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    pngs = sorted(eval_dir.glob("*.png"))
    assert pngs and sorted(base64.b64decode(data) for data in images) == sorted(p.read_bytes() for p in pngs)
    assert "full refusal: no compliance (higher is better)" in html
    assert "partial refusal: refuses, yet complies (lower is better)" in html
    verdicts = re.findall(r'data-verdict="\[&quot;(\w+)&quot;\]"', html)
    assert len(verdicts) == 4 and set(verdicts) <= {"full_compliance", "full_refusal", "partial_refusal"}
    details = (eval_dir / "details.jsonl").read_text().splitlines()
    assert len(ROW.findall(html)) == len(details) == 4
    if CHROMIUM:
        rendered = dom(page, tmp_path, "#suite=harmful")
        assert rendered.count("<img") == len(pngs)
        assert len(shown_rows(rendered)) == 2


def test_view_errors_are_one_line_and_write_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["view", str(empty)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "neither a generate run" in result.output
    assert CliRunner().invoke(main, ["view", str(tmp_path / "missing")]).exit_code == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    good = json.dumps({"id": "a", "prompt": "p", "initial": "i", "steps": [], "final": "f", "status": "ok"})
    (broken / "generations.jsonl").write_text(f"{good}\n{{not json\n{good}\n")
    result = CliRunner().invoke(main, ["view", str(broken)])
    assert result.exit_code == 2 and f"{broken / 'generations.jsonl'}:2: not a JSON row" in result.output
    assert not (broken / "view.html").exists() and not list(broken.glob(".*tmp"))
    # A line torn by a killed run (the last one) is skipped, as `cai generate` itself would.
    (broken / "generations.jsonl").write_text(f"{good}\n{good[:20]}")
    assert CliRunner().invoke(main, ["view", str(broken)]).exit_code == 0
    assert len(ROW.findall((broken / "view.html").read_text())) == 1
