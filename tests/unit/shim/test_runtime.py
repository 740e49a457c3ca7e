"""Where shim and daemon meet: the runtime directory is used only when it is ours and private, and
the names a hello carries are recognised exactly as the shim builds them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from weightslab_shim import runtime
from weightslab_shim.ring import RingWriter
from weightslab_shim.session import Session


def test_the_default_runtime_dir_is_per_user_under_tmp() -> None:
    assert runtime.resolve_runtime_dir({}) == Path(f"/tmp/weightslabd-{os.getuid()}")


def test_a_missing_or_private_dir_is_fine_and_an_open_one_is_refused_not_repaired(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    assert runtime.private_dir_problem(rt) is None  # the daemon creates it
    assert runtime.ensure_private_dir(rt) == rt and (rt.stat().st_mode & 0o777) == 0o700
    rt.chmod(0o750)
    problem = runtime.private_dir_problem(rt)
    assert problem is not None and "mode 0750" in problem and "chmod 700" in problem and "\n" not in problem
    with pytest.raises(runtime.UnsafeRuntimeDir, match="mode 0750"):
        runtime.ensure_private_dir(rt)
    assert (rt.stat().st_mode & 0o777) == 0o750  # left as found


def test_a_session_in_an_open_runtime_dir_warns_once_and_trains_unobserved(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o755)
    rt.chmod(0o755)
    s = Session({"WEIGHTSLAB_RUNTIME_DIR": str(rt)})
    for _ in range(3):
        s.begin_step()
        s.add_scalar("loss", 1.0)
        s.end_step(training=True)
    s.close()
    assert s.step == 3 and s.ring is None and s.channel is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "mode 0755" in lines[0] and "training continues without weightslabd" in lines[0]


@pytest.mark.parametrize("name", ["train", "a" * 100, "../../x", "exp 1/ü", "."])
def test_run_ids_the_shim_makes_are_plain_names_it_recognises(name: str) -> None:
    run_id = runtime.new_run_id(name)
    assert runtime.is_run_id(run_id) and "/" not in run_id and run_id not in (".", "..")


@pytest.mark.parametrize("value", ["../../x", "r", "x-20240101-000000-abcdef\n", "/abs-20240101-000000-abcdef",
                                   "x-20240101-000000-ABCDEF", "x-٢٠٢٤0101-000000-abcdef", 7, None])
def test_other_run_ids_are_not_recognised(value: object) -> None:
    assert not runtime.is_run_id(value)


def test_ring_names_are_recognised_only_under_the_prefix(tmp_path: Path) -> None:
    prefix = runtime.ring_prefix(tmp_path)
    writer = RingWriter(prefix, 1 << 16, "r")
    try:
        assert runtime.is_ring_name(writer.name, prefix)
    finally:
        writer.close(unlink_segment=True)
    for other in [f"{prefix}1.abc", f"{prefix}../x.0badf00d", f"../..{prefix}1.0badf00d", f"{prefix}1.0badf00d/x",
                  "wl.1.0123456789.1.0badf00d", f"{prefix}1.0badf00d\n", None]:
        assert not runtime.is_ring_name(other, prefix), other
