"""`@tool` and the registry: a name → the function, its argument model and its schema.

    from tools import tool

    @tool
    def get_weather(city: str) -> str:
        '''Current weather for a city.

        Args:
            city: City name, for example "Paris".
        '''

The registry validates arguments (it raises `ArgumentError` with one line per
problem) and finds tools (it raises `LookupError`); the sandbox turns both into the
model-facing error kinds.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ValidationError

from .arguments import ArgumentError, parse_object
from .schema import ToolDefinitionError, build_model, is_strict, parse_docstring, strict_schema

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
BUILTIN_MODULES = ("tools.calculator", "tools.files", "tools.support")
ON_REQUEST_MODULES = ("tools.memory", "tools.python")
"""Built-in tools a run offers only when asked for (`--tools tools.memory`, or a
policy's `load_tools`): a model offered `forget` on a task about orders may use it,
and `run_python` runs whatever code a model writes."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    func: Callable[..., Any]
    model: type[BaseModel]
    parameters: dict[str, Any]
    """Strict JSON schema of the arguments."""
    defaults: frozenset[str]
    json_native: bool
    """Every parameter arrives from JSON as the function wants it; skip re-validation."""
    embed: str | None = None
    """A text argument the orchestrator embeds (where an embeddings endpoint is set)
    and hands to the tool as `context.embedding()`: the key stays with it."""
    fresh: bool = False
    """Every call gets a fresh worker, whatever the policy's `trusted` says: the tool
    runs code it did not write (`run_python`), so no worker of it may serve again."""
    strict: bool = True
    """Sent with `"strict": true`: false when a parameter's type has no schema strict
    mode takes (`Any`, `dict[str, X]`: `tools.schema.is_strict`)."""
    _check: Callable[..., Any] = field(init=False, repr=False, compare=False)
    _dump: Callable[..., Any] = field(init=False, repr=False, compare=False)

    @property
    def openai_schema(self) -> dict[str, Any]:
        """The `tools=[...]` entry for the Chat Completions API."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
                "strict": self.strict,
            },
        }

    def __post_init__(self) -> None:
        # The model's own validator and serializer, taken once: `model_validate` and
        # `model_dump` around them cost four times what they do.
        object.__setattr__(self, "_check", self.model.__pydantic_validator__.validate_python)
        object.__setattr__(self, "_dump", self.model.__pydantic_serializer__.to_python)

    def validate(self, arguments: Mapping[str, Any] | str | bytes | None) -> dict[str, Any]:
        """Model's arguments (a JSON string or a mapping) → JSON-ready validated values.
        The text is read strictly (`tools.arguments`): a repeated key is an error."""
        args = parse_object(arguments)
        # Strict mode makes the model send every key; a null stands for the default.
        for name in self.defaults:
            if name in args and args[name] is None:
                del args[name]
        try:
            # = self.model.model_validate(args).model_dump(mode="json")
            return self._dump(self._check(args), mode="json")
        except ValidationError as exc:
            raise ArgumentError(_describe(exc, self)) from None

    def bind(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Validated JSON values → the keyword arguments to call the function with."""
        if self.json_native:
            return payload
        model = self.model.model_validate(payload)
        return {name: getattr(model, name) for name in type(model).model_fields}


def _describe(exc: ValidationError, spec: ToolSpec) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            expected = ", ".join(spec.model.model_fields) or "none"
            problems.append(f"{where}: unexpected argument (accepted: {expected})")
            continue
        got = ""
        if err["type"] != "missing":
            got = f" (got {_short(err.get('input'))})"
        problems.append(f"{where}: {err['msg']}{got}")
    return f"invalid arguments for {spec.name}: " + "; ".join(problems)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Registry:
    """Tools by name. `Registry.default()` holds the built-ins a run offers unasked (not
    the memory tools: `registry.load("tools.memory")`)."""

    def __init__(self) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self.sources: list[str] = []
        """What was loaded into this registry, so a worker can load the same."""

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> ToolSpec:
        try:
            return self._specs[name]
        except (KeyError, TypeError):
            raise LookupError(name) from None

    def add(self, func: Callable[..., Any], name: str | None = None) -> ToolSpec:
        tool_name = name or func.__name__
        if not _NAME.fullmatch(tool_name):  # not match: `$` takes a last "\n"
            raise ToolDefinitionError(
                f"tool name {tool_name!r} is not allowed: use 1-64 letters, digits, _ or -"
            )
        existing = self._specs.get(tool_name)
        if existing is not None and existing.func is not func:
            if _same_definition(existing.func, func):
                return existing  # the same module imported twice (file path and name)
            raise ToolDefinitionError(
                f"tool {tool_name!r} is defined twice: in {_where(existing.func)} "
                f"and in {_where(func)}"
            )
        description, _ = parse_docstring(func.__doc__)
        model, defaults, native = build_model(func, tool_name)
        embed = getattr(func, "__tool_embed__", None)
        if embed is not None and model.model_fields.get(embed, None) is None:
            raise ToolDefinitionError(f"tool {tool_name!r}: embed={embed!r} names no parameter")
        if embed is not None and model.model_fields[embed].annotation is not str:
            raise ToolDefinitionError(
                f"tool {tool_name!r}: embed={embed!r} must be a str parameter"
            )
        parameters = strict_schema(model, defaults)
        spec = ToolSpec(
            name=tool_name,
            description=description or tool_name,
            func=func,
            model=model,
            parameters=parameters,
            defaults=frozenset(defaults),
            json_native=native,
            embed=embed,
            fresh=bool(getattr(func, "__tool_fresh__", False)),
            strict=is_strict(parameters),
        )
        self._specs[tool_name] = spec
        return spec

    def add_spec(self, spec: ToolSpec) -> None:
        """A spec made elsewhere (a tool that runs outside the workers: an MCP server's)."""
        if spec.name in self._specs and self._specs[spec.name] is not spec:
            raise ToolDefinitionError(f"tool {spec.name!r} is defined twice")
        self._specs[spec.name] = spec

    def merge(self, other: Registry) -> None:
        for spec in other:
            self.add(spec.func, spec.name)
        self.sources.extend(s for s in other.sources if s not in self.sources)

    def load(self, source: str) -> list[str]:
        """Import a module name or a .py file path; its `@tool`s join this registry.

        Returns the names it added. Raises `ImportError` with a readable message.
        """
        before = set(self._specs)
        for func, name in _by_module.get(_import_source(source), []):
            self.add(func, name)
        if source.endswith(".py") or Path(source).exists():
            source = str(Path(source).resolve())  # workers may not share our cwd
        if source not in self.sources:
            self.sources.append(source)
        return sorted(set(self._specs) - before)

    @classmethod
    def default(cls) -> Registry:
        registry = cls()
        for module in BUILTIN_MODULES:
            registry.load(module)
        return registry


def defines_tools(source: str) -> bool:
    """Whether the module or .py file (imported already, or now) defines any `@tool`."""
    return bool(_by_module.get(_import_source(source)))


def _same_definition(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )


def _where(func: Callable[..., Any]) -> str:
    code = getattr(func, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else repr(func)


# Each module's @tools, in definition order; a module imported earlier (by another
# registry, or by the user) still contributes to a registry that loads it later.
_by_module: dict[str, list[tuple[Callable[..., Any], str]]] = {}


def _import_source(source: str) -> str:
    """Import a module name or a .py file; return the module's name."""
    path = Path(source)
    if source.endswith(".py") or path.exists():
        if path.is_dir():
            raise ImportError(f"{source} is a directory; give a .py file in it, or a module name")
        if not path.is_file():
            raise ImportError(f"tools file not found: {source}")
        module_name = "sandboxed_tools_" + re.sub(r"\W", "_", str(path.resolve()))
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import tools from {source}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(source)
        except ModuleNotFoundError as exc:
            if exc.name and source.startswith(exc.name):
                raise ImportError(
                    f"no tools module or file named {source!r} "
                    "(give a module name on the Python path or a path to a .py file)"
                ) from None
            raise
        module_name = module.__name__
    return module_name


@overload
def tool(func: F, /) -> F: ...
@overload
def tool(
    *, name: str | None = None, embed: str | None = None, fresh: bool = False
) -> Callable[[F], F]: ...


def tool(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    embed: str | None = None,
    fresh: bool = False,
) -> F | Callable[[F], F]:
    """Register a function as a tool; the function itself is returned unchanged.

    `embed="fact"`: when an embeddings endpoint is configured, the agent embeds that
    argument before the call and the tool reads the vector with `context.embedding()`.
    `fresh=True`: never a reused worker, even where the policy says `trusted`.
    """

    def register(f: F) -> F:
        tool_name = name or f.__name__
        if embed is not None:
            f.__tool_embed__ = embed  # type: ignore[attr-defined]
        if fresh:
            f.__tool_fresh__ = True  # type: ignore[attr-defined]
        # Check the definition now, so a bad tool fails at import, not at first call.
        Registry().add(f, tool_name)
        _by_module.setdefault(f.__module__, []).append((f, tool_name))
        return f

    return register(func) if func is not None else register
