"""The data-query agent: the Studio's chat box turned into typed plans of safe operations (docs/agent.md).

config (agent_config.yaml), providers (Ollama, OpenRouter), plan (the schema a reply must fit),
prompt and schema (what a model is told), interpreter (no model needed), executor (one path for
both), analysis (read-only aggregates), service (state, health, the RPCs' logic)."""
