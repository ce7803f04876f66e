"""Our sandbox under other agent frameworks: their tools, run in our pool.

Each adapter is one small module, imported only when used, over `_bridge`:

- `oai_agents.function_tools(pool)`: OpenAI Agents SDK `FunctionTool`s (`.[openai-agents]`)
- `pydantic_toolset.SandboxToolset(pool)`: a pydantic-ai toolset (`.[pydantic-ai]`)
- `smolagents_tools.sandboxed_tools(pool)`: smolagents `Tool`s, and
  `smolagents_tools.SandboxExecutor(pool)`: a `CodeAgent`'s code in `run_python` (`.[smolagents]`)
- `langchain_tools.sandboxed_tools(pool)`: LangChain `StructuredTool`s, for LangGraph's
  `ToolNode` and `create_react_agent` (`.[langchain]`)
- `mcp_sources.McpSources(policy)`: third-party MCP servers under `sandbox.launch`, their
  tools as `SERVER__TOOL` (`.[mcp]`)

And the other way round, our tools offered to any MCP client (`.[mcp]`):

- `mcp_command`: `sandboxed-agent mcp serve`, its flags checked before anything starts
- `mcp_serve.build_server(service)`: the registry's tools as a low-level MCP `Server`
- `mcp_transport`: stdio and Streamable HTTP (bearer token), stopped on EOF, SIGINT, SIGTERM

And across machines, on Temporal (`.[temporal]`):

- `temporal_worker`: `sandboxed-agent worker --temporal HOST:PORT`, its flags and its run
- `temporal_activities.SandboxActivities`: one tool call in the pool, one model call
- `temporal_contracts`: the activity names, payloads and options workflow and workers share

This package imports nothing at import time, so no framework is needed to import it.
"""
