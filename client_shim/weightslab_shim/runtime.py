"""Where a shim and its daemon meet: the private runtime directory, and the names inside it."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path

CONTROL_SOCKET = "control.sock"
DAEMON_LOCK = "daemon.lock"
RUN_SLUG_MAX = 40
# A run id exactly as `new_run_id` builds it: one plain file name, never a path.
RUN_ID = re.compile(rf"[A-Za-z0-9_.-]{{1,{RUN_SLUG_MAX}}}-[0-9]{{8}}-[0-9]{{6}}-[0-9a-f]{{6}}")


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


class UnsafeRuntimeDir(PermissionError):
    """A runtime directory another user owns, or others can enter: refused, never repaired."""


def private_dir_problem(path: Path) -> str | None:
    """Why `path` must not be used as a runtime directory (one line), or None when it is ours and
    private, or does not exist yet. Another user who made it first could listen in it."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"runtime directory {path} cannot be checked ({exc.strerror or exc}); set WEIGHTSLAB_RUNTIME_DIR " \
               "to a private directory"
    uid = os.getuid()
    owner = link.st_uid if stat.S_ISLNK(link.st_mode) and link.st_uid != uid else st.st_uid
    if owner != uid:
        return (f"runtime directory {path} is owned by uid {owner}, not by this user (uid {uid}): another user may "
                "be squatting it; remove it or set WEIGHTSLAB_RUNTIME_DIR to a private directory")
    if not stat.S_ISDIR(st.st_mode):
        return f"runtime directory {path} is not a directory; remove it or set WEIGHTSLAB_RUNTIME_DIR elsewhere"
    if st.st_mode & 0o077:
        return (f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users: "
                f"run `chmod 700 {path}` or set WEIGHTSLAB_RUNTIME_DIR to a private directory")
    return None


def ensure_private_dir(path: Path) -> Path:
    """Create `path` mode 0700 if missing; refuse (UnsafeRuntimeDir, one line) one that another user
    owns or that others can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = private_dir_problem(path)
    if problem:
        raise UnsafeRuntimeDir(problem)
    return path


def control_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir / CONTROL_SOCKET}"


def ring_prefix(runtime_dir: Path, uid: int | None = None) -> str:
    """Shared-memory names of one runtime dir share this prefix, so daemons side by side never touch
    each other's rings."""
    digest = hashlib.sha1(str(runtime_dir.resolve()).encode()).hexdigest()[:10]
    return f"wl.{os.getuid() if uid is None else uid}.{digest}."


def new_run_id(run_name: str) -> str:
    """`<run name as a file name, at most 40 chars>-<YYYYmmdd-HHMMSS>-<6 hex>`; matches `RUN_ID`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name)[:RUN_SLUG_MAX] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


def is_ring_name(value: object, prefix: str) -> bool:
    """A ring name exactly as `RingWriter` builds it under `prefix`: `<prefix><pid>.<8 hex>`."""
    return (isinstance(value, str) and value.startswith(prefix)
            and re.fullmatch(r"[0-9]{1,10}\.[0-9a-f]{8}", value[len(prefix):]) is not None)
