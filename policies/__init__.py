"""Policies: what each tool may do, declared in a TOML file.

from policies import load_policy
policy = load_policy("policy.toml")
"""

from .loader import DEFAULT_POLICY as DEFAULT_POLICY
from .loader import check_registry as check_registry
from .loader import check_tools as check_tools
from .loader import load_policy as load_policy
from .loader import parse_policy as parse_policy
from .schema import Policy as Policy
from .schema import Price as Price
from .schema import RunPolicy as RunPolicy
from .schema import ToolPolicy as ToolPolicy

__all__ = [
    "DEFAULT_POLICY",
    "Policy",
    "Price",
    "RunPolicy",
    "ToolPolicy",
    "check_registry",
    "check_tools",
    "load_policy",
    "parse_policy",
]
