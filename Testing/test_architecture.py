"""QSMLib's layering, read from its source: no import cycles, and the stages
depend on primitives below them, never on the code that drives them."""

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "QSMLib"

#: Modules that run the stages (files in, pipeline, files out); no stage may import them.
DRIVERS = ("QSMLib.cli", "QSMLib.run", "QSMLib.pipeline", "QSMLib.batch", "QSMLib.report")
#: Stage packages and modules, each a family of registered methods.
STAGES = ("QSMLib.phase", "QSMLib.unwrap", "QSMLib.fieldmap", "QSMLib.masking", "QSMLib.background",
          "QSMLib.inversion", "QSMLib.referencing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_statements(body: list) -> list:
    """Statements Python runs when the module is imported: not function bodies, not ``if TYPE_CHECKING``."""
    statements = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            statements += _import_time_statements(node.orelse)
            continue
        statements.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            nested = getattr(node, field, None)
            if isinstance(nested, list):
                statements += _import_time_statements(nested)
    return statements


def import_graph(import_time_only: bool) -> dict[str, set[str]]:
    """QSMLib module -> the QSMLib modules it imports (parent packages left out: importing a
    submodule always runs its package's ``__init__``, which is not a dependency of the submodule's code)."""
    sources = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    graph = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        statements = _import_time_statements(tree.body) if import_time_only else list(ast.walk(tree))
        targets = set()
        for node in statements:
            if isinstance(node, ast.ImportFrom):
                base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {target for target in targets if target in sources and target != name
                       and not name.startswith(target + ".")}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def _belongs(module: str, prefixes: tuple) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("import_time_only", [True, False], ids=["at-import", "anywhere"])
def test_qsmlib_imports_have_no_cycle(import_time_only):
    graph = import_graph(import_time_only)
    assert len(graph) > 60 and graph["QSMLib.cli"]  # the scan sees the package, not an empty folder
    assert _find_cycle(graph) == []


def test_stages_never_import_the_code_that_drives_them():
    graph = import_graph(import_time_only=False)
    leaks = {module: sorted(target for target in targets if _belongs(target, DRIVERS))
             for module, targets in graph.items() if _belongs(module, STAGES)}
    assert {module: targets for module, targets in leaks.items() if targets} == {}


def test_background_removal_does_not_depend_on_dipole_inversion():
    graph = import_graph(import_time_only=False)
    assert not {target for module, targets in graph.items() if _belongs(module, ("QSMLib.background",))
                for target in targets if _belongs(target, ("QSMLib.inversion",))}
