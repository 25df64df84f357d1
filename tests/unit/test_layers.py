"""The package's rooms and which way their imports run (lazy and type-only imports included).

A room imports only rooms on a lower floor (or itself); the two families never import each other;
no module imports itself round a circle. ``.dev-guidelines/ARCHITECTURE.md`` draws the same floors.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "ml_playground"

# Bottom to top. Rooms on one floor may not import each other.
FLOORS: list[set[str]] = [
    {"core", "experiments"},  # experiments: config files and READMEs (the package holds no code there)
    {"configuration"},
    {"data_pipeline", "export"},
    {"training"},
    {"families"},
    {"families.gpt", "families.hf_lora"},
    {"sampling", "commands"},
    {"evaluation", "serving"},
    {"bench"},
    {"cli"},
    {"__main__"},
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "package"
    if parts[0] == "families" and len(parts) > 1 and parts[1] in ("gpt", "hf_lora"):
        return f"families.{parts[1]}"
    return parts[0]


def imports_of(path: Path) -> Iterator[str]:
    """Every ``ml_playground`` module this file imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("ml_playground"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ml_playground"):
            yield node.module


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            # ``from ml_playground.x import y`` may name a module y or an attribute of x
            targets.add(imported if imported in modules else imported.rsplit(".", 1)[0])
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_every_room_is_on_a_floor() -> None:
    rooms = {room_of(module) for module in import_graph()} - {"package"}
    assert rooms <= set(FLOOR_OF), f"rooms without a floor: {sorted(rooms - set(FLOOR_OF))}"


def test_imports_only_run_down() -> None:
    upward = []
    for module, targets in import_graph().items():
        source = room_of(module)
        for target in targets:
            destination = room_of(target)
            if destination == source or source == "package" or destination == "package":
                continue
            if FLOOR_OF[destination] >= FLOOR_OF[source]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run down:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds lazy imports inside functions, which is where upward ones used to hide."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from ml_playground.commands.train import train\n    return train\n")
    assert list(imports_of(source)) == ["ml_playground.commands.train"]
    assert FLOOR_OF[room_of("ml_playground.commands.train")] > FLOOR_OF[room_of("ml_playground.core.atomic")]
