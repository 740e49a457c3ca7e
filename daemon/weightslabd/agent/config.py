"""agent_config.yaml: where it is found, what it may say, and how it reads back (keys masked).

Lookup order (CONFIGURATION-SPEC, "Agent Configuration"): `$AGENT_CONFIG_PATH/agent_config.yaml`,
the repository, the package, the current working directory; the first file that exists is the one
used. `OPENROUTER_API_KEY` from the environment wins over `agent.openrouter_api_key` in the file.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

FILE_NAME = "agent_config.yaml"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # daemon/weightslabd
REPOSITORY_DIR = PACKAGE_DIR.parents[1]  # the checkout (meaningful for a source or editable install)
DEFAULT_OPENROUTER_MODEL = "meta-llama/llama-3.3-70b-instruct"
DEFAULT_OPENROUTER_URL = "https://openrouter.ai/api/v1"
MAX_FILE_BYTES = 64 * 1024
Provider = Literal["ollama", "openrouter"]
PROVIDERS: tuple[Provider, ...] = ("ollama", "openrouter")


class AgentConfigError(Exception):
    """An agent_config.yaml that cannot be used: one line per problem, each naming the file and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings. `provider` None: no model configured, the built-in interpreter answers."""

    provider: Provider | None = None
    ollama_model: str = ""
    ollama_host: str = "localhost"
    ollama_port: int = 11435
    ollama_request_timeout: float = 60.0  # weightslabd addition: a local model's first answer loads it
    openrouter_model: str = DEFAULT_OPENROUTER_MODEL
    openrouter_base_url: str = DEFAULT_OPENROUTER_URL
    openrouter_request_timeout: float = 15.0
    openrouter_api_key: str = field(default="", repr=False)
    fallback_to_local: bool = False
    source: str = "default"  # the file it came from, or "default"
    key_source: str = ""  # "environment", the file, "InitializeAgent", or "" (no key)
    set_keys: frozenset[str] = frozenset()  # the keys the file set (the others are defaults)

    @property
    def ollama_url(self) -> str:
        host = f"[{self.ollama_host}]" if ":" in self.ollama_host else self.ollama_host
        return f"http://{host}:{self.ollama_port}"

    def with_key(self, key: str, source: str) -> AgentConfig:
        return replace(self, openrouter_api_key=key, key_source=source if key else "")

    def rows(self) -> list[tuple[str, str, str]]:
        """(key, value, source) for `weightslabd config`; the key is masked."""
        key = f"**** ({len(self.openrouter_api_key)} chars)" if self.openrouter_api_key else "(unset)"
        shown: list[tuple[str, str, str]] = []
        for name in ("provider", "ollama_model", "ollama_host", "ollama_port", "ollama_request_timeout",
                     "openrouter_model", "openrouter_base_url", "openrouter_request_timeout", "fallback_to_local"):
            value = _text(getattr(self, name) or ("(none: built-in interpreter)" if name == "provider" else ""))
            shown.append((f"agent.{name}", value, self.source if name in self.set_keys else "default"))
        shown.append(("agent.openrouter_api_key", key, self.key_source or "-"))
        return shown


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else "(unset)"


def candidates(config_dir: Path | None, cwd: Path | None = None) -> list[Path]:
    """The places agent_config.yaml is looked for, in order."""
    places = [config_dir / FILE_NAME] if config_dir is not None else []
    places += [REPOSITORY_DIR / FILE_NAME, PACKAGE_DIR / FILE_NAME, (cwd or Path.cwd()) / FILE_NAME]
    return list(dict.fromkeys(places))


def find(config_dir: Path | None, cwd: Path | None = None) -> Path | None:
    return next((p for p in candidates(config_dir, cwd) if p.is_file()), None)


def load(config_dir: Path | None, env_key: str = "", cwd: Path | None = None) -> AgentConfig:
    """The agent's configuration; AgentConfigError (every problem, one line each) when the file is bad."""
    path = find(config_dir, cwd)
    config = AgentConfig() if path is None else parse_file(path)
    if env_key:
        return config.with_key(env_key, "environment (OPENROUTER_API_KEY)")
    return config


def parse_file(path: Path) -> AgentConfig:
    where = str(path)
    try:
        raw = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise AgentConfigError([f"{where}: cannot read it: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise AgentConfigError([f"{where}: larger than {MAX_FILE_BYTES // 1024} KiB; an agent config is a few lines"])
    try:
        data = yaml.safe_load(raw.decode("utf-8", "replace"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise AgentConfigError([f"{where}: not valid YAML{at}: {problem}"]) from None
    return parse_mapping(data, where)


def parse_mapping(data: Any, where: str) -> AgentConfig:
    if data is None:
        return AgentConfig(source=where)
    if not isinstance(data, dict) or set(data) - {"agent"}:
        extra = sorted(str(k) for k in data) if isinstance(data, dict) else []
        return _fail(f"{where}: expected one top-level key 'agent' (a mapping)"
                     + (f", found {', '.join(repr(k) for k in extra if k != 'agent')}" if extra else ""))
    agent = data.get("agent")
    if agent is None:
        return AgentConfig(source=where)
    if not isinstance(agent, dict):
        return _fail(f"{where}: 'agent' must be a mapping of keys (agent.provider, agent.ollama_model, …)")
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in agent.items():
        reader = _READERS.get(str(key))
        if reader is None:
            close = difflib.get_close_matches(str(key), list(_READERS), n=1)
            hint = f"; did you mean 'agent.{close[0]}'?" if close else ""
            problems.append(f"{where}: unknown key 'agent.{key}'{hint}")
            continue
        accepts, parse = reader
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            shown = "(secret)" if key == "openrouter_api_key" else repr(value)[:60]
            problems.append(f"{where}: agent.{key} = {shown}: expected {accepts}")
            continue
        if parsed is not None:
            values[str(key)] = parsed
    needs_local = values.get("provider") == "ollama" or values.get("fallback_to_local")
    if needs_local and not values.get("ollama_model") and not any("ollama_model" in p for p in problems):
        why = "agent.provider is ollama" if values.get("provider") == "ollama" else "agent.fallback_to_local is true"
        problems.append(f"{where}: {why} but agent.ollama_model is not set (e.g. llama3.2:3b)")
    if problems:
        raise AgentConfigError(problems)
    config = AgentConfig(source=where, set_keys=frozenset(values), **values)
    if config.openrouter_api_key:
        config = replace(config, key_source=where)
    return config


def _fail(line: str) -> AgentConfig:
    raise AgentConfigError([line])


def _provider(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in PROVIDERS:
        return value.strip().lower()
    raise ValueError(value)


def _name(value: Any) -> str:
    if value is None:
        return ""
    text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    if text is None or len(text) > 200 or not text.isprintable() or " " in text:
        raise ValueError(value)
    return text


def _host(value: Any) -> str:
    text = _name(value)
    if not text:
        raise ValueError(value)
    return text.strip("[]")


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not 1 <= int(value) <= 65535:
        raise ValueError(value)
    return int(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= 3600:
        raise ValueError(value)
    return seconds


def _url(value: Any) -> str:
    text = _name(value)
    if not text.startswith(("http://", "https://")) or len(text) < 10:
        raise ValueError(value)
    return text.rstrip("/")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError(value)


def _secret(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.isprintable() or len(value) > 500:
        raise ValueError("secret")
    return value.strip()


_READERS: dict[str, tuple[str, Any]] = {
    "provider": ("'ollama' or 'openrouter'", _provider),
    "ollama_model": ("a model name without spaces, e.g. llama3.2:3b", _name),
    "ollama_host": ("a host name or IP address", _host),
    "ollama_port": ("a port 1..65535", _port),
    "ollama_request_timeout": ("seconds, a number > 0 and <= 3600", _seconds),
    "openrouter_model": ("a model name without spaces, e.g. meta-llama/llama-3.3-70b-instruct", _name),
    "openrouter_base_url": ("an http:// or https:// URL", _url),
    "openrouter_request_timeout": ("seconds, a number > 0 and <= 3600", _seconds),
    "openrouter_api_key": ("printable text (prefer the OPENROUTER_API_KEY variable)", _secret),
    "fallback_to_local": ("true or false", _flag),
}
KEYS = tuple(_READERS)


def render(config_dir: Path | None, env_key: str = "", cwd: Path | None = None) -> tuple[bool, str]:
    """The agent's settings for `weightslabd config`: (valid, text), each key with the file it came from."""
    tried = ", ".join(str(p) for p in candidates(config_dir, cwd))
    try:
        config = load(config_dir, env_key, cwd)
    except AgentConfigError as exc:
        return False, "agent configuration: INVALID (the daemon will not start)\n" + "\n".join(
            f"  {line}" for line in exc.problems) + "\n"
    rows = [("AGENT KEY", "VALUE", "SOURCE"), *config.rows()]
    width_key = max(len(r[0]) for r in rows)
    width_value = max(len(r[1]) for r in rows)
    lines = [f"{k:<{width_key}}  {v:<{width_value}}  {s}".rstrip() for k, v, s in rows]
    found = f"from {config.source}" if config.source != "default" else "no agent_config.yaml found"
    return True, f"agent configuration ({found}; looked in order: {tried}):\n" + "\n".join(lines) + "\n"
