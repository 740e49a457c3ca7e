"""The model providers, through their own client libraries: `ollama` (Ollama's HTTP API) and `openai`
(OpenRouter's OpenAI-compatible API). Each call is bounded in time and in reply size, and every
failure becomes a ProviderError whose text is one line for the chat, with no key in it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_REPLY_CHARS = 16_000  # a plan is a few hundred characters; more is a model gone astray
MAX_TOKENS = 1024
MAX_MODELS = 2000  # models a listing returns to the Studio
Message = dict[str, str]


class ProviderError(Exception):
    """A provider that did not give a usable answer; str() is one readable line."""


class Provider(Protocol):
    name: str
    model: str

    def where(self) -> str: ...

    def chat(self, messages: Sequence[Message], *, stream: bool = True) -> str: ...

    def models(self, within: float | None = None) -> list[str]: ...


def _one_line(text: str, secret: str = "", limit: int = 240) -> str:
    line = " ".join(str(text).split())
    if secret:
        line = line.replace(secret, "****")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _collect(pieces: Iterable[str], deadline: float, timeout: float, what: str) -> str:
    """Joins a stream's pieces, stopping at MAX_REPLY_CHARS or past the deadline."""
    out: list[str] = []
    size = 0
    for piece in pieces:
        size += len(piece)
        out.append(piece)
        if size > MAX_REPLY_CHARS:
            raise ProviderError(f"{what}'s reply passed {MAX_REPLY_CHARS:,} characters; a plan is far shorter")
        if time.monotonic() > deadline:
            raise ProviderError(f"{what} did not finish its reply within {timeout:g} s")
    return "".join(out)


def _listing_timeout(timeout: float, within: float | None) -> float:
    """A model listing waits at most 10 s, the provider's timeout, and what is left of the caller's deadline."""
    return max(0.05, min(timeout, 10.0, within - 0.25 if within is not None else 10.0))


def _bounded(text: str | None, what: str) -> str:
    if text is None:
        raise ProviderError(f"{what} returned an empty reply")
    if len(text) > MAX_REPLY_CHARS:
        raise ProviderError(f"{what}'s reply passed {MAX_REPLY_CHARS:,} characters; a plan is far shorter")
    return text


@dataclass
class OllamaProvider:
    """A local Ollama server: POST /api/chat (NDJSON when streaming), GET /api/tags."""

    url: str
    model: str
    timeout: float
    name: str = "ollama"

    def where(self) -> str:
        return f"Ollama at {self.url}"

    def _client(self, timeout: float | None = None) -> Any:
        import ollama

        return ollama.Client(host=self.url, timeout=timeout or self.timeout, trust_env=False)

    def chat(self, messages: Sequence[Message], *, stream: bool = True) -> str:
        if not self.model:
            raise ProviderError("no Ollama model chosen: set agent.ollama_model or use /model")
        deadline = time.monotonic() + self.timeout
        try:
            client = self._client()
            options = {"num_predict": MAX_TOKENS, "temperature": 0}
            if stream:
                parts = client.chat(model=self.model, messages=list(messages), format="json", options=options,
                                    stream=True)
                return _collect((p.message.content or "" for p in parts), deadline, self.timeout, self.where())
            reply = client.chat(model=self.model, messages=list(messages), format="json", options=options)
            return _bounded(reply.message.content, self.where())
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(self._explain(exc)) from None

    def models(self, within: float | None = None) -> list[str]:
        try:
            listing = self._client(_listing_timeout(self.timeout, within)).list()
            return sorted(str(m.model) for m in listing.models if m.model)[:MAX_MODELS]
        except Exception as exc:
            raise ProviderError(self._explain(exc)) from None

    def _explain(self, exc: Exception) -> str:
        import httpx
        import ollama

        if isinstance(exc, httpx.TimeoutException):
            return f"{self.where()} did not answer within {self.timeout:g} s"
        if isinstance(exc, ollama.ResponseError):
            return _one_line(f"{self.where()} refused the request (HTTP {exc.status_code}): {exc.error}")
        if isinstance(exc, (ConnectionError, httpx.TransportError)):
            return f"cannot reach {self.where()}: is `ollama serve` running there?"
        return _one_line(f"{self.where()} gave an unusable answer: {type(exc).__name__}: {exc}")


@dataclass
class OpenRouterProvider:
    """OpenRouter (or any OpenAI-compatible server): POST /chat/completions (SSE when streaming), GET /models."""

    base_url: str
    model: str
    api_key: str
    timeout: float
    name: str = "openrouter"

    def __repr__(self) -> str:  # the key must never reach a log line through a repr
        return f"OpenRouterProvider(base_url={self.base_url!r}, model={self.model!r})"

    def where(self) -> str:
        return f"OpenRouter at {self.base_url}"

    def _client(self, timeout: float | None = None) -> Any:
        import openai

        if not self.api_key:
            raise ProviderError("no OpenRouter API key: set OPENROUTER_API_KEY or enter one with /init")
        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=timeout or self.timeout,
                             max_retries=0, default_headers={"X-Title": "weightslabd"})

    def chat(self, messages: Sequence[Message], *, stream: bool = True) -> str:
        if not self.model:
            raise ProviderError("no OpenRouter model chosen: use /model")
        deadline = time.monotonic() + self.timeout
        try:
            client = self._client()
            if stream:
                chunks = client.chat.completions.create(model=self.model, messages=list(messages), stream=True,
                                                        max_tokens=MAX_TOKENS, temperature=0)
                try:
                    return _collect((c.choices[0].delta.content or "" for c in chunks if c.choices), deadline,
                                    self.timeout, self.where())
                finally:
                    chunks.close()
            reply = client.chat.completions.create(model=self.model, messages=list(messages),
                                                   max_tokens=MAX_TOKENS, temperature=0)
            if not reply.choices:
                raise ProviderError(f"{self.where()} returned no choices")
            return _bounded(reply.choices[0].message.content, self.where())
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(self._explain(exc)) from None

    def models(self, within: float | None = None) -> list[str]:
        try:
            client = self._client(_listing_timeout(self.timeout, within))
            return sorted(str(m.id) for m in client.models.list())[:MAX_MODELS]
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(self._explain(exc)) from None

    def _explain(self, exc: Exception) -> str:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return f"{self.where()} did not answer within {self.timeout:g} s"
        if isinstance(exc, openai.AuthenticationError):
            return f"{self.where()} refused the API key (HTTP 401): check OPENROUTER_API_KEY or /init"
        if isinstance(exc, openai.APIStatusError):
            return _one_line(f"{self.where()} refused the request (HTTP {exc.status_code}): {exc.message}",
                             self.api_key)
        if isinstance(exc, openai.APIConnectionError):
            return f"cannot reach {self.where()}"
        return _one_line(f"{self.where()} gave an unusable answer: {type(exc).__name__}: {exc}", self.api_key)
