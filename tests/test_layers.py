"""The daemon's layers (weightslabd/__init__.py): every import, lazy ones too, runs down or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "weightslabd"
SHIM = Path(__file__).resolve().parents[1] / "client_shim" / "weightslab_shim"
# Lowest first. A module may import from its own rank or any lower one.
RANKS = {"config": 0, "origins": 0, "proto": 0, "": 0,
         "store": 1, "ipc": 2, "security": 3, "ops": 4, "evaluation": 4, "nodes": 4, "api": 5, "agent": 5,
         "daemon": 6, "cli": 6, "__main__": 6}


def _layer(module: str) -> str:
    """'weightslabd.store.run' -> 'store'; 'weightslabd' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "weightslabd":  # `from weightslabd import store` names a subpackage; `__version__` the top
                found += [(node.lineno, f"weightslabd.{a.name}" if a.name in RANKS else base) for a in node.names]
            else:
                found.append((node.lineno, base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name == "weightslabd" or name.startswith("weightslabd.")]


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_every_daemon_import_runs_down_a_layer_or_sideways() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if _layer(module) == "proto":
            continue
        mine = RANKS[_layer(module)]
        for line, target in _imports(path, module):
            if RANKS[_layer(target)] > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def test_every_module_sits_in_a_known_layer() -> None:
    unknown = {_layer(_module(p)) for p in PACKAGE.rglob("*.py")} - set(RANKS)
    assert unknown == set()


def test_the_shim_never_imports_the_daemon() -> None:
    offenders = [f"{p.name}:{line}" for p in SHIM.rglob("*.py")
                 for line, _ in _imports(p, "weightslab_shim." + p.stem)]
    assert offenders == []
