"""The agent's providers against real local HTTP servers speaking Ollama's and OpenRouter's wire formats:
streaming and not, listings, refusals, replies too large and replies slower than the timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from weightslabd.agent.config import AgentConfig
from weightslabd.agent.providers import MAX_REPLY_CHARS, OllamaProvider, OpenRouterProvider, ProviderError
from weightslabd.agent.service import DataQueryAgent

from .llm_servers import KEY, OLLAMA_MODELS, OPENROUTER_MODELS, ModelServer

PLAN = '{"action": "filter", "query": "loss > 3 sortby loss desc", "limit": 5}'
ASK = [{"role": "system", "content": "plans only"}, {"role": "user", "content": "worst five"}]


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as s:
        s.reply = PLAN
        yield s


def ollama(server: ModelServer, timeout: float = 5.0) -> OllamaProvider:
    return OllamaProvider(f"http://127.0.0.1:{server.port}", "llama3.2:3b", timeout)


def openrouter(server: ModelServer, timeout: float = 5.0, key: str = KEY) -> OpenRouterProvider:
    return OpenRouterProvider(server.openai_url, "openai/gpt-4o-mini", key, timeout)


@pytest.mark.parametrize("stream", [True, False])
def test_both_apis_answer_streaming_and_not(server: ModelServer, stream: bool) -> None:
    assert ollama(server).chat(ASK, stream=stream) == PLAN
    sent = server.requests[-1]
    assert sent["path"] == "/api/chat" and sent["body"]["stream"] is stream and sent["body"]["format"] == "json"
    assert sent["body"]["messages"] == ASK and sent["body"]["model"] == "llama3.2:3b"
    assert openrouter(server).chat(ASK, stream=stream) == PLAN
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and bool(sent["body"].get("stream")) is stream
    assert sent["auth"] == f"Bearer {KEY}" and sent["body"]["max_tokens"] > 0


def test_listings_name_the_models(server: ModelServer) -> None:
    assert ollama(server).models() == sorted(OLLAMA_MODELS)
    assert openrouter(server).models() == sorted(OPENROUTER_MODELS)


@pytest.mark.parametrize("stream", [True, False])
def test_a_huge_reply_is_refused(server: ModelServer, stream: bool) -> None:
    server.reply = "{" + "x" * (MAX_REPLY_CHARS * 4) + "}"
    for provider in (ollama(server), openrouter(server)):
        with pytest.raises(ProviderError, match="passed 16,000 characters"):
            provider.chat(ASK, stream=stream)


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_slower_than_the_timeout_is_given_up(server: ModelServer, stream: bool) -> None:
    server.hold = True
    for provider in (ollama(server, 0.4), openrouter(server, 0.4)):
        started = time.monotonic()
        with pytest.raises(ProviderError, match=r"did not answer within 0.4 s"):
            provider.chat(ASK, stream=stream)
        assert time.monotonic() - started < 3


def test_refusals_are_one_readable_line_without_the_key(server: ModelServer) -> None:
    with pytest.raises(ProviderError) as wrong_key:
        openrouter(server, key="sk-or-wrong-key-42").chat(ASK)
    assert "refused the API key (HTTP 401)" in str(wrong_key.value) and "sk-or-wrong" not in str(wrong_key.value)
    with pytest.raises(ProviderError, match="no OpenRouter API key"):
        openrouter(server, key="").chat(ASK)
    server.status = 404
    with pytest.raises(ProviderError, match=r"refused the request \(HTTP 404\).*not found"):
        ollama(server).chat(ASK)
    with pytest.raises(ProviderError, match=r"HTTP 404"):
        openrouter(server).chat(ASK)
    closed = ModelServer()  # bound, never served: nothing answers there
    closed.httpd.server_close()
    for provider in (ollama(closed), openrouter(closed)):
        with pytest.raises(ProviderError, match="cannot reach") as unreachable:
            provider.chat(ASK)
        assert "\n" not in str(unreachable.value)


def test_health_tells_a_reachable_model_from_an_unreachable_one(server: ModelServer) -> None:
    up = DataQueryAgent(AgentConfig(provider="ollama", ollama_model="llama3.2:3b", ollama_host="127.0.0.1",
                                    ollama_port=server.port, ollama_request_timeout=2))
    assert up.health() == (True, f"model llama3.2:3b on Ollama at http://127.0.0.1:{server.port}: reachable")
    closed = ModelServer()
    closed.httpd.server_close()
    down = DataQueryAgent(AgentConfig(provider="openrouter", openrouter_base_url=closed.openai_url,
                                      openrouter_api_key=KEY, openrouter_request_timeout=2))
    available, message = down.health()
    assert not available and "cannot reach OpenRouter" in message and "built-in interpreter" in message
    assert KEY not in message
    none = DataQueryAgent()
    assert none.health()[0] and "no model configured" in none.health()[1]
