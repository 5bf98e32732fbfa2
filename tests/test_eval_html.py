"""Tests of ``cxmind.eval.html``: the self-contained reasoning report and the Markdown table."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cxmind.data.phantom import render_phantom
from cxmind.eval.html import error_type, markdown_table, render_html, write_html
from cxmind.format import render_closed, render_open

OPTIONS = ["A) Atelectasis", "B) Cardiomegaly", "C) Pneumothorax", "D) Pleural Effusion"]
XSS = "<script>alert(1)</script>"


def _closed(
    prediction: str, accuracy: float, task: str = "disease_single_choice", n: int = 0
) -> dict[str, Any]:
    return {
        "id": f"phantom/s{n}/{task}",
        "task": task,
        "task_type": "closed",
        "source": "phantom",
        "question": "Which finding is shown on this chest X-ray?\n" + "\n".join(OPTIONS),
        "options": OPTIONS,
        "answer": "B",
        "solution": render_closed(
            [
                ("A", "No collapse.", False),
                ("B", "Wide heart.", True),
                ("C", "Markings reach the edge.", False),
                ("D", "Sharp angles.", False),
            ],
            "The heart is enlarged.",
            "B",
        ),
        "prediction": prediction,
        "images": [f"images/s{n}.png"],
        "per_record": {"accuracy": accuracy},
    }


def _rows() -> list[dict[str, Any]]:
    correct = render_closed(
        [
            ("A", "No collapse.", False),
            ("B", "Heart is wide.", True),
            ("C", "Lung edge normal.", False),
            ("D", "Angles sharp.", False),
        ],
        "Cardiomegaly fits.",
        "B",
    )
    wrong = render_closed(
        [
            ("A", "No collapse.", False),
            ("B", f"Heart normal {XSS}.", False),
            ("C", "A rim?", True),
            ("D", "Angles sharp.", False),
        ],
        "Pneumothorax.",
        "C",
    )
    inconsistent = render_closed(
        [
            ("A", "Maybe collapse.", True),
            ("B", "Heart is wide.", True),
            ("C", "No rim.", False),
            ("D", "Angles sharp.", False),
        ],
        "Cardiomegaly fits best.",
        "B",
    )
    open_gold = "Cardiomegaly, Pleural Effusion"
    open_solution = render_open(
        "Observation: heart and bases reviewed.",
        [
            ("Cardiomegaly", "Wide.", True),
            ("Pleural Effusion", "Blunted.", True),
            ("Pneumothorax", "No.", False),
        ],
        "Two findings.",
    )
    open_row = {
        "id": "phantom/s3/disease_open",
        "task": "disease_open",
        "task_type": "open",
        "source": "phantom",
        "question": "What findings are present on this chest X-ray?",
        "options": None,
        "answer": open_gold,
        "solution": open_solution,
        "prediction": open_solution,
        "images": ["images/s3.png"],
        "per_record": {"f1": 1.0, "precision": 1.0, "recall": 1.0},
    }
    malformed = dict(
        open_row,
        id="phantom/s4/disease_open",
        images=["images/s4.png"],
        prediction="Sure! <think>The heart is wide.</think><answer>Cardiomegaly ✅</answer><think>unfinished",
        per_record={"f1": 0.667, "precision": 1.0, "recall": 0.5},
    )
    report = {
        "id": "phantom/s5/report_findings",
        "task": "report_findings",
        "task_type": "report",
        "source": "phantom",
        "question": "Write the findings section of the report for this chest X-ray.",
        "options": None,
        "answer": "The heart is enlarged. Small left pleural effusion.",
        "solution": None,
        "prediction": "The heart is enlarged & there is no pneumothorax.",
        "images": ["images/missing.png"],  # unreadable: a placeholder, not a crash
        "per_record": {"rouge_l": 0.41, "bleu": 0.12},
    }
    grounding = {
        "id": "phantom/s6/grounding",
        "task": "grounding",
        "task_type": "grounding",
        "source": "phantom",
        "question": "Locate the cardiomegaly.",
        "options": None,
        "answer": '[{"bbox_2d": [30, 40, 100, 110], "label": "Cardiomegaly"}]',
        "solution": None,
        "prediction": '[{"bbox_2d": [32, 44, 98, 112], "label": "Cardiomegaly"}]',
        "images": ["../outside.png"],  # escapes the root: a placeholder
        "per_record": {"iou": 0.81},
    }
    return [
        _closed(correct, 1.0, n=0),
        _closed(wrong, 0.0, n=1),
        _closed(inconsistent, 1.0, task="disease_binary", n=2),
        open_row,
        malformed,
        report,
        grounding,
    ]


EXPECTED_ERRORS = ["correct", "wrong", "inconsistent", "correct", "format", "ungraded", "correct"]


def _m(value: float, lo: float, hi: float, n: int) -> dict[str, Any]:
    return {"value": value, "ci": [lo, hi], "n": n}


RESULTS: dict[str, Any] = {
    "model": {"model": "phantom/cxmind-tiny", "adapter": None, "backend": "hf", "cxmind": "0.1.0.dev0"},
    "config": {"split": "test", "limit": None, "generation": {"max_new_tokens": 512, "temperature": 0.0}},
    "n_records": 7,
    "limited": False,
    "metrics": {
        "overall": {"accuracy": _m(0.667, 0.333, 1.0, 3)},
        "by_task": {
            "disease_single_choice": {"accuracy": _m(0.5, 0.0, 1.0, 2)},
            "disease_binary": {"accuracy": _m(1.0, 1.0, 1.0, 1)},
            "disease_open": {"f1": _m(0.833, 0.667, 1.0, 2), "precision": _m(1.0, 1.0, 1.0, 2)},
            "report_findings": {"rouge_l": _m(0.41, 0.41, 0.41, 1), "bleu": _m(0.12, 0.12, 0.12, 1)},
            "grounding": {"iou": _m(0.81, 0.81, 0.81, 1)},
        },
        "by_source": {"phantom": {"disease_single_choice": {"accuracy": _m(0.5, 0.0, 1.0, 2)}}},
        "notes": ["bootstrap over records, 1000 resamples"],
    },
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "root"
    (root / "images").mkdir(parents=True)
    for n, findings in enumerate([("Cardiomegaly",), (), ("Pneumothorax",), ("Pleural Effusion",), ()]):
        image, _ = render_phantom(findings, seed=n, size=320)
        image.save(root / "images" / f"s{n}.png")
    (root.parent / "outside.png").write_bytes((root / "images" / "s0.png").read_bytes())
    return root


@pytest.fixture(scope="module")
def page(image_root: Path) -> str:
    return render_html(RESULTS, _rows(), image_root_of=lambda row: image_root, thumbnail=128)


def _cards(page: str) -> list[str]:
    return re.findall(r'<article class="card"[^>]*>', page)


def test_error_types_per_row() -> None:
    assert [error_type(row) for row in _rows()] == EXPECTED_ERRORS


def test_page_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and "src='http" not in page
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?(?!data:|#)[a-z]+:""", page, re.IGNORECASE)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" in page
    assert page.count("<script>") == 1  # the page's own filter script only


def test_page_shows_model_tasks_and_metrics(page: str) -> None:
    assert "phantom/cxmind-tiny" in page and "not for clinical use" in page.lower()
    assert "generation.max_new_tokens" in page
    for task in RESULTS["metrics"]["by_task"]:
        assert f'<option value="{task}">' in page
        assert f"<td>{task}</td>" in page
    assert '<strong>0.500</strong><br><span class="ci">[0.000, 1.000]</span>' in page  # headline + CI
    assert "<td>overall</td>" in page
    assert page.count("<svg") == 4  # one chart per headline metric: accuracy, f1, rouge_l, iou
    assert "bootstrap over records" in page


def test_images_are_embedded_or_replaced_by_placeholders(page: str) -> None:
    thumbs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(thumbs) == 5
    assert page.count('class="placeholder"') == 2
    assert "missing" in page and "escapes root" in page


def test_model_text_is_escaped(page: str) -> None:
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "enlarged &amp; there is no pneumothorax" in page


def test_rounds_marks_and_agreement_badges(page: str) -> None:
    cards = page.split('<article class="card"')[1:]
    assert len(cards) == 7
    correct, wrong, inconsistent, open_card, malformed = cards[:5]
    assert correct.count("agrees with gold") == 5 and "disagrees" not in correct
    assert 'class="mark m-accept"' in correct and 'class="mark m-reject"' in correct
    assert "✅" in correct and "❌" in correct
    assert wrong.count("disagrees with gold") == 3  # B rejected, C accepted twice
    assert inconsistent.count("disagrees with gold") == 1  # A accepted
    assert open_card.count("agrees with gold") == 3 and "disagrees" not in open_card
    assert "Differential Diagnoses" in open_card
    assert "text outside rounds" in malformed and "unclosed &lt;think&gt;" in malformed
    assert 'class="raw"' in malformed and "Rounds recovered" in malformed
    assert "B) Cardiomegaly" in correct  # the gold option written out


def test_data_error_attributes(page: str) -> None:
    found = [re.search(r'data-error="([a-z]+)"', card).group(1) for card in _cards(page)]  # type: ignore[union-attr]
    assert found == EXPECTED_ERRORS


def test_max_samples_spreads_across_tasks(image_root: Path) -> None:
    page = render_html(RESULTS, _rows(), max_samples=5)
    tasks = [re.search(r'data-task="([a-z_]+)"', c).group(1) for c in _cards(page)]  # type: ignore[union-attr]
    assert len(tasks) == 5 and set(tasks) == set(RESULTS["metrics"]["by_task"])
    assert "5 of 7 rows" in page
    assert 'class="placeholder"' in page  # no image root: placeholders


def test_tolerates_missing_parts(tmp_path: Path) -> None:
    out = write_html(tmp_path / "sub" / "report.html", {}, [{"id": "x", "prediction": None}])
    text = out.read_text(encoding="utf-8")
    assert "No metrics recorded" in text and 'data-error="format"' in text
    assert markdown_table({}) == "_No metrics recorded._"


def test_markdown_table() -> None:
    # One table per task type (it was one table of every metric), n = the records of the task, and the
    # overall count is every record (7), not the first metric's n (3).
    assert markdown_table(RESULTS).splitlines() == [
        "**closed** (3 records)",
        "",
        "| task | n | accuracy |",
        "|---|---:|---:|",
        "| disease_single_choice | 2 | 0.500 [0.000, 1.000] |",
        "| disease_binary | 1 | 1.000 [1.000, 1.000] |",
        "",
        "**open** (2 records)",
        "",
        "| task | n | f1 | precision |",
        "|---|---:|---:|---:|",
        "| disease_open | 2 | 0.833 [0.667, 1.000] | 1.000 [1.000, 1.000] |",
        "",
        "**report** (1 record)",
        "",
        "| task | n | rouge_l | bleu |",
        "|---|---:|---:|---:|",
        "| report_findings | 1 | 0.410 [0.410, 0.410] | 0.120 [0.120, 0.120] |",
        "",
        "**grounding** (1 record)",
        "",
        "| task | n | iou |",
        "|---|---:|---:|",
        "| grounding | 1 | 0.810 [0.810, 0.810] |",
        "",
        "**overall**: 7 records",
    ]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium not installed")


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60, check=False)


def test_renders_in_headless_chromium(tmp_path: Path, image_root: Path) -> None:
    binary = _chromium()
    html_path = write_html(tmp_path / "report.html", RESULTS, _rows(), image_root_of=lambda row: image_root)
    shot = tmp_path / "shot.png"
    start = time.monotonic()
    done = _headless(
        binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", html_path.as_uri()
    )
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, charts and radiographs, not a blank page
    # The filter script runs under the page's CSP: a URL fragment preselects the filters.
    dom = _headless(binary, tmp_path / "profile2", "--dump-dom", html_path.as_uri() + "#error=wrong")
    assert "1 of 7 shown" in dom.stdout, dom.stderr[-2000:]
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------------------------
# Integrity: metrics is the one source of truth; tables per task type; counts; baselines; layout
# ---------------------------------------------------------------------------------------------

MULTI = ["A) Cardiomegaly", "B) Edema", "C) Mass", "D) Pneumothorax"]


def _multi(prediction_final: str, n: int) -> dict[str, Any]:
    candidates = [
        ("Cardiomegaly", "Wide heart.", True),
        ("Edema", "No haze.", False),
        ("Mass", "Round.", True),
    ]
    solution = render_open("Observation: heart and lungs reviewed.", candidates, "Two findings.")
    prediction = solution.rsplit("<answer>", 1)[0] + f"<answer>{prediction_final}</answer>"
    return {
        "id": f"phantom/s{n}/disease_multi_choice",
        "task": "disease_multi_choice",
        "task_type": "open",
        "source": "phantom",
        "question": "Which of the following findings are present? Select all that apply.\n"
        + "\n".join(MULTI),
        "options": MULTI,
        "answer": "Cardiomegaly, Mass",
        "solution": solution,
        "prediction": prediction,
        "images": [f"images/s{n}.png"],
    }


def realistic_rows() -> list[dict[str, Any]]:
    """The rows of ``_rows`` and the cases the integrity fix is about, graded by ``metrics.per_record``."""
    from cxmind.eval.metrics import per_record

    base = [{k: v for k, v in row.items() if k != "per_record"} for row in _rows()]
    truncated = base[0] | {
        "id": "phantom/s1/truncated",
        "prediction": render_closed(
            [("A", "No.", False), ("B", "Wide heart.", True), ("C", "No rim.", False)], "x", "B"
        ).rsplit("<think>", 1)[0]
        + "<think>Then D.</think><answer>B) ❌</answer>",
    }
    one_round = base[0] | {
        "id": "phantom/s2/one_round",
        "prediction": "<think>Wide.</think><answer>B) ✅</answer>",
    }
    failed = base[0] | {
        "id": "phantom/s4/failed",
        "prediction": "",
        "error": "image unreadable: truncated PNG",
    }
    report = base[5] | {
        "id": "phantom/s0/report_impression_with_indication",
        "task": "report_impression_with_indication",
        "images": ["images/s0.png"],
        "answer": "Cardiomegaly with small bilateral pleural effusions.",
        "prediction": "Mild cardiomegaly. No pleural effusion. Possible edema.",
    }
    rows = [*base, truncated, one_round, failed, _multi("A, C", 2), _multi("A, B", 3), report]
    for row in rows:
        row["per_record"] = per_record(row)
    return rows


REALISTIC_ERRORS = [
    *EXPECTED_ERRORS,
    "wrong",  # final ❌: no answer (was "correct": the letter B was read despite the ❌)
    "format",  # one round only fails the format metric (was "correct": well formed was enough)
    "failed",  # generation failed (was "format")
    "correct",  # "A, C" maps through the options to the gold list (was "wrong")
    "wrong",
    "ungraded",
]


def _realistic_results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from cxmind.eval.metrics import aggregate

    baseline = {
        "report_findings": "No acute cardiopulmonary abnormality.",
        "report_impression_with_indication": "Normal.",
    }
    return {
        "model": {"model": "phantom/cxmind-tiny"},
        "config": {"split": "test"},
        "n_records": len(rows),
        "limited": False,
        "metrics": aggregate(rows, n_bootstrap=50, baseline_report=baseline),
    }


@pytest.fixture(scope="module")
def realistic(image_root: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    rows = realistic_rows()
    results = _realistic_results(rows)
    return rows, results, render_html(results, rows, image_root_of=lambda row: image_root, thumbnail=128)


def test_error_types_follow_the_metrics(realistic: tuple[list[dict[str, Any]], dict[str, Any], str]) -> None:
    from cxmind.eval import html as H
    from cxmind.eval.metrics import final_correct, format_score, round_verdicts

    rows, _, page = realistic
    assert [error_type(row) for row in rows] == REALISTIC_ERRORS
    found = [re.search(r'data-error="([a-z]+)"', c).group(1) for c in _cards(page)]  # type: ignore[union-attr]
    assert found == REALISTIC_ERRORS
    for row, kind in zip(rows, REALISTIC_ERRORS, strict=True):
        if row["task_type"] in ("closed", "open") and not row.get("error"):
            assert (kind == "format") == (format_score(row["prediction"]) == 0.0)
            if kind != "format":
                assert (kind == "wrong") == (not final_correct(row))
                assert (kind == "inconsistent") == (False in round_verdicts(row) and bool(final_correct(row)))
    assert not hasattr(H, "_final_correct") and not hasattr(H, "_round_verdict")  # no second grader


def test_one_metrics_table_per_task_type(realistic: tuple[list[dict[str, Any]], dict[str, Any], str]) -> None:
    _, results, page = realistic
    tables = dict(re.findall(r'<table class="metrics" data-type="([a-z]+)">(.*?)</table>', page, re.S))
    assert list(tables) == ["closed", "open", "report", "grounding"]
    heads = {t: re.findall(r"<th>(.*?)</th>", body.split("</thead>")[0]) for t, body in tables.items()}
    assert heads["closed"][:3] == ["task", "n", "accuracy"] and "rouge_<wbr>l" not in heads["closed"]
    assert heads["report"][2] == "rouge_<wbr>l" and "accuracy" not in heads["report"]
    assert heads["grounding"][:3] == ["task", "n", "iou"]
    for task_type, body in tables.items():
        tasks = [t for t, tt in _task_of(results).items() if tt == task_type]
        for task in tasks:
            assert f"<td>{task}</td>" in body
        assert len(heads[task_type]) <= 2 + 12  # no 26-column table


def _task_of(results: dict[str, Any]) -> dict[str, str]:
    from cxmind.data.schema import TASKS

    return {task: TASKS[task] for task in results["metrics"]["by_task"]}


def test_record_counts_are_the_real_numbers(
    realistic: tuple[list[dict[str, Any]], dict[str, Any], str],
) -> None:
    rows, results, page = realistic
    counts = results["metrics"]["n_records"]
    assert counts["overall"] == len(rows) == 13
    assert '<tr><td>overall</td><td class="num">13</td>' in page
    assert '<tr><td>closed</td><td class="num">6</td>' in page and "closed — 6 records" in page
    closed = re.search(r'data-type="closed">(.*?)</table>', page, re.S).group(1)  # type: ignore[union-attr]
    assert '<tr><td>disease_single_choice</td><td class="num">5</td>' in closed
    assert "**overall**: 13 records" in markdown_table(results)
    # results without n_records (older files): the total of the results, not the first metric's n
    assert '<tr><td>overall</td><td class="num">7</td>' in render_html(RESULTS, [])


def test_chance_and_baselines_beside_the_model(
    realistic: tuple[list[dict[str, Any]], dict[str, Any], str],
) -> None:
    _, results, page = realistic
    base = results["metrics"]["baselines"]["by_task"]
    assert (
        base["disease_single_choice"]["accuracy"]["value"] == 0.25
        and base["disease_binary"]["accuracy"]["value"] == 0.25
    )
    closed = re.search(r'data-type="closed">(.*?)</table>', page, re.S).group(1)  # type: ignore[union-attr]
    assert '<tr class="base"><td>↳ chance</td><td class="num">5</td><td class="num">0.250</td>' in closed
    report = re.search(r'data-type="report">(.*?)</table>', page, re.S).group(1)  # type: ignore[union-attr]
    assert report.count("↳ constant report") == 3  # two tasks and all report records
    assert "↳ most frequent answer (Cardiomegaly, Mass)" in page
    table = markdown_table(results)
    assert "| ↳ chance | 5 | 0.250 |" in table
    assert "| ↳ constant report | 1 |" in table
    assert "No acute cardiopulmonary abnormality." in page  # the constant report itself
    assert 'stroke-dasharray="3 2"><title>chance: 0.250</title>' in page  # chance marked on the chart


def test_cards_show_ce_labels_and_the_final_list_diff(
    realistic: tuple[list[dict[str, Any]], dict[str, Any], str],
) -> None:
    _, _, page = realistic
    cards = page.split('<article class="card"')[1:]
    report = next(c for c in cards if "report_impression_with_indication" in c)
    labels = report.split("CheXpert labels")[1]
    prediction, reference = labels.split("<dt>reference</dt>")
    assert '<span class="chip c-hit">Cardiomegaly</span>' in prediction  # found in both
    assert "Pleural Effusion" not in prediction  # negated in the prediction
    assert '<span class="chip c-miss">Pleural Effusion</span>' in reference
    wrong_multi = next(c for c in cards if 'data-task="disease_multi_choice" data-error="wrong"' in c)
    diff = wrong_multi.split("Final list vs gold")[1]
    assert '<dt>matched</dt><dd><span class="chip c-hit">Cardiomegaly</span>' in diff
    assert '<dt>missing</dt><dd><span class="chip c-miss">Mass</span>' in diff
    assert '<dt>extra</dt><dd><span class="chip c-extra">Edema</span>' in diff
    failed = next(c for c in cards if 'data-error="failed"' in c)
    assert "generation failed: image unreadable: truncated PNG" in failed


def test_charts_scale_with_the_page(realistic: tuple[list[dict[str, Any]], dict[str, Any], str]) -> None:
    _, _, page = realistic
    svgs = re.findall(r"<svg [^>]*>", page)
    assert svgs and all("viewBox=" in s and " width=" not in s and " height=" not in s for s in svgs)
    assert ".chart svg{display:block;width:100%;height:auto}" in page
    assert "report_impression_with_indication</text>" in page  # full labels, not cut at 26 characters


def _probe_page(page: str, tmp_path: Path) -> Path:
    """The page with a measuring script (allowed by its hash in the page's own CSP)."""
    import base64
    import hashlib

    probe = (
        "(function(){var d=document.documentElement,bad=[];"
        "document.querySelectorAll('svg').forEach(function(s){var w=s.viewBox.baseVal.width;"
        "s.querySelectorAll('text').forEach(function(t){var b=t.getBBox();"
        "if(b.x<-0.5||b.x+b.width>w+0.5)bad.push(t.textContent);});});"
        "var m=JSON.stringify({scrollWidth:d.scrollWidth,clientWidth:d.clientWidth,clipped:bad});"
        "var p=document.createElement('pre');p.id='probe';p.textContent=m;document.body.appendChild(p);"
        "if(parent!==window)parent.postMessage(m,'*');})();"
    )
    digest = base64.b64encode(hashlib.sha256(probe.encode()).digest()).decode()
    assert page.count("script-src &#x27;sha256-") == 1
    page = page.replace("script-src &#x27;sha256-", f"script-src &#x27;sha256-{digest}&#x27; &#x27;sha256-")
    path = tmp_path / "measured.html"
    path.write_text(page.replace("</body>", f"<script>{probe}</script></body>"), encoding="utf-8")
    return path


def test_page_fits_desktop_and_phone_widths_in_headless_chromium(
    tmp_path: Path, realistic: tuple[list[dict[str, Any]], dict[str, Any], str]
) -> None:
    import json

    binary = _chromium()
    _, _, page = realistic
    measured = _probe_page(page, tmp_path)
    # Headless Chromium keeps its window at least 500 px wide: the phone is a 420 px frame around the page.
    phone = tmp_path / "phone.html"
    phone.write_text(
        '<!DOCTYPE html><html><body style="margin:0"><iframe src="measured.html" '
        'style="width:420px;height:4000px;border:0;display:block"></iframe><script>'
        "addEventListener('message',function(e){var p=document.createElement('pre');p.id='probe';"
        "p.textContent=e.data;document.body.appendChild(p);});</script></body></html>",
        encoding="utf-8",
    )
    for name, width, url in (("desktop", 1280, measured), ("phone", 500, phone)):
        flags = (f"--window-size={width},4000", "--hide-scrollbars", "--virtual-time-budget=5000")
        dom = _headless(binary, tmp_path / f"profile-{name}", *flags, "--dump-dom", url.as_uri())
        match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
        assert match, dom.stderr[-2000:]
        probe = json.loads(html.unescape(match.group(1)))
        expected = 1280 if name == "desktop" else 420
        assert probe["clientWidth"] == expected, probe
        assert probe["scrollWidth"] <= expected, probe  # nothing wider than the screen
        assert probe["clipped"] == [], probe  # every chart label inside its drawing
        shot = tmp_path / f"report_{name}.png"
        _headless(binary, tmp_path / f"shot-{name}", *flags, f"--screenshot={shot}", url.as_uri())
        with Image.open(shot) as image:
            strip = image.convert("RGB").crop((0, 0, expected, 1500))
            colors = strip.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # text, tables and radiographs, not a blank page
