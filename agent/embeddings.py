"""Embeddings for the tools that ask for them (`@tool(embed="fact")`), computed by the
orchestrator so that neither the API key nor the network reaches a worker.

Any OpenAI-compatible `/embeddings` endpoint works (OpenAI, Ollama, vLLM). A failure or
a malformed answer gives no vector, and the tool falls back to full-text search.
"""

from __future__ import annotations

import math
import time

from .http_deadline import until
from .model import openai_client
from .scrubbing import remember_secret, scrub

MAX_DIMENSIONS = 16_384
MAX_BODY_BYTES = 4 << 20
"""Most of an answer read: 16,384 dimensions written out are well under 1 MiB."""
MAX_CHARS = 32_000
"""Longer texts are not sent: no memory tool keeps a fact that long, and a model's
arguments should not decide how much is uploaded."""


class Embedder:
    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        self.model = model
        self.base_url = base_url
        remember_secret(api_key)
        self.timeout_s = timeout_s
        self._client = openai_client(base_url, api_key, timeout_s, max_retries, MAX_BODY_BYTES)
        self.last_error: str | None = None

    def embed(self, text: str, within_s: float | None = None) -> list[float] | None:
        """The text's vector, or None (the reason kept in `last_error`), within the
        request timeout and `within_s` (what is left of the run's budget), retries
        included: an endpoint dripping its headers held the run forever."""
        if len(text) > MAX_CHARS:
            self.last_error = f"not embedded: {len(text)} characters (at most {MAX_CHARS})"
            return None
        import openai  # loaded by openai_client already; imported late, as in model.py

        within = self.timeout_s if within_s is None else min(self.timeout_s, within_s)
        try:
            with until(time.monotonic() + within):
                response = self._client.embeddings.create(
                    model=self.model, input=text, encoding_format="float"
                )
            vector = [float(x) for x in response.data[0].embedding]
        except (openai.APIError, IndexError, TypeError, ValueError, AttributeError) as exc:
            self.last_error = scrub(f"{type(exc).__name__}: {str(exc)[:200]}")
            return None
        if not vector or len(vector) > MAX_DIMENSIONS or not all(map(math.isfinite, vector)):
            self.last_error = f"the endpoint returned an unusable vector ({len(vector)} values)"
            return None
        return vector
