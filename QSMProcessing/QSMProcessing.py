"""QSM Processing: module metadata, sample data registration and the self-test, which drives the panel.

The panel (:mod:`QSMProcessingLib.Widget`), the Qt-free logic and QSMLib are imported when first needed.
"""

import os
import time

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class QSMProcessing(ScriptedLoadableModule):
    """Module metadata (see ScriptedLoadableModule in Slicer's Base/Python/slicer)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("QSM Processing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.contributors = ["SlicerQSM contributors"]
        self.parent.helpText = _(
            "Quantitative susceptibility mapping (QSM) from multi-echo gradient-echo magnitude and phase: "
            "phase unwrapping, echo combination, background field removal and dipole inversion give a "
            "susceptibility map in ppm, with optional field maps, mask, R2* and per-segment statistics. "
            'See the <a href="{url}">documentation</a> for a tutorial on the sample data.'
        ).format(url="https://github.com/SlicerQSM/SlicerQSM#readme")
        self.parent.acknowledgementText = _(
            "Developed by the SlicerQSM contributors on QSMLib, a pure-Python QSM library. Defaults follow "
            "the ISMRM consensus recommendations for QSM (QSM Consensus Organization Committee, Magn Reson Med "
            "2024;91:1834-1862); please cite it and the papers of the methods you use, listed in the README. "
            "Phase offset correction MCPC-3D-S (Eckstein et al., Magn Reson Med 2018;79:2996-3006) is the "
            "subject of a patent: its commercial use may need a licence from the patent holder; research use "
            "is not affected."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Register the generated QSM head phantom in the Sample Data module (no download)."""
    import SampleData
    from QSMProcessingLib.SampleData import SAMPLE_NAME, loadHeadPhantomSample
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="QSM", sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[],
        customDownloader=loadHeadPhantomSample,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "QSMHeadPhantom.png"))


class QSMProcessingWidget(ScriptedLoadableModuleWidget):
    """Mounts the panel of :mod:`QSMProcessingLib.Widget` when the module is first opened."""

    panel = None

    def setup(self) -> None:
        from QSMProcessingLib.Widget import QSMProcessingPanel
        ScriptedLoadableModuleWidget.setup(self)
        self.panel = QSMProcessingPanel(self)

    def cleanup(self) -> None:
        self.panel.cleanup()

    def enter(self) -> None:
        self.panel.enter()

    def exit(self) -> None:
        self.panel.exit()


class QSMProcessingTest(ScriptedLoadableModuleTest):
    """Drives the panel as a user would, on the generated phantom (no network)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ApplyThenCancelFromThePanel()

    def test_ApplyThenCancelFromThePanel(self) -> None:
        from QSMProcessingLib import Parameters
        from QSMProcessingLib.SampleData import loadHeadPhantom

        slicer.util.selectModule("QSMProcessing")
        panel = slicer.util.getModuleWidget("QSMProcessing").panel
        ui = panel.ui
        self.delayDisplay("Choosing the echoes of the sample phantom")
        small = loadHeadPhantom(slicer.mrmlScene, voxelSizeMm=4.0, echoTimesSeconds=(0.004, 0.008, 0.012))
        self._check(ui, small, qt.Qt.Checked)
        self.assertEqual([n.GetID() for n in panel.parameterNode.phaseVolumes], [n.GetID() for n in small.phaseVolumes])
        self.assertEqual(ui.echoTimesLineEdit.text, "4, 8, 12")
        ui.roiSegmentationSelector.setCurrentNode(small.segmentation)
        ui.presetComboBox.currentIndex = list(Parameters.PRESET_LABELS).index("fast")
        ui.phaseSignComboBox.currentIndex = list(Parameters.PHASE_SIGNS).index("reversed")
        self.assertEqual((panel.parameterNode.preset, panel.parameterNode.phaseSign), ("fast", "reversed"))
        self.assertTrue(ui.applyButton.enabled)
        self.delayDisplay("Apply, the phase sign reversed: the map comes out negated and the log warns")
        ui.applyButton.click()
        self._waitFor(lambda: not panel.running, 300, "the computation to end")
        result = panel.lastResult
        self.assertIsNotNone(result, ui.statusLabel.text)
        matrices = [vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()]
        small.phaseVolumes[0].GetIJKToRASMatrix(matrices[0])
        result.chiVolume.GetIJKToRASMatrix(matrices[1])
        self.assertEqual(*[[m.GetElement(r, c) for r in range(4) for c in range(4)] for m in matrices])
        self.assertEqual(ui.resultsTableView.mrmlTableNode().GetNumberOfRows(),
                         small.segmentation.GetSegmentation().GetNumberOfSegments())
        self.assertRegex(ui.logTextEdit.plainText, r"(?s)Warning: .* looks sign-reversed.*Configuration used:")
        self.delayDisplay("Apply, then Cancel")
        large = loadHeadPhantom(slicer.mrmlScene, voxelSizeMm=2.0, echoTimesSeconds=(0.004, 0.008, 0.012))
        self._check(ui, small, qt.Qt.Unchecked)
        self._check(ui, large, qt.Qt.Checked)
        ui.presetComboBox.currentIndex = list(Parameters.PRESET_LABELS).index("consensus")
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        ui.applyButton.click()
        run = panel.activeRun
        self._waitFor(lambda: ui.progressBar.value > 0 or not panel.running, 120, "the engine to report progress")
        self.assertTrue(panel.running and run.engineRunning())
        ui.applyButton.click()
        self.assertFalse(panel.running)
        self.assertFalse(run.engineRunning(), "an engine process was left running")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Deleting a chosen echo removes it from the selection")
        slicer.mrmlScene.RemoveNode(large.phaseVolumes[-1])
        self.assertEqual([n.GetID() for n in panel.parameterNode.phaseVolumes],
                         [n.GetID() for n in large.phaseVolumes[:-1]])
        self.delayDisplay("Test passed")

    @staticmethod
    def _check(ui, phantom, state) -> None:
        box: slicer.qMRMLCheckableNodeComboBox
        for box, nodes in ((ui.magnitudeSelector, phantom.magnitudeVolumes), (ui.phaseSelector, phantom.phaseVolumes)):
            for volume in nodes:
                box.setCheckState(volume, state)

    def _waitFor(self, condition, timeoutSeconds: float, what: str) -> None:
        """Run the event loop (the panel polls the engine from a timer) until ``condition()`` holds."""
        deadline = time.monotonic() + timeoutSeconds
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"Timed out after {timeoutSeconds} s waiting for {what}.")
            slicer.app.processEvents()
            time.sleep(0.05)
