"""Where a shim and its daemon meet: the private runtime directory, and the names inside it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

CONTROL_SOCKET = "control.sock"
DAEMON_LOCK = "daemon.lock"


def resolve_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """`WEIGHTSLAB_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/weightslabd`, else `/tmp/weightslabd-<uid>`."""
    env = os.environ if env is None else env
    explicit = env.get("WEIGHTSLAB_RUNTIME_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_RUNTIME_DIR", "").strip()
    if xdg:
        return Path(xdg) / "weightslabd"
    return Path(f"/tmp/weightslabd-{os.getuid()}")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` mode 0700 owned by us; refuse one that another user owns or others can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"runtime directory {path} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def control_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir / CONTROL_SOCKET}"


def ring_prefix(runtime_dir: Path) -> str:
    """Shared-memory names of one runtime dir share this prefix, so daemons side by side never touch
    each other's rings."""
    digest = hashlib.sha1(str(runtime_dir.resolve()).encode()).hexdigest()[:10]
    return f"wl.{os.getuid()}.{digest}."
