"""The run registry releases idle runs without holding up the Studio: while a released run is still closing
(its snapshot being written), `current()` answers at once, and only a reopen of that very run waits."""

from __future__ import annotations

import threading
from pathlib import Path

from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry


def test_a_release_holds_up_only_a_reopen_of_the_run_it_closes(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path / "logs", tmp_path)
    for name, created in (("old", 1.0), ("new", 2.0)):
        run = Run.create(tmp_path / "logs" / name, {"run_id": name, "created": created, "splits": {}})
        registry.runs[name] = run
        registry.known[name] = run.folder
    registry.current_id = "new"
    old = registry.runs["old"]
    closing, finish = threading.Event(), threading.Event()
    real_close = old.close

    def slow_close() -> None:  # the snapshot write of a large run, held open by the test
        closing.set()
        finish.wait(10)
        real_close()

    old.close = slow_close  # type: ignore[method-assign]
    release = threading.Thread(target=registry.release_idle, args=(set(),))
    release.start()
    assert closing.wait(10)
    answered: list[Run | None] = []
    reader = threading.Thread(target=lambda: answered.append(registry.current()))
    reader.start()
    reader.join(10)
    assert answered and answered[0] is registry.runs["new"]  # the Studio's call did not wait for the close
    reopened: list[Run | None] = []
    reopen = threading.Thread(target=lambda: reopened.append(registry.get("old")))
    reopen.start()
    reopen.join(0.2)
    assert reopen.is_alive() and not reopened  # waits: a second copy would read a half-written snapshot
    finish.set()
    release.join(10)
    reopen.join(10)
    assert reopened and reopened[0] is not None and reopened[0] is not old and "old" in registry.runs
    registry.close()
