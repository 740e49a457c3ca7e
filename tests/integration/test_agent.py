"""The data-query agent in a real daemon, with a real trainer's run, talking to real local HTTP servers that
speak OpenRouter's and Ollama's APIs (llm_servers.py): /init, /model, /reset, health, good plans, plans
with code or SQL, out-of-schema JSON, huge and slow replies — and the built-in interpreter, also over
gRPC-Web as the Studio calls it. Every bad case is refused with one line, changes nothing, and the
daemon serves on."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.framedlog import read_frames

from .harness import Daemon, Trainer, base_env, history, run_folder, wait_for
from .llm_servers import KEY, ModelServer
from .test_grpcweb import post, web_port

pytestmark = pytest.mark.timeout(120)
ME = (("x-client-id", "agent-test"),)
TIMEOUT = 1.5  # agent.openrouter_request_timeout and ollama_request_timeout of the test's config


class Live:
    def __init__(self, tmp: Path, daemon: Daemon, cloud: ModelServer, local: ModelServer) -> None:
        self.tmp, self.daemon, self.cloud, self.local = tmp, daemon, cloud, local
        self.channel = grpc.insecure_channel(daemon.address)
        self.stub = pb_grpc.ExperimentServiceStub(self.channel)

    def ask(self, text: str) -> Any:
        return self.stub.ApplyDataQuery(pb.DataQueryRequest(query=text, is_natural_language=True), metadata=ME,
                                        timeout=30)

    def query(self, text: str) -> Any:
        return self.stub.ApplyDataQuery(pb.DataQueryRequest(query=text), metadata=ME, timeout=10)

    def count(self, text: str) -> int:
        return int(self.query(text).number_of_all_samples)

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for _, frame in read_frames(run_folder(self.tmp) / "edits.journal")]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (run_folder(self.tmp) / "audit.jsonl").read_text().splitlines()]

    def init(self, provider: int = pb.PROVIDER_OPENROUTER, key: str = KEY, model: str = "") -> Any:
        return self.stub.InitializeAgent(pb.InitializeAgentRequest(provider=provider, api_key=key, model=model),
                                         timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("agent")
    with ModelServer() as cloud, ModelServer() as local:
        config = tmp / "agent-config"
        config.mkdir()
        (config / "agent_config.yaml").write_text(
            "agent:\n  provider: openrouter\n  openrouter_model: meta-llama/llama-3.3-70b-instruct\n"
            f"  openrouter_base_url: {cloud.openai_url}\n  openrouter_request_timeout: {TIMEOUT}\n"
            f"  ollama_host: 127.0.0.1\n  ollama_port: {local.port}\n  ollama_model: llama3.2:3b\n"
            f"  ollama_request_timeout: {TIMEOUT}\n  fallback_to_local: true\n")
        env = base_env(tmp)
        env.update(AGENT_CONFIG_PATH=str(config), OPENROUTER_API_KEY=KEY, WEIGHTSLAB_LOG_TO_FILE="1")
        daemon = Daemon(env, tmp / "daemon.log").start()
        try:
            Trainer(env, tmp, "--steps", "120", "--step-sleep", "0.004").wait(60)
            live = Live(tmp, daemon, cloud, local)
            wait_for(lambda: len(history(live.stub)) >= 120, 10, "the run's records")
            yield live
            live.channel.close()
        finally:
            daemon.stop()


@pytest.fixture
def agent(live: Live) -> Live:
    """The agent as the test's config starts it (OpenRouter, falling back to Ollama), servers answering."""
    for server in (live.cloud, live.local):
        server.status, server.hold, server.reply = 200, False, '{"action": "reset"}'
        server.release.clear()
    live.query("reset")
    assert live.init(model="meta-llama/llama-3.3-70b-instruct").success
    return live


def plan(server: ModelServer, **fields: Any) -> None:
    server.reply = json.dumps(fields)


def test_a_model_plan_edits_through_the_journal_and_the_audit_records_the_prompt(agent: Live) -> None:
    threshold = 0.5
    expected = agent.count(f"loss > {threshold}")
    assert 0 < expected < 256
    plan(agent.cloud, action="discard", query=f"loss > {threshold}", note="noisy ones out")
    before = len(agent.journal())
    reply = agent.ask("get rid of the noisy samples")
    assert reply.success, reply.message
    assert f"discarded {expected} samples" in reply.message and "on openrouter" in reply.message
    assert reply.number_of_discarded_samples == expected and reply.agent_intent_type == pb.INTENT_FILTER
    edits = agent.journal()[before:]
    assert [e["kind"] for e in edits] == ["deny"] and len(edits[0]["ids"]) == expected
    system = agent.cloud.last_prompt()[0]["content"]  # the live schema went with the request
    assert "loss: number" in system and "train (256)" in system and len(system) < 8000
    assert agent.cloud.last_prompt()[1]["content"] == "get rid of the noisy samples"
    wait_for(lambda: any("get rid of the noisy samples" in e["request"] and "discarded" in e["detail"]
                         for e in agent.audit()), 5, "the audit line with the prompt")
    plan(agent.cloud, action="restore", query="deny_listed == 1")
    assert agent.ask("bring them all back").number_of_discarded_samples == 0


def test_filters_and_analyses_set_the_intent_the_studio_reads(agent: Live) -> None:
    plan(agent.cloud, action="filter", query="sortby loss desc", limit=7)
    shown = agent.ask("the seven worst")
    assert shown.success and shown.number_of_all_samples == 7 and shown.agent_intent_type == pb.INTENT_FILTER
    page = agent.stub.GetDataSamples(pb.DataSamplesRequest(start_index=0, records_cnt=20,
                                                           stats_to_retrieve=["loss"]), metadata=ME, timeout=10)
    losses = [r.data_stats[0].value[0] for r in page.data_records]
    assert len(losses) == 7 and losses == sorted(losses, reverse=True)
    plan(agent.cloud, action="analysis", stat="count", query="label == 3", group_by="split")
    counted = agent.ask("how many threes per split?")
    assert counted.success and counted.agent_intent_type == pb.INTENT_ANALYSIS
    assert "train: 26" in counted.analysis_result and counted.number_of_all_samples == 7  # the view stayed
    plan(agent.cloud, action="analysis", stat="mean", column="loss", group_by="none")
    mean = agent.ask("mean loss?")
    assert mean.agent_intent_type == pb.INTENT_ANALYSIS and "mean of loss" in mean.analysis_result


@pytest.mark.parametrize("reply", [
    '{"action": "python", "code": "__import__(\'os\').system(\'touch /tmp/owned\')"}',
    '{"action": "filter", "query": "SELECT * FROM samples; DROP TABLE samples"}',
    '{"action": "discard", "query": "df[df.loss > 3].index"}',
    '{"action": "discard", "query": "loss > 0", "shell": "rm -rf /"}',
    '{"action": "set_hyperparameter", "name": "__class__", "value": 1}',
    '{"action": "filter", "query": 42}',
    '[{"action": "reset"}]',
    "Sure! Run this: samples = df[df.loss > 3]; samples.drop()",
    '{"action": "discard", "query": "' + "loss > 0 and " * 2000 + 'loss > 0"}',
])
def test_a_bad_plan_is_refused_and_changes_nothing(agent: Live, reply: str) -> None:
    agent.cloud.reply = agent.local.reply = reply
    before = (len(agent.journal()), agent.query("").number_of_discarded_samples)
    refused = agent.ask("discard the bad ones")
    assert not refused.success and refused.agent_intent_type == pb.INTENT_UNKNOWN
    assert "nothing was done" in refused.message, refused.message
    assert "\n" not in refused.message and len(refused.message) < 600
    assert (len(agent.journal()), agent.query("").number_of_discarded_samples) == before
    assert agent.count("label == 3") == 26  # serving on


def test_a_huge_reply_and_a_failing_provider_fall_back_to_local(agent: Live) -> None:
    agent.cloud.reply = "{" + "x" * 100_000 + "}"
    plan(agent.local, action="filter", query="label == 3")
    reply = agent.ask("only the threes")
    assert reply.success and reply.number_of_all_samples == 26 and "llama3.2:3b on ollama" in reply.message
    agent.cloud.status = 500
    assert "on ollama" in agent.ask("only the threes").message


def test_a_model_slower_than_its_timeout_costs_other_calls_nothing(agent: Live) -> None:
    for server in (agent.cloud, agent.local):
        server.hold = True
    result: dict[str, Any] = {}
    posts = len([r for r in agent.cloud.requests if r["method"] == "POST"])
    asker = threading.Thread(target=lambda: result.update(reply=agent.ask("sort by loss descending")))
    other = threading.Thread(target=lambda: result.update(other=agent.ask("sort by loss descending")))
    started = time.monotonic()
    asker.start()
    other.start()
    wait_for(lambda: len([r for r in agent.cloud.requests if r["method"] == "POST"]) >= posts + 2, 10,
             "two chat requests waiting on the model")
    t0 = time.monotonic()
    third = agent.ask("how many samples are discarded")  # both of the agent's model slots are taken
    assert time.monotonic() - t0 < 0.5 and third.success and "already answering 2 requests" in third.message
    slowest = 0.0
    while asker.is_alive() and time.monotonic() - started < TIMEOUT:  # calls made while the model is waited on
        t0 = time.monotonic()
        assert agent.count("label == 3") == 26
        agent.stub.GetDataSamples(pb.DataSamplesRequest(start_index=0, records_cnt=32), metadata=ME, timeout=10)
        slowest = max(slowest, time.monotonic() - t0)
    asker.join(20)
    other.join(20)
    reply = result["reply"]
    assert slowest < TIMEOUT / 2, f"a call took {slowest:.3f} s while the agent waited"
    # both providers timed out; the built-in interpreter still did it, and says why
    assert reply.success and "built-in interpreter" in reply.message
    assert f"did not answer within {TIMEOUT:g} s" in reply.message
    assert time.monotonic() - started < 2 * (TIMEOUT + 2) + 3


def test_init_model_and_reset_are_recorded_and_health_tells_the_truth(agent: Live) -> None:
    health = agent.stub.CheckAgentHealth(pb.Empty(), timeout=10)
    assert health.available and "reachable" in health.message
    models = agent.stub.GetAgentModels(pb.GetAgentModelsRequest(), timeout=10)
    assert models.success and "openai/gpt-4o-mini" in models.models
    changed = agent.stub.ChangeAgentModel(pb.ChangeAgentModelRequest(model="openai/gpt-4o-mini"), timeout=10)
    assert changed.success and "agent: model changed" in changed.message and "-> openai/gpt-4o-mini" in changed.message
    plan(agent.cloud, action="reset")
    agent.ask("reset")
    assert agent.cloud.requests[-1]["body"]["model"] == "openai/gpt-4o-mini"
    unknown = agent.stub.ChangeAgentModel(pb.ChangeAgentModelRequest(model="no/such-model"), timeout=10)
    assert not unknown.success and "no model 'no/such-model'" in unknown.message
    wrong = agent.init(key="sk-or-wrong-key-0000")
    assert not wrong.success and "401" in wrong.message and "sk-or-wrong" not in wrong.message
    assert agent.stub.GetAgentModels(pb.GetAgentModelsRequest(), timeout=10).success  # the old one stayed
    local = agent.init(provider=pb.PROVIDER_OLLAMA, key="", model="qwen2.5:7b")
    assert local.success and "connected: model qwen2.5:7b on Ollama" in local.message
    assert not agent.init(provider=pb.PROVIDER_OPENCODE).success
    reset = agent.stub.ResetAgent(pb.Empty(), timeout=10)
    assert reset.success and "disconnected" in reset.message
    health = agent.stub.CheckAgentHealth(pb.Empty(), timeout=10)
    assert health.available and "built-in interpreter" in health.message
    assert not agent.stub.GetAgentModels(pb.GetAgentModelsRequest(), timeout=10).success
    texts = agent.daemon.log() + (run_folder(agent.tmp) / "audit.jsonl").read_text()
    assert KEY not in texts and "sk-or-wrong-key" not in texts
    assert "agent history" in agent.daemon.log()


def test_the_studio_chat_over_grpc_web_with_a_model_then_the_built_in_interpreter(agent: Live) -> None:
    live = agent
    port = web_port(live.daemon)
    browser = {"user-agent": "Mozilla/5.0 agent-test"}

    def chat(text: str) -> Any:
        reply = post(port, "/ExperimentService/ApplyDataQuery",
                     pb.DataQueryRequest(query=text, is_natural_language=True).SerializeToString(), headers=browser)
        assert reply.status == 200 and reply.grpc_status == 0, reply.trailers
        return pb.DataQueryResponse.FromString(reply.messages[0])

    def grid_losses() -> list[float]:
        reply = post(port, "/ExperimentService/GetDataSamples", pb.DataSamplesRequest(
            start_index=0, records_cnt=300, stats_to_retrieve=["loss"]).SerializeToString(), headers=browser)
        return [r.data_stats[0].value[0] for r in pb.DataSamplesResponse.FromString(reply.messages[0]).data_records]

    plan(live.cloud, action="filter", query="label == 3")
    threes = chat("only the threes please")
    assert threes.success and threes.number_of_all_samples == 26 and "on openrouter" in threes.message
    assert live.stub.ResetAgent(pb.Empty(), timeout=10).success  # no model now: the interpreter answers
    assert chat("reset").number_of_all_samples == 256
    sorted_reply = chat("sort by loss descending")
    assert sorted_reply.success and "built-in interpreter" in sorted_reply.message
    losses = [v for v in grid_losses() if v == v]
    assert losses == sorted(losses, reverse=True) and len(losses) > 200
    top = chat("the 50 highest-loss samples")
    assert top.number_of_all_samples == 50 and grid_losses() == losses[:50]
    threshold = sorted(losses)[-11]
    expected = live.count(f"loss > {threshold}")
    discarded = chat(f"discard samples with loss above {threshold}")
    assert discarded.success and f"discarded {expected} samples" in discarded.message
    assert discarded.number_of_discarded_samples == expected > 0
    tagged = chat("tag label 3 as cats")
    assert tagged.success and "cats" in tagged.unique_tags and "tagged 26 samples" in tagged.message
    how_many = chat("how many samples are discarded")
    assert how_many.agent_intent_type == pb.INTENT_ANALYSIS
    assert how_many.analysis_result.startswith(f"count of samples where deny_listed == 1: "
                                               f"{discarded.number_of_discarded_samples}")
    assert chat("show only train").number_of_all_samples == 256
    nope = chat("show only eval")  # this run has no eval split: said so, nothing changed
    assert not nope.success and "eval" in nope.message and nope.number_of_all_samples == 256
    assert chat("restore samples with loss above -1").number_of_discarded_samples == 0
    assert chat("reset").number_of_all_samples == 256
    unknown = chat("write me a poem about gradients")
    assert not unknown.success and "docs/agent.md" in unknown.message and "built-in interpreter" in unknown.message
    assert chat("the 5 highest-loss samples").number_of_all_samples == 5
    # A brand-new page of the same browser (same address and User-Agent: the same view key) starts with an
    # empty query, and from the full table in natural order; the panel's "clear sort" is `sortby index asc`.
    def first_ids() -> list[int]:
        reply = post(port, "/ExperimentService/GetDataSamples", pb.DataSamplesRequest(
            start_index=0, records_cnt=5, stats_to_retrieve=["loss"]).SerializeToString(), headers=browser)
        return [r.sample_id for r in pb.DataSamplesResponse.FromString(reply.messages[0]).data_records]

    sorted_ids = first_ids()
    assert sorted_ids != [0, 1, 2, 3, 4]
    fresh = post(port, "/ExperimentService/ApplyDataQuery", pb.DataQueryRequest(query="").SerializeToString(),
                 headers=browser)
    assert pb.DataQueryResponse.FromString(fresh.messages[0]).number_of_all_samples == 256
    assert first_ids() == [0, 1, 2, 3, 4]
    assert chat("sort by loss descending").success and first_ids() == sorted_ids
    cleared = post(port, "/ExperimentService/ApplyDataQuery",
                   pb.DataQueryRequest(query="sortby index asc").SerializeToString(), headers=browser)
    assert pb.DataQueryResponse.FromString(cleared.messages[0]).success
    assert first_ids() == [0, 1, 2, 3, 4]
