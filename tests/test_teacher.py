"""The LLM teacher against a real local HTTP server: filter, retries, failures, concurrency, secrets."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cxmind.data.schema import Record
from cxmind.data.teacher import (
    TeacherConfig,
    TeacherUnavailableError,
    UrllibClient,
    accept,
    apply_traces,
    read_jsonl,
    rejects_path,
    teach_record_set,
    teacher_messages,
    write_traces,
)
from cxmind.errors import UserError
from cxmind.format import instructions, render_closed, render_open

SECRET = "sk-test-0123456789abcdef"
OPTIONS = ["A) Atelectasis", "B) Cardiomegaly", "C) Pleural Effusion"]
REPORT = "The heart is enlarged. No effusion. The lungs are clear."
OPEN_REPORT = "Patchy left basal opacity with volume loss. No pulmonary edema."


# ----------------------------------------------------------------------------- records and traces


def closed_trace(gold: str = "B", wrong: bool = False, style: str = "rich") -> str:
    """A closed trace judging A–C; ``wrong`` marks A as accepted too (process fails, outcome holds)."""
    judgements = [
        (
            letter,
            f"{style}: option {letter} is weighed against the film.",
            letter == gold or (wrong and letter == "A"),
        )
        for letter in "ABC"
    ]
    return render_closed(judgements, f"{style}: the cardiac silhouette is wide, so {gold}.", gold)


def open_trace(style: str = "rich") -> str:
    return render_open(
        f"{style}: a hazy left base with volume loss.",
        [
            ("Atelectasis", f"{style}: the fissure is displaced.", True),
            ("Edema", f"{style}: no septal lines.", False),
        ],
        f"{style}: atelectasis only.",
    )


def closed_record(case: str, split: str = "train") -> Record:
    return Record(
        id=f"nih/{case}/disease_single_choice",
        images=[f"images/{case}.png"],
        task_type="closed",
        task="disease_single_choice",
        question=f"Which finding is present on this chest X-ray? [case-{case}]",
        options=OPTIONS,
        answer="B",
        solution=closed_trace(style="gold"),
        source="nih",
        patient_id=f"p-{case}",
        study_id=case,
        split=split,
    )


def open_record(case: str) -> Record:
    return Record(
        id=f"nih/{case}/disease_open",
        images=[f"images/{case}.png"],
        task_type="open",
        task="disease_open",
        question=f"Which findings are present on this chest X-ray? [case-{case}]",
        options=None,
        answer="Atelectasis",
        solution=open_trace(style="gold"),
        source="nih",
        patient_id=f"p-{case}",
        study_id=case,
        split="train",
    )


def report_record(case: str) -> Record:
    return Record(
        id=f"iu/{case}/report_findings",
        images=[f"images/{case}.png"],
        task_type="report",
        task="report_findings",
        question=f"Describe the findings. [case-{case}]",
        options=None,
        answer="Normal heart size.",
        solution=None,
        source="iu",
        patient_id=f"p-{case}",
        study_id=case,
        split="train",
    )


# ----------------------------------------------------------------------------- the fake teacher


class FakeTeacher:
    """Scripted ``/v1/chat/completions``: each case (``[case-X]`` in the prompt) pops its next action.

    Actions: ``("ok", text)``, ``("status", code, headers)``, ``("hang", seconds)``, ``("echo_auth", code)``;
    the last action repeats. Records every request and the peak number in flight.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[Any, ...]]] = {}
        self.default: tuple[Any, ...] = ("ok", None)
        self.delay_s = 0.0
        self.requests: list[tuple[str, float, str]] = []  # (case, time, authorization)
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.closing = threading.Event()

    def count(self, case: str) -> int:
        return sum(1 for c, _, _ in self.requests if c == case)

    def times(self, case: str) -> list[float]:
        return [t for c, t, _ in self.requests if c == case]

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        case = re.search(r"\[case-([\w-]+)\]", user).group(1)
        with self.lock:
            self.requests.append((case, time.monotonic(), handler.headers.get("Authorization", "")))
            self.bodies.append(body)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            steps = self.script.get(case, [self.default])
            action = steps.pop(0) if len(steps) > 1 else steps[0]
        response: tuple[int, Any, dict[str, str] | None] | None = None
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            kind = action[0]
            if kind == "hang":
                self.closing.wait(action[1])
                return
            if kind == "status":
                response = (action[1], {"error": {"message": "busy"}}, action[2])
            elif kind == "echo_auth":
                message = f"Incorrect API key: {handler.headers.get('Authorization')}"
                response = (action[1], {"error": {"message": message}}, None)
            else:
                text = (
                    action[1]
                    if action[1] is not None
                    else (open_trace() if "Differential Diagnoses" in user else closed_trace())
                )
                completion = {
                    "id": "cmpl-1",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
                response = (200, completion, None)
        finally:
            # no longer in flight once the answer can reach the client: counting it until after the
            # write lets the client's next request overlap this one on a loaded machine
            with self.lock:
                self.in_flight -= 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.reply(handler, *response)

    @staticmethod
    def reply(
        handler: BaseHTTPRequestHandler, code: int, obj: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(obj).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def teacher() -> Iterator[tuple[FakeTeacher, str]]:
    fake = FakeTeacher()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            fake.handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        fake.closing.set()
        server.shutdown()
        server.server_close()


def config_for(base_url: str, **overrides: Any) -> TeacherConfig:
    options = {
        "timeout_s": 2.0,
        "max_retries": 2,
        "backoff_s": 0.01,
        "max_concurrency": 4,
        "api_key_env": "CXM_TEST_KEY",
    }
    return TeacherConfig(base_url=base_url, model="teacher-7b", **{**options, **overrides})


def reports_for(records: list[Record]) -> dict[str, str]:
    return {r.id: OPEN_REPORT if r.task_type == "open" else REPORT for r in records}


# ----------------------------------------------------------------------------- prompt and filter


def test_messages_state_the_format_the_verdicts_and_the_report():
    record = closed_record("m1")
    system, user = teacher_messages(record, REPORT, labels={"Cardiomegaly": True, "Pleural Effusion": False})
    assert system["role"] == "system" and user["role"] == "user"
    assert instructions("closed", OPTIONS) in system["content"]
    for needle in (record.question, *OPTIONS, "Correct answer: B", REPORT, "present: Cardiomegaly"):
        assert needle in user["content"]
    # The answer blocks are dictated in gold order: A ❌, B ✅, C ❌, then the summary B ✅.
    assert re.findall(r"\d\. [a-z ]+: <answer>(.*?)</answer>", user["content"]) == [
        "A) ❌",
        "B) ✅",
        "C) ❌",
        "B) ✅",
    ]

    _, open_user = teacher_messages(open_record("m2"), None)
    assert re.findall(r"\d\. [a-z ]+: <answer>(.*?)</answer>", open_user["content"]) == [
        "Differential Diagnoses: [Atelectasis, Edema]",
        "Atelectasis ✅",
        "Edema ❌",
        "Atelectasis",
    ]
    assert "No report is available" in open_user["content"]
    with pytest.raises(ValueError):
        teacher_messages(report_record("m3"), REPORT)


def test_accept_demands_format_outcome_and_full_process():
    record = closed_record("a1")
    assert accept(record, closed_trace()) == (True, "")
    assert accept(record, closed_trace(wrong=True)) == (False, "process")
    assert accept(record, "Sure! " + closed_trace()) == (False, "format")
    assert accept(record, closed_trace(gold="C")) == (False, "outcome")
    assert accept(record, render_closed([("A", "x", False), ("B", "y", True)], "B.", "B")) == (
        False,
        "process",
    )

    rec = open_record("a2")
    assert accept(rec, open_trace()) == (True, "")
    missed = render_open("obs", [("Atelectasis", "t", True), ("Edema", "t", True)], "both")
    assert accept(rec, missed) == (False, "outcome")
    unlisted = open_trace().replace("[Atelectasis, Edema]", "[Atelectasis]")
    assert accept(rec, unlisted) == (False, "process")


def test_config_never_holds_or_shows_the_key(monkeypatch):
    monkeypatch.setenv("CXM_TEST_KEY", SECRET)
    config = config_for("http://localhost:1/v1")
    assert SECRET not in repr(config) and "CXM_TEST_KEY" in repr(config)
    with pytest.raises(ValueError) as info:
        TeacherConfig(base_url="http://x/v1", model="m", api_key_env=SECRET)
    assert SECRET not in str(info.value)


# ----------------------------------------------------------------------------- the run


def test_write_traces_filters_retries_and_reports_every_failure(teacher, tmp_path, monkeypatch):
    fake, base_url = teacher
    monkeypatch.setenv("CXM_TEST_KEY", SECRET)
    fake.script = {
        "good": [("ok", closed_trace())],
        "fenced": [("ok", "```\n" + closed_trace() + "\n```")],
        "bad": [("ok", closed_trace(wrong=True))],
        "malformed": [("ok", "Here is the trace:\n" + closed_trace())],
        "limited": [("status", 429, {"Retry-After": "1"}), ("ok", closed_trace())],
        "flaky": [("status", 500, {}), ("status", 500, {}), ("ok", open_trace())],
        "hang": [("hang", 3.0)],
        "bad-request": [("status", 400, {})],
        "unauthorised": [("echo_auth", 401)],
    }
    records = [
        closed_record("good"),
        closed_record("fenced"),
        closed_record("bad"),
        closed_record("malformed"),
        closed_record("limited"),
        open_record("flaky"),
        closed_record("hang"),
        closed_record("bad-request"),
        closed_record("unauthorised"),
        report_record("report"),
    ]
    out = tmp_path / "traces" / "teacher.jsonl"
    config = config_for(base_url, timeout_s=0.3, max_retries=2)
    stats = write_traces(records, reports_for(records), out, config, progress=False)

    lines = {row["id"]: row for row in read_jsonl(out)}
    assert set(lines) == {closed_record(c).id for c in ("good", "fenced", "limited")} | {
        open_record("flaky").id
    }
    assert lines[closed_record("good").id] == {
        "id": closed_record("good").id,
        "solution": closed_trace(),
        "model": "teacher-7b",
        "attempts": 1,
    }
    assert lines[closed_record("fenced").id]["solution"] == closed_trace()  # the fence is stripped
    assert lines[closed_record("limited").id]["attempts"] == 2
    assert lines[open_record("flaky").id]["attempts"] == 3

    # Only the filter's verdicts on the teacher's text are rejects; failed requests are not written.
    rejects = {row["id"]: row for row in read_jsonl(rejects_path(out))}
    reasons = {row_id.split("/")[1]: row["reason"] for row_id, row in rejects.items()}
    assert reasons == {"bad": "process", "malformed": "format"}
    assert rejects[closed_record("bad").id]["text"] == closed_trace(wrong=True)  # kept for inspection

    assert fake.count("report") == 0 and fake.count("hang") == 3 and fake.count("flaky") == 3
    assert fake.count("bad-request") == 1 and fake.count("unauthorised") == 1  # no retry on other 4xx
    first, second = fake.times("limited")
    assert second - first >= 0.9  # Retry-After: 1 was honoured
    assert stats.requested == 9 and stats.accepted == 4 and stats.skipped_task_type == 1
    assert stats.rejected == {"process": 1, "format": 1}
    assert stats.failed == {"timeout": 1, "http_400": 1, "http_401": 1}
    assert stats.elapsed_s < 10

    # A second run asks again for the failed requests only (now answered), never for a verdict.
    fake.script = {}
    again = write_traces(records, reports_for(records), out, config, progress=False)
    assert again.requested == 3 and again.accepted == 3 and again.skipped_existing == 6
    assert fake.count("bad") == 1 and fake.count("unauthorised") == 2

    # The key reached the server in the header, and nowhere else.
    assert {auth for _, _, auth in fake.requests} == {f"Bearer {SECRET}"}
    assert all(SECRET not in json.dumps(body) for body in fake.bodies)
    for path in (out, rejects_path(out)):
        assert SECRET not in path.read_text(encoding="utf-8")
    assert SECRET not in repr(config) and SECRET not in repr(stats)

    body = fake.bodies[0]
    assert body["model"] == "teacher-7b" and body["max_tokens"] == 2048 and body["temperature"] == 0.7


def test_no_key_sends_no_authorization(teacher, tmp_path, monkeypatch):
    fake, base_url = teacher
    monkeypatch.delenv("CXM_TEST_KEY", raising=False)
    stats = write_traces(
        [closed_record("k")], None, tmp_path / "t.jsonl", config_for(base_url), progress=True
    )
    assert stats.accepted == 1 and fake.requests[0][2] == ""


def closed_port_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_connection_errors_are_retried_then_stop_the_run_without_a_reject(tmp_path, monkeypatch):
    monkeypatch.setenv("CXM_TEST_KEY", SECRET)
    out = tmp_path / "t.jsonl"
    base_url = closed_port_url()
    config = config_for(base_url, max_retries=1)
    with pytest.raises(TeacherUnavailableError) as info:
        write_traces([closed_record("down")], None, out, config, progress=False)
    assert isinstance(info.value, UserError)  # `cxmind data teach` prints it as one line, exit 2
    stats = info.value.stats
    assert stats.failed == {"connection": 1} and stats.rejected == {} and stats.http_attempts == 2
    assert read_jsonl(rejects_path(out)) == [] and read_jsonl(out) == []
    message = str(info.value)
    assert base_url in message and "--base-url" in message and "connection" in message
    assert SECRET not in message


def test_credentials_in_the_base_url_stay_out_of_the_error(tmp_path):
    url = closed_port_url().replace("http://", f"http://user:{SECRET}@") + f"?key={SECRET}"
    with pytest.raises(TeacherUnavailableError) as info:
        write_traces(
            [closed_record("cred")],
            None,
            tmp_path / "t.jsonl",
            config_for(url, max_retries=0),
            progress=False,
        )
    assert SECRET not in str(info.value) and "http://127.0.0.1:" in str(info.value)


def test_a_wrong_base_url_stops_after_a_run_of_failures_and_a_rerun_teaches_all(teacher, tmp_path):
    fake, good_url = teacher
    records = [closed_record(f"w{i}") for i in range(20)]
    out = tmp_path / "t.jsonl"
    fake.script = {"w0": [("ok", closed_trace(wrong=True))]}
    write_traces(records[:2], reports_for(records), out, config_for(good_url), progress=False)
    before = {path: path.read_bytes() for path in (out, rejects_path(out))}

    wrong = config_for(closed_port_url(), max_concurrency=2, max_consecutive_failures=3, max_retries=0)
    with pytest.raises(UserError, match=r"\d+ records in a row") as info:
        write_traces(records, reports_for(records), out, wrong, progress=False)
    assert info.value.stats.requested < 10  # stopped early, not after asking for every record
    assert {path: path.read_bytes() for path in before} == before  # nothing rejected, nothing lost

    stats = write_traces(records, reports_for(records), out, config_for(good_url), progress=False)
    assert stats.requested == 18 and stats.accepted == 18 and stats.skipped_existing == 2
    assert len(read_jsonl(out)) == 19 and [r["reason"] for r in read_jsonl(rejects_path(out))] == ["process"]


def test_a_refused_key_stops_the_run_naming_the_variable_not_the_key(teacher, tmp_path, monkeypatch):
    fake, base_url = teacher
    monkeypatch.setenv("CXM_TEST_KEY", SECRET)
    fake.default = ("echo_auth", 401)  # the server echoes the key in its message
    records = [closed_record(f"u{i}") for i in range(8)]
    out = tmp_path / "t.jsonl"
    with pytest.raises(TeacherUnavailableError) as info:
        write_traces(records, reports_for(records), out, config_for(base_url), progress=False)
    message = str(info.value)
    assert "http_401" in message and "$CXM_TEST_KEY" in message and "***" in message
    assert SECRET not in message and SECRET not in repr(info.value.stats)
    assert read_jsonl(rejects_path(out)) == []


def test_reject_lines_of_failed_requests_from_older_versions_are_asked_again(teacher, tmp_path):
    fake, base_url = teacher
    records = [closed_record("old1"), closed_record("old2")]
    out = tmp_path / "t.jsonl"
    rejects_path(out).write_text(
        json.dumps({"id": records[0].id, "reason": "connection", "attempts": 5})
        + "\n"
        + json.dumps({"id": records[1].id, "reason": "format", "attempts": 1})
        + "\n",
        encoding="utf-8",
    )
    stats = write_traces(records, reports_for(records), out, config_for(base_url), progress=False)
    assert stats.requested == 1 and stats.accepted == 1 and fake.count("old2") == 0
    assert [row["id"] for row in read_jsonl(rejects_path(out))] == [records[1].id]  # the stale line is gone


def test_an_httpx_style_client_can_be_injected(teacher, tmp_path):
    requests = pytest.importorskip("requests")
    fake, base_url = teacher
    fake.script = {
        "rq2": [("status", 503, {"Retry-After": "0"}), ("ok", closed_trace())],
        "rq3": [("hang", 3.0)],
    }
    records = [closed_record("rq1"), closed_record("rq2"), closed_record("rq3")]
    out = tmp_path / "t.jsonl"
    with requests.Session() as session:
        config = config_for(base_url, timeout_s=0.3, max_retries=1)
        stats = write_traces(records, reports_for(records), out, config, client=session, progress=False)
    assert stats.accepted == 2 and stats.rejected == {} and stats.failed == {"timeout": 1}
    assert sorted(row["attempts"] for row in read_jsonl(out)) == [1, 2]


def test_concurrency_never_exceeds_the_limit(teacher, tmp_path):
    fake, base_url = teacher
    fake.delay_s = 0.5  # long enough for three requests to overlap on a loaded machine
    records = [closed_record(f"c{i}") for i in range(12)]
    stats = write_traces(
        records,
        reports_for(records),
        tmp_path / "t.jsonl",
        config_for(base_url, max_concurrency=3),
        progress=False,
    )
    assert stats.accepted == 12 and fake.peak == 3  # bounded, and actually parallel


def test_missing_reports_are_counted_not_written(teacher, tmp_path):
    fake, base_url = teacher
    records = [closed_record("r1"), closed_record("r2")]
    out = tmp_path / "t.jsonl"
    stats = write_traces(records, {records[0].id: REPORT}, out, config_for(base_url), progress=False)
    assert stats.accepted == 1 and stats.missing_report == 1 and fake.count("r2") == 0
    assert read_jsonl(rejects_path(out)) == []  # picked up by a later run that has the report
    stats = write_traces(records, reports_for(records), out, config_for(base_url), progress=False)
    assert stats.accepted == 1 and stats.skipped_existing == 1 and fake.count("r1") == 1


class InterruptAfter:
    """A client that behaves like Ctrl-C after ``n`` requests."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.inner = n, 0, UrllibClient()

    def post(self, url: str, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.inner.post(url, **kwargs)


def test_an_interrupted_run_resumes_without_redoing_or_losing_work(teacher, tmp_path):
    fake, base_url = teacher
    records = [closed_record(f"s{i}") if i % 2 else open_record(f"s{i}") for i in range(6)]
    fake.script = {"s1": [("ok", closed_trace(wrong=True))]}  # one reject, which must not be redone
    out = tmp_path / "t.jsonl"
    config = config_for(base_url, max_concurrency=1)
    with pytest.raises(KeyboardInterrupt):
        write_traces(records, reports_for(records), out, config, client=InterruptAfter(3), progress=False)
    assert [row["id"] for row in read_jsonl(out)] == [records[0].id, records[2].id]
    assert [row["id"] for row in read_jsonl(rejects_path(out))] == [records[1].id]

    # A crash mid-write leaves half a line: it is tolerated, cut and redone.
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": records[3].id, "solution": "<think>half"})[:40])

    stats = write_traces(records, reports_for(records), out, config, progress=False)
    assert stats.skipped_existing == 3 and stats.requested == 3 and stats.accepted == 3
    assert all(fake.count(f"s{i}") == 1 for i in range(6))  # nobody asked twice
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]  # every line valid
    assert sorted(row["id"] for row in rows) == sorted(r.id for i, r in enumerate(records) if i != 1)

    # A third run has nothing left to do; redo_rejects asks again for the rejected one only.
    assert write_traces(records, reports_for(records), out, config, progress=False).requested == 0
    assert (
        write_traces(
            records, reports_for(records), out, config, progress=False, redo_rejects={"format"}
        ).requested
        == 0
    )
    stats = write_traces(records, reports_for(records), out, config, progress=False, redo_rejects={"process"})
    assert stats.requested == 1 and fake.count("s1") == 2
    # Rejected again: still one line (the latest), so the rejects file stays one line per record.
    assert [row["id"] for row in read_jsonl(rejects_path(out))] == [records[1].id]


def test_a_complete_last_line_without_newline_is_kept(teacher, tmp_path):
    _, base_url = teacher
    records = [closed_record("n1"), closed_record("n2")]
    out = tmp_path / "t.jsonl"
    row = {"id": records[0].id, "solution": closed_trace(), "model": "m", "attempts": 1}
    out.write_text(json.dumps(row), encoding="utf-8")  # no trailing newline
    stats = write_traces(records, reports_for(records), out, config_for(base_url), progress=False)
    assert stats.skipped_existing == 1 and stats.accepted == 1
    assert [r["id"] for r in read_jsonl(out)] == [records[0].id, records[1].id]


def test_apply_traces_replaces_solutions_that_still_pass(tmp_path):
    records = [closed_record("x1"), closed_record("x2"), open_record("x3"), report_record("x4")]
    path = tmp_path / "t.jsonl"
    rows = [
        {"id": records[0].id, "solution": closed_trace(), "model": "m", "attempts": 1},
        {"id": records[1].id, "solution": closed_trace(gold="C"), "model": "m", "attempts": 1},  # stale
        {"id": records[2].id, "solution": open_trace(), "model": "m", "attempts": 1},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "trunc', encoding="utf-8")
    applied = apply_traces(records, path)
    assert [r.solution for r in applied] == [closed_trace(), records[1].solution, open_trace(), None]
    assert applied[0] == records[0].__class__(**{**records[0].to_row(), "solution": closed_trace()})
    assert apply_traces(records, path, verify=False)[1].solution == closed_trace(gold="C")
    with pytest.raises(FileNotFoundError):
        apply_traces(records, tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- a record set


def record_set(tmp_path, records: list[Record]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "records"
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([r.to_row() for r in records]), out / "data" / "train-00000.parquet")
    return out


def solutions(out) -> dict[str, str | None]:
    import pyarrow.parquet as pq

    rows = [
        row for shard in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()
    ]
    return {row["id"]: row["solution"] for row in rows}


def test_teach_record_set_survives_a_wrong_url_and_redoes_rejects_on_request(teacher, tmp_path):
    fake, base_url = teacher
    cases = [f"t{i}" for i in range(7)]
    reports = [replace(report_record(c), id=f"nih/{c}/report_findings", source="nih") for c in cases]
    records = [closed_record(c) for c in cases] + reports  # each study's report is the teacher's context
    out = record_set(tmp_path, records)
    traces, gold = out / "teacher.traces.jsonl", solutions(out)

    # A wrong --base-url: a UserError after a run of failures, nothing written, the set untouched.
    wrong = config_for(closed_port_url(), max_retries=0, max_concurrency=1)
    with pytest.raises(UserError, match="--base-url"):
        teach_record_set(out, wrong, progress=False)
    assert read_jsonl(traces) == [] and read_jsonl(rejects_path(traces)) == []
    assert solutions(out) == gold

    # The right one teaches every record but t0, whose trace the filter rejects.
    fake.script = {"t0": [("ok", closed_trace(wrong=True))]}
    stats = teach_record_set(out, config_for(base_url), progress=False)
    assert stats.accepted == 6 and stats.rejected == {"process": 1} and stats.failed == {}
    taught = solutions(out)
    assert [taught[closed_record(c).id] for c in cases[1:]] == [closed_trace()] * 6
    assert taught[closed_record("t0").id] == gold[closed_record("t0").id]

    # A rerun skips the reject; redo_rejects asks for it again and rewrites the rejects file.
    assert teach_record_set(out, config_for(base_url), progress=False).requested == 0
    fake.script = {}
    stats = teach_record_set(out, config_for(base_url), redo_rejects=True, progress=False)
    assert stats.requested == 1 and stats.accepted == 1 and fake.count("t0") == 2
    assert read_jsonl(rejects_path(traces)) == []
    assert solutions(out)[closed_record("t0").id] == closed_trace()
