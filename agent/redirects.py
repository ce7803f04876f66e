"""Redirects of a model request are followed within the endpoint's origin only.

The openai client follows every redirect, and a 307 or 308 sends the request body
again: an endpoint could have the whole conversation, every tool result in it, posted
to another host (or from https to http). A response hook (the HTTP library's own
`event_hooks`, called for each hop) leaves a redirect to the same scheme, host and
port alone (a trailing slash added, say) and turns any other into the plain status it
is: the client then raises it, and `agent.model` names where it pointed.
"""

from __future__ import annotations

from typing import Any

REFUSED = "sandboxed_agent.refused_redirect"
"""The response extension that holds the location of a redirect not followed."""


def same_origin_redirects(response: Any) -> None:
    """A response hook: a redirect elsewhere is not followed."""
    location = response.headers.get("location")
    if location is None or not response.is_redirect:
        return
    here = response.request.url
    try:
        target = here.join(location)
    except Exception:  # the library's InvalidURL, or worse: not a place to go
        target = None
    if target is not None and _origin(target) == _origin(here):
        return
    response.extensions[REFUSED] = str(target) if target is not None else location
    del response.headers["location"]  # no longer a redirect the client follows


def _origin(url: Any) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port
