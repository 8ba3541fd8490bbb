"""Find every member the module's Python calls on Qt, CTK and MRML widgets (static, no Slicer needed).

PythonQt exposes only slots, Q_INVOKABLE methods, Q_PROPERTYs, signals and
PythonQt decorators (including its generated wrappers of Qt classes); a plain
C++ method of a CTK or MRML widget (such as ``qMRMLNodeComboBox::nodes()``)
is not callable from Python. ``Testing/slicer_python_members.json`` lists the
members verified in the sources; ``Testing/test_slicer_widget_members.py``
compares what the code uses (found here) with that list.

An expression is known to be a widget when it is a child of the .ui
(``self.ui.name`` in the panel, ``ui.name`` in the self-test), one of the
fixed roots below, a local variable annotated with a Qt/CTK/MRML class
(``combo: qt.QComboBox = getattr(self.ui, name)``), or a plain alias of one
of these (``spinBox = self.ui.inversionParameterSpinBox``).
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "QSMProcessing"
MEMBERS_FILE = Path(__file__).resolve().parent / "slicer_python_members.json"
#: Files whose widget use is checked, with the name under which each reaches the .ui's children.
CHECKED_FILES = {
    MODULE_DIR / "QSMProcessingLib" / "Widget.py": "self.ui",
    MODULE_DIR / "QSMProcessing.py": "ui",
}
#: Expressions that are widgets (or Qt objects) without being children of the .ui.
FIXED_ROOTS = {
    "self.uiWidget": "qMRMLWidget",
    "self._timer": "QTimer",
    "self._moduleWidget.layout": "QVBoxLayout",
    "self._moduleWidget.parent": "qSlicerScriptedLoadableModuleWidget",
    "qt.QFileDialog": "QFileDialog",
    "slicer.app": "qSlicerApplication",
}


@dataclass(frozen=True)
class Use:
    """One member (or, for ``connect``, one signal) used on a widget of a class."""

    path: str
    line: int
    className: str
    member: str
    isSignal: bool = False


def uiClasses() -> dict[str, str]:
    """Widget name -> class, from the .ui file."""
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "QSMProcessing.ui").getroot()
    return {widget.get("name"): widget.get("class") for widget in tree.iter("widget")}


def dotted(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = dotted(node.value)
        return None if parent is None else f"{parent}.{node.attr}"
    return None


def _annotationClass(annotation: ast.AST) -> Optional[str]:
    name = dotted(annotation)
    if name and name.split(".")[0] in ("qt", "ctk", "slicer") and name.count(".") == 1:
        return name.split(".")[1]
    return None


class _FunctionScanner(ast.NodeVisitor):
    def __init__(self, path: str, uiRoot: str, classes: dict[str, str]):
        self.path, self.uiRoot, self.classes = path, uiRoot, classes
        self.locals: dict[str, str] = {}
        self.uses: list[Use] = []
        self.untyped: list[str] = []

    def resolve(self, node: ast.AST) -> Optional[str]:
        if isinstance(node, ast.Name) and node.id in self.locals:
            return self.locals[node.id]
        name = dotted(node)
        if name is None:
            return None
        if name in FIXED_ROOTS:
            return FIXED_ROOTS[name]
        parent, _, child = name.rpartition(".")
        if parent == self.uiRoot:
            return self.classes.get(child, "<not in the .ui>")
        return None

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        className = _annotationClass(node.annotation)
        if className and isinstance(node.target, ast.Name):
            self.locals[node.target.id] = className
        if node.value is not None:
            self.visit(node.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        className = self.resolve(node.value)
        if className and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.locals[node.targets[0].id] = className
        self._flagUntypedGetattr(node.value)
        for target in node.targets:
            self.visit(target)
        self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        self._flagUntypedGetattr(node.value)
        self.generic_visit(node)

    def _flagUntypedGetattr(self, value: ast.AST) -> None:
        for call in ast.walk(value):
            if (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "getattr" and call.args
                    and dotted(call.args[0]) == self.uiRoot):
                self.untyped.append(f"{self.path}:{call.lineno}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        className = self.resolve(node.value)
        if className is not None:
            self.uses.append(Use(self.path, node.lineno, className, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "connect" and node.args:
            className = self.resolve(node.func.value)
            signal = node.args[0]
            if className is not None and isinstance(signal, ast.Constant) and isinstance(signal.value, str):
                self.uses.append(Use(self.path, node.lineno, className, signal.value, isSignal=True))
        self.generic_visit(node)


def usedMembers(files: Optional[Mapping[Path, str]] = None) -> tuple[list[Use], list[str]]:
    """Every widget member and connected signal in ``files`` (default :data:`CHECKED_FILES`), and any
    ``getattr`` on the .ui whose result is not annotated with its class (which the check could not follow)."""
    classes = uiClasses()
    uses: list[Use] = []
    untyped: list[str] = []
    for path, uiRoot in (CHECKED_FILES if files is None else files).items():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef):
                scanner = _FunctionScanner(_shown(path), uiRoot, classes)
                for statement in function.body:
                    scanner.visit(statement)
                uses += scanner.uses
                untyped += scanner.untyped
        # Module-level statements (class bodies are covered through their functions).
        scanner = _FunctionScanner(_shown(path), uiRoot, classes)
        for statement in tree.body:
            if not isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
                scanner.visit(statement)
        uses += scanner.uses
    return sorted(set(uses), key=lambda use: (use.path, use.line, use.member)), untyped


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def loadMemberList() -> dict:
    return json.loads(MEMBERS_FILE.read_text(encoding="utf-8"))


def classChain(classes: dict, className: str) -> list[str]:
    """``className`` and its bases as recorded in the member list (unknown classes end the chain)."""
    chain = []
    while className is not None and className in classes and className not in chain:
        chain.append(className)
        className = classes[className].get("base")
    return chain


def isAllowed(classes: dict, use: Use) -> bool:
    for className in classChain(classes, use.className):
        entry = classes[className]
        if use.member in (entry.get("signals", {}) if use.isSignal else entry.get("members", {})):
            return True
    return False


if __name__ == "__main__":  # list what the code uses, for maintaining the member list
    found, notFollowed = usedMembers()
    for use in found:
        print(f"{use.className:40s} {'signal ' if use.isSignal else ''}{use.member:30s} {use.path}:{use.line}")
    for where in notFollowed:
        print("getattr on the .ui without a class annotation:", where)
