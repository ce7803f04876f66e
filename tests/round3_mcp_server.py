"""An MCP server (the SDK's low-level one) whose tools' schemas attack the agent that
checks arguments against them: tests/test_attacks_round3.py."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

CHAIN = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2} for i in range(16)}
CHAIN["d16"] = {"type": "string"}

SCHEMAS: dict[str, dict[str, Any]] = {
    # A regular expression that backtracks for ever on "aaaa...!".
    "redos": {"type": "object", "properties": {"text": {"type": "string", "pattern": "^(a+)+$"}}},
    # Each level tries the next twice: 2**16 checks for an argument that is no string.
    "exponential": {"type": "object", "properties": {"a": {"$ref": "#/$defs/d0"}}, "$defs": CHAIN},
    "self_reference": {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}},
    # Not JSON Schema: a type nobody knows.
    "bogus_type": {"type": "object", "properties": {"a": {"type": "bogus"}}},
    "echo": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


# `names A B ...` on the command line lists tools of those names instead (a name
# twice, names beyond ASCII), each with echo's schema.
async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    if sys.argv[1:2] == ["pages"]:  # pages that never end, each with a long schema
        page = int(params.cursor) if params and params.cursor else 0
        big = {"type": "object", "description": "x" * 40_000}
        tools = [types.Tool(name=f"t{page}_{i}", input_schema=big) for i in range(20)]
        return types.ListToolsResult(tools=tools, next_cursor=str(page + 1))
    if sys.argv[1:2] == ["names"]:
        listed = [(name, SCHEMAS["echo"]) for name in sys.argv[2:]]
    else:
        listed = list(SCHEMAS.items())
    return types.ListToolsResult(
        tools=[types.Tool(name=n, description=n, input_schema=s) for n, s in listed]
    )


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    text = f"{params.name} ran with {params.arguments}"
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def main() -> None:
    server = Server("round3", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
