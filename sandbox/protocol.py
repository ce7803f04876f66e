"""What crosses a pipe: frozen pydantic models, tagged by `type`.

Two conversations use them:

- orchestrator ↔ worker, over a stream socket with a 4-byte length prefix
  (`channel.py`): `Call` one way (`Again` for a warm worker's later calls), `Result`
  back;
- orchestrator ↔ zygote (the pre-imported template process that forks workers),
  over a SOCK_SEQPACKET socket: `Spawn`/`Shutdown` one way, `Spawned`/`Exited` back.

Errors cross as `{kind, message}`, never pickled: a hostile worker can send bytes,
but it cannot make the orchestrator unpickle them.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import from_json, to_json

from .errors import ErrorKind
from .limits import Limits, NetworkMode


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolError(_Message):
    """Why a call produced no output; `kind` is one of the stable `ErrorKind`s."""

    kind: ErrorKind
    message: str


def new_call_id() -> str:
    """Random, so a tool cannot write the answer to a call it has not seen."""
    return secrets.token_hex(16)


class Call(_Message):
    type: Literal["call"] = "call"
    id: str = Field(default_factory=new_call_id, pattern=r"^[0-9a-f]{32}$")
    """Named again in the `Result`: an answer to any other call is a protocol violation."""
    tool: str
    args: dict[str, Any]
    limits: Limits
    root: str | None = None
    """Directory `read_file` may read from, from the policy."""
    data_dir: str | None = None
    """Directory the tool may read and write, its state kept between calls (policy)."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Per-tool configuration from the policy (for example a pinned `today`)."""
    data_left: int | None = None
    """Bytes `data_dir` may still grow by (`max_data_mb` less what it holds): no file
    this call writes may be larger (RLIMIT_FSIZE)."""

    @property
    def reuse_key(self) -> str:
        """Calls with equal keys may share a warm worker: the same tool, limits (network
        included), root, data_dir and settings. A worker's first call fixed all of these
        (rlimits, cgroup limits, Landlock rules, the network namespace) for good."""
        return self.model_dump_json(include={"tool", "limits", "root", "data_dir", "settings"})


class Again(_Message):
    """A warm worker's next call: what differs from its first. The worker runs it
    with its first call's tool, limits, root, data_dir and settings, which the pool
    sends it only for a call of the same `Call.reuse_key`; so nothing that set its
    walls is sent again, and none of it can differ.

    This model is the contract; the hot path writes and reads the frame with
    `again_frame` and `read_again` (a few µs less than pydantic on each side), which
    tests/test_warm_workers.py holds to it. Frames TO a worker come from the
    orchestrator only; the worker still checks each and exits on any other."""

    type: Literal["again"] = "again"
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    args: dict[str, Any]
    data_left: int | None = Field(None, ge=0)


def again_frame(call: Call) -> bytes:
    """`Again(id=call.id, args=call.args, data_left=call.data_left)`'s JSON frame;
    `args` dumped by pydantic's serializer, as `Call.model_dump_json` would."""
    left = b"null" if call.data_left is None else b"%d" % call.data_left
    return b'{"type":"again","id":"%s","args":%s,"data_left":%s}' % (
        call.id.encode(),
        to_json(call.args),
        left,
    )


_CALL_ID = re.compile(r"[0-9a-f]{32}")
_AGAIN_KEYS = frozenset(("type", "id", "args", "data_left"))


def read_again(frame: bytes, first: Call) -> Call | None:
    """The call an `Again` frame asks of a worker whose first call was `first`; None
    for anything that is not exactly such a frame (the worker then exits)."""
    try:
        fields = from_json(frame)
    except ValueError:
        return None
    if type(fields) is not dict or fields.keys() != _AGAIN_KEYS or fields["type"] != "again":
        return None
    call_id, args, left = fields["id"], fields["args"], fields["data_left"]
    if type(call_id) is not str or not _CALL_ID.fullmatch(call_id) or type(args) is not dict:
        return None
    if left is not None and (type(left) is not int or left < 0):
        return None
    return first.model_copy(update={"id": call_id, "args": args, "data_left": left})


class Result(_Message):
    type: Literal["result"] = "result"
    id: str
    """The `Call.id` this answers."""
    reusable: bool = False
    """The worker cleaned up after the call (no process, no thread, no file left) and
    may serve the next call with the same `Call.reuse_key`."""
    ok: bool
    output: str | None = None
    error: ToolError | None = None


class Profile(_Message):
    """What a spare worker is made ahead for: every input of a first call's set-up
    (cgroup limits, rlimits, the jail's binds, Landlock, seccomp, the uid drop) that is
    not the call itself. A spare made for a profile has all of it done before the call
    arrives, and runs only a call with exactly these `limits` and `root` and no
    `data_dir` (whose ownership is fixed at the call, after the calls before it)."""

    limits: Limits
    root: str | None = None

    @classmethod
    def of(cls, call: Call) -> Profile | None:
        """The profile `call` can be served by; None when its set-up waits for it."""
        if call.data_dir is not None or call.data_left is not None:
            return None
        return cls(limits=call.limits, root=call.root)

    def fits(self, call: Call) -> bool:
        return (
            call.limits == self.limits
            and call.root == self.root
            and call.data_dir is None
            and call.data_left is None
        )

    @property
    def key(self) -> str:
        return self.model_dump_json()


class Spawn(_Message):
    type: Literal["spawn"] = "spawn"
    network: NetworkMode = "none"
    profile: Profile | None = None
    """Set: the worker's set-up is done for this profile before it is handed over."""


class Shutdown(_Message):
    type: Literal["shutdown"] = "shutdown"


class ZygoteConfig(_Message):
    """How to start a zygote: passed on its command line, since it starts by exec."""

    sys_path: list[str]
    sources: list[str]
    """Tool modules or files to import before forking anything."""
    root: str
    """Directory that holds the workers' private directories."""
    disabled: list[str]
    """Layers the policy turned off (names from `sandbox.layers.LAYER_NAMES`)."""
    read_paths: list[str]
    """More paths every worker may read (Landlock), besides the interpreter, the tools'
    own directories and the system files a Python program needs."""
    cgroup_subtree: str | None = None
    """The delegated cgroup subtree to use (`SANDBOXED_AGENT_CGROUP_ROOT`'s value; see
    `sandbox._cgroups`); None: our own cgroup."""


class Layer(_Message):
    """One isolation layer on this machine: whether workers get it, and why not."""

    state: Literal["active", "unavailable", "off", "standby"]
    """`off`: the policy turned it off; `standby`: a fallback another layer makes
    unnecessary here."""
    detail: str
    walls_signals: bool = False
    """As set up here, it keeps a tool's signals inside its call: a PID namespace, a
    uid no other process has, Landlock's signal scope. The pool refuses to start where
    no active layer does (`sandbox.pool`)."""

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def required(self) -> bool:
        """Strict isolation refuses to run while a required layer is not active."""
        return self.state in ("active", "unavailable")


class Ready(_Message):
    """The zygote imported the tools; which isolation layers it could set up."""

    type: Literal["ready"] = "ready"
    layers: dict[str, Layer]
    tools: list[str]


class Spawned(_Message):
    """A new idle worker; the message carries as SCM_RIGHTS its socket, its pidfd, a
    read-only descriptor of its log and the read end of its set-up pipe."""

    type: Literal["spawned"] = "spawned"
    pid: int
    network: NetworkMode
    workdir: str
    cpu_usage: str | None = None
    """The usage file of the worker's CPU accounting cgroup, which its whole tree is in."""
    profile: Profile | None = None
    """The `Spawn.profile` it was made for."""
    pids_cgroup: str | None = None
    """The worker's pids cgroup, which every process of its call stays in."""


class Exited(_Message):
    """The zygote reaped a worker: its wait status and the CPU time it used."""

    type: Literal["exited"] = "exited"
    pid: int
    status: int
    cpu_s: float
    oom_killed: bool = False
    """The kernel killed a process of the worker's memory cgroup for exceeding it."""


class Failed(_Message):
    """The zygote could not fork a worker."""

    type: Literal["failed"] = "failed"
    message: str
    network: NetworkMode = "none"
    profile: Profile | None = None


ToZygote = TypeAdapter(Annotated[Spawn | Shutdown, Field(discriminator="type")])
FromZygote = TypeAdapter(Annotated[Ready | Spawned | Exited | Failed, Field(discriminator="type")])
