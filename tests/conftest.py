"""Suite-wide: every test runs under the hard timeout WL_TEST_TIMEOUT (seconds, default 30)."""

from __future__ import annotations

import os

import pytest

DEFAULT_TEST_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    # An explicit --timeout on the command line wins; otherwise the documented variable decides.
    if not config.getoption("timeout", default=None):
        config.option.timeout = float(os.environ.get("WL_TEST_TIMEOUT", DEFAULT_TEST_TIMEOUT))
        config.option.timeout_method = "signal"
