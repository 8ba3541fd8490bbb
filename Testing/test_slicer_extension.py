"""The Slicer extension's files: .ui, parameter node, CMake lists, index entry, requirements, presets.

These need no Slicer application: the module file is read as source (it imports
Qt), the rest is plain files and the Qt-free QSMProcessingLib.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import struct
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "QSMProcessing"
sys.path.insert(0, str(MODULE_DIR))

from QSMProcessingLib import Dependencies, Parameters  # noqa: E402

MODULE_SOURCE = (MODULE_DIR / "QSMProcessing.py").read_text()
UI = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "QSMProcessing.ui").getroot()
#: Parameter node fields kept in sync by code (no wrapper connector exists for checkable node lists).
MANUALLY_SYNCED = {"magnitudeVolumes", "phaseVolumes"}


def _parameterFields() -> set[str]:
    tree = ast.parse(MODULE_SOURCE)
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
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_SOURCE))
    assert used and used <= widgets, used - widgets
    fields = _parameterFields()
    bound = _boundParameters()
    assert set(bound) <= fields, set(bound) - fields
    assert set(bound) == fields - MANUALLY_SYNCED
    for name in MANUALLY_SYNCED:
        assert f"node.{name}" in MODULE_SOURCE
    custom = {c.find("class").text for c in UI.iter("customwidget")}
    used_classes = {w.get("class") for w in UI.iter("widget")}
    assert {c for c in used_classes if not c.startswith("Q")} <= custom


def test_module_file_runs_nothing_at_import():
    for node in ast.parse(MODULE_SOURCE).body:
        allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign)
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        assert isinstance(node, allowed) or docstring, ast.dump(node)[:80]
        if isinstance(node, ast.Assign):
            assert isinstance(node.value, ast.Constant)
    imported = {alias.name.split(".")[0] for node in ast.parse(MODULE_SOURCE).body
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.parse(MODULE_SOURCE).body
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"os", "typing", "qt", "vtk", "slicer", "QSMProcessingLib"}


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
    prefix = "https://raw.githubusercontent.com/SlicerQSM/SlicerQSM/main/"
    icon = values["EXTENSION_ICONURL"]
    assert icon.startswith(prefix) and _png_size(ROOT / icon[len(prefix):]) == (128, 128)
    for url in values["EXTENSION_SCREENSHOTURLS"].split():
        assert url.startswith(prefix) and min(_png_size(ROOT / url[len(prefix):])) >= 200
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


def test_advanced_section_offers_only_qsmlib_methods_with_their_real_defaults():
    from QSMLib.background.vsharp import vsharp
    from QSMLib.pipeline import PRESETS, REGISTRY, PipelineConfig

    assert set(Parameters.PRESETS) <= set(PRESETS)
    offered = {"unwrap": Parameters.UNWRAP_METHODS, "background": Parameters.BACKGROUND_METHODS,
               "inversion": Parameters.INVERSION_METHODS, "reference": Parameters.REFERENCE_METHODS}
    for stage, methods in offered.items():
        assert set(methods) <= set(REGISTRY[stage]), stage
    assert set(Parameters.INVERSION_MAIN_PARAMETER) == set(Parameters.INVERSION_METHODS)
    for method, (keyword, default) in Parameters.INVERSION_MAIN_PARAMETER.items():
        assert inspect.signature(REGISTRY["inversion"][method].function).parameters[keyword].default == default
    keyword, default = Parameters.BACKGROUND_MAIN_PARAMETER["vsharp"]
    assert inspect.signature(vsharp).parameters[keyword].default == default
    for method in Parameters.INVERSION_METHODS:
        config = Parameters.customConfig("romeo", "vsharp", 9.0, method, 0.05, "whole_brain")
        parsed = PipelineConfig.from_dict(config)
        assert parsed.inversion.method == method and parsed.background.params == {"max_radius_mm": 9.0}
    with pytest.raises(ValueError, match="Unknown inversion method"):
        Parameters.customConfig("laplacian", "vsharp", 9.0, "magic", 0.05, "whole_brain")


def test_echo_times_typed_in_ms_become_seconds():
    assert Parameters.parseEchoTimesMs("4, 8.5;12 ") == pytest.approx([0.004, 0.0085, 0.012])
    assert Parameters.parseEchoTimesMs("") == []
    with pytest.raises(ValueError, match="numbers in ms"):
        Parameters.parseEchoTimesMs("4 ms, 8 ms")


def test_automatic_l2_regularization_is_left_to_qsmlib():
    config = Parameters.customConfig("romeo", "pdf", 12.0, "l2", 0.0, "csf")
    assert config["inversion"] == {"method": "l2", "params": {}}
    automatic_tv = Parameters.customConfig("romeo", "pdf", 12.0, "tv", 0.0, "csf")
    assert automatic_tv["inversion"] == {"method": "tv", "params": {}}
    with pytest.raises(ValueError, match="positive"):
        Parameters.customConfig("romeo", "pdf", 12.0, "tkd", 0.0, "whole_brain")
