"""Tests of ``cxmind.eval.html``: the self-contained reasoning report and the Markdown table."""

from __future__ import annotations

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
    table = markdown_table(RESULTS).splitlines()
    assert table[0] == "| task | n | accuracy | f1 | precision | rouge_l | bleu | iou |"
    assert table[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert table[2].startswith("| overall | 3 | 0.667 [0.333, 1.000] |")
    assert "| disease_single_choice | 2 | 0.500 [0.000, 1.000] |" in table[3]
    assert table[5].startswith("| disease_open | 2 |  | 0.833 [0.667, 1.000] | 1.000 [1.000, 1.000] |")
    assert table[-1] == "| grounding | 1 |  |  |  |  |  | 0.810 [0.810, 0.810] |"
    assert len(table) == 2 + 1 + 5


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
