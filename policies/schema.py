"""The policy file's shape: `[defaults]`, `[tools.NAME]`, and what they resolve to.

Types are strict (a string "10" is not a number) and unknown keys are errors. The
limits' ranges live in one place, `sandbox.Limits`; the loader checks each table
against them so that an impossible value names its table and key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from sandbox import Limits
from sandbox.egress import EgressConfig
from tools import ToolContext

from . import places
from .places import Place

LIMIT_KEYS = (
    "timeout_s",
    "memory_mb",
    "cpu_s",
    "max_output_chars",
    "max_open_files",
    "max_file_size_mb",
    "max_disk_mb",
    "max_data_mb",
    "max_processes",
    "max_connections",
    "max_egress_mb",
    "max_warm_calls",
    "max_warm_age_s",
)

Setting = str | int | float | bool


class ToolPolicy(BaseModel):
    """One table: `[defaults]` or `[tools.NAME]`. Unset keys inherit from `[defaults]`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    timeout_s: float | None = None
    memory_mb: int | None = None
    cpu_s: int | None = None
    max_output_chars: int | None = None
    max_open_files: int | None = None
    max_file_size_mb: int | None = None
    max_disk_mb: int | None = None
    max_data_mb: int | None = None
    """Disk the tool's `data_dir` may hold (`data_limit`)."""
    max_processes: int | None = None
    max_connections: int | None = None
    """Connections a call may open through the egress proxy (a network allowlist)."""
    max_egress_mb: int | None = None
    """MiB a call may move through the egress proxy, both ways together."""
    requires_approval: bool | None = None
    """The call waits for a person's yes (the agent asks; `denied` without one)."""
    after: list[str] | None = None
    """Tools that must have answered (successfully) earlier in the run before this one
    runs: `issue_refund` after `get_order_status`. The agent offers the tool only once
    they have; a call before them (a model that knew it from an earlier turn) is not
    run, and the model is told which to call first."""
    offer_when: list[Annotated[str, Field(min_length=1)]] | None = None
    """Words or phrases, one of which the user's latest message must mention (any case,
    at the start of a word) for the tool to be offered: `issue_refund` only to someone
    who asks for a refund. A small model otherwise calls an action nobody asked for."""
    decides: bool | None = None
    """Its result answers the question (a verdict): once it has answered without an
    error, the next model call asks for the final answer with tools off (`steered:
    decided`). A small model that had `check_return_eligibility`'s "No: ..." went on
    calling tools (the date again, a calculation) until the step budget ran out."""
    then: list[str] | None = None
    """Tools the model is asked to call next, once this one answered in the run: the
    following model calls offer only those of them not yet called, and must call one
    (`tool_choice: "required"`), until each has been called once. A small model that
    has an order answers a question about the shop's rules from the order alone, or
    from the one tool that decides it, without the policy or today's date."""
    then_when: list[Annotated[str, Field(min_length=1)]] | None = None
    """`then` only when the user's latest message mentions one of these (as
    `offer_when` reads them): the rules and the date for a question about a return,
    not for one about an order's price."""
    max_calls: int | None = Field(None, ge=1, le=1000)
    """Times the tool may run in one run; then it is no longer offered, a call of it is
    refused (`max_calls`), and the next model call asks for the answer, tools off
    (`steered: max_calls`). The small model chained `calculate` ("2025-05-11 - 30
    days", that minus 30 days, ...) until the step budget ran out."""
    first_when: list[Annotated[str, Field(min_length=1)]] | None = None
    """Words or phrases (as `offer_when` reads them): when the user's latest message
    mentions one, the first model call after it is offered only the tools whose
    `first_when` it mentions, and must call one: `get_order_status` for a question
    about an order. A small model asked to look something up first read the policy
    instead, and so never had the order a return or refund turns on. A tool with
    `then_when` is asked for first only when the message mentions one of those too
    (the lookup its follow-ups hang on): not for "Order 12345 cost 89.99 for 3 items;
    what did each cost?"."""
    ask_when_ready: bool | None = None
    """Once the tools it runs `after` have answered (and no `then` is waiting), the
    next model call is offered it alone and must call it, once, unless the user asked
    for an action (a tool with `offer_when` that acts: the action is asked for
    instead). The worked example's `check_return_eligibility`: with the order, the
    policy and the date, the small model chained calculations, or looked one of them
    up again, and never called the tool that decides."""
    idempotent: bool | None = None
    """Running it twice does no more than once: a call in flight when a run stopped is
    re-run on resume without asking (else only with a person's approval)."""
    trusted: bool | None = None
    """The tool may run in a reused warm worker instead of a fresh one per call."""
    max_warm_calls: int | None = None
    """Calls one warm worker of a trusted tool serves before it is retired."""
    max_warm_age_s: float | None = None
    """Seconds from a warm worker's first call after which it serves no more."""
    network: bool | list[str] | None = None
    """true: the host's network; false: none (no interface at all); a list of
    `host:port` patterns (`*.domain:443`, `203.0.113.7:*`): only those, through the
    orchestrator's egress proxy (see sandbox/egress)."""
    root: str | None = None
    """Directory `read_file` may read, relative to the policy file (or `~`, `{data}`);
    resolved once, at load, and never inside a `data_dir` (see policies/places.py)."""
    data_dir: str | None = None
    """Directory the tool may read and write, kept between calls (the memory tools'
    database): relative to the policy file; `{data}` is the user's data directory.
    Resolved once, at load; never inside another tool's (see policies/places.py)."""
    settings: dict[str, Setting] = Field(default_factory=dict)
    """Free-form configuration for the tool, e.g. `today = "2025-05-11"`."""

    @field_validator("root", "data_dir")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        # `{date}/memory` would otherwise be a directory of that name beside the file.
        for word in re.findall(r"\{([^{}]*)\}", value or ""):
            if word != "data":
                raise ValueError(
                    f"{value!r}: unknown placeholder {{{word}}} (accepted: {{data}}, the "
                    "user's data directory)"
                )
        return value

    def over(self, base: ToolPolicy) -> ToolPolicy:
        """This table's values, with `base` filling in what it leaves unset."""
        merged = base.model_dump(exclude={"settings"})
        merged.update(self.model_dump(exclude={"settings"}, exclude_none=True))
        return ToolPolicy(**merged, settings={**base.settings, **self.settings})


MCP_SEPARATOR = "__"
"""Between a server's name and its tool's in the agent's tool list: `time__get_current_time`."""


class McpServerPolicy(BaseModel):
    """`[mcp_servers.NAME]`: a third-party MCP server, run under `sandbox.launch`, whose
    tools join the agent's as `NAME__TOOL`. The limits hold for the server's whole
    life, except `timeout_s` and `max_output_chars`, which are per call (a
    `[tools.NAME__TOOL]` table may change those, and approval, for one tool)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    command: list[str] = Field(min_length=1)
    """The server's command line; `python` is the Python running the agent."""
    timeout_s: float = 30.0
    """Per call: past it the server is killed with its whole tree, restarted on the next."""
    startup_timeout_s: float = 30.0
    """For the sandbox, `initialize` and the tool list; past it the server is stopped."""
    memory_mb: int = 512
    cpu_s: int = 3600
    """CPU seconds for the server's whole life (all its processes, where cgroups allow)."""
    max_processes: int = 32
    max_open_files: int = 256
    max_output_chars: int = 20_000
    network: bool = False
    read_paths: list[str] = Field(default_factory=list)
    """What the server may read besides its own code, relative to the policy file."""
    write_paths: list[str] = Field(default_factory=list)
    """Directories it may write (as root: it runs as their owner), relative to the file."""
    env: dict[str, str | bool] = Field(default_factory=dict)
    """The only variables that reach it besides PATH, the locale and TZ: `NAME = "value"`
    sets one, `NAME = true` passes on the agent's own (a key stays off the policy file)."""
    requires_approval: bool = False
    """Every tool of this server waits for a person's yes (unless its [tools] table says)."""

    def limits(self) -> Limits:
        """The server's `Limits`; raises pydantic's ValidationError for a value out of range."""
        return Limits(
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            cpu_s=self.cpu_s,
            max_processes=self.max_processes,
            max_open_files=self.max_open_files,
            max_output_chars=self.max_output_chars,
            network=self.network,
        )

    def call_table(self) -> ToolPolicy:
        """What its tools inherit, as a tools table between [defaults] and their own."""
        return ToolPolicy(
            timeout_s=self.timeout_s,
            max_output_chars=self.max_output_chars,
            requires_approval=self.requires_approval,
            network=self.network,
        )


DEFAULT_SYSTEM_PROMPT = (
    "You are a careful support agent. Use the tools to look up facts; never guess "
    "order details, dates, amounts or policy terms. For a question about an order, "
    "look up the order, read the policy that applies and get today's date before you "
    "answer; ask for all of them in one turn. When a tool returns an error, read it and "
    "correct your call or explain the problem. Answer briefly in plain words, with the "
    "dates and amounts that decide it, and say how you know."
)


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class RunPolicy(BaseModel):
    """The `[run]` table: the agent loop's guardrails (each also a command-line flag)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    """OpenAI-compatible endpoint; else OPENAI_BASE_URL, else OpenAI's."""
    api: Literal["chat", "responses"] = "chat"
    """How the model is reached (`--api`): Chat Completions, or the Responses API
    (`/v1/responses`) for endpoints that serve it; the guardrails are the same."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_iterations: int = Field(10, ge=1, le=1000)
    """Model calls per run; then the run ends with a step-limit answer."""
    max_cost_usd: float = Field(1.0, gt=0)
    """The run stops before the next model call once this much is spent."""
    max_wall_s: float = Field(300.0, gt=0)
    """Wall-clock budget for the whole run: no tool call starts once it is spent, and a
    call in flight gets at most what is left."""
    max_calls_per_turn: int = Field(16, ge=1, le=1000)
    """Tool calls run from one model turn; the rest are refused with a note."""
    max_result_chars: int = Field(4000, ge=100)
    """Tool results are cut to this before they enter the context (the trace keeps all)."""
    max_repeats: int = Field(1, ge=1, le=100)
    """Identical calls answered with a note before the run stops."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Tokens a model call may write (`max_tokens`); None: the server's own limit. A small
    model can ramble for thousands of tokens; past this the call ends as `length`."""
    call_tools_first: bool = False
    """The first model call after each user message must call a tool (`tool_choice:
    "required"`, which llama.cpp, vLLM and OpenAI honour): a small model otherwise
    answers a question about an order without looking anything up."""
    parallel_tool_calls: bool | None = None
    """Sent with every model call that offers tools (None: not sent, the server's own
    default). false: at most one call per turn, which llama.cpp enforces in its grammar:
    under `tool_choice: "required"` the small model otherwise wrote the same lookup
    over and over until its output limit cut it off."""
    required_as: Literal["tool_choice", "json_schema"] = "tool_choice"
    """How a model call that must call a tool (`call_tools_first`, `[tools] then`) asks
    for one: `tool_choice: "required"`, or `json_schema`, a `response_format` whose
    schema admits one call of an offered tool and nothing else (Chat Completions; a
    server that refuses it gets "required"). llama.cpp lets prose come before a
    required call, and the small model wrote prose until its output limit."""
    tools_sent: Literal["offered", "all"] = "offered"
    """What each model call sends as `tools` when it is offered only some of the run's
    (`after`, `then`): those alone (`offered`), or the same list on every call of a
    run (`all`: the tools `offer` and `offer_when` give the question), with the call's
    own in `tool_choice` (OpenAI's `allowed_tools`), the one-call schema of
    `required_as = "json_schema"`, or `"none"`. Servers render the tools at the
    prompt's start, so a list that changes makes llama.cpp read the whole prompt
    again (40-270 s a call on a loaded CPU); a call of a tool not offered now is
    refused, never run, either way."""
    review_answer: bool = False
    """The model's first answer in a run is sent back once, tools on, with the question
    whether it depends on a fact not looked up or contradicts a tool result: a small
    model answers from one lookup of three, or says "yes" beside "expired"."""
    offer: list[str] | None = None
    """The tools a run offers the model, by name (`--offer`); None: every loaded tool.
    A small model picks better from fewer; a call of a tool not offered is
    `unknown_tool`, never run."""
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    embeddings_model: str | None = None
    """Embeds what memory tools store and search (`@tool(embed=...)`); unset: full text."""
    embeddings_base_url: str | None = None
    """The embeddings endpoint; default: the chat model's."""
    prices: dict[str, Price] = Field(default_factory=dict)
    """Per-model prices; a model without one is counted at zero (and the trace says so)."""

    @field_validator("base_url", "embeddings_base_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        """At load, as `--base-url` is checked: `policy show` passed `localhost:8080`,
        which every `run` then refused."""
        if url is not None and not is_http_url(url):
            raise ValueError(
                f"{url!r} is not an http:// or https:// URL with a host "
                "(for example http://localhost:11434/v1)"
            )
        return url


def is_http_url(url: str) -> bool:
    """An http:// or https:// URL with a host: what an OpenAI-compatible endpoint is."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1": an IPv6 host left open
        return False


class EgressPolicy(BaseModel):
    """The `[egress]` table: how the proxy for network allowlists resolves names."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    resolve: dict[str, str] = Field(default_factory=dict)
    """Static answers, `name = "address"`, trusted as written (tests, split horizon)."""
    allow_private: bool = False
    """Accept DNS answers in private, loopback and link-local ranges (never metadata)."""

    def config(self) -> EgressConfig:
        """Raises pydantic's ValidationError for a name or address that is not one."""
        return EgressConfig(resolve=self.resolve, allow_private=self.allow_private)


class Policy(BaseModel):
    """A whole policy file. Satisfies `sandbox.LimitsPolicy`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    isolation: Literal["best-effort", "strict"] = "best-effort"
    """strict: refuse to run any tool when an isolation layer is unavailable."""
    load_tools: list[str] = Field(default_factory=list)
    """More tools to offer, as `--tools` takes them: module names, or `.py` files
    relative to this file; `["tools.memory"]` for the memory tools."""
    layers: dict[str, bool] = Field(default_factory=dict)
    """`[layers]`: `NAME = false` turns an isolation layer off (see `doctor`)."""
    accept_unwalled_signals: bool = False
    """Run tools even where no layer keeps their signals inside their call (no PID
    namespace, no Landlock signal scope, no uid of their own): only on a machine that
    is itself the wall, since a tool could then kill the orchestrator."""
    defaults: ToolPolicy = Field(default_factory=ToolPolicy)
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)
    mcp_servers: dict[str, McpServerPolicy] = Field(default_factory=dict)
    run: RunPolicy = Field(default_factory=RunPolicy)
    egress: EgressPolicy = Field(default_factory=EgressPolicy)
    _source: str = PrivateAttr("<built-in>")
    _base_dir: Path = PrivateAttr(Path.cwd())
    _files: list[str] = PrivateAttr(default_factory=list)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _cache: dict[str, tuple[Limits, ToolContext]] = PrivateAttr(default_factory=dict)
    _places: dict[str, Place] | None = PrivateAttr(None)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Policy:
        """A copy resolves its tools afresh: a shallow copy would share the cache. New
        tool tables are resolved and checked now, as at load (PolicyError)."""
        copied = super().model_copy(update=update, deep=deep)
        copied._cache = {}
        if update and {"defaults", "tools"} & set(update):
            copied._places = None
            copied.places()
        return copied

    @property
    def source(self) -> str:
        """Where this policy came from: the file on top, or `<built-in policy>`."""
        return self._source

    @property
    def files(self) -> list[str]:
        """The files laid one over the other to make this policy, bottom first."""
        return list(self._files) or [self._source]

    def source_of(self, key: str) -> str | None:
        """The file that set a dotted key (`tools.read_file.root`); None: nobody did."""
        return self._sources.get(key)

    def locate(
        self,
        source: str,
        base_dir: Path,
        *,
        sources: dict[str, str] | None = None,
        files: list[str] | None = None,
    ) -> Policy:
        self._source = source
        self._base_dir = base_dir
        self._sources = dict(sources or {})
        self._files = list(files or [source])
        return self

    @property
    def disabled_layers(self) -> list[str]:
        return sorted(name for name, on in self.layers.items() if not on)

    def pool_options(self) -> dict[str, Any]:
        """What this policy says about isolation, as `sandbox.Pool` keyword arguments."""
        return {
            "isolation": self.isolation,
            "disable": self.disabled_layers,
            "egress": self.egress.config(),
            "accept_unwalled_signals": self.accept_unwalled_signals,
        }

    def effective(self, tool: str) -> ToolPolicy:
        base = self.defaults
        server = self.mcp_server_of(tool)
        if server is not None:
            base = self.mcp_servers[server].call_table().over(base)
        own = self.tools.get(tool)
        return own.over(base) if own else base

    def mcp_server_of(self, tool: str) -> str | None:
        """The `[mcp_servers]` name a `SERVER__TOOL` name belongs to, if any."""
        server, sep, rest = tool.partition(MCP_SEPARATOR)
        return server if sep and rest and server in self.mcp_servers else None

    def limits_for(self, tool: str) -> Limits:
        return self._resolved(tool)[0]

    def context_for(self, tool: str) -> ToolContext:
        return self._resolved(tool)[1]

    def requires_approval(self, tool: str) -> bool:
        return bool(self.effective(tool).requires_approval)

    def idempotent(self, tool: str) -> bool:
        return bool(self.effective(tool).idempotent)

    def after(self, tool: str) -> list[str]:
        """The tools that must have answered in the run before `tool` runs."""
        return list(self.effective(tool).after or [])

    def offer_when(self, tool: str) -> list[str]:
        """What the user's message must mention for `tool` to be offered; [] always."""
        return list(self.effective(tool).offer_when or [])

    def decides(self, tool: str) -> bool:
        """Its answer decides the question: the run is steered to answer after it."""
        return bool(self.effective(tool).decides)

    def then(self, tool: str) -> list[str]:
        """The tools the model is asked to call next once `tool` answered."""
        return list(self.effective(tool).then or [])

    def max_calls(self, tool: str) -> int | None:
        """Times `tool` may run in one run; None: no limit."""
        return self.effective(tool).max_calls

    def ask_when_ready(self, tool: str) -> bool:
        """The model is asked for `tool` once what it runs after has answered."""
        return bool(self.effective(tool).ask_when_ready)

    def first_when(self, tool: str) -> list[str]:
        """What the user's message must mention for `tool` to be the first call's; []:
        never."""
        return list(self.effective(tool).first_when or [])

    def then_when(self, tool: str) -> list[str]:
        """What the user's message must mention for `then` to apply; [] always."""
        return list(self.effective(tool).then_when or [])

    def _resolved(self, tool: str) -> tuple[Limits, ToolContext]:
        cached = self._cache.get(tool)
        if cached is None:
            cached = (build_limits(self.effective(tool)), self._context(tool))
            self._cache[tool] = cached
        return cached

    def _context(self, tool: str) -> ToolContext:
        table = self.effective(tool)
        place = self.places().get(f"tools.{tool}") or self.places()["defaults"]
        return ToolContext(root=place.root, data_dir=place.data_dir, settings=dict(table.settings))

    def places(self) -> dict[str, Place]:
        """`defaults` and each `tools.NAME`: its effective root and data_dir, resolved
        once (at load: the loader asks first) and checked as policies/places.py says.
        Raises PolicyError for a layout it refuses."""
        if self._places is None:
            own = {"defaults": self._place(self.defaults)}
            own.update({f"tools.{name}": self._place(t) for name, t in self.tools.items()})
            # Each key is checked where it is set: a table inheriting one from
            # [defaults] is the same entry as [defaults].
            places.check(own, lambda key: self.source_of(key) or self.source)
            base = own["defaults"]
            self._places = {
                table: Place(place.root or base.root, place.data_dir or base.data_dir)
                for table, place in own.items()
            }
        return self._places

    def _place(self, table: ToolPolicy) -> Place:
        return Place(
            places.resolve(table.root, self._base_dir) if table.root else None,
            places.resolve(table.data_dir, self._base_dir) if table.data_dir else None,
        )

    def root_path(self, table: ToolPolicy) -> Path | None:
        return Path(places.resolve(table.root, self._base_dir)) if table.root else None


def build_limits(table: ToolPolicy) -> Limits:
    """Raises pydantic's ValidationError when a value is out of range."""
    values: dict[str, Any] = {
        k: getattr(table, k) for k in LIMIT_KEYS if getattr(table, k) is not None
    }
    network = tuple(table.network) if isinstance(table.network, list) else bool(table.network)
    return Limits(**values, reuse_worker=bool(table.trusted), network=network)
