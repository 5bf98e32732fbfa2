"""Optional LLM teacher: richer gold traces from the report and labels, behind the same rewards.

The deterministic trace builder writes correct but formulaic trajectories. This module asks a
teacher LLM behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (``vllm serve``, a
hosted API) to rewrite the *thinks* of each closed/open record from its report, while the answer
blocks — the verdicts — are dictated from the gold trajectory. A trace is kept only when it earns
format 1, outcome 1 and the full process reward against the record's gold (:func:`accept`), so a
teacher can make a trace richer but never make it wrong.

Typical use::

    config = TeacherConfig(base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-72B-Instruct")
    stats = write_traces(records, reports, Path("traces.jsonl"), config)
    records = apply_traces(records, Path("traces.jsonl"))

Runs are resumable: accepted traces go to ``traces.jsonl`` and the acceptance filter's verdicts
on the teacher's text (:data:`FILTER_REASONS`) to ``traces.rejects.jsonl``, one fsync'd line per
record; a rerun skips the ids already in either file (``redo_rejects`` asks again for the rejected
ones). A request that gets no usable answer — connection refused, DNS, timeouts, 5xx or 429 after
the retries, 401/403, any other HTTP error, a body that is not a chat completion — is *not* a
verdict on the record: it is counted in ``TeacherStats.failed``, never written, and asked again by
the next run. ``max_consecutive_failures`` failures in a row (or a run where every request failed)
stop the run with :class:`TeacherUnavailableError` naming the base URL and the fix; what was done
so far stays written. The API key is read from the environment variable named in the config when a
run starts and travels only in the ``Authorization`` header: it is never stored in a config, logged,
written to an output file or put in an error message (server messages that echo it are redacted).

Reasoning teachers (Qwen3, DeepSeek-R1, ...) must not put their own ``<think>`` in the content:
serve them with a reasoning parser, or pass e.g. ``extra_body={"chat_template_kwargs":
{"enable_thinking": False}}``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from cxmind.data.schema import Record
from cxmind.errors import MissingFileError, UserError
from cxmind.format import instructions, parse
from cxmind.rewards.scoring import DEFAULT_W_CLOSED, DEFAULT_W_OPEN, score

__all__ = [
    "FILTER_REASONS",
    "TeacherConfig",
    "TeacherStats",
    "TeacherUnavailableError",
    "UrllibClient",
    "accept",
    "apply_traces",
    "read_jsonl",
    "rejects_path",
    "teach_record_set",
    "teacher_messages",
    "write_traces",
]

log = logging.getLogger(__name__)

#: Reject reasons that are the acceptance filter's verdict on a teacher's text (not a transport failure).
FILTER_REASONS = ("format", "outcome", "process")
_TEACHABLE = ("closed", "open")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PROCESS_WEIGHT = {"closed": DEFAULT_W_CLOSED, "open": DEFAULT_W_OPEN}


@dataclass(frozen=True)
class TeacherConfig:
    """Where the teacher lives and how hard to try. Holds the key's variable *name*, never the key.

    ``extra_body`` is merged into every request (e.g. vLLM's ``chat_template_kwargs``).
    ``max_consecutive_failures`` records in a row whose requests failed (after ``max_retries``)
    stop the run (see module doc).
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 60
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 2048
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    max_consecutive_failures: int = 5

    def __post_init__(self) -> None:
        # Guard against the key itself being passed here, where repr() and logs would show it;
        # the message deliberately does not echo the value.
        if not _ENV_NAME.fullmatch(self.api_key_env):
            raise UserError("api_key_env must be the *name* of an environment variable, e.g. OPENAI_API_KEY")
        if self.max_concurrency < 1:
            raise UserError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_consecutive_failures < 1:
            raise UserError(f"max_consecutive_failures must be >= 1, got {self.max_consecutive_failures}")
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "timeout_s" and value == 0):
                raise UserError(f"{name} must be a finite non-negative number (timeout > 0), got {value!r}")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class TeacherStats:
    """What one :func:`write_traces` run did.

    ``rejected`` counts the filter's verdicts (written to the rejects file); ``failed`` counts
    requests without a usable answer by reason (``connection``, ``timeout``, ``http_503``, ...),
    not written anywhere, so the next run asks again.
    """

    requested: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    skipped_task_type: int = 0
    missing_report: int = 0
    http_attempts: int = 0
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------

_SYSTEM = (
    "You write worked reasoning traces that teach a vision-language model to read chest X-rays. "
    "You are given the question the model will see, the correct verdicts and the radiology report "
    "of the study. Write the trace as the model should reason: as if looking at the image itself. "
    "Use the report's findings as the visual evidence (location, size, density, laterality, "
    "comparison signs), but never mention the report, the labels, or that the answer was given. "
    "Keep each think to one to four sentences of concrete radiographic reasoning. Output only the "
    "rounds: nothing before or after them, no markdown, no code fences."
)

_NO_REPORT = (
    "No report is available for this study. Reason from the typical radiographic signs of the "
    "findings above, stated cautiously; do not invent measurements or specific locations."
)


def teacher_messages(
    record: Record,
    report_text: str | None,
    *,
    labels: Mapping[str, bool] | None = None,
) -> list[dict[str, str]]:
    """The chat messages asking the teacher for one record's trace.

    The answer blocks are copied from the gold trajectory, in order, so the teacher only writes
    the thinks and cannot change a verdict. ``labels`` maps canonical findings to present/absent
    (shown as context); ``report_text=None`` asks for label-only reasoning.
    """
    if record.task_type not in _TEACHABLE:
        raise ValueError(f"record {record.id}: the teacher writes closed/open traces, not {record.task_type}")
    gold = parse(record.solution or "")
    if not gold.well_formed or len(gold.rounds) < 2:
        raise ValueError(f"record {record.id}: gold solution is not a well-formed trajectory: {gold.errors}")

    blocks = []
    last = len(gold.rounds)
    for i, r in enumerate(gold.rounds, 1):
        if i == last:
            role = "summary round"
        elif record.task_type == "open" and i == 1:
            role = "differential round"
        else:
            role = "option round" if record.task_type == "closed" else "candidate round"
        blocks.append(f"{i}. {role}: <answer>{r.answer}</answer>")

    parts = [f"Question (as the model sees it):\n{record.question.strip()}"]
    if record.options:
        parts.append("Options:\n" + "\n".join(record.options))
    parts.append(f"Correct answer: {record.answer}")
    if labels:
        present = ", ".join(name for name, value in labels.items() if value)
        absent = ", ".join(name for name, value in labels.items() if not value)
        shown = [f"present: {present}"] * bool(present) + [f"absent: {absent}"] * bool(absent)
        parts.append("Labels of this study: " + "; ".join(shown))
    parts.append(
        f"Write exactly {last} rounds <think>…</think> <answer>…</answer>, in this order. Copy each "
        "answer block exactly as given; write every think yourself:\n" + "\n".join(blocks)
    )
    if report_text and report_text.strip():
        parts.append(f'Report:\n"""\n{report_text.strip()}\n"""')
    else:
        parts.append(_NO_REPORT)
    parts.append("Write the rounds now.")
    system = f"{_SYSTEM}\n\nThe format the model is taught: {instructions(record.task_type, record.options)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


# ---------------------------------------------------------------------------------------------
# Acceptance filter
# ---------------------------------------------------------------------------------------------


def accept(record: Record, text: str) -> tuple[bool, str]:
    """Whether a teacher's trace may replace the gold: ``(True, "")`` or ``(False, reason)``.

    It must earn format 1, outcome 1 and the task's full process reward against the record's gold
    in fixed mode, i.e. be exactly as correct as the gold, round by round. ``reason`` is the first
    failed check, one of :data:`FILTER_REASONS`.
    """
    if record.task_type not in _TEACHABLE:
        raise ValueError(f"record {record.id}: only closed/open records have traces, not {record.task_type}")
    scores = score(text, record.solution or "", record.task_type, options=record.options, mode="fixed")
    if scores.format != 1.0:
        return False, "format"
    if scores.outcome != 1.0:
        return False, "outcome"
    if not math.isclose(scores.process, _PROCESS_WEIGHT[record.task_type]):
        return False, "process"
    return True, ""


_FENCE = re.compile(r"\A```[\w-]*\n(.*)\n```\Z", re.DOTALL)


def _clean(text: str) -> str:
    """Strip white space and one surrounding markdown fence, a harmless habit of chat models."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class Response(Protocol):
    """What a client's ``post`` returns (``httpx.Response`` and ``requests.Response`` qualify)."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


class Client(Protocol):
    """Anything with an httpx-style ``post``: ``httpx.Client``, ``requests.Session``, the default."""

    def post(self, url: str, *, json: Any, headers: Mapping[str, str], timeout: float) -> Response: ...


@dataclass
class _UrllibResponse:
    status_code: int
    headers: Any  # email.message.Message: case-insensitive .get()
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class UrllibClient:
    """The default client: the standard library only, a fresh connection per request, thread safe."""

    def post(self, url: str, *, json: Any, headers: Mapping[str, str], timeout: float) -> _UrllibResponse:
        body = _dumps(json).encode()
        request = urllib.request.Request(
            url, data=body, headers={**headers, "Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _UrllibResponse(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return _UrllibResponse(error.code, error.headers, error.read())


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _transport_error(exc: BaseException) -> str | None:
    """``"timeout"``/``"connection"`` for retryable transport failures of any client, else ``None``.

    Classified by type names too, so httpx/requests errors qualify without importing them.
    """
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return "timeout" if isinstance(exc.reason, TimeoutError) else "connection"
    names = [cls.__name__ for cls in type(exc).__mro__]
    if isinstance(exc, TimeoutError) or any("Timeout" in name for name in names):
        return "timeout"
    if isinstance(exc, OSError | http.client.HTTPException) or any(
        name in ("TransportError", "NetworkError", "ProtocolError", "ConnectionError") for name in names
    ):
        return "connection"
    return None


def _retry_after(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), if any."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _snippet(response: Any) -> str:
    try:
        text = response.text if hasattr(response, "text") else _dumps(response.json())
    except Exception:
        return ""
    return str(text)[:300]


@dataclass
class _Result:
    """One record's outcome from a worker; ``reason`` is empty on success, ``None`` if interrupted."""

    record: Record
    reason: str | None
    attempts: int
    text: str = ""
    model: str = ""
    finish_reason: str = ""
    detail: str = ""


def _ask(
    record: Record,
    messages: list[dict[str, str]],
    client: Client,
    config: TeacherConfig,
    headers: Mapping[str, str],
    stop: threading.Event,
) -> _Result:
    """Request one trace with retries (429/408/5xx/timeouts/connection errors) and filter it."""
    payload = {
        "model": config.model,
        "messages": messages,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        **config.extra_body,
    }
    last = config.max_retries + 1
    for attempts in range(1, last + 1):
        if stop.is_set():
            return _Result(record, None, attempts - 1)
        wait_s: float | None = None
        try:
            response = client.post(config.url, json=payload, headers=headers, timeout=config.timeout_s)
        except Exception as exc:
            reason = _transport_error(exc)
            if reason is None:
                raise  # a bug, not a network condition: fail loudly instead of marking records done
            detail, retryable = f"{type(exc).__name__}: {exc}"[:300], True
        else:
            status = int(response.status_code)
            if 200 <= status < 300:
                return _completion(record, response, attempts, config)
            reason, detail = f"http_{status}", _snippet(response)
            retryable = status in (408, 429) or status >= 500
            if status in (429, 503):
                wait_s = _retry_after(response.headers)
        if not retryable or attempts == last:
            return _Result(record, reason, attempts, detail=detail)
        backoff = min(config.max_backoff_s, config.backoff_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
        delay = min(config.max_backoff_s, wait_s) if wait_s is not None else backoff
        if stop.wait(delay):
            return _Result(record, None, attempts)
    raise AssertionError("unreachable")


def _completion(record: Record, response: Any, attempts: int, config: TeacherConfig) -> _Result:
    try:
        body = response.json()
        choice = body["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except Exception as exc:
        return _Result(record, "bad_response", attempts, detail=f"{type(exc).__name__}: {exc}"[:300])
    model = body.get("model") if isinstance(body.get("model"), str) else config.model
    finish = str(choice.get("finish_reason") or "")
    text = _clean(text)
    ok, reason = accept(record, text)
    return _Result(record, "" if ok else reason, attempts, text, model, finish)


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------


def rejects_path(out_path: Path | str) -> Path:
    """Where rejected/failed records of ``out_path`` go: ``traces.jsonl`` → ``traces.rejects.jsonl``."""
    return Path(out_path).with_suffix(".rejects.jsonl")


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping unreadable lines (a crash's truncated tail)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError:
                if line.strip():
                    log.warning("%s:%d: skipping an unreadable line (%d bytes)", path, number, len(line))
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows.append(row)
    return rows


def _repair_tail(path: Path) -> None:
    """Make ``path`` end at a line boundary before appending, so a crash's partial line cannot
    glue itself to the next record: a readable last line gets its newline, an unreadable one is cut.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("r+b") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:
            log.warning(
                "%s: dropping a truncated last line (%d bytes); it will be redone", path, len(data) - start
            )
            f.truncate(start)
        else:
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


class _Writer:
    """Appends one JSON line at a time, flushed and fsync'd; only the coordinating thread writes.

    ``secret`` is redacted from every line (servers echo keys in error messages).
    """

    def __init__(self, path: Path, secret: str = "") -> None:
        _repair_tail(path)
        self._file = path.open("a", encoding="utf-8")
        self._secret = secret

    def write(self, row: Mapping[str, Any]) -> None:
        line = _dumps(row)
        if self._secret:
            for form in {self._secret, _dumps(self._secret)[1:-1]}:  # raw, and as JSON escapes it
                line = line.replace(form, "***")
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _done_ids(out_path: Path, redo_rejects: bool | Collection[str]) -> set[str]:
    """Ids with an accepted trace or a filter verdict (unless ``redo_rejects`` covers its reason).

    A reject line with another reason (``connection``, ``timeout``, ``http_*``: written by cxmind
    versions that recorded failed requests as rejects) does not count: the record is asked again.
    """
    done = {row["id"] for row in read_jsonl(out_path)}
    last_reason = {row["id"]: str(row.get("reason", "")) for row in read_jsonl(rejects_path(out_path))}
    for record_id, reason in last_reason.items():
        if reason not in FILTER_REASONS:
            continue
        redo = redo_rejects is True or (not isinstance(redo_rejects, bool) and reason in redo_rejects)
        if not redo:
            done.add(record_id)
    return done


def _compact_rejects(out_path: Path) -> None:
    """Rewrite the rejects file (atomically, only if it changes) to one line per still-rejected id:
    its latest filter verdict, dropped once the id has an accepted trace (a redone reject) and
    dropping failed-request lines of older versions."""
    path = rejects_path(out_path)
    rows = read_jsonl(path)
    if not rows:
        return
    accepted = {row["id"] for row in read_jsonl(out_path)}
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest.pop(row["id"], None)  # the latest line wins, in the order of the latest lines
        latest[row["id"]] = row
    kept = [
        row
        for row_id, row in latest.items()
        if row_id not in accepted and str(row.get("reason", "")) in FILTER_REASONS
    ]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(_dumps(row) + "\n" for row in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TeacherUnavailableError(UserError):
    """The teacher gave no usable answer to many requests in a row: a wrong ``--base-url``, API key,
    model or a server that is down. Nothing was rejected; ``stats`` is what the run did until then."""

    def __init__(self, message: str, stats: TeacherStats) -> None:
        super().__init__(message)
        self.stats = stats


def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials may hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _failure_hint(reason: str, config: TeacherConfig, has_key: bool) -> str:
    """What to check for a failed request's ``reason``."""
    flag = "check --base-url (the OpenAI-compatible root, e.g. http://localhost:8000/v1)"
    key = f"${config.api_key_env}" + ("" if has_key else " (not set)")
    if reason == "connection":
        return f"nothing answered there: {flag} and that the server is running and reachable"
    if reason == "timeout":
        return (
            f"no answer within {config.timeout_s:g} s: {flag}, that the server is up and not overloaded, "
            "or raise --timeout"
        )
    if reason in ("http_401", "http_403"):
        return f"the server refused the API key: put the right key in {key} (or pass --api-key-env)"
    if reason == "http_404":
        return f"{flag} and --model (the name the server serves)"
    if reason == "bad_response":
        return f"the answers are not chat completions: {flag}"
    if reason in ("http_408", "http_429") or reason.startswith("http_5"):
        return (
            f"the server kept failing after {config.max_retries} retries: check its logs and load, "
            "lower --max-concurrency, or retry later"
        )
    return f"the server refused the requests: check --model, the API key in {key} and the request limits"


def write_traces(
    records: Iterable[Record],
    reports: Mapping[str, str] | Callable[[Record], str | None] | None,
    out_path: Path | str,
    config: TeacherConfig,
    *,
    labels: Mapping[str, Mapping[str, bool]] | None = None,
    client: Client | None = None,
    progress: bool = True,
    redo_rejects: bool | Collection[str] = False,
) -> TeacherStats:
    """Ask the teacher for every closed/open record not yet done; append results to ``out_path``.

    Args:
        records: the records; other task types and repeated ids are skipped.
        reports: report text per record id (or a function of the record). A record without a
            report is skipped and counted in ``missing_report`` (not written, so a later run with
            the report picks it up); ``None`` asks for label-only traces for every record.
        out_path: accepted traces, one ``{"id", "solution", "model", "attempts"}`` line each;
            everything else goes to :func:`rejects_path` with its ``reason``.
        labels: optional ``{record id: {finding: present}}`` shown to the teacher as context.
        client: an httpx-style client (default :class:`UrllibClient`).
        redo_rejects: request again ids the filter rejected: ``True`` for all, or a collection of
            :data:`FILTER_REASONS` (e.g. ``{"format"}``) matched against each id's latest reject.
            The rejects file is then rewritten to the ids still rejected.

    Ids already in either file are skipped, so an interrupted run resumes where it stopped. Up to
    ``max_concurrency`` requests run at once; on an interrupt, requests in flight finish (without
    further retries) and are written before the exception propagates.

    Raises:
        TeacherUnavailableError: ``config.max_consecutive_failures`` records in a row, or every
            record of the run, got no usable answer (see module doc); work done so far is kept.
    """
    start = time.monotonic()
    out_path = Path(out_path)
    rej_path = rejects_path(out_path)
    if rej_path == out_path:
        raise ValueError(f"out_path {out_path} would be its own rejects file")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    client = client if client is not None else UrllibClient()
    secret = os.environ.get(config.api_key_env, "")
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    stats = TeacherStats()
    done = _done_ids(out_path, redo_rejects)
    failures = _Failures()
    todo: list[tuple[Record, str | None]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for record in records:
        if record.task_type not in _TEACHABLE:
            stats.skipped_task_type += 1
            continue
        if record.id in done:
            stats.skipped_existing += 1
            continue
        if record.id in seen:
            continue
        seen.add(record.id)
        if reports is None:
            report: str | None = None
        else:
            report = reports(record) if callable(reports) else reports.get(record.id)
            if not report or not report.strip():
                missing.append(record.id)
                continue
        teacher_messages(record, report)  # a malformed gold is a builder bug: fail before any request
        todo.append((record, report))
    stats.missing_report = len(missing)
    if missing:
        log.warning("%d records have no report and were skipped, e.g. %s", len(missing), missing[:3])

    accepted, rejected = _Writer(out_path), _Writer(rej_path, secret)

    def record_result(result: _Result) -> None:
        stats.http_attempts += result.attempts
        if result.reason is None:  # interrupted before an answer: not written, redone next run
            return
        stats.requested += 1
        if result.reason and result.reason not in FILTER_REASONS:  # no verdict: asked again next run
            stats.failed[result.reason] = stats.failed.get(result.reason, 0) + 1
            failures.add(result)
            return
        failures.answered += 1
        failures.streak = 0
        if result.reason == "":
            stats.accepted += 1
            accepted.write(
                {
                    "id": result.record.id,
                    "solution": result.text,
                    "model": result.model,
                    "attempts": result.attempts,
                }
            )
            return
        stats.rejected[result.reason] = stats.rejected.get(result.reason, 0) + 1
        row: dict[str, Any] = {"id": result.record.id, "reason": result.reason, "attempts": result.attempts}
        row["model"] = result.model or config.model
        for key in ("finish_reason", "detail", "text"):
            if getattr(result, key):
                row[key] = getattr(result, key)
        rejected.write(row)

    stop = threading.Event()
    bar = _progress(len(todo), progress)
    try:
        with ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="cxmind-teacher") as pool:
            queue = iter(todo)
            pending: set[Future[_Result]] = set()
            try:
                while True:
                    # Submit lazily (a small window ahead of the workers) so an interrupt leaves
                    # little queued work and memory stays flat on large runs.
                    while len(pending) < 2 * config.max_concurrency and (item := next(queue, None)):
                        record, report = item
                        messages = teacher_messages(record, report, labels=(labels or {}).get(record.id))
                        pending.add(pool.submit(_ask, record, messages, client, config, headers, stop))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    _drain(finished, record_result, bar)
                    if failures.streak >= config.max_consecutive_failures:
                        raise failures.error(config, stats, secret)
                if failures.streak and not failures.answered:
                    raise failures.error(config, stats, secret)
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                _drain(pending, record_result, bar, reraise=False)
                raise
    finally:
        bar.close()
        accepted.close()
        rejected.close()
        _compact_rejects(out_path)
        stats.elapsed_s = time.monotonic() - start
        log.info("teacher traces: %s", stats)
    if stats.failed:
        log.warning(
            "%d requests got no usable answer (%s) and were not written; a re-run asks again",
            sum(stats.failed.values()),
            ", ".join(f"{reason} {n}" for reason, n in sorted(stats.failed.items())),
        )
    return stats


@dataclass
class _Failures:
    """Failed requests of a run: the current streak, the last one, and whether anything answered."""

    streak: int = 0
    answered: int = 0
    last: _Result | None = None

    def add(self, result: _Result) -> None:
        self.streak += 1
        self.last = result

    def error(self, config: TeacherConfig, stats: TeacherStats, secret: str) -> TeacherUnavailableError:
        """The error stopping the run; the key is never in it (a server may echo it in ``detail``)."""
        last = self.last
        assert last is not None and last.reason
        detail = last.detail
        for form in {secret, _dumps(secret)[1:-1]} - {""}:
            detail = detail.replace(form, "***")
        detail = " ".join(detail.split())[:200]
        return TeacherUnavailableError(
            f"the teacher at {_public_url(config.base_url)} gave no usable answer to {self.streak} "
            f"records in a row (last: {last.reason}{': ' + detail if detail else ''}); "
            f"{_failure_hint(last.reason, config, bool(secret))}. Stopped without rejecting any record; "
            f"everything written so far is kept (this run: {stats.accepted} traces, "
            f"{sum(stats.rejected.values())} rejects) and re-running the same command resumes",
            stats,
        )


def _drain(
    futures: Iterable[Future[_Result]], handle: Callable[[_Result], None], bar: Any, *, reraise: bool = True
) -> None:
    """Write every finished result, then raise the first error (an interrupt, a client bug)."""
    error: BaseException | None = None
    for future in futures:
        if future.cancelled():
            continue
        try:
            result = future.result()
        except BaseException as exc:
            error = error or exc
            continue
        handle(result)
        bar.update(1)
    if error is not None and reraise:
        raise error


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="teacher traces", unit="rec")


def apply_traces(records: Sequence[Record], traces_path: Path | str, *, verify: bool = True) -> list[Record]:
    """``records`` with ``solution`` replaced by the accepted teacher trace where one exists.

    With ``verify`` each trace is re-checked by :func:`accept` against the record's *current*
    gold, so traces written before the gold changed (a builder fix) are not applied.
    """
    path = Path(traces_path)
    if not path.exists():
        raise MissingFileError(f"{path}: no teacher traces; run `cxmind data teach` first")
    traces = {row["id"]: row["solution"] for row in read_jsonl(path) if isinstance(row.get("solution"), str)}
    out, stale = [], 0
    for record in records:
        trace = traces.get(record.id)
        if trace is not None and record.task_type in _TEACHABLE:
            if not verify or accept(record, trace)[0]:
                record = replace(record, solution=trace)
            else:
                stale += 1
        out.append(record)
    if stale:
        log.warning(
            "%s: %d traces no longer pass the filter against the current gold; kept the gold", path, stale
        )
    return out


def teach_record_set(
    out: Path | str,
    config: TeacherConfig,
    *,
    label_only: bool = False,
    redo_rejects: bool = False,
    client: Client | None = None,
    progress: bool = True,
) -> TeacherStats:
    """Run the teacher over a built record set and write accepted traces into its shards.

    Reports are taken from the set's own ``report_findings``/``report_impression`` records of the
    same study (a record whose study has none is skipped and counted); with ``label_only`` or a set
    without reports, the teacher reasons from labels alone. Traces accumulate in
    ``teacher.traces.jsonl`` (resumable) and filter rejects in ``teacher.traces.rejects.jsonl``;
    ``redo_rejects`` asks again for every rejected record. Each shard is rewritten atomically with
    the accepted traces — also when the run stops with :class:`TeacherUnavailableError` (a wrong
    base URL or key), so the work done so far is in the set.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    shards = sorted((out / "data").glob("*.parquet"))
    if not shards:
        raise MissingFileError(f"{out}/data holds no parquet shard; build the record set first")
    rows = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    sections: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row["task"] in ("report_findings", "report_impression"):
            label = "Findings" if row["task"] == "report_findings" else "Impression"
            sections.setdefault((row["source"], row["study_id"]), []).append(f"{label}: {row['answer']}")
    records = [Record(**row) for row in rows if row["task_type"] in _TEACHABLE]

    def report_of(record: Record) -> str | None:
        return "\n".join(sections.get((record.source, record.study_id), ())) or None

    reports = None if label_only or not sections else report_of
    traces = out / "teacher.traces.jsonl"
    try:
        return write_traces(
            records, reports, traces, config, client=client, progress=progress, redo_rejects=redo_rejects
        )
    finally:
        if traces.exists():
            for shard in shards:
                table = pq.read_table(shard)
                updated = apply_traces([Record(**row) for row in table.to_pylist()], traces)
                tmp = shard.with_suffix(".parquet.tmp")
                pq.write_table(pa.Table.from_pylist([r.to_row() for r in updated], schema=table.schema), tmp)
                os.replace(tmp, shard)
