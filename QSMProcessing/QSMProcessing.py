"""QSM Processing: quantitative susceptibility maps from multi-echo GRE volumes in 3D Slicer.

This file holds the module metadata, the widget and the self-test; the work is
done by the Qt-free :mod:`QSMProcessingLib` (logic, MRML conversion, sample data)
and by QSMLib, run in a background process.
"""

import os
from typing import Annotated, Optional

import qt
import slicer
import vtk
from QSMProcessingLib import Parameters
from QSMProcessingLib.Logic import QSMProcessingLogic, QSMRun
from slicer import vtkMRMLNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Decimals, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DOCUMENTATION_URL = "https://github.com/SlicerQSM/SlicerQSM#readme"


class QSMProcessing(ScriptedLoadableModule):
    """Module metadata (see ScriptedLoadableModule in Slicer's Base/Python/slicer)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("QSM Processing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerQSM contributors"]
        self.parent.helpText = _(
            "Quantitative susceptibility mapping (QSM) from multi-echo gradient-echo magnitude and phase: "
            "phase unwrapping, echo combination, background field removal and dipole inversion give a "
            "susceptibility map in ppm, with optional field maps, mask, R2* and per-segment statistics. "
            'See the <a href="{url}">documentation</a> for a tutorial on the sample data.'
        ).format(url=DOCUMENTATION_URL)
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

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="QSM",
        sampleName="QSM head phantom",
        uris=[],
        fileNames=[],
        nodeNames=[],
        customDownloader=loadHeadPhantomSample,
        thumbnailFileName=os.path.join(iconsPath, "QSMHeadPhantom.png"),
    )


def loadHeadPhantomSample(source=None) -> None:
    """Sample Data button: build the phantom and show its first magnitude echo."""
    from QSMProcessingLib.SampleData import loadHeadPhantom

    with slicer.util.WaitCursor():
        phantom = loadHeadPhantom(slicer.mrmlScene)
    slicer.util.setSliceViewerLayers(background=phantom.magnitudeVolumes[0], fit=True)


@parameterNodeWrapper
class QSMProcessingParameterNode:
    """Everything the user chose in the module; saved with the scene."""

    magnitudeVolumes: list[vtkMRMLNode]
    phaseVolumes: list[vtkMRMLNode]
    echoTimesMs: str
    fieldStrengthTesla: Annotated[float, WithinRange(0.1, 20.0), Decimals(3)] = 3.0
    maskSegmentation: vtkMRMLSegmentationNode
    roiSegmentation: vtkMRMLSegmentationNode
    preset: Annotated[str, Choice([*Parameters.PRESETS, Parameters.CUSTOM_PRESET])] = "consensus"
    unwrapMethod: Annotated[str, Choice(list(Parameters.UNWRAP_METHODS))] = Parameters.UNWRAP_METHODS[0]
    backgroundMethod: Annotated[str, Choice(list(Parameters.BACKGROUND_METHODS))] = Parameters.BACKGROUND_METHODS[0]
    backgroundRadiusMm: Annotated[float, WithinRange(1.0, 30.0), Decimals(1)] = 12.0
    inversionMethod: Annotated[str, Choice(list(Parameters.INVERSION_METHODS))] = Parameters.INVERSION_METHODS[0]
    inversionParameter: Annotated[float, WithinRange(0.0, 1000.0), Decimals(6)] = 0.0
    referenceMethod: Annotated[str, Choice(list(Parameters.REFERENCE_METHODS))] = Parameters.REFERENCE_METHODS[0]
    outputTotalField: bool = False
    outputLocalField: bool = False
    outputMask: bool = False
    outputR2Star: bool = False


class QSMProcessingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI of the module: inputs, preset, outputs, Apply/Cancel, progress and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[QSMProcessingLogic] = None
        self._parameterNode: Optional[QSMProcessingParameterNode] = None
        self._parameterNodeGuiTag = None
        self._run: Optional[QSMRun] = None
        self._shownInversionMethod: Optional[str] = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPollRun)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QSMProcessing.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = QSMProcessingLogic()
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.magnitudeSelector.connect("checkedNodesChanged()", self.onEchoSelectionChanged)
        self.ui.phaseSelector.connect("checkedNodesChanged()", self.onEchoSelectionChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsvButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:
            self._run.cancel()
            self._endRun(_("Cancelled: the scene was closed."))
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.ui.resultsTableView.setMRMLTableNode(None)
        self.ui.exportCsvButton.enabled = False
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(QSMProcessingParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, inputParameterNode: Optional[QSMProcessingParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        self._shownInversionMethod = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def _updateGUI(self, caller=None, event=None) -> None:
        """Echo lists (not bound by the wrapper), Advanced section state, Apply button."""
        node = self._parameterNode
        for selector, chosen in ((self.ui.magnitudeSelector, node.magnitudeVolumes),
                                 (self.ui.phaseSelector, node.phaseVolumes)):
            wasBlocked = selector.blockSignals(True)
            for candidate in selector.nodes():
                selector.setCheckState(candidate, qt.Qt.Checked if candidate in chosen else qt.Qt.Unchecked)
            selector.blockSignals(wasBlocked)
        self.ui.advancedCollapsibleGroupBox.enabled = node.preset == Parameters.CUSTOM_PRESET
        if node.inversionMethod != self._shownInversionMethod:
            self._showInversionMethod(node.inversionMethod)
        if self._run is not None:
            return
        ready = bool(node.magnitudeVolumes) and bool(node.phaseVolumes) and bool(node.echoTimesMs.strip())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = (
            _("Compute the susceptibility map.") if ready
            else _("Select magnitude and phase echoes and give their echo times."))

    def onEchoSelectionChanged(self) -> None:
        """Store the checked echoes (ordered by echo time when known) and fill echo times and B0."""
        if self._parameterNode is None:
            return
        magnitude = self._echoOrder(list(self.ui.magnitudeSelector.checkedNodes()))
        phase = self._echoOrder(list(self.ui.phaseSelector.checkedNodes()))
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.magnitudeVolumes = magnitude
            self._parameterNode.phaseVolumes = phase
            for nodes in (phase, magnitude):
                try:
                    times = self.logic.readEchoTimes(nodes) if nodes else []
                except ValueError:
                    continue
                if times and None not in times:
                    self._parameterNode.echoTimesMs = ", ".join(f"{t * 1000:g}" for t in times)
                    break
            fieldStrength = self.logic.readFieldStrength(phase + magnitude)
            if fieldStrength is not None:
                self._parameterNode.fieldStrengthTesla = round(fieldStrength, 3)

    def _echoOrder(self, nodes: list) -> list:
        """Nodes sorted by echo time when every one of them is a single echo with a known echo time."""
        try:
            times = self.logic.readEchoTimes(nodes)
        except ValueError:
            return nodes
        if len(times) != len(nodes) or None in times:
            return nodes
        return [node for _, node in sorted(zip(times, nodes), key=lambda pair: pair[0])]

    def _showInversionMethod(self, method: str) -> None:
        """Name the inversion's main parameter; reset it to the method's default when the user switched."""
        keyword, default = Parameters.INVERSION_MAIN_PARAMETER[method]
        automatic = Parameters.isAutomatic(method)
        self.ui.inversionParameterLabel.text = keyword.replace("_", " ").capitalize() + (
            " (0: automatic):" if automatic else ":")
        userSwitched = self._shownInversionMethod is not None
        self._shownInversionMethod = method
        if userSwitched:
            self._parameterNode.inversionParameter = 0.0 if automatic else default

    def onApplyButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self._endRun(_("Cancelled."))
            return
        with slicer.util.tryWithErrorDisplay(_("QSM processing could not start."), waitCursor=True):
            ensureDependencies(self.resourcePath("requirements.txt"))
            node = self._parameterNode
            outputs = ["chi"] + [name for name, wanted in (
                ("total_field", node.outputTotalField), ("local_field", node.outputLocalField),
                ("mask", node.outputMask), ("r2star", node.outputR2Star)) if wanted]
            config = node.preset
            if node.preset == Parameters.CUSTOM_PRESET:
                config = Parameters.customConfig(
                    node.unwrapMethod, node.backgroundMethod, node.backgroundRadiusMm,
                    node.inversionMethod, node.inversionParameter, node.referenceMethod)
            self._run = self.logic.process(
                list(node.magnitudeVolumes), list(node.phaseVolumes), Parameters.parseEchoTimesMs(node.echoTimesMs),
                fieldStrengthTesla=node.fieldStrengthTesla, maskSegmentation=node.maskSegmentation,
                roiSegmentation=node.roiSegmentation, config=config, outputs=outputs, wait=False,
                progressCallback=self.onProgress)
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the computation; the scene is left as it was.")
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
            self._timer.start()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onPollRun(self) -> None:
        run = self._run
        if run is None or not run.poll():
            return
        if run.error is not None:
            self._endRun(_("Failed."))
            slicer.util.errorDisplay(str(run.error))
            return
        result = run.result
        message = _("Done.")
        if result.warnings:
            message += " " + " ".join(result.warnings)
        self._endRun(message)
        slicer.util.setSliceViewerLayers(background=result.chiVolume, fit=True)
        if result.statisticsTable is not None:
            self.ui.resultsTableView.setMRMLTableNode(result.statisticsTable)
            self.ui.exportCsvButton.enabled = True
            self.ui.resultsCollapsibleButton.collapsed = False

    def _endRun(self, message: str) -> None:
        self._timer.stop()
        self._run = None
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = message
        self.ui.applyButton.text = _("Apply")
        if self._parameterNode is not None:
            self._updateGUI()

    def onExportCsvButton(self) -> None:
        table = self.ui.resultsTableView.mrmlTableNode()
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export ROI statistics"), f"{table.GetName()}.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not write the CSV file."), waitCursor=True):
                self.logic.exportStatisticsCsv(table, path)


def ensureDependencies(requirementsPath: str) -> None:
    """Install QSMLib's Python requirements on first use, after asking the user.

    Slicer >= 5.11 offers ``pip_ensure`` (asks, installs with progress, skips in
    testing mode); older versions get an OK/Cancel question and ``pip_install``.
    """
    from QSMProcessingLib.Dependencies import missingRequirements

    packaging = getattr(slicer, "pydeps", None) or getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(packaging.load_requirements(requirementsPath), requester="QSM Processing")
        return
    missing = missingRequirements(requirementsPath)
    if not missing:
        return
    if not slicer.util.confirmOkCancelDisplay(
        _("QSM Processing needs these Python packages: {packages}. Install them now?").format(
            packages=", ".join(missing)), _("QSM Processing")):
        raise RuntimeError(_("The required Python packages were not installed."))
    slicer.util.pip_install(missing)


class QSMProcessingTest(ScriptedLoadableModuleTest):
    """Self-test on the generated phantom (no network)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PhantomToChi()

    def test_PhantomToChi(self) -> None:
        from QSMProcessingLib.SampleData import loadHeadPhantom

        self.delayDisplay("Generating the QSM head phantom")
        phantom = loadHeadPhantom(slicer.mrmlScene, voxelSizeMm=4.0)
        logic = QSMProcessingLogic()
        self.assertEqual(len(logic.readEchoTimes(phantom.phaseVolumes)), len(phantom.phaseVolumes))

        self.delayDisplay("Computing chi")
        result = logic.process(
            phantom.magnitudeVolumes, phantom.phaseVolumes, None,
            roiSegmentation=phantom.segmentation, config="fast", outputs=("chi", "local_field"))
        expected, actual = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        phantom.phaseVolumes[0].GetIJKToRASMatrix(expected)
        result.chiVolume.GetIJKToRASMatrix(actual)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(actual.GetElement(row, column), expected.GetElement(row, column))
        self.assertIsNotNone(result.localFieldVolume)
        segments = phantom.segmentation.GetSegmentation().GetNumberOfSegments()
        self.assertEqual(result.statisticsTable.GetNumberOfRows(), segments)
        self.delayDisplay("Test passed")
