"""The Slicer extension's files: .ui, parameter node, module file, CMake lists, index entry, requirements, presets.

These need no Slicer application: the files that import Qt or the parameter
node wrapper are read as source, or imported in a child process with stand-ins
for Qt and the Slicer application; the rest is plain files and the Qt-free
QSMProcessingLib.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "QSMProcessing"
sys.path.insert(0, str(MODULE_DIR))

from QSMProcessingLib import Dependencies, Parameters  # noqa: E402

MODULE_SOURCE = (MODULE_DIR / "QSMProcessing.py").read_text()
WIDGET_SOURCE = (MODULE_DIR / "QSMProcessingLib" / "Widget.py").read_text()
PARAMETER_NODE_SOURCE = (MODULE_DIR / "QSMProcessingLib" / "ParameterNode.py").read_text()
UI = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "QSMProcessing.ui").getroot()
README = (ROOT / "README.md").read_text()


def _methodComboBoxes() -> dict[str, str]:
    """Widget.METHOD_COMBO_BOXES as combo box name -> parameter node field (read from the source)."""
    for node in ast.parse(WIDGET_SOURCE).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "METHOD_COMBO_BOXES":
            return {key.value: value.elts[0].value for key, value in zip(node.value.keys, node.value.values)}
    raise AssertionError("Widget.py has no METHOD_COMBO_BOXES")


#: Parameter node fields the widget keeps in sync itself: checkable node lists (no wrapper connector
#: exists for them), combo boxes that show readable names for registry names, and the inversion
#: parameter, whose unit and precision follow the method.
MANUALLY_SYNCED = {"magnitudeVolumes", "phaseVolumes", "inversionParameter", *_methodComboBoxes().values()}


def _parameterFields() -> set[str]:
    tree = ast.parse(PARAMETER_NODE_SOURCE)
    [wrapped] = [node for node in tree.body if isinstance(node, ast.ClassDef)
                 and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)]
    return {item.target.id for item in wrapped.body if isinstance(item, ast.AnnAssign)}


def _boundParameters() -> dict[str, str]:
    bound = {}
    for widget in UI.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("name")
    return bound


def test_ui_names_every_widget_the_code_uses_and_binds_every_parameter():
    widgets = {widget.get("name") for widget in UI.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET_SOURCE)) | set(re.findall(r"\bui\.(\w+)", MODULE_SOURCE))
    used |= set(_methodComboBoxes())
    assert used and used <= widgets, used - widgets
    fields = _parameterFields()
    bound = _boundParameters()
    assert set(bound) <= fields, set(bound) - fields
    assert set(bound) == fields - MANUALLY_SYNCED
    for name in MANUALLY_SYNCED - set(_methodComboBoxes().values()):
        assert f"node.{name}" in WIDGET_SOURCE or f"parameterNode.{name}" in WIDGET_SOURCE, name
    custom = {c.find("class").text for c in UI.iter("customwidget")}
    used_classes = {w.get("class") for w in UI.iter("widget")}
    assert {c for c in used_classes if not c.startswith("Q")} <= custom
    # Precision comes from the .ui, not from Decimals/SingleStep annotations (the wrapper logs them as unused).
    names = {node.id for node in ast.walk(ast.parse(PARAMETER_NODE_SOURCE)) if isinstance(node, ast.Name)}
    assert names and not names & {"Decimals", "SingleStep"}


def test_module_file_is_metadata_registration_and_self_test_and_runs_nothing_at_import():
    tree = ast.parse(MODULE_SOURCE)
    assert len(MODULE_SOURCE.splitlines()) < 150
    for node in tree.body:
        allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        assert isinstance(node, allowed) or docstring, ast.dump(node)[:80]
    definitions = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    assert definitions == {"QSMProcessing", "registerSampleData", "QSMProcessingWidget", "QSMProcessingTest"}
    imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert imported <= {"os", "time", "qt", "vtk", "slicer"}


#: Stand-ins for what only the Slicer application provides, enough to load the module and its panel code.
_APPLICATION_STANDINS = textwrap.dedent("""
    import sys, types
    import slicer

    def module(name, **attributes):
        stub = types.ModuleType(name)
        stub.__dict__.update(attributes)
        sys.modules[name] = stub
        return stub

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    connections = []
    slicer.app = types.SimpleNamespace(connect=lambda signal, slot: connections.append((signal, slot)))
    module("qt", Qt=types.SimpleNamespace(Checked=2, Unchecked=0), QTimer=object, QFileDialog=object)
    module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text)
    module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base, ScriptedLoadableModuleWidget=Base,
           ScriptedLoadableModuleTest=Base)
    module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, Choice=lambda choices: None,
           WithinRange=lambda low, high: None)
""")


def test_loading_the_module_and_its_panel_code_imports_neither_qsmlib_nor_simpleitk():
    script = _APPLICATION_STANDINS + textwrap.dedent("""
        heavy = lambda: sorted(m for m in sys.modules if m.split(".")[0] in ("QSMLib", "SimpleITK"))
        assert not heavy(), heavy()
        import QSMProcessing
        parent = types.SimpleNamespace()
        QSMProcessing.QSMProcessing(parent)
        assert parent.title == "QSM Processing" and "Eckstein" in parent.acknowledgementText
        assert connections == [("startupCompleted()", QSMProcessing.registerSampleData)]
        assert not heavy(), ("module load", heavy())
        import QSMProcessingLib.Widget  # what opening the panel imports
        assert not heavy(), ("panel", heavy())
        print("light")
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=MODULE_DIR, capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout.strip() == "light", completed.stderr[-2000:]


def _cmakeList(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [entry.replace("${MODULE_NAME}", "QSMProcessing") for entry in body.split()]


def _files(folder: Path, pattern: str) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob(pattern) if "__pycache__" not in p.parts}


def test_cmake_lists_ship_every_module_and_qsmlib_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert set(_cmakeList(text, "MODULE_PYTHON_SCRIPTS")) == _files(MODULE_DIR, "*.py")
    assert set(_cmakeList(text, "MODULE_PYTHON_RESOURCES")) == {
        f"Resources/{p}" for p in _files(MODULE_DIR / "Resources", "*")
        if (MODULE_DIR / "Resources" / p).is_file()}
    assert set(_cmakeList(text, "QSMLIB_PYTHON_SCRIPTS")) == {f"QSMLib/{p}" for p in _files(ROOT / "QSMLib", "*.py")}
    assert not [p for p in (ROOT / "QSMLib").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "SOURCE_DIR ${PROJECT_SOURCE_DIR}" in text


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_top_level_cmake_metadata_points_at_real_images():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(QSM\)$", text, re.M)
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    assert {"EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
            "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"} <= set(values)
    assert len(values["EXTENSION_DESCRIPTION"]) > 100
    # Extensions Index tier 1: known patents are named in the description.
    assert "MCPC-3D-S" in values["EXTENSION_DESCRIPTION"] and "patent" in values["EXTENSION_DESCRIPTION"]
    prefix = "https://raw.githubusercontent.com/SlicerQSM/SlicerQSM/main/"
    icon = values["EXTENSION_ICONURL"]
    assert icon.startswith(prefix) and _png_size(ROOT / icon[len(prefix):]) == (128, 128)
    # An image offered as a screenshot must be one of the application, named so; figures are not.
    for url in values["EXTENSION_SCREENSHOTURLS"].split():
        assert url.startswith(prefix) and min(_png_size(ROOT / url[len(prefix):])) >= 200
        assert "screenshot" in Path(url).name.lower() and "figure" not in Path(url).name.lower(), url
    for image in (ROOT / "Resources" / "Screenshots").glob("*figure*.png"):
        assert re.search(rf"!\[Figure[^\]]*\]\(Resources/Screenshots/{re.escape(image.name)}\)", README), image.name
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / "QSMProcessing.png") == (128, 128)
    for name in ("add_subdirectory(QSMProcessing)", "find_package(Slicer REQUIRED)", "${Slicer_EXTENSION_CPACK}"):
        assert name in text


def test_index_entry_has_the_catalog_schema_fields():
    entry = json.loads((ROOT / "QSM.json").read_text())
    types = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
             "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
             "tier": int}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(types)
    for key, value in entry.items():
        assert isinstance(value, types[key]), key
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.\d+\.\d+\.json#$", entry["$schema"])
    assert entry["category"] == "Quantification"
    assert entry["scm_url"].endswith("/SlicerQSM") and entry["build_subdirectory"] == "."
    assert 1 <= entry["tier"] <= 5


def test_requirements_match_qsmlib_dependencies_and_missing_ones_are_found(tmp_path):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = Dependencies.readRequirements(str(MODULE_DIR / "Resources" / "requirements.txt"))
    assert sorted(requirements, key=str.lower) == sorted(project["dependencies"], key=str.lower)
    assert Dependencies.missingRequirements(str(MODULE_DIR / "Resources" / "requirements.txt")) == []
    trial = tmp_path / "requirements.txt"
    trial.write_text("# comment\nnumpy>=1.0\nnumpy>=999\n--index-url x\nno-such-package-qsm>=1\n")
    assert Dependencies.missingRequirements(str(trial)) == ["numpy>=999", "no-such-package-qsm>=1"]


def test_dependencies_go_through_slicer_packaging_or_are_asked_for_first(tmp_path, monkeypatch):
    import types

    import slicer
    import slicer.util

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy>=1.0\nno-such-package-qsm>=1\n")
    calls = []
    modern = types.ModuleType("slicer.packaging")  # Slicer >= 5.11
    modern.load_requirements = lambda path: ["parsed", path]
    modern.pip_ensure = lambda parsed, requester: calls.append(("pip_ensure", parsed, requester))
    monkeypatch.setitem(sys.modules, "slicer.packaging", modern)
    monkeypatch.setattr(slicer, "packaging", modern, raising=False)
    Dependencies.ensureRequirements(str(requirements), "QSM Processing")
    assert calls == [("pip_ensure", ["parsed", str(requirements)], "QSM Processing")]

    answers = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: answers.pop(0))
    monkeypatch.setattr(slicer.util, "pip_install", lambda packages: calls.append(("pip_install", packages)))
    for older in (types.ModuleType("slicer.packaging"), None):  # a slicer.packaging without pip_ensure, or none
        monkeypatch.setitem(sys.modules, "slicer.packaging", older)
        monkeypatch.setattr(slicer, "packaging", older, raising=False)
        calls.clear()
        answers[:] = [False, True]
        with pytest.raises(RuntimeError, match="cannot run without the Python packages no-such-package-qsm>=1"):
            Dependencies.ensureRequirements(str(requirements), "QSM Processing")
        assert calls == []
        Dependencies.ensureRequirements(str(requirements), "QSM Processing")
        assert calls == [("pip_install", ["no-such-package-qsm>=1"])]
    requirements.write_text("numpy>=1.0\n")
    calls.clear()
    Dependencies.ensureRequirements(str(requirements), "QSM Processing")  # nothing missing: no question
    assert calls == [] and answers == []


def test_advanced_section_offers_only_qsmlib_methods_with_their_real_defaults():
    from QSMLib import _backend
    from QSMLib.pipeline import PRESETS, REGISTRY, PipelineConfig

    assert set(Parameters.PRESETS) <= set(PRESETS)
    assert set(Parameters.PRESET_LABELS) == {*Parameters.PRESETS, Parameters.CUSTOM_PRESET}
    assert set(Parameters.DEVICES) == set(_backend.DEVICES)
    for stage, methods in Parameters.STAGE_METHODS.items():
        assert set(methods) <= set(REGISTRY[stage]), stage
        assert all(label and "_" not in label and label != name for name, label in methods.items()), stage
    assert set(Parameters.INVERSION_PARAMETERS) == set(Parameters.INVERSION_METHODS)
    for method, parameter in Parameters.INVERSION_PARAMETERS.items():
        assert inspect.signature(REGISTRY["inversion"][method].function).parameters[parameter.keyword].default == \
            parameter.default, method
        assert round(parameter.step, parameter.decimals) == parameter.step > 0
        assert Parameters.AUTOMATIC_TEXT in Parameters.inversionParameterTooltip(method)
    for method, parameter in Parameters.BACKGROUND_RADIUS.items():
        assert inspect.signature(REGISTRY["background"][method].function).parameters[parameter.keyword].default == \
            parameter.default
    for method in Parameters.INVERSION_METHODS:
        config = Parameters.customConfig("romeo", "vsharp", 9.0, method, 0.05, "whole_brain")
        parsed = PipelineConfig.from_dict(config)
        assert parsed.inversion.method == method and parsed.background.params == {"max_radius_mm": 9.0}
        assert parsed.inversion.params == {Parameters.INVERSION_PARAMETERS[method].keyword: 0.05}
    assert Parameters.customConfig("laplacian", "pdf", 9.0, "medi", 0.0, "csf")["background"]["params"] == {}
    with pytest.raises(ValueError, match="Unknown inversion method"):
        Parameters.customConfig("laplacian", "vsharp", 9.0, "magic", 0.05, "whole_brain")
    with pytest.raises(ValueError, match="kernel radius must be positive"):
        Parameters.customConfig("laplacian", "vsharp", 0.0, "tv", 0.05, "whole_brain")


def test_echo_times_typed_in_ms_become_seconds():
    assert Parameters.parseEchoTimesMs("4, 8.5;12 ") == pytest.approx([0.004, 0.0085, 0.012])
    assert Parameters.formatEchoTimesMs([0.004, 0.0085, 0.012]) == "4, 8.5, 12"
    assert Parameters.parseEchoTimesMs("") == []
    with pytest.raises(ValueError, match="numbers in ms"):
        Parameters.parseEchoTimesMs("4 ms, 8 ms")


def test_automatic_regularization_passes_nothing_so_qsmlib_decides():
    for method in Parameters.INVERSION_METHODS:
        config = Parameters.customConfig("romeo", "pdf", 12.0, method, 0.0, "csf")
        assert config["inversion"] == {"method": method, "params": {}}
    with pytest.raises(ValueError, match=r"Regularization λ of Linear TV \(FANSI\) must be positive, or 0"):
        Parameters.customConfig("romeo", "pdf", 12.0, "tv", -1e-4, "whole_brain")
    with pytest.raises(ValueError, match="must be positive"):
        Parameters.customConfig("romeo", "pdf", 12.0, "medi", float("nan"), "whole_brain")
