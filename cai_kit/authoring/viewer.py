"""`cai view FOLDER`: one static HTML page to browse a generate run or an eval report; no server needed.

The page is self-contained (CSS, JS and plots inline, no external resources) so it opens from disk in
any browser and can be mailed around. Every piece of text from the run (prompts, model output, the
data card) is HTML-escaped: rows hold model output, and a page must never run what a model wrote.
Rows are rendered here; the inline script only hides and shows them (filters in `view_assets/view.js`).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from cai_kit.core.errors import UsageError
from cai_kit.core.files import numbered_lines, write_atomic
from cai_kit.generation.data_card import principle_rows

PAGE = "view.html"


def write_view(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the page for a generate run (generations.jsonl) or an eval report (results.json); return its path."""
    folder = Path(folder)
    if (folder / "generations.jsonl").is_file():
        page = generate_page(folder)
    elif "principles" in _read_json(folder / "results.json"):
        page = tests_page(folder)
    elif (folder / "results.json").is_file():
        page = eval_page(folder)
    elif not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    else:
        raise UsageError(
            f"{folder}: neither a generate run (no generations.jsonl) nor an eval report (no results.json)"
        )
    path = Path(out) if out else folder / PAGE
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such folder")
    write_atomic(path, page)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a last line torn by a killed run is skipped, a bad line elsewhere is an error."""
    lines = list(numbered_lines(path.read_text(encoding="utf-8")))
    rows = []
    for number, line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == lines[-1][0]:
                break
            raise UsageError(f"{path}:{number}: not a JSON row ({err.msg})") from None
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def _asset(name: str) -> str:
    return (resources.files("cai_kit.authoring") / "view_assets" / name).read_text(encoding="utf-8")


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network at all: nothing on the page can load from elsewhere, even if escaping ever failed.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_asset('view.css')}</style></head>\n"
        f"<body><main>\n{body}\n</main><script>{_asset('view.js')}</script></body></html>\n"
    )


def _data(values: list[str]) -> str:
    return escape(json.dumps(values, ensure_ascii=False))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if _numeric(cell) else ''}>{escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.]+( \[.*\])?( \(.*\))?", cell))


def _select(key: str, label: str, options: list[tuple[str, str]]) -> str:
    items = "".join(f'<option value="{escape(value)}">{escape(text)}</option>' for value, text in options)
    return f'<label>{escape(label)}<select data-filter="{escape(key)}">{items}</select></label>'


def _filters(*selects: str) -> str:
    search = '<label>search<input id="search" type="search" placeholder="text in a row"></label>'
    return f'<nav class="filters">{"".join(selects)}{search}<span id="count"></span></nav>'


def _col(title: str, text: str | None) -> str:
    return f'<div class="col"><h4>{title}</h4><div class="text">{escape(text or "")}</div></div>'


def _reason(status: str) -> str:
    return status.split(":")[0]


def _generation_row(row: dict[str, Any]) -> str:
    steps = row.get("steps") or []
    principles = [step["principle"] for step in steps]
    status = str(row.get("status", "?"))
    category = row.get("category") or "-"
    badges = [
        f'<span class="id">{escape(str(row.get("id", "")))}</span>',
        f'<span class="badge">{escape(category)}</span>',
        f'<span class="badge {"ok" if status == "ok" else "bad"}">{escape(status)}</span>',
    ]
    if isinstance(row.get("score"), (int, float)):
        badges.append(f'<span class="badge score">judge score {row["score"]:.2f}</span>')
    parts = [f"<header>{''.join(badges)}</header>", f'<div class="prompt">{escape(str(row.get("prompt", "")))}</div>']
    before, before_title = row.get("initial"), "initial answer"
    for number, step in enumerate(steps, start=1):
        principle = f'critique &middot; <span class="principle">{escape(step["principle"])}</span>'
        parts.append(
            f'<div class="step">{_col(before_title, before)}{_col(principle, step.get("critique"))}'
            f"{_col(f'revision {number}' if len(steps) > 1 else 'revision', step.get('revision'))}</div>"
        )
        before, before_title = step.get("revision"), f"revision {number}"
    if not steps:
        parts.append(f'<div class="step">{_col("initial answer", before)}</div>')
    return (
        f'<article class="row" data-principle="{_data(principles)}" data-status="{_data([_reason(status)])}" '
        f'data-category="{_data([category])}">{"".join(parts)}</article>'
    )


def generate_page(folder: Path) -> str:
    """The page of a `cai generate` run: counts, per-principle table, then every row, filterable."""
    rows = read_jsonl(folder / "generations.jsonl")
    manifest = _read_json(folder / "manifest.json")
    card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
    name = manifest.get("constitution") or (rows[0].get("constitution") if rows else "") or folder.name
    statuses = Counter(_reason(str(row.get("status", "?"))) for row in rows)
    principles = sorted({step["principle"] for row in rows for step in row.get("steps") or []})
    categories = sorted({row.get("category") or "-" for row in rows})
    options = manifest.get("options", {})
    facts = [
        ("folder", str(folder)),
        ("model", str(manifest.get("model", rows[0].get("model", "?") if rows else "?"))),
        ("constitution", str(manifest.get("constitution_path", name))),
        ("prompts", ", ".join(map(str, manifest.get("prompt_sources", [])))),
        ("rounds", str(options.get("rounds", "?"))),
        ("seed", str(manifest.get("seed", "?"))),
    ]
    kept = statuses.get("ok", 0)
    status_rows = [[status, str(count)] for status, count in statuses.most_common()]
    body = [
        f"<h1>{escape(str(name))}: {len(rows)} rows, {kept} kept, {len(rows) - kept} filtered</h1>",
        '<ul class="facts">' + "".join(f"<li>{k}: <code>{escape(v)}</code></li>" for k, v in facts if v) + "</ul>",
        '<div class="tables">',
        _table(["status", "rows"], status_rows),
        _table(*principle_rows(rows)),
        "</div>",
        _details("data card (README.md)", card),
        _details("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) if manifest else ""),
        _filters(
            _select("principle", "principle", [("", "all"), *((p, p) for p in principles)]),
            _select(
                "status",
                "status",
                [("", "all"), ("ok", "kept"), ("!ok", "filtered (any reason)")]
                + [(s, f"filtered: {s}") for s in sorted(statuses) if s != "ok"],
            ),
            _select("category", "category", [("", "all"), *((c, c) for c in categories)]),
        ),
        *(_generation_row(row) for row in rows),
    ]
    return _page(f"cai view: {name}", "\n".join(body))


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>" if text else ""


def _answer_title(role: str, answer: dict[str, Any]) -> str:
    """The role and its verdict (full_compliance, full_refusal or partial_refusal; the rules' evidence on hover)."""
    label = answer.get("verdict") or answer.get("pairwise", {}).get("verdict") or ""
    evidence = escape(str(answer.get("evidence") or ""))
    return f"{escape(role)}" + (
        f' &middot; <span class="principle" title="{evidence}">{escape(str(label))}</span>' if label else ""
    )


def eval_page(folder: Path) -> str:
    """The page of a `cai eval` report: before/after tables, per-category tables, plots, every answer."""
    from cai_kit.evaluation.report import category_rows, roles_of, summary_rows

    results = _read_json(folder / "results.json")
    try:
        roles = roles_of(results)
        body = [
            "<h1>cai eval: "
            + escape(", ".join(f"{role} {results['models'][role]['spec']}" for role in roles))
            + "</h1>",
            '<ul class="facts">'
            + "".join(
                f"<li>{escape(k)}: <code>{escape(str(results.get(k)))}</code></li>" for k in ("classifier", "seconds")
            )
            + "</ul>",
            "<h2>Before and after</h2>",
            _table(["suite", "metric", *roles], summary_rows(results)),
            '<div class="tables">',
        ]
        for image in sorted(folder.glob("*.png")):
            data = base64.b64encode(image.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{escape(image.name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(image.name)}</figcaption></figure>"
            )
        body.append('</div><div class="tables">')
        for suite, entry in results["suites"].items():
            metric, rows = category_rows(entry, roles)
            if rows:
                body.append(
                    f"<div><h2>{escape(suite)}: {escape(metric)}</h2>{_table(['category', 'n', *roles], rows)}</div>"
                )
        body.append("</div>")
    except (KeyError, TypeError) as err:
        raise UsageError(f"{folder / 'results.json'}: not a cai eval results file (missing {err})") from None
    details = read_jsonl(folder / "details.jsonl") if (folder / "details.jsonl").is_file() else []
    if details:
        verdicts = sorted({str(d.get("model", {}).get("verdict", "-")) for d in details})
        body += [
            "<h2>Answers</h2>",
            _filters(
                _select("suite", "suite", [("", "all"), *((s, s) for s in sorted({d["suite"] for d in details}))]),
                _select(
                    "category",
                    "category",
                    [("", "all")] + [(c, c) for c in sorted({d.get("category") or "-" for d in details})],
                ),
                _select("verdict", "model verdict", [("", "all"), *((v, v) for v in verdicts)]),
            ),
        ]
        body += [_answer_row(detail) for detail in details]
    report = folder / "report.md"
    body.append(_details("report.md", report.read_text(encoding="utf-8") if report.is_file() else ""))
    return _page(f"cai view: eval {folder.name}", "\n".join(body))


def tests_page(folder: Path) -> str:
    """The page of a `cai test` folder: per principle its critique text, its row, and every test's answers."""
    from cai_kit.core.constitution import load_constitution

    expects = ("refuse", "comply", "redirect")

    results = _read_json(folder / "results.json")
    try:
        texts = {p.name: p.critique for p in load_constitution(results["constitution"]["path"]).principles}
    except UsageError:  # the file moved or changed since: the page still shows every answer
        texts = {}
    roles = [role for role in ("baseline", "model") if role in results["models"]]
    names = [p["name"] for p in results["principles"]]
    body = ["<h1>cai test: " + escape(results["constitution"]["name"] + ", " + ", ".join(
        f"{role} {results['models'][role]['spec']}" for role in roles)) + "</h1>",
        _filters(_select("suite", "principle", [("", "all"), *((name, name) for name in names)]),
                 _select("category", "expect", [("", "all"), *((f"expect {e}", e) for e in expects)]))]
    for principle in results["principles"]:
        score = principle["scores"]["model"]
        body.append(f'<h2>{escape(principle["name"])}: {score["k"]}/{score["n"]} passed</h2>'
                    f'<p class="text">{escape(texts.get(principle["name"], ""))}</p>')
        for test in principle["tests"]:
            status = "PASS" if test["model"]["passed"] else "FAIL"
            detail = {"suite": principle["name"], "category": f"expect {test['expect']}", "id": status,
                      "prompt": test["prompt"]}
            for role in roles:
                got = test[role]
                detail[role] = {"answer": got["answer"], "verdict": got["why"] or got["label"],
                                "evidence": got["evidence"]}
            body.append(_answer_row(detail))
    return _page(f"cai view: test {folder.name}", "\n".join(body))


def _answer_row(detail: dict[str, Any]) -> str:
    """One eval prompt: the baseline's and the model's answers side by side, with their verdicts."""
    suite, category = str(detail["suite"]), detail.get("category") or "-"
    verdict = str(detail.get("model", {}).get("verdict", "-"))
    roles = [role for role in ("baseline", "model") if role in detail]
    columns = "".join(_col(_answer_title(role, detail[role]), detail[role].get("answer")) for role in roles)
    badges = "".join(f'<span class="badge">{escape(text)}</span>' for text in (suite, category))
    return (
        f'<article class="row" data-suite="{_data([suite])}" data-category="{_data([category])}" '
        f'data-verdict="{_data([verdict])}"><header><span class="id">{escape(str(detail.get("id", "")))}</span>'
        f'{badges}</header><div class="prompt">{escape(str(detail.get("prompt", "")))}</div>'
        f'<div class="step{" two" if len(roles) == 2 else ""}">{columns}</div></article>'
    )
