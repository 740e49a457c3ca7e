"""A mistyped variable in the env file is named, with the setting it most likely meant."""

from __future__ import annotations

from pathlib import Path

from weightslabd.config import closest_variable, load_settings, render_effective, unknown_key_warnings, unknown_keys


def test_a_typo_of_a_setting_is_reported_with_the_closest_variable(tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    path.write_text("GRPC_AUTH_TOKNE=s3cret\nCLI_PROT=6000\nVITE_PORT=5173\nGRPC_TRACE=all\n")
    settings = load_settings(path, {})
    assert settings.grpc_auth_token is None  # ignored, so the warning matters
    assert unknown_keys(settings) == ("GRPC_AUTH_TOKNE", "CLI_PROT", "GRPC_TRACE")
    warnings = unknown_key_warnings(settings)
    assert warnings[0] == (f"warning: GRPC_AUTH_TOKNE in the env file {path} is not a weightslabd setting and was "
                           "ignored; did you mean GRPC_AUTH_TOKEN?")
    assert warnings[1].endswith("did you mean CLI_PORT?")
    assert warnings[2].endswith("was ignored")  # nothing close: no guess
    assert all("s3cret" not in w for w in warnings)
    assert warnings[0] in render_effective(settings)


def test_closest_variable_guesses_only_close_names() -> None:
    assert closest_variable("WEIGHTSLAB_LOG_LEVL") == "WEIGHTSLAB_LOG_LEVEL"
    assert closest_variable("grpc_backend_prot") == "GRPC_BACKEND_PORT"
    assert closest_variable("PATH") is None and closest_variable("CUDA_VISIBLE_DEVICES") is None
