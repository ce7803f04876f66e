"""Network by name: a tool's allowlist, enforced by a proxy the orchestrator runs.

- `allowlist`: the `host:port` patterns and the destinations they admit;
- `addresses`: which resolved addresses are refused, and the resolver;
- `wire`: reading a hostile tool's HTTP or SOCKS5 request;
- `proxy`: the proxy itself, one session per call;
- `config`: `[egress]` settings and the record of each connection.

The worker's side (a network namespace of its own, the listener handed out) is
`sandbox._netns`.
"""

from .config import Connection as Connection
from .config import EgressConfig as EgressConfig
from .proxy import Egress as Egress

__all__ = ["Connection", "Egress", "EgressConfig"]
