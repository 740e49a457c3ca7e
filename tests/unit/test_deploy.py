"""The deployment files parse and say what they must: no Docker engine runs here, so these checks
read them as a deployer's tools would."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SPEC = ROOT.parent / "shared" / "CONFIGURATION-SPEC.rst"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def rendered_envoy(values: dict[str, str]) -> dict[str, Any]:
    text = (DEPLOY / "envoy.yaml.template").read_text()
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, "a variable of the template is not filled"
    return dict(yaml.safe_load(text))


VALUES = {"ENVOY_PORT": "8080", "ENVOY_ADMIN_PORT": "9901", "GRPC_BACKEND_HOST": "weightslabd",
          "GRPC_BACKEND_PORT": "50051", "STUDIO_ORIGIN": "http://localhost:5173"}


def test_compose_restarts_always_shares_ipc_and_gives_enough_shm() -> None:
    services = compose()["services"]
    assert services["weightslabd"]["restart"] == "always" and services["envoy"]["restart"] == "always"
    assert services["weightslabd"]["ipc"] == "shareable"
    size = services["weightslabd"]["shm_size"]
    assert size.endswith("gb") and float(size[:-2]) >= 1
    assert services["trainer"]["ipc"] == "service:weightslabd" and services["trainer"]["pid"] == "service:weightslabd"
    assert services["trainer"]["environment"]["WEIGHTSLAB_RUNTIME_DIR"] == "/run/weightslabd"


def test_envoy_admin_stays_on_loopback_and_is_not_published() -> None:
    envoy = rendered_envoy(VALUES)
    assert envoy["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    ports = compose()["services"]["envoy"]["ports"]
    assert len(ports) == 1 and "ENVOY_ADMIN_PORT" not in ports[0] and "ENVOY_PORT" in ports[0]


def test_envoy_speaks_grpc_web_with_cors_for_the_studio_only_and_mtls_upstream() -> None:
    envoy = rendered_envoy(VALUES)
    listener = envoy["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 8080
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    assert names == ["envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]
    cors = manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [{"exact": "http://localhost:5173"}]
    assert "x-grpc-web" in cors["allow_headers"] and "grpc-status" in cors["expose_headers"]
    cluster = envoy["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint["socket_address"] == {"address": "weightslabd", "port_value": 50051}
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])
    tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_certificates"][0]["certificate_chain"]["filename"].endswith("client.crt")


def test_compose_fills_every_template_variable_from_the_environment() -> None:
    template = (DEPLOY / "envoy.yaml.template").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    envoy = compose()["services"]["envoy"]
    command = " ".join(envoy["command"])
    assert needed == set(VALUES)
    for name in needed:
        assert f"$${{{name}}}" in command and name in envoy["environment"]


def test_studio_gets_every_vite_variable_of_the_configuration() -> None:
    env = compose()["services"]["studio"]["environment"]
    if SPEC.is_file():
        frontend = SPEC.read_text().split("Weights Studio (frontend)", 1)[1]
        wanted = set(re.findall(r"``(VITE_[A-Z_]+)``", frontend))
        assert wanted and wanted <= set(env)
    for name in ("ENVOY_HOST", "ENVOY_PORT", "ENVOY_ADMIN_PORT"):
        assert name in (DEPLOY / "docker-compose.yml").read_text()


def test_dockerfile_runs_as_a_non_root_user() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_systemd_unit_keeps_ipc_and_the_runtime_dir_reachable() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "weightslabd.service")
    service = unit["Service"]
    assert service["RemoveIPC"] == "no" and service.get("PrivateTmp") == "no"
    assert service["ProtectSystem"] in ("full", "true")  # /dev/shm and the runtime dir stay writable
