"""A self-contained HTML reasoning report and a Markdown metrics table for ``cxmind eval``.

The HTML page is one file with no external resources: inline CSS, a small vanilla-JS filter and
images embedded as base64 thumbnails. It shows the model identity and configuration, per-task metrics
with 95% confidence intervals, SVG bar charts of each task's headline metric, and one card per
prediction row with the model's reasoning split into rounds, each verdict checked against the gold
answer. Model output is untrusted: every text is HTML-escaped, and a Content-Security-Policy allows
only the page's own script (by hash), inline styles and ``data:`` images.
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

from cxmind.format import ACCEPT, REJECT, Parsed, Round, findings_in, mark_of, option_letter, parse
from cxmind.format import option_letters as _option_letters

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
    "ungraded": "not graded (report)",
}

#: Headline metric candidates per task type, in order of preference (the first present is used).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "closed": ("accuracy",),
    "open": ("f1", "accuracy"),
    "report": ("rouge_l", "bleu", "bleu_4", "bleu4", "bertscore", "f1"),
    "grounding": ("iou", "miou", "acc@0.5"),
}

NOT_FOR_CLINICAL_USE = (
    "Research use only — not for clinical use. These are outputs of a machine-learning model under "
    "evaluation; they may be wrong and must not inform the care of any patient."
)

_IOU_CORRECT = 0.5  # a grounding box counts as correct at IoU >= 0.5 (the usual detection threshold)
_GRADE_KEYS = ("accuracy", "exact_match", "f1")


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


# ---------------------------------------------------------------------------------------------
# Grading one row
# ---------------------------------------------------------------------------------------------


def _gold_findings(answer: str) -> set[str]:
    return set(findings_in(answer))


def _round_verdict(rnd: Round, row: Mapping[str, Any], letters: tuple[str, ...] | None) -> bool | None:
    """Whether a round's ✅/❌ agrees with gold; ``None`` when the round has no single judged item."""
    mark = mark_of(rnd.answer)
    if mark is None:
        return None
    gold = str(row.get("answer") or "")
    if row.get("task_type") == "closed":
        letter = option_letter(rnd.answer, letters)
        if letter is None:
            return None
        return (mark == ACCEPT) == (letter == gold.strip().upper()[:1])
    if row.get("task_type") == "open":
        found = findings_in(rnd.answer)
        if len(found) != 1:
            return None
        return (mark == ACCEPT) == (found[0] in _gold_findings(gold))
    return None


def _letters(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    try:
        return _option_letters(row.get("options"))
    except (ValueError, TypeError):
        return None


def _final_correct(row: Mapping[str, Any], parsed: Parsed) -> bool:
    """Whether the final answer is right: the row's per-record grade if it has one, else from the rounds."""
    per_record = _dict(row.get("per_record"))
    for key in _GRADE_KEYS:
        value = _number(per_record.get(key))
        if value is not None:
            return value >= 1 - 1e-9
    if not parsed.rounds:
        return False
    final = parsed.rounds[-1].answer
    gold = str(row.get("answer") or "")
    if row.get("task_type") == "closed":
        return option_letter(final, _letters(row)) == gold.strip().upper()[:1]
    return set(findings_in(final)) == _gold_findings(gold)


def error_type(row: Mapping[str, Any]) -> str:
    """The row's ``ERROR_TYPES`` key: format error, wrong answer, inconsistent verdict, correct, ungraded.

    Closed/open rows: malformed output is a format error; a wrong final answer is a wrong answer; a right
    final answer with a round whose ✅/❌ disagrees with gold is an inconsistent verdict. Grounding rows
    are correct at IoU >= 0.5; report rows have no right answer and are "ungraded" unless malformed.
    """
    prediction = str(row.get("prediction") or "")
    task_type = row.get("task_type")
    parsed = parse(prediction)
    has_tags = "<think>" in prediction or "<answer>" in prediction
    if task_type in ("closed", "open"):
        if not parsed.well_formed:
            return "format"
        if not _final_correct(row, parsed):
            return "wrong"
        letters = _letters(row)
        if any(_round_verdict(r, row, letters) is False for r in parsed.rounds):
            return "inconsistent"
        return "correct"
    if not prediction.strip() or (has_tags and not parsed.well_formed):
        return "format"
    if task_type == "grounding":
        iou = _number(_dict(row.get("per_record")).get("iou"))
        if iou is None:
            return "ungraded"
        return "correct" if iou >= _IOU_CORRECT else "wrong"
    return "ungraded"


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _thumbnail(root: str | os.PathLike[str] | None, relative: str, size: int) -> tuple[str | None, str]:
    """``(data URI, "")`` of a thumbnail, or ``(None, reason)`` when the image cannot be shown."""
    if root is None:
        return None, "no image root"
    try:
        from PIL import Image

        from cxmind.data.images import read_image, resolve_under

        image = read_image(resolve_under(root, relative))
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except Exception as err:  # a report must never fail on one bad image
        reason = getattr(err, "reason", None) or type(err).__name__
        return None, str(reason)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#5b6475;--line:#dde1e8;--ok:#1f7a3a;--okbg:#e3f4e8;
--bad:#b42318;--badbg:#fde8e6;--warn:#8a5a00;--warnbg:#fff3d6;--info:#2b5fb3;--infobg:#e6eefb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:22px;margin:4px 0 6px}h2{font-size:17px;margin:28px 0 10px}
.warning{background:var(--warnbg);color:var(--warn);border:1px solid #f0d79a;border-radius:6px;
padding:8px 12px;margin:10px 0;font-weight:600}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;margin:6px 0}
.kv dt{color:var(--muted)}.kv dd{margin:0;overflow-wrap:anywhere}
details.config{margin:8px 0}details.config summary{cursor:pointer;color:var(--info)}
table{border-collapse:collapse;background:var(--card);font-size:13px;margin:6px 0}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.chart{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px;margin:0}
.scroll{overflow-x:auto;max-width:100%}.ci{color:var(--muted);font-size:11px}
tr.overall td{background:#f0f3f9}.hint{color:var(--muted);font-size:12px;margin:2px 0 10px}
.mark{border-radius:4px;padding:0 3px;font-family:"Noto Color Emoji","Apple Color Emoji","Segoe UI Emoji",
sans-serif}.m-accept{background:var(--okbg);color:var(--ok)}.m-reject{background:var(--badbg);color:var(--bad)}
pre.prose{font:inherit}
.chart h3{font-size:14px;margin:0 0 4px}
.notes li{color:var(--muted)}
.controls{position:sticky;top:0;z-index:2;background:var(--bg);padding:8px 0;display:flex;gap:12px;
align-items:center;flex-wrap:wrap;border-bottom:1px solid var(--line)}
.controls label{font-size:13px;color:var(--muted)}
.controls select,.controls input{font:inherit;padding:3px 6px}
#count{font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:12px 0;padding:12px;
display:flex;gap:14px}
.card[hidden]{display:none}
.imgs{flex:0 0 auto;display:flex;flex-direction:column;gap:6px;max-width:260px}
.imgs img{display:block;max-width:256px;height:auto;border-radius:4px;background:#000}
.placeholder{width:180px;height:180px;display:flex;align-items:center;justify-content:center;
text-align:center;background:#e8eaef;color:var(--muted);border:1px dashed #b8bfcc;border-radius:4px;
font-size:12px;padding:8px}
.body{flex:1 1 auto;min-width:0}
.meta{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin-bottom:6px;font-size:12px}
.id{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--muted);overflow-wrap:anywhere}
.tag{background:#eef0f4;border-radius:10px;padding:1px 8px}
.badge{border-radius:10px;padding:1px 8px;font-weight:600;font-size:12px;white-space:nowrap}
.b-correct,.b-agree{background:var(--okbg);color:var(--ok)}
.b-wrong,.b-disagree,.b-format{background:var(--badbg);color:var(--bad)}
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
.scores{font-size:12px;color:var(--muted)}
details.solution summary{cursor:pointer;color:var(--info);font-size:12px;margin-top:8px}
@media (max-width:720px){.card{flex-direction:column}}
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


def _metrics_table(groups: Mapping[str, Mapping[str, Any]], types: Mapping[str, str]) -> str:
    """One row per task ("overall" first when present): each metric's value over its 95% CI."""
    names = _metric_names(groups.values())
    if not names:
        return ""
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = []
    for group, metrics in groups.items():
        headline = headline_metric(types.get(group), metrics)
        n = _metric(metrics[headline])[2] if headline else None
        cells = "".join(
            f'<td class="num">{_metric_cell(metrics[name], name == headline) if name in metrics else ""}</td>'
            for name in names
        )
        css = ' class="overall"' if group == "overall" else ""
        body.append(
            f"<tr{css}><td>{_e(group)}</td><td>{_e(types.get(group, ''))}</td>"
            f'<td class="num">{_e("" if n is None else n)}</td>{cells}</tr>'
        )
    return (
        '<div class="scroll"><table><thead><tr><th>task</th><th>type</th><th>n</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _bar_chart(metric: str, bars: list[tuple[str, float, tuple[float, float] | None]]) -> str:
    """A horizontal bar chart (inline SVG) of one metric across tasks, with 95% CI whiskers."""
    label_w, bar_w, row_h, top = 170, 260, 24, 8
    scale_max = max([1.0] + [v for _, v, _ in bars] + [ci[1] for _, _, ci in bars if ci])
    height = top + row_h * len(bars) + 22
    width = label_w + bar_w + 70

    def x(value: float) -> float:
        return label_w + bar_w * max(0.0, min(value, scale_max)) / scale_max

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(metric)} per task">']
    for i, (label, value, ci) in enumerate(bars):
        y = top + i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12" fill="#1d2330">'
            f"{_e(_short(label, 26))}</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{x(value) - label_w:.1f}" height="{row_h - 8}" '
            f'fill="#4a7bd0"><title>{_e(label)}: {_e(_fmt(value))}</title></rect>'
        )
        if ci is not None:
            lo, hi = x(ci[0]), x(ci[1])
            mid = y + row_h / 2
            parts.append(
                f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 5}V{mid + 5}'
                f'M{hi:.1f} {mid - 5}V{mid + 5}" stroke="#1d2330" stroke-width="1.2" fill="none"/>'
            )
        text_x = max(x(value), x(ci[1]) if ci else 0) + 6
        parts.append(
            f'<text x="{text_x:.1f}" y="{y + 15}" font-size="12" fill="#1d2330">{_e(_fmt(value))}</text>'
        )
    axis_y = top + row_h * len(bars) + 2
    parts.append(f'<path d="M{label_w} {axis_y}H{label_w + bar_w}" stroke="#8a93a3"/>')
    for tick in (0.0, 0.5, 1.0):
        value = tick * scale_max
        parts.append(
            f'<text x="{x(value):.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle" '
            f'fill="#5b6475">{value:g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _charts(by_task: Mapping[str, Mapping[str, Any]], types: Mapping[str, str]) -> str:
    per_metric: dict[str, list[tuple[str, float, tuple[float, float] | None]]] = {}
    for task, metrics in by_task.items():
        headline = headline_metric(types.get(task), metrics)
        if headline is None:
            continue
        value, ci, _ = _metric(metrics[headline])
        if value is not None:
            per_metric.setdefault(headline, []).append((task, value, ci))
    charts = [
        f'<figure class="chart"><h3>{_e(metric)}</h3>{_bar_chart(metric, bars)}</figure>'
        for metric, bars in per_metric.items()
    ]
    return f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def _by_source(by_source: Mapping[str, Any], types: Mapping[str, str]) -> str:
    """A source × task table of each task's headline metric."""
    sources = {str(s): _dict(t) for s, t in by_source.items() if isinstance(t, Mapping)}
    tasks = _metric_names(sources.values())
    if not tasks:
        return ""
    head = "".join(f"<th>{_e(t)}</th>" for t in tasks)
    body = []
    for source, task_metrics in sources.items():
        cells = []
        for task in tasks:
            metrics = _dict(task_metrics.get(task))
            headline = headline_metric(types.get(task), metrics)
            text = f"{headline}: {_fmt_metric(metrics[headline], with_n=True)}" if headline else ""
            cells.append(f'<td class="num">{_e(text)}</td>')
        body.append(f"<tr><td>{_e(source)}</td>{''.join(cells)}</tr>")
    return (
        f'<h2>By source (headline metric)</h2><div class="scroll"><table><thead><tr><th>source</th>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _summary(results: Mapping[str, Any], types: Mapping[str, str]) -> str:
    metrics = _dict(results.get("metrics"))
    parts = ["<h2>Metrics (95% CI)</h2>"]
    overall = _dict(metrics.get("overall"))
    by_task = {str(t): _dict(m) for t, m in _dict(metrics.get("by_task")).items()}
    if overall or by_task:
        groups = {"overall": overall} if overall else {}
        parts.append(_metrics_table({**groups, **by_task}, types))
        parts.append('<p class="hint">Bold: the headline metric of each task; brackets: 95% CI.</p>')
    if by_task:
        parts.append(_charts(by_task, types))
    if not overall and not by_task:
        parts.append("<p>No metrics recorded.</p>")
    parts.append(_by_source(_dict(metrics.get("by_source")), types))
    notes = metrics.get("notes") or results.get("notes")
    if isinstance(notes, Sequence) and not isinstance(notes, str) and notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f'<h2>Notes</h2><ul class="notes">{items}</ul>')
    return "\n".join(parts)


def _rounds_html(rounds: Sequence[Round], row: Mapping[str, Any] | None) -> str:
    letters = _letters(row) if row is not None else None
    items = []
    for rnd in rounds:
        mark = mark_of(rnd.answer)
        verdict = _round_verdict(rnd, row, letters) if row is not None else None
        css, badge = "", ""
        if row is not None and mark is not None:
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
    options = row.get("options")
    letters = _letters(row)
    if row.get("task_type") == "closed" and letters and isinstance(options, (list, tuple)):
        for letter, option in zip(letters, options, strict=False):
            if letter == answer.strip().upper()[:1]:
                return str(option)
    return answer


_Thumbs = dict[tuple[str, str, int], tuple[str | None, str]]


def _card(row: Mapping[str, Any], root: str | os.PathLike[str] | None, thumbnail: int, cache: _Thumbs) -> str:
    task = str(row.get("task") or "")
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
        uri, reason = cache[key]
        if uri is None:
            figures.append(f'<div class="placeholder">image unavailable<br>({_e(reason)})<br>{_e(rel)}</div>')
        else:
            figures.append(f'<img src="{uri}" alt="{_e(rel)}" title="{_e(rel)}">')
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
    structured = (
        row.get("task_type") in ("closed", "open") or "<think>" in prediction or "<answer>" in prediction
    )
    if not prediction.strip():
        body.append('<p class="text"><em>(empty)</em></p>')
    elif structured and parsed.well_formed:
        body.append(_rounds_html(parsed.rounds, row))
    elif structured:
        errors = "".join(f"<li>{_e(err)}</li>" for err in parsed.errors)
        body.append(f'<ul class="errors">{errors}</ul><pre class="raw">{_e(prediction)}</pre>')
        if parsed.rounds:
            body.append('<div class="label">Rounds recovered from the malformed output</div>')
            body.append(_rounds_html(parsed.rounds, row))
    else:
        prose = " prose" if row.get("task_type") == "report" else ""
        body.append(f'<pre class="raw{prose}">{_e(prediction)}</pre>')
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
        f"{_header(results)}\n{_summary(results, types)}\n"
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


def markdown_table(results: dict) -> str:
    """A GitHub Markdown table of per-task metrics: ``value [lo, hi]`` (95% CI) per metric, and n.

    The first row is "overall" when the results have overall metrics.
    """
    metrics = _dict(_dict(results).get("metrics"))
    groups: dict[str, dict[str, Any]] = {}
    if metrics.get("overall"):
        groups["overall"] = _dict(metrics["overall"])
    for task, task_metrics in _dict(metrics.get("by_task")).items():
        groups[str(task)] = _dict(task_metrics)
    names = _metric_names(groups.values())
    if not groups or not names:
        return "_No metrics recorded._"
    from cxmind.data.schema import TASKS

    lines = [
        "| task | n | " + " | ".join(_md(n) for n in names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for group, group_metrics in groups.items():
        headline = headline_metric(TASKS.get(group), group_metrics)
        n = _metric(group_metrics[headline])[2] if headline else None
        cells = [_fmt_metric(group_metrics[name]) if name in group_metrics else "" for name in names]
        lines.append(
            f"| {_md(group)} | {'' if n is None else n} | " + " | ".join(_md(c) for c in cells) + " |"
        )
    return "\n".join(lines)
