"""Runs checkpointed in SQLite after every step, so that `run --resume RUN_ID` goes on
from the last completed step after Ctrl-C, a kill, or a power cut.

Each change is one transaction: the model's turn together with its tool calls (as
`pending`), each call's start (`running`) and its outcome (`done`), and the end of the
run. Killed at any moment, the file holds the state before or after a change, never
half of one, and opens. A call found `running` on resume was in flight: it may or may
not have had its effect, so it is re-run only if its tool is idempotent or a person
approves.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, ValidationError

from policies.paths import user_data_dir
from sandbox.errors import SandboxedAgentError

from .scrubbing import scrub
from .sqlite_file import connect, open_versioned

SCHEMA_VERSION = 1
TABLES = [
    "CREATE TABLE runs (id TEXT PRIMARY KEY, task TEXT NOT NULL, model TEXT NOT NULL, "
    "status TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', answer TEXT, "
    "steps INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0, "
    "messages TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, "
    "pid INTEGER NOT NULL)",
    "CREATE TABLE calls (run_id TEXT NOT NULL REFERENCES runs(id), call_id TEXT NOT NULL, "
    "step INTEGER NOT NULL, position INTEGER NOT NULL, tool TEXT NOT NULL, "
    "arguments TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT, "
    "PRIMARY KEY (run_id, call_id))",
]
RUNNING = "running"
"""The status of a run that has not ended (or whose orchestrator was killed)."""


class CheckpointError(SandboxedAgentError):
    """The run store cannot be used, or a run cannot be resumed; nothing was changed."""


class UnknownRun(CheckpointError):
    """No run of that id in the store (a typo, another machine's id, a deleted file)."""

    def __init__(self, run_id: str, path: Path, latest: list[str]) -> None:
        shown = f"; the latest: {', '.join(latest)}" if latest else "; it holds no run yet"
        super().__init__(f"no run {run_id!r} in {path}{shown} (all: sandboxed-agent runs)")


def default_path() -> Path:
    return user_data_dir() / "runs.db"


class Outcome(BaseModel):
    """What a completed call left in the conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sent: str
    ok: bool
    error_kind: str | None = None
    ran: bool = True
    """It ran in the sandbox; False for a refusal or a note (`ok` too, yet nothing ran),
    which on resume answers no tool's `after`. Checkpoints from before it: True."""


class CallRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    call_id: str
    step: int
    tool: str
    arguments: str
    """The model's text while `pending`; from `running` on, the validated arguments
    as canonical JSON (what ran)."""
    state: Literal["pending", "running", "done"]
    outcome: Outcome | None = None


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    task: str
    model: str
    status: str
    message: str
    answer: str | None
    steps: int
    cost_usd: float
    messages: list[dict[str, Any]]
    created: float
    updated: float
    pid: int
    """The orchestrator that ran it last."""
    calls: list[CallRecord] = []

    @property
    def resumable(self) -> bool:
        return self.status != "answer"

    @property
    def state(self) -> str:
        """The status, where `running` is told from `killed` (its orchestrator is gone)."""
        if self.status == RUNNING and not psutil.pid_exists(self.pid):
            return "killed"
        return self.status


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        open_versioned(path, "run", SCHEMA_VERSION, TABLES, CheckpointError)

    @classmethod
    def open_default(cls) -> RunStore:
        return cls(default_path())

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        try:
            with closing(connect(self.path)) as db, db:
                for sql, params in statements:
                    # Every text scrubbed of the key: a model may have echoed it.
                    db.execute(sql, tuple(scrub(p) if isinstance(p, str) else p for p in params))
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot checkpoint the run in {self.path}: {exc}") from None

    def start(self, task: str, model: str, messages: list[dict[str, Any]]) -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        now = time.time()
        self._write(
            (
                "INSERT INTO runs (id, task, model, status, messages, created, updated, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, task, model, RUNNING, json.dumps(messages), now, now, os.getpid()),
            )
        )
        return run_id

    def step(
        self,
        run_id: str,
        messages: list[dict[str, Any]],
        steps: int,
        cost_usd: float,
        calls: list[tuple[str, str, str]],
    ) -> None:
        """The model's turn: the conversation so far and its calls, as `pending`."""
        self._write(
            self._progress(run_id, messages, steps, cost_usd),
            *[
                (
                    "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL)",
                    (run_id, call_id, steps, i, tool, arguments),
                )
                for i, (call_id, tool, arguments) in enumerate(calls)
            ],
        )

    def call_started(self, run_id: str, call_id: str, arguments: str) -> None:
        """`arguments`: the validated arguments as canonical JSON, what runs. A call
        found `running` on resume re-runs only with these."""
        self._write(
            (
                "UPDATE calls SET state = 'running', arguments = ? "
                "WHERE run_id = ? AND call_id = ?",
                (arguments, run_id, call_id),
            )
        )

    def call_done(self, run_id: str, call_id: str, outcome: Outcome) -> None:
        self._write(
            (
                "UPDATE calls SET state = 'done', outcome = ? WHERE run_id = ? AND call_id = ?",
                (outcome.model_dump_json(), run_id, call_id),
            )
        )

    def progress(
        self, run_id: str, messages: list[dict[str, Any]], steps: int, cost_usd: float
    ) -> None:
        self._write(self._progress(run_id, messages, steps, cost_usd))

    def finish(
        self,
        run_id: str,
        status: str,
        message: str,
        answer: str | None,
        messages: list[dict[str, Any]],
        steps: int,
        cost_usd: float,
    ) -> None:
        self._write(
            (
                "UPDATE runs SET status = ?, message = ?, answer = ?, messages = ?, steps = ?, "
                "cost_usd = ?, updated = ? WHERE id = ?",
                (
                    status,
                    message,
                    answer,
                    json.dumps(messages),
                    steps,
                    cost_usd,
                    time.time(),
                    run_id,
                ),
            )
        )

    def claim(self, record: RunRecord) -> None:
        """Take a run over for resuming: refused while another orchestrator runs it."""
        if record.state == RUNNING and record.pid != os.getpid():
            raise CheckpointError(
                f"run {record.id} is still running in process {record.pid}; stop it first"
            )
        self._write(
            (
                "UPDATE runs SET status = ?, pid = ?, updated = ? WHERE id = ?",
                (RUNNING, os.getpid(), time.time(), record.id),
            )
        )

    def _progress(
        self, run_id: str, messages: list[dict[str, Any]], steps: int, cost_usd: float
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "UPDATE runs SET status = ?, messages = ?, steps = ?, cost_usd = ?, updated = ? "
            "WHERE id = ?",
            (RUNNING, json.dumps(messages), steps, cost_usd, time.time(), run_id),
        )

    def load(self, run_id: str) -> RunRecord:
        with closing(connect(self.path)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                latest = db.execute("SELECT id FROM runs ORDER BY created DESC LIMIT 3")
                raise UnknownRun(run_id, self.path, [r[0] for r in latest.fetchall()])
            calls = db.execute(
                "SELECT * FROM calls WHERE run_id = ? ORDER BY step, position", (run_id,)
            ).fetchall()
        try:
            data = dict(row)
            messages = json.loads(data.pop("messages"))
            records = []
            for c in map(dict, calls):
                outcome = c.pop("outcome")
                c["outcome"] = Outcome.model_validate_json(outcome) if outcome else None
                records.append(CallRecord.model_validate(c))
            return RunRecord(**data, messages=messages, calls=records)
        except (ValueError, ValidationError):
            raise CheckpointError(
                f"run {run_id!r} in {self.path} is corrupt; it was left untouched"
            ) from None

    def runs(self, limit: int = 50) -> list[RunRecord]:
        with closing(connect(self.path)) as db:
            ids = db.execute("SELECT id FROM runs ORDER BY created DESC LIMIT ?", (limit,))
            return [self.load(run_id) for (run_id,) in ids.fetchall()]
