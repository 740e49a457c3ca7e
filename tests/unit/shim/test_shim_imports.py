"""The shim is light: importing it loads neither torch nor the daemon's libraries."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_shim_loads_no_torch_grpc_or_daemon() -> None:
    code = ("import sys, weightslab_shim as wl; wl.session(); "
            "heavy = [m for m in ('torch', 'grpc', 'weightslabd', 'pydantic', 'structlog') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
