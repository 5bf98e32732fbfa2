"""A self-contained HTML reasoning report and Markdown metrics tables for ``cxmind eval``.

The HTML page is one file with no external resources: inline CSS, a small vanilla-JS filter and
images embedded as base64 thumbnails. It shows the model identity and configuration, the number of
records per group, one metrics table per task type (95% confidence intervals, baselines beside the
model's numbers), responsive SVG bar charts of each task's headline metric with its chance or
baseline level, and one card per prediction row: the reasoning split into rounds with each verdict
checked against gold, the missing/extra findings of open answers and the CheXpert labels of both
reports of report rows. Correctness, verdicts and the format rule all come from
:mod:`cxmind.eval.metrics`, the one source of truth. Model output is untrusted: every text is
HTML-escaped, and a Content-Security-Policy allows only the page's own script (by hash), inline
styles and ``data:`` images.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxmind.eval.metrics import (
    CE_FINDINGS,
    answer_text,
    final_correct,
    final_findings,
    format_score,
    gold_findings,
    gold_letter,
    prediction_text,
    report_labels,
    round_verdicts,
)
from cxmind.format import ACCEPT, REJECT, Round, option_texts, parse

__all__ = [
    "ERROR_TYPES",
    "HEADLINE_METRICS",
    "error_type",
    "headline_metric",
    "markdown_table",
    "render_html",
    "write_html",
]

#: ``data-error`` values of a sample card, with the labels of the filter menu.
ERROR_TYPES: dict[str, str] = {
    "correct": "correct",
    "wrong": "wrong answer",
    "format": "format error",
    "inconsistent": "inconsistent verdict",
    "failed": "generation failed",
    "ungraded": "not graded (report)",
}

#: Headline metric candidates per task type, in order of preference (the first present is used).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "closed": ("accuracy",),
    "open": ("f1", "accuracy"),
    "report": ("rouge_l", "bleu", "bleu_4", "bleu4", "bertscore", "f1"),
    "grounding": ("iou", "miou", "acc@0.5"),
}

#: Names of the baselines of ``metrics.baselines`` (by their ``kind``).
BASELINE_KINDS: dict[str, str] = {
    "chance": "chance",
    "majority_answer": "most frequent answer",
    "constant_report": "constant report",
}

NOT_FOR_CLINICAL_USE = (
    "Research use only — not for clinical use. These are outputs of a machine-learning model under "
    "evaluation; they may be wrong and must not inform the care of any patient."
)

_TYPE_ORDER = ("closed", "open", "report", "grounding")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """HTML-escape any value (quotes included, so the result is safe inside attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def _metric(entry: object) -> tuple[float | None, tuple[float, float] | None, int | None]:
    """``(value, ci, n)`` of a metric entry: ``{"value", "ci", "n"}`` or a bare number."""
    if isinstance(entry, Mapping):
        value, ci, n = entry.get("value"), entry.get("ci"), entry.get("n")
    else:
        value, ci, n = entry, None, None
    num = _number(value)
    bounds: tuple[float, float] | None = None
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        lo, hi = _number(ci[0]), _number(ci[1])
        if lo is not None and hi is not None:
            bounds = (lo, hi)
    count = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
    return num, bounds, count


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _fmt_metric(entry: object, *, with_n: bool = False) -> str:
    value, ci, n = _metric(entry)
    text = _fmt(value)
    if value is not None and ci is not None:
        text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if with_n and n is not None:
        text += f" (n={n})"
    return text


def _dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _metric_names(task_metrics: Iterable[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for metrics in task_metrics:
        for name in metrics:
            names.setdefault(str(name), None)
    return list(names)


def _task_types(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Task name -> task type, from the rows first, then the schema's task table."""
    from cxmind.data.schema import TASKS

    types = dict(TASKS)
    for row in rows:
        task, task_type = row.get("task"), row.get("task_type")
        if task and task_type:
            types[str(task)] = str(task_type)
    return types


def headline_metric(task_type: str | None, metrics: Mapping[str, Any]) -> str | None:
    """The headline metric of a task: the first of ``HEADLINE_METRICS[task_type]`` present, else the first."""
    for name in HEADLINE_METRICS.get(task_type or "", ()):
        if name in metrics:
            return name
    for name, entry in metrics.items():
        if _metric(entry)[0] is not None:
            return str(name)
    return None


def _safe(fn: Callable[[Mapping[str, Any]], Any], row: Mapping[str, Any]) -> Any:
    """``fn(row)``, or ``None`` when the row cannot be graded (a report must never fail on one row)."""
    try:
        return fn(row)
    except (ValueError, TypeError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# Groups: tasks by type, record counts, baselines
# ---------------------------------------------------------------------------------------------


class _Groups:
    """The metric groups of a results dict, with their task types, record counts and baselines."""

    def __init__(self, results: Mapping[str, Any], types: Mapping[str, str]) -> None:
        metrics = _dict(results.get("metrics"))
        self.overall = _dict(metrics.get("overall"))
        self.by_task = {str(t): _dict(m) for t, m in _dict(metrics.get("by_task")).items()}
        self.by_type = {str(t): _dict(m) for t, m in _dict(metrics.get("by_type")).items()}
        self.by_source = {str(s): _dict(t) for s, t in _dict(metrics.get("by_source")).items()}
        self.counts = _dict(metrics.get("n_records"))
        baselines = _dict(metrics.get("baselines"))
        self.base_task = {str(t): _dict(b) for t, b in _dict(baselines.get("by_task")).items()}
        self.base_type = {str(t): _dict(b) for t, b in _dict(baselines.get("by_type")).items()}
        self.constant_report = _dict(baselines.get("constant_report"))
        self.notes = metrics.get("notes") or results.get("notes")
        self.types = {task: types.get(task) or "other" for task in self.by_task}
        total = self.counts.get("overall", results.get("n_records"))
        self.total = int(total) if _number(total) is not None else None

    def tasks_of(self, task_type: str) -> list[str]:
        return [task for task, t in self.types.items() if t == task_type]

    def type_order(self) -> list[str]:
        present = set(self.types.values())
        return [t for t in _TYPE_ORDER if t in present] + sorted(present - set(_TYPE_ORDER))

    def n_task(self, task: str) -> int | None:
        """Records of a task: ``n_records`` when recorded, else the largest n among its metrics."""
        n = _number(_dict(self.counts.get("by_task")).get(task))
        return int(n) if n is not None else _largest_n(self.by_task.get(task, {}))

    def n_type(self, task_type: str) -> int | None:
        n = _number(_dict(self.counts.get("by_type")).get(task_type))
        if n is not None:
            return int(n)
        counts = [self.n_task(t) for t in self.tasks_of(task_type)]
        return sum(c for c in counts if c is not None) if any(c is not None for c in counts) else None

    def n_source(self, source: str, task: str) -> int | None:
        n = _number(_dict(_dict(self.counts.get("by_source")).get(source)).get(task))
        return int(n) if n is not None else _largest_n(_dict(self.by_source.get(source, {}).get(task)))

    def columns(self, task_type: str) -> list[str]:
        """The metric columns of a type's table: the headline first, then the others in order."""
        tasks = self.tasks_of(task_type)
        groups = [self.by_task[t] for t in tasks] + (
            [self.by_type[task_type]] if task_type in self.by_type else []
        )
        names = _metric_names(groups)
        headline = next((h for h in HEADLINE_METRICS.get(task_type, ()) if h in names), None)
        return ([headline] if headline else []) + [n for n in names if n != headline]


def _largest_n(metrics: Mapping[str, Any]) -> int | None:
    counts = [n for entry in metrics.values() if (n := _metric(entry)[2]) is not None]
    return max(counts) if counts else None


def _baseline_kinds(baseline: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{kind: {metric: entry}}`` of one group's baselines."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in baseline.items():
        kind = str(_dict(entry).get("kind") or "baseline")
        out.setdefault(kind, {})[str(name)] = entry
    return out


def _baseline_label(kind: str, entries: Mapping[str, Any]) -> str:
    label = BASELINE_KINDS.get(kind, kind)
    answer = next((_dict(e).get("answer") for e in entries.values() if _dict(e).get("answer")), None)
    return f"{label} ({answer})" if answer else label


# ---------------------------------------------------------------------------------------------
# Grading one row (every rule from cxmind.eval.metrics)
# ---------------------------------------------------------------------------------------------


def _row_type(row: Mapping[str, Any]) -> str | None:
    from cxmind.data.schema import TASKS

    task_type = row.get("task_type") or TASKS.get(str(row.get("task") or ""))
    return str(task_type) if task_type else None


def error_type(row: Mapping[str, Any]) -> str:
    """The row's ``ERROR_TYPES`` key, by the rules of :mod:`cxmind.eval.metrics`.

    A row whose generation failed (``error`` set) is "failed". Closed/open rows: an output the
    ``format`` metric rejects (not only well-formed rounds, or fewer than two) is a format error; a
    final answer :func:`~cxmind.eval.metrics.final_correct` rejects is a wrong answer; a right final
    answer with a round whose ✅/❌ disagrees with gold (:func:`~cxmind.eval.metrics.round_verdicts`)
    is an inconsistent verdict. Grounding rows are correct when every gold box is found at IoU ≥ 0.5;
    report rows have no right answer and are "ungraded" unless empty or malformed.
    """
    if row.get("error"):
        return "failed"
    prediction = prediction_text(row)
    task_type = _row_type(row)
    if task_type in ("closed", "open"):
        if not format_score(prediction):
            return "format"
        if not _safe(final_correct, row):
            return "wrong"
        if any(v is False for v in _safe(round_verdicts, row) or ()):
            return "inconsistent"
        return "correct"
    has_tags = "<think>" in prediction or "<answer>" in prediction
    if not prediction.strip() or (has_tags and not parse(prediction).well_formed):
        return "format"
    if task_type == "grounding":
        correct = _safe(final_correct, row)
        return "ungraded" if correct is None else "correct" if correct else "wrong"
    return "ungraded"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

_Thumb = tuple[str | None, str, tuple[int, int] | None]


def _thumbnail(root: str | os.PathLike[str] | None, relative: str, size: int) -> _Thumb:
    """``(data URI, "", (w, h))`` of a thumbnail, or ``(None, reason, None)`` when it cannot be shown."""
    if root is None:
        return None, "no image root", None
    try:
        from PIL import Image

        from cxmind.data.images import read_image, resolve_under

        image = read_image(resolve_under(root, relative))
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except Exception as err:  # a report must never fail on one bad image
        reason = getattr(err, "reason", None) or type(err).__name__
        return None, str(reason), None
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, "", image.size


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#5b6475;--line:#dde1e8;--ok:#1f7a3a;--okbg:#e3f4e8;
--bad:#b42318;--badbg:#fde8e6;--warn:#8a5a00;--warnbg:#fff3d6;--info:#2b5fb3;--infobg:#e6eefb}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:22px;margin:4px 0 6px;overflow-wrap:anywhere}h2{font-size:17px;margin:28px 0 10px}
h3{font-size:15px;margin:18px 0 6px}
.warning{background:var(--warnbg);color:var(--warn);border:1px solid #f0d79a;border-radius:6px;
padding:8px 12px;margin:10px 0;font-weight:600}
.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px;font-size:13px;margin:6px 0}
.kv dt{color:var(--muted);overflow-wrap:anywhere}.kv dd{margin:0;overflow-wrap:anywhere}
details.config{margin:8px 0}details.config summary{cursor:pointer;color:var(--info)}
table{border-collapse:collapse;background:var(--card);font-size:13px;margin:6px 0}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
tr.base td{color:var(--muted);background:#fafbfc;font-size:12px}tr.base td:first-child{padding-left:18px}
tr.pooled td{background:#f0f3f9}
table.metrics td:first-child,table.metrics th:first-child{position:sticky;left:0;z-index:1;
background:var(--card)}
table.metrics th:first-child{background:#eef0f4}table.metrics tr.base td:first-child{background:#fafbfc}
table.metrics tr.pooled td:first-child{background:#f0f3f9}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,340px),1fr));gap:16px}
.chart{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px;margin:0;min-width:0}
.chart svg{display:block;width:100%;height:auto}
.scroll{overflow-x:auto;max-width:100%}.ci{color:var(--muted);font-size:11px}
.hint{color:var(--muted);font-size:12px;margin:2px 0 10px}
.mark{border-radius:4px;padding:0 3px;font-family:"Noto Color Emoji","Apple Color Emoji","Segoe UI Emoji",
sans-serif}.m-accept{background:var(--okbg);color:var(--ok)}.m-reject{background:var(--badbg);color:var(--bad)}
pre.prose{font:inherit}
.chart h3{font-size:14px;margin:0 0 4px}
.notes li{color:var(--muted);overflow-wrap:anywhere}
.controls{position:sticky;top:0;z-index:2;background:var(--bg);padding:8px 0;display:flex;gap:12px;
align-items:center;flex-wrap:wrap;border-bottom:1px solid var(--line)}
.controls label{font-size:13px;color:var(--muted)}
.controls select,.controls input{font:inherit;padding:3px 6px;max-width:100%}
#count{font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:12px 0;padding:12px;
display:flex;gap:14px}
.card[hidden]{display:none}
.imgs{flex:0 0 auto;display:flex;flex-direction:column;gap:6px;max-width:260px}
.imgs img{display:block;max-width:100%;height:auto;border-radius:4px;background:#000}
.placeholder{width:180px;max-width:100%;height:180px;display:flex;align-items:center;justify-content:center;
text-align:center;background:#e8eaef;color:var(--muted);border:1px dashed #b8bfcc;border-radius:4px;
font-size:12px;padding:8px;overflow-wrap:anywhere}
.body{flex:1 1 auto;min-width:0}
.meta{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin-bottom:6px;font-size:12px}
.id{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--muted);overflow-wrap:anywhere}
.tag{background:#eef0f4;border-radius:10px;padding:1px 8px}
.badge{border-radius:10px;padding:1px 8px;font-weight:600;font-size:12px;white-space:nowrap}
.b-correct,.b-agree{background:var(--okbg);color:var(--ok)}
.b-wrong,.b-disagree,.b-format,.b-failed{background:var(--badbg);color:var(--bad)}
.b-inconsistent{background:var(--warnbg);color:var(--warn)}
.b-ungraded,.b-none{background:#eef0f4;color:var(--muted)}
.label{font-size:12px;font-weight:600;color:var(--muted);text-transform:uppercase;letter-spacing:.03em;
margin:8px 0 2px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.gold{background:var(--okbg);border-radius:4px;padding:4px 8px}
pre.raw{white-space:pre-wrap;overflow-wrap:anywhere;background:#f3f4f7;border:1px solid var(--line);
border-radius:4px;padding:6px 8px;margin:2px 0;max-height:320px;overflow:auto;font-size:12px}
.errors{color:var(--bad);margin:2px 0;padding-left:20px}
ol.rounds{list-style:none;margin:2px 0;padding:0;counter-reset:r}
ol.rounds>li{border-left:3px solid var(--line);padding:3px 8px;margin:4px 0;counter-increment:r}
ol.rounds>li.agree{border-left-color:var(--ok)}ol.rounds>li.disagree{border-left-color:var(--bad)}
.think{color:var(--muted);font-style:italic;white-space:pre-wrap;overflow-wrap:anywhere}
.think::before{content:"Round " counter(r) " · think: ";font-style:normal;font-weight:600;font-size:12px}
.answer{display:flex;gap:8px;align-items:baseline;flex-wrap:wrap;margin-top:2px}
.answer .text{font-weight:600}
.scores{font-size:12px;color:var(--muted);overflow-wrap:anywhere}
.diff{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 10px;font-size:13px;margin:2px 0}
.diff dt{color:var(--muted)}.diff dd{margin:0;display:flex;flex-wrap:wrap;gap:4px}
.chip{border-radius:10px;padding:0 8px;font-size:12px;background:#eef0f4}
.c-hit{background:var(--okbg);color:var(--ok)}.c-miss{background:var(--warnbg);color:var(--warn)}
.c-extra{background:var(--badbg);color:var(--bad)}.c-nf{background:#eef0f4;color:var(--muted)}
.none{color:var(--muted);font-size:12px}
details.solution summary{cursor:pointer;color:var(--info);font-size:12px;margin-top:8px}
@media (max-width:720px){.card{flex-direction:column}.imgs{max-width:100%}}
@media (max-width:520px){main{padding:10px 10px 40px}.kv{grid-template-columns:minmax(0,1fr)}
.kv dd{margin-bottom:4px}th,td{padding:3px 5px}}
"""

_JS = """
(function(){
  var task=document.getElementById('f-task'),err=document.getElementById('f-error'),
      q=document.getElementById('f-text'),count=document.getElementById('count'),
      cards=document.querySelectorAll('.card');
  function pick(sel,v){for(var i=0;i<sel.options.length;i++){if(sel.options[i].value===v){sel.value=v;}}}
  var h=new URLSearchParams(location.hash.slice(1));
  if(h.get('task'))pick(task,h.get('task'));
  if(h.get('error'))pick(err,h.get('error'));
  if(h.get('q'))q.value=h.get('q');
  function apply(){
    var t=task.value,e=err.value,s=q.value.trim().toLowerCase(),n=0;
    for(var i=0;i<cards.length;i++){
      var c=cards[i],ok=(t==='all'||c.dataset.task===t)&&(e==='all'||c.dataset.error===e)&&
        (!s||c.textContent.toLowerCase().indexOf(s)>=0);
      c.hidden=!ok;if(ok)n++;
    }
    count.textContent=n+' of '+cards.length+' shown';
    var p=new URLSearchParams();
    if(t!=='all')p.set('task',t);if(e!=='all')p.set('error',e);if(s)p.set('q',s);
    try{history.replaceState(null,'',p.toString()?'#'+p.toString():location.pathname);}catch(x){}
  }
  task.addEventListener('change',apply);err.addEventListener('change',apply);q.addEventListener('input',apply);
  apply();
})();
"""


def _kv(items: Mapping[str, Any]) -> str:
    cells = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_short(v))}</dd>" for k, v in items.items())
    return f'<dl class="kv">{cells}</dl>'


def _short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _header(results: Mapping[str, Any]) -> str:
    model = _dict(results.get("model"))
    config = _dict(results.get("config"))
    name = model.get("model") or model.get("name") or model.get("path") or config.get("model") or "model"
    parts = [
        f"<h1>Reasoning report — {_e(name)}</h1>",
        f'<div class="warning" role="note">{_e(NOT_FOR_CLINICAL_USE)}</div>',
    ]
    if model:
        parts.append(f"<h2>Model</h2>{_kv(model)}")
    if results.get("limited"):
        n = results.get("n_records")
        parts.append(
            f'<div class="warning">Evaluated on a limited subset ({_e(n)} records), not the full split.</div>'
        )
    if config:
        flat = _flatten(config)
        summary_keys = [
            k for k in ("model", "adapter", "data", "split", "backend", "tasks", "limit") if k in flat
        ]
        parts.append("<h2>Configuration</h2>" + _kv({k: flat[k] for k in summary_keys}))
        parts.append(
            f'<details class="config"><summary>all settings ({len(flat)})</summary>{_kv(flat)}</details>'
        )
    return "\n".join(parts)


def _metric_cell(entry: object, headline: bool) -> str:
    value, ci, _ = _metric(entry)
    text = _e(_fmt(value))
    if headline:
        text = f"<strong>{text}</strong>"
    if value is not None and ci is not None:
        text += f'<br><span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>'
    return text


def _th(name: str) -> str:
    """A column header that may wrap after its underscores (long metric names stay narrow)."""
    return f"<th>{_e(name).replace('_', '_<wbr>')}</th>"


def _count(n: int | None) -> str:
    return "" if n is None else str(n)


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _type_table(groups: _Groups, task_type: str) -> str:
    """One task type's table: a row per task with its baselines beneath, then all the type's records."""
    columns = groups.columns(task_type)
    if not columns:
        return ""
    headline = columns[0]

    def cells(metrics: Mapping[str, Any], bold: bool) -> str:
        return "".join(
            '<td class="num">'
            + (_metric_cell(metrics[name], bold and name == headline) if name in metrics else "")
            + "</td>"
            for name in columns
        )

    def baseline_rows(baseline: Mapping[str, Any], n: int | None) -> list[str]:
        return [
            f'<tr class="base"><td>↳ {_e(_baseline_label(kind, entries))}</td>'
            f'<td class="num">{_e(_count(_largest_n(entries) or n))}</td>{cells(entries, False)}</tr>'
            for kind, entries in _baseline_kinds(baseline).items()
        ]

    body: list[str] = []
    tasks = groups.tasks_of(task_type)
    for task in tasks:
        n = groups.n_task(task)
        body.append(
            f'<tr><td>{_e(task)}</td><td class="num">{_e(_count(n))}</td>'
            f"{cells(groups.by_task[task], True)}</tr>"
        )
        body += baseline_rows(groups.base_task.get(task, {}), n)
    if len(tasks) > 1 and task_type in groups.by_type:
        n = groups.n_type(task_type)
        body.append(
            f'<tr class="pooled"><td>all {_e(task_type)}</td><td class="num">{_e(_count(n))}</td>'
            f"{cells(groups.by_type[task_type], True)}</tr>"
        )
        body += baseline_rows(groups.base_type.get(task_type, {}), n)
    head = "".join(_th(name) for name in columns)
    return (
        f'<div class="scroll"><table class="metrics" data-type="{_e(task_type)}"><thead><tr><th>task</th>'
        f"<th>n</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _records_table(groups: _Groups) -> str:
    """Records per group: overall and per task type (the real counts, not a metric's n)."""
    rows = [
        f'<tr><td>overall</td><td class="num">{_e(_count(groups.total))}</td>'
        f"<td>{len(groups.by_task)}</td></tr>"
    ]
    for task_type in groups.type_order():
        rows.append(
            f'<tr><td>{_e(task_type)}</td><td class="num">{_e(_count(groups.n_type(task_type)))}</td>'
            f"<td>{len(groups.tasks_of(task_type))}</td></tr>"
        )
    return (
        '<div class="scroll"><table class="records"><thead><tr><th>group</th><th>records</th><th>tasks</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _overall_table(overall: Mapping[str, Any]) -> str:
    """The metrics pooled over every record that has them, one per line (each with its own n)."""
    rows = []
    for name, entry in overall.items():
        value, ci, n = _metric(entry)
        interval = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "—"
        method = _dict(entry).get("ci_method") or ""
        rows.append(
            f'<tr><td>{_e(name)}</td><td class="num">{_e(_fmt(value))}</td>'
            f'<td class="num">{_e(interval)}</td>'
            f'<td class="num">{_e(_count(n))}</td><td>{_e(method)}</td></tr>'
        )
    return (
        '<details class="config"><summary>pooled over all tasks (each metric over the records that have it)'
        '</summary><div class="scroll"><table><thead><tr><th>metric</th><th>value</th><th>95% CI</th>'
        f"<th>n</th><th>CI method</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div></details>"
    )


_Bar = tuple[str, float, tuple[float, float] | None, float | None]


def _bar_chart(metric: str, bars: list[_Bar], baseline_name: str = "baseline") -> str:
    """A responsive horizontal bar chart (inline SVG with a viewBox) of one metric across tasks.

    Each task gets its full label on a line above its bar, a 95% CI whisker and, when known, a dashed
    mark at its chance/baseline level. The drawing scales to its container; nothing is clipped.
    """
    width, pad, value_w, row_h, top = 400, 6, 52, 40, 4
    bar_w = width - 2 * pad - value_w
    scale_max = max(
        [1.0]
        + [v for _, v, _, _ in bars]
        + [ci[1] for _, _, ci, _ in bars if ci]
        + [b for *_, b in bars if b]
    )
    has_base = any(b is not None for *_, b in bars)
    height = top + row_h * len(bars) + 20 + (16 if has_base else 0)

    def x(value: float) -> float:
        return pad + bar_w * max(0.0, min(value, scale_max)) / scale_max

    parts = [
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="xMinYMin meet" role="img" '
        f'aria-label="{_e(metric)} per task">'
    ]
    for i, (label, value, ci, base) in enumerate(bars):
        y = top + i * row_h
        parts.append(
            f'<text x="{pad}" y="{y + 12}" font-size="12" fill="#1d2330">{_e(_short(label, 52))}</text>'
            f'<rect x="{pad}" y="{y + 17}" width="{x(value) - pad:.1f}" height="14" fill="#4a7bd0">'
            f"<title>{_e(label)}: {_e(_fmt(value))}</title></rect>"
        )
        mid = y + 24
        if ci is not None:
            lo, hi = x(ci[0]), x(ci[1])
            parts.append(
                f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 5}V{mid + 5}'
                f'M{hi:.1f} {mid - 5}V{mid + 5}" stroke="#1d2330" stroke-width="1.2" fill="none"/>'
            )
        if base is not None:
            parts.append(
                f'<path d="M{x(base):.1f} {y + 14}V{y + 34}" stroke="#b42318" stroke-width="2" '
                f'stroke-dasharray="3 2"><title>{_e(baseline_name)}: {_e(_fmt(base))}</title></path>'
            )
        text_x = max(x(value), x(ci[1]) if ci else 0.0) + 5
        parts.append(
            f'<text x="{text_x:.1f}" y="{mid + 4}" font-size="12" fill="#1d2330">{_e(_fmt(value))}</text>'
        )
    axis_y = top + row_h * len(bars) + 2
    parts.append(f'<path d="M{pad} {axis_y}H{pad + bar_w}" stroke="#8a93a3"/>')
    for tick in (0.0, 0.5, 1.0):
        value = tick * scale_max
        anchor = "start" if tick == 0 else "end" if tick == 1 else "middle"
        parts.append(
            f'<text x="{x(value):.1f}" y="{axis_y + 14}" font-size="10" text-anchor="{anchor}" '
            f'fill="#5b6475">{value:g}</text>'
        )
    if has_base:
        legend_y = axis_y + 30
        parts.append(
            f'<path d="M{pad} {legend_y - 4}H{pad + 14}" stroke="#b42318" stroke-width="2" '
            'stroke-dasharray="3 2"/>'
            f'<text x="{pad + 20}" y="{legend_y}" font-size="11" fill="#5b6475">{_e(baseline_name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _charts(groups: _Groups) -> str:
    per_metric: dict[str, list[_Bar]] = {}
    kinds: dict[str, set[str]] = {}
    for task, metrics in groups.by_task.items():
        headline = headline_metric(groups.types.get(task), metrics)
        if headline is None:
            continue
        value, ci, _ = _metric(metrics[headline])
        if value is None:
            continue
        base_entry = groups.base_task.get(task, {}).get(headline)
        base = _metric(base_entry)[0]
        if base is not None:
            kinds.setdefault(headline, set()).add(str(_dict(base_entry).get("kind") or "baseline"))
        per_metric.setdefault(headline, []).append((task, value, ci, base))
    charts = []
    for metric, bars in per_metric.items():
        name = " / ".join(BASELINE_KINDS.get(k, k) for k in sorted(kinds.get(metric, ()))) or "baseline"
        charts.append(f'<figure class="chart"><h3>{_e(metric)}</h3>{_bar_chart(metric, bars, name)}</figure>')
    return f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def _by_source(groups: _Groups) -> str:
    """Each source × task group's headline metric, one line per pair (narrow on any screen)."""
    rows = []
    for source, task_metrics in groups.by_source.items():
        for task, metrics in task_metrics.items():
            metrics = _dict(metrics)
            headline = headline_metric(groups.types.get(str(task)), metrics)
            if headline is None:
                continue
            rows.append(
                f"<tr><td>{_e(source)}</td><td>{_e(task)}</td>"
                f'<td class="num">{_e(_count(groups.n_source(source, str(task))))}</td>'
                f"<td>{_e(headline)}</td>"
                f'<td class="num">{_metric_cell(metrics[headline], False)}</td></tr>'
            )
    if not rows:
        return ""
    return (
        '<h2>By source (headline metric)</h2><div class="scroll"><table><thead><tr><th>source</th>'
        f"<th>task</th><th>n</th><th>metric</th><th>value</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _summary(groups: _Groups) -> str:
    parts = ["<h2>Metrics (95% CI)</h2>"]
    if groups.total is not None or groups.by_task:
        parts.append(_records_table(groups))
    for task_type in groups.type_order():
        n = groups.n_type(task_type)
        count = f" — {_records(n)}" if n is not None else ""
        parts.append(f"<h3>{_e(task_type)}{_e(count)}</h3>{_type_table(groups, task_type)}")
    if groups.by_task:
        parts.append(
            '<p class="hint">Bold: the headline metric of each task; brackets: 95% CI (Wilson score interval '
            "for proportions, percentile bootstrap otherwise); ↳ rows: baselines (chance for closed tasks, "
            "the most frequent gold answer for open tasks, a constant report for report tasks).</p>"
        )
        parts.append(_charts(groups))
    if groups.overall:
        parts.append(_overall_table(groups.overall))
    if not groups.overall and not groups.by_task:
        parts.append("<p>No metrics recorded.</p>")
    parts.append(_by_source(groups))
    if groups.constant_report:
        items = "".join(
            f"<dt>{_e(t)}</dt><dd>{_e(_short(r, 400))}</dd>" for t, r in groups.constant_report.items()
        )
        parts.append(f'<h3>Constant report baseline</h3><dl class="kv">{items}</dl>')
    notes = groups.notes
    if isinstance(notes, Sequence) and not isinstance(notes, str) and notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f'<h2>Notes</h2><ul class="notes">{items}</ul>')
    return "\n".join(parts)


def _rounds_html(rounds: Sequence[Round], verdicts: Sequence[bool | None] | None) -> str:
    """The rounds, each marked verdict with a badge saying whether it agrees with gold (when known)."""
    items = []
    for k, rnd in enumerate(rounds):
        verdict = verdicts[k] if verdicts is not None and k < len(verdicts) else None
        css, badge = "", ""
        if verdicts is not None and (ACCEPT in rnd.answer or REJECT in rnd.answer):
            if verdict is None:
                badge = '<span class="badge b-none">verdict not checkable</span>'
            else:
                css = "agree" if verdict else "disagree"
                word = "agrees with gold" if verdict else "disagrees with gold"
                badge = f'<span class="badge b-{css}">{"✓" if verdict else "✗"} {word}</span>'
        items.append(
            f'<li class="{css}"><div class="think">{_e(rnd.think)}</div>'
            f'<div class="answer"><span class="text">{_marked(rnd.answer)}</span>{badge}</div></li>'
        )
    return f'<ol class="rounds">{"".join(items)}</ol>'


def _marked(text: str) -> str:
    """Escaped ``text`` with each ✅/❌ in a coloured span (readable even without an emoji font)."""
    escaped = _e(text)
    escaped = escaped.replace(ACCEPT, f'<span class="mark m-accept" title="accepted">{ACCEPT}</span>')
    return escaped.replace(REJECT, f'<span class="mark m-reject" title="rejected">{REJECT}</span>')


def _gold_text(row: Mapping[str, Any]) -> str:
    """The gold answer; for closed rows the full text of the gold option when it can be found."""
    answer = str(row.get("answer") or "")
    if _row_type(row) == "closed":
        letter = _safe(gold_letter, row)
        texts = _safe(lambda r: option_texts(r.get("options")), row) or {}
        if letter in texts:
            return f"{letter}) {texts[letter]}"
    return answer


def _chips(names: Iterable[str], css: str) -> str:
    chips = "".join(f'<span class="chip {css}">{_e(n)}</span>' for n in names)
    return chips or '<span class="none">none</span>'


def _open_diff(row: Mapping[str, Any]) -> str:
    """Matched, missing and extra findings of an open row's final answer against the gold list."""
    predicted, gold = _safe(final_findings, row), _safe(gold_findings, row)
    if predicted is None or gold is None:
        return ""
    matched = [g for g in gold if g in predicted]
    missing = [g for g in gold if g not in predicted]
    extra = [p for p in predicted if p not in gold]
    return (
        '<div class="label">Final list vs gold</div><dl class="diff">'
        f"<dt>matched</dt><dd>{_chips(matched, 'c-hit')}</dd>"
        f"<dt>missing</dt><dd>{_chips(missing, 'c-miss')}</dd>"
        f"<dt>extra</dt><dd>{_chips(extra, 'c-extra')}</dd></dl>"
    )


def _report_labels(row: Mapping[str, Any]) -> str:
    """The CheXpert labels the report labeler finds in the prediction and in the reference."""
    predicted = report_labels(answer_text(prediction_text(row)))
    reference = report_labels(str(row.get("answer") or ""))
    if predicted is None or reference is None:
        return '<div class="label">CheXpert labels</div><p class="none">no report labeler available</p>'

    def chips(names: list[str], other: list[str], miss: str) -> str:
        if not names:
            return '<span class="none">none</span>'
        css = {n: "c-nf" if n not in CE_FINDINGS else "c-hit" if n in other else miss for n in names}
        return "".join(f'<span class="chip {css[n]}">{_e(n)}</span>' for n in names)

    return (
        '<div class="label">CheXpert labels found (clinical efficacy compares them, No Finding aside)</div>'
        '<dl class="diff">'
        f"<dt>prediction</dt><dd>{chips(predicted, reference, 'c-extra')}</dd>"
        f"<dt>reference</dt><dd>{chips(reference, predicted, 'c-miss')}</dd></dl>"
    )


_Thumbs = dict[tuple[str, str, int], _Thumb]


def _card(row: Mapping[str, Any], root: str | os.PathLike[str] | None, thumbnail: int, cache: _Thumbs) -> str:
    task = str(row.get("task") or "")
    task_type = _row_type(row)
    kind = error_type(row)
    prediction = str(row.get("prediction") or "")
    parsed = parse(prediction)

    images = row.get("images") or []
    if isinstance(images, str):
        images = [images]
    figures = []
    for rel in images:
        key = ("" if root is None else str(root), str(rel), thumbnail)
        if key not in cache:  # the tasks of one study share its images: decode each once
            cache[key] = _thumbnail(root, str(rel), thumbnail)
        uri, reason, size = cache[key]
        if uri is None or size is None:
            figures.append(f'<div class="placeholder">image unavailable<br>({_e(reason)})<br>{_e(rel)}</div>')
        else:
            figures.append(
                f'<img src="{uri}" alt="{_e(rel)}" title="{_e(rel)}" width="{size[0]}" height="{size[1]}">'
            )
    if not figures:
        figures.append('<div class="placeholder">no image</div>')

    scores = _dict(row.get("per_record"))
    score_text = " · ".join(
        f"{k} {_fmt(_number(v))}" if _number(v) is not None else f"{k} {_short(v, 40)}"
        for k, v in scores.items()
    )
    meta = (
        f'<div class="meta"><span class="badge b-{_e(kind)}">{_e(ERROR_TYPES[kind])}</span>'
        f'<span class="tag">{_e(task)}</span><span class="tag">{_e(row.get("source") or "")}</span>'
        f'<span class="id">{_e(row.get("id") or "")}</span>'
        f'<span class="scores">{_e(score_text)}</span></div>'
    )
    body = [
        meta,
        '<div class="label">Question</div>',
        f'<p class="text">{_e(row.get("question") or "")}</p>',
        '<div class="label">Gold answer</div>',
        f'<p class="text gold">{_e(_gold_text(row))}</p>',
        '<div class="label">Prediction</div>',
    ]
    if row.get("error"):
        body.append(f'<ul class="errors"><li>generation failed: {_e(row.get("error"))}</li></ul>')
    graded = task_type in ("closed", "open")
    verdicts = _safe(round_verdicts, row) if graded else None
    structured = graded or "<think>" in prediction or "<answer>" in prediction
    if not prediction.strip():
        body.append('<p class="text"><em>(empty)</em></p>')
    elif structured and parsed.well_formed:
        body.append(_rounds_html(parsed.rounds, verdicts if graded else None))
    elif structured:
        errors = "".join(f"<li>{_e(err)}</li>" for err in parsed.errors)
        body.append(f'<ul class="errors">{errors}</ul><pre class="raw">{_e(prediction)}</pre>')
        if parsed.rounds:
            body.append('<div class="label">Rounds recovered from the malformed output</div>')
            body.append(_rounds_html(parsed.rounds, verdicts if graded else None))
    else:
        prose = " prose" if task_type == "report" else ""
        body.append(f'<pre class="raw{prose}">{_e(prediction)}</pre>')
    if task_type == "open":
        body.append(_open_diff(row))
    elif task_type == "report":
        body.append(_report_labels(row))
    solution = row.get("solution")
    if solution:
        gold = parse(str(solution))
        inner = _rounds_html(gold.rounds, None) if gold.rounds else f'<pre class="raw">{_e(solution)}</pre>'
        body.append(f'<details class="solution"><summary>gold trajectory</summary>{inner}</details>')
    return (
        f'<article class="card" data-task="{_e(task)}" data-error="{_e(kind)}">'
        f'<div class="imgs">{"".join(figures)}</div><div class="body">{"".join(body)}</div></article>'
    )


def _select_rows(rows: Sequence[Mapping[str, Any]], max_samples: int | None) -> list[Mapping[str, Any]]:
    """Up to ``max_samples`` rows, round-robin across tasks (each task's rows in their given order)."""
    if max_samples is None or max_samples >= len(rows):
        return list(rows)
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(str(row.get("task") or ""), []).append(row)
    chosen: list[Mapping[str, Any]] = []
    depth = 0
    while len(chosen) < max_samples:
        for task_rows in by_task.values():
            if depth < len(task_rows) and len(chosen) < max_samples:
                chosen.append(task_rows[depth])
        depth += 1
    order = {id(row): i for i, row in enumerate(rows)}
    return sorted(chosen, key=lambda r: order[id(r)])


def _browser(
    rows: Sequence[Mapping[str, Any]],
    image_root_of: Callable[[dict], Path | None] | None,
    max_samples: int | None,
    thumbnail: int,
) -> str:
    shown = _select_rows(rows, max_samples)
    tasks = sorted({str(r.get("task") or "") for r in shown})
    task_options = '<option value="all">all tasks</option>' + "".join(
        f'<option value="{_e(t)}">{_e(t)}</option>' for t in tasks
    )
    error_options = '<option value="all">all</option>' + "".join(
        f'<option value="{_e(k)}">{_e(v)}</option>' for k, v in ERROR_TYPES.items()
    )
    cards: list[str] = []
    cache: _Thumbs = {}
    for row in shown:
        try:
            root = image_root_of(dict(row)) if image_root_of is not None else None
        except Exception:  # a missing source root shows placeholders, never breaks the report
            root = None
        cards.append(_card(row, root, thumbnail, cache))
    subset = (
        f" (a sample of {len(shown)} of {len(rows)} rows, spread across tasks)"
        if len(shown) < len(rows)
        else ""
    )
    return (
        f"<h2>Samples{_e(subset)}</h2>"
        '<div class="controls">'
        f'<label>task <select id="f-task">{task_options}</select></label>'
        f'<label>outcome <select id="f-error">{error_options}</select></label>'
        '<label>text <input id="f-text" type="search" placeholder="filter by text"></label>'
        f'<span id="count">{len(cards)} of {len(cards)} shown</span></div>'
        f'<section id="cards">{"".join(cards)}</section>'
    )


def render_html(
    results: dict,
    rows: list[dict],
    *,
    image_root_of: Callable[[dict], Path | None] | None = None,
    max_samples: int | None = None,
    thumbnail: int = 256,
) -> str:
    """The self-contained HTML reasoning report of one evaluation (see the module docstring).

    ``image_root_of(row)`` gives the directory a row's relative image paths are resolved under
    (``None``: placeholders); ``max_samples`` caps the sample cards, spread round-robin across tasks;
    ``thumbnail`` is the longest side of the embedded JPEG thumbnails, in pixels.
    """
    results = _dict(results)
    rows = [r for r in rows if isinstance(r, Mapping)]
    types = _task_types(results, rows)
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    title = _dict(results.get("model")).get("model") or "cxmind evaluation"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} — cxmind reasoning report</title>"
        f"<style>{_CSS}</style></head>\n<body><main>\n"
        f"{_header(results)}\n{_summary(_Groups(results, types))}\n"
        f"{_browser(rows, image_root_of, max_samples, thumbnail)}\n"
        f"</main><script>{_JS}</script></body></html>\n"
    )


def write_html(
    path: str | os.PathLike[str],
    results: dict,
    rows: list[dict],
    *,
    image_root_of: Callable[[dict], Path | None] | None = None,
    max_samples: int | None = None,
    thumbnail: int = 256,
) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8, parent folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(
        results, rows, image_root_of=image_root_of, max_samples=max_samples, thumbnail=thumbnail
    )
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_line(label: str, n: int | None, metrics: Mapping[str, Any], columns: Sequence[str]) -> str:
    cells = [_fmt_metric(metrics[name]) if name in metrics else "" for name in columns]
    return f"| {_md(label)} | {_count(n)} | " + " | ".join(_md(c) for c in cells) + " |"


def _md_baselines(baseline: Mapping[str, Any], n: int | None, columns: Sequence[str]) -> list[str]:
    return [
        _md_line(f"↳ {_baseline_label(kind, entries)}", _largest_n(entries) or n, entries, columns)
        for kind, entries in _baseline_kinds(baseline).items()
    ]


def markdown_table(results: dict) -> str:
    """GitHub Markdown tables of per-task metrics, one per task type: ``value [lo, hi]`` (95% CI).

    Each task's row gives its number of records and is followed by its baselines ("↳ chance",
    "↳ most frequent answer", "↳ constant report") in the same columns; a type with several tasks ends
    with an "all <type>" row. A last line gives the overall number of records.
    """
    groups = _Groups(_dict(results), _task_types(_dict(results), []))
    if not groups.by_task and not groups.overall:
        return "_No metrics recorded._"
    blocks: list[str] = []
    for task_type in groups.type_order():
        columns = groups.columns(task_type)
        if not columns:
            continue
        tasks = groups.tasks_of(task_type)
        n_type = groups.n_type(task_type)
        lines = [
            f"**{_md(task_type)}**" + (f" ({_records(n_type)})" if n_type is not None else ""),
            "",
            "| task | n | " + " | ".join(_md(n) for n in columns) + " |",
            "|---|---:|" + "---:|" * len(columns),
        ]
        for task in tasks:
            n = groups.n_task(task)
            lines.append(_md_line(task, n, groups.by_task[task], columns))
            lines += _md_baselines(groups.base_task.get(task, {}), n, columns)
        if len(tasks) > 1 and task_type in groups.by_type:
            lines.append(_md_line(f"all {task_type}", n_type, groups.by_type[task_type], columns))
            lines += _md_baselines(groups.base_type.get(task_type, {}), n_type, columns)
        blocks.append("\n".join(lines))
    if groups.total is not None:
        blocks.append(f"**overall**: {_records(groups.total)}")
    return "\n\n".join(blocks) if blocks else "_No metrics recorded._"
