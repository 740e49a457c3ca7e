"""The data-query agent: which model answers (if any), the Studio's /init, /model and /reset, its
health, and the natural-language path of ApplyDataQuery.

A model is asked on the agent's own worker threads; the RPC thread waits for it holding no lock,
telling the watchdog it is alive, and gives up at the provider's timeout or when the caller leaves.
At most MAX_IN_FLIGHT model calls run at once; more are answered "busy" at once, so a slow model can
never take the gRPC server's threads from the Studio's other calls."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import structlog

from weightslabd.agent import executor, interpreter, plan, prompt, schema
from weightslabd.agent.config import AgentConfig
from weightslabd.agent.providers import OllamaProvider, OpenRouterProvider, Provider, ProviderError
from weightslabd.api import grid
from weightslabd.ops.watchdog import touch
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.run import Run

log = structlog.get_logger("weightslabd.agent")
MAX_IN_FLIGHT = 2
HISTORY = 200  # log-style entries kept (connections, model changes, resets)
HEALTH_TTL = 30.0  # a health probe's answer is reused this long
GRACE = 2.0  # past the provider's own timeout, the RPC stops waiting for it
SET_UP = "see docs/agent.md to set up Ollama or OpenRouter"
INTERPRETER = "built-in interpreter"


class CallerGone(Exception):
    """The RPC was cancelled while a model was asked: nothing more is tried."""
_PROVIDER_NAMES: dict[int, str] = {pb.PROVIDER_OPENROUTER: "openrouter", pb.PROVIDER_OLLAMA: "ollama"}


def _providers(config: AgentConfig, provider: str | None) -> list[Provider]:
    """The providers to try, in order: the chosen one, then Ollama when fallback_to_local asks for it."""
    local = OllamaProvider(config.ollama_url, config.ollama_model, config.ollama_request_timeout)
    if provider == "ollama":
        return [local]
    if provider == "openrouter":
        cloud = OpenRouterProvider(config.openrouter_base_url, config.openrouter_model, config.openrouter_api_key,
                                   config.openrouter_request_timeout)
        return [cloud, local] if config.fallback_to_local and config.ollama_model else [cloud]
    return []


class DataQueryAgent:
    def __init__(self, config: AgentConfig | None = None) -> None:
        self._lock = threading.Lock()  # the agent's own state; never held while a model is asked
        self.config = self._startup = config or AgentConfig()
        self._chain = _providers(self.config, self.config.provider)
        self.history: deque[str] = deque(maxlen=HISTORY)
        self._pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="agent")
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._health: tuple[float, bool, str] | None = None
        self._secrets = {self.config.openrouter_api_key} - {""}
        if self._chain:
            self._record(f"configured from {self.config.source}: {self._describe(self._chain)}")
        if self.config.provider == "openrouter" and not self.config.openrouter_api_key:
            log.warning("agent: provider openrouter has no API key; set OPENROUTER_API_KEY or use /init",
                        source=self.config.source)

    # -- state ----------------------------------------------------------------------------------

    def _record(self, entry: str) -> str:
        """A log-style history entry (time, what changed); never a key."""
        line = f"[{datetime.now(timezone.utc).isoformat(timespec='seconds')}] agent: {self._scrub(entry)}"
        self.history.append(line)
        log.info("agent history", entry=self._scrub(entry))
        return line

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    @staticmethod
    def _describe(chain: list[Provider]) -> str:
        main = f"model {chain[0].model or '(none chosen)'} on {chain[0].where()}"
        return main + (f", falling back to {chain[1].model} on {chain[1].where()}" if len(chain) > 1 else "")

    def chain(self) -> list[Provider]:
        with self._lock:
            return list(self._chain)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the Studio's runtime commands --------------------------------------------------------------

    def initialize(self, provider_type: int, api_key: str, model: str,
                   within: float | None = None) -> tuple[bool, str]:
        """/init: connect to a provider (checked by listing its models); on failure nothing changes."""
        name = _PROVIDER_NAMES.get(provider_type)
        if name is None:
            shown = pb.AgentProviderType.Name(provider_type) if provider_type == pb.PROVIDER_OPENCODE else provider_type
            return False, f"provider {shown} is not supported: use PROVIDER_OPENROUTER or PROVIDER_OLLAMA"
        model = model.strip()
        if len(model) > 200 or not model.isprintable() or " " in model:
            return False, "a model name is printable text without spaces, at most 200 characters"
        key = api_key.strip()
        if key and (len(key) > 500 or not key.isprintable()):
            return False, "that API key is not printable text of at most 500 characters; nothing changed"
        config = self.config
        if name == "openrouter":
            if key:
                config = config.with_key(key, "InitializeAgent")
            config = replace(config, openrouter_model=model or config.openrouter_model)
        else:
            config = replace(config, ollama_model=model or config.ollama_model)
        chain = _providers(config, name)
        try:
            chain[0].models(within)  # proves the address and the key before anything changes
        except ProviderError as exc:
            text = self._scrub(f"not connected, nothing changed: {exc}")
            return False, text.replace(key, "****") if key else text
        with self._lock:
            self.config, self._chain, self._health = config, chain, None
            self._secrets = {self._startup.openrouter_api_key, config.openrouter_api_key} - {""}
        return True, self._record(f"connected: {self._describe(chain)}")

    def change_model(self, model: str, within: float | None = None) -> tuple[bool, str]:
        """/model: switch the active provider's model without connecting again."""
        model = model.strip()
        chain = self.chain()
        if not chain:
            return False, f"no provider is connected: use /init first ({SET_UP})"
        if not model or len(model) > 200 or not model.isprintable() or " " in model:
            return False, "a model name is printable text without spaces, at most 200 characters"
        try:
            known = chain[0].models(within)
        except ProviderError as exc:
            return False, self._scrub(f"model not changed: {exc}")
        if model not in known:
            return False, f"model not changed: {chain[0].where()} has no model {model!r} (/model lists them)"
        old = chain[0].model
        with self._lock:
            if chain[0].name == "openrouter":
                self.config = replace(self.config, openrouter_model=model)
            else:
                self.config = replace(self.config, ollama_model=model)
            self._chain = _providers(self.config, chain[0].name)
            self._health = None
        return True, self._record(f"model changed on {chain[0].where()}: {old or '(none)'} -> {model}")

    def models(self, within: float | None = None) -> tuple[bool, list[str], str]:
        chain = self.chain()
        if not chain:
            return False, [], f"no provider is connected: use /init first ({SET_UP})"
        try:
            names = chain[0].models(within)
        except ProviderError as exc:
            return False, [], self._scrub(str(exc))
        return True, names, f"{len(names)} models on {chain[0].where()}; active: {chain[0].model or '(none)'}"

    def reset(self) -> tuple[bool, str]:
        """/reset: back to uninitialised (the built-in interpreter answers); restart to reload the file."""
        with self._lock:
            had = self._chain
            self._chain, self._health = [], None
            self.config = self._startup  # the file's settings and key, for the next /init
        what = f"disconnected from {self._describe(had)}" if had else "reset (nothing was connected)"
        return True, self._record(f"{what}; the {INTERPRETER} answers until /init")

    def health(self, within: float | None = None) -> tuple[bool, str]:
        """Whether a configured model answers now (probed, cached HEALTH_TTL); with none configured, the
        interpreter is the agent and is always there."""
        chain = self.chain()
        if not chain:
            return True, f"no model configured: the {INTERPRETER} answers common requests ({SET_UP})"
        with self._lock:
            cached = self._health
        if cached is not None and time.monotonic() - cached[0] < HEALTH_TTL:
            return cached[1], cached[2]
        problems = []
        for provider in chain:
            try:
                provider.models(within)
            except ProviderError as exc:
                problems.append(self._scrub(str(exc)))
                continue
            result = (True, f"model {provider.model} on {provider.where()}: reachable"
                      + (f" ({problems[0]})" if problems else ""))
            break
        else:
            result = (False, f"{'; '.join(problems)}; the {INTERPRETER} still answers common requests")
        with self._lock:
            self._health = (time.monotonic(), *result)
        return result

    # -- natural-language queries ---------------------------------------------------------------------

    def answer(self, text: str, run: Run, client: grid.ClientView, editor: executor.Editor, lock_timeout: float,
               is_active: Callable[[], bool] = lambda: True) -> Any:
        """ApplyDataQuery with is_natural_language: plan (a model, else the interpreter), then execute."""
        request = text.strip()
        if len(request) > prompt.MAX_REQUEST_CHARS:
            return grid.counted(run, client, lock_timeout, success=False, message=(
                f"the request is {len(request):,} characters; at most {prompt.MAX_REQUEST_CHARS:,}"))
        table = schema.of_run(run, lock_timeout)
        chain = self.chain()
        failures: list[str] = []
        for provider in chain:
            try:
                reply = self._ask(provider, prompt.messages(request, table), is_active)
            except ProviderError as exc:
                failures.append(self._scrub(str(exc)))
                continue
            except CallerGone:
                return pb.DataQueryResponse(success=False, message="the request was cancelled; nothing was done")
            by = f"model {provider.model} on {provider.name}"
            try:
                step = plan.from_reply(reply)
            except plan.PlanError as exc:
                log.warning("agent plan refused", model=provider.model, provider=provider.name, reason=str(exc))
                return grid.counted(run, client, lock_timeout, success=False, intent=pb.INTENT_UNKNOWN,
                                    message=f"refused the model's plan, nothing was done: {exc} ({by})")
            return executor.execute(step, run, client, editor, lock_timeout, by)
        step = interpreter.interpret(request, table)
        if step is not None:
            by = INTERPRETER + (f"; {failures[-1]}" if failures else "")
            return executor.execute(step, run, client, editor, lock_timeout, by)
        reason = "; ".join(failures) if failures else "no model is configured"
        return grid.counted(run, client, lock_timeout, success=False, intent=pb.INTENT_UNKNOWN, message=(
            f"{reason}, and the {INTERPRETER} does not understand this request (it knows e.g. 'sort by loss "
            f"descending', 'the 50 highest-loss samples', 'discard samples with loss above 3', 'tag label 3 as "
            f"cats', 'how many samples are discarded', 'show only eval', 'reset'); nothing was done; {SET_UP}"))

    def _ask(self, provider: Provider, messages: list[prompt.Message], is_active: Callable[[], bool]) -> str:
        if not self._slots.acquire(blocking=False):
            raise ProviderError(f"the agent is already answering {MAX_IN_FLIGHT} requests; try again in a moment")
        try:
            future: Future[str] = self._pool.submit(provider.chat, messages)
        except RuntimeError:  # the pool is shut down: the daemon is stopping
            self._slots.release()
            raise ProviderError("the daemon is stopping") from None
        future.add_done_callback(lambda _: self._slots.release())  # a call given up on still holds its slot
        timeout = getattr(provider, "timeout", 60.0)
        deadline = time.monotonic() + timeout + GRACE
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                touch()  # waiting on a model is not being stuck
                if not is_active():
                    future.cancel()
                    raise CallerGone() from None
                if time.monotonic() > deadline:
                    raise ProviderError(f"{provider.where()} did not answer within {timeout:g} s") from None
