"""The panel and the self-test call only members that PythonQt exposes (no Slicer application needed).

``qMRMLNodeComboBox::nodes()`` is a plain C++ method: calling it from Python
raised in Slicer, before Apply could be enabled. This test reads
QSMProcessingLib/Widget.py and QSMProcessing.py, finds every member used on a
Qt, CTK or MRML widget (see ``slicer_members.py``) and requires each to be in
``slicer_python_members.json``, where every entry names the header (or PythonQt
source) in which it was checked to be a property, slot, Q_INVOKABLE method,
signal or PythonQt decorator.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slicer_members import classChain, isAllowed, loadMemberList, uiClasses, usedMembers  # noqa: E402


def _describe(uses) -> str:
    return "\n".join(f"{u.path}:{u.line}: {u.className}.{u.member}{' (signal)' if u.isSignal else ''}" for u in uses)


def test_every_member_used_on_a_widget_is_one_pythonqt_exposes():
    uses, untyped = usedMembers()
    assert not untyped, f"getattr on the .ui without a class annotation, which the check cannot follow: {untyped}"
    assert len(uses) > 50
    classes = loadMemberList()["classes"]
    refused = [use for use in uses if not isAllowed(classes, use)]
    assert not refused, "Not verified as visible from Python (add it to the list only after checking the header):\n" \
        + _describe(refused)


def test_every_entry_of_the_member_list_is_used_and_names_its_source():
    uses, _ = usedMembers()
    classes = loadMemberList()["classes"]
    used = set()
    for use in uses:
        for className in classChain(classes, use.className):
            section = classes[className].get("signals" if use.isSignal else "members", {})
            if use.member in section:
                used.add((className, use.member))
                break
    listed = {(className, member) for className, entry in classes.items()
              for member in [*entry.get("members", {}), *entry.get("signals", {})]}
    assert listed - used == set(), "listed but no longer used"
    for className, entry in classes.items():
        assert ":" in entry["header"] and "/" in entry["header"], className  # repository:path of the header
        assert entry["base"] is None or entry["base"] in classes, className
        for kind in ("members", "signals"):
            assert all(isinstance(text, str) and text for text in entry.get(kind, {}).values()), className
    widgetClasses = set(uiClasses().values())
    assert {use.className for use in uses} - set(classes) == set()
    assert {"qMRMLCheckableNodeComboBox", "qMRMLNodeComboBox", "qMRMLTableView"} <= widgetClasses


def test_the_check_refuses_plain_cxx_methods_such_as_nodes(tmp_path):
    panel = tmp_path / "Widget.py"
    panel.write_text(textwrap.dedent("""
        def updateGUI(self):
            for candidate in self.ui.magnitudeSelector.nodes():
                self.ui.magnitudeSelector.setCheckState(candidate, 2)
            spinBox = self.ui.inversionParameterSpinBox
            spinBox.setDecimals(3)
            combo = getattr(self.ui, "presetComboBox")
            combo.currentIndex = 1
    """))
    uses, untyped = usedMembers({panel: "self.ui"})
    classes = loadMemberList()["classes"]
    refused = {(use.className, use.member) for use in uses if not isAllowed(classes, use)}
    assert refused == {("qMRMLCheckableNodeComboBox", "nodes"), ("QDoubleSpinBox", "setDecimals")}
    assert untyped == ["Widget.py:7"]
