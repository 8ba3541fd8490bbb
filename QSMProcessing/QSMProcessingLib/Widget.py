"""The QSM Processing panel: the GUI on top of :class:`QSMProcessingLogic` (needs the Slicer application).

Every member this file uses on a Qt, CTK or MRML widget is one that PythonQt
exposes (a property, slot, Q_INVOKABLE method or PythonQt wrapper): they are
listed, with the header each was checked in, in
``Testing/slicer_python_members.json``, and ``Testing/test_slicer_widget_members.py``
fails when this file uses anything else. Widgets reached through ``getattr``
carry a type annotation so that the check can follow them.
"""

from __future__ import annotations

from typing import Any, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import Parameters
from .Dependencies import ensureRequirements
from .Logic import QSMOutputNodes, QSMProcessingLogic, QSMRun
from .ParameterNode import QSMProcessingParameterNode

#: Interval at which a running computation is polled for progress (ms).
POLL_INTERVAL_MS = 200
#: Combo boxes filled from :mod:`Parameters`: widget name -> (parameter node field, registry name -> shown name).
METHOD_COMBO_BOXES = {
    "presetComboBox": ("preset", Parameters.PRESET_LABELS),
    "unwrapMethodComboBox": ("unwrapMethod", Parameters.UNWRAP_METHODS),
    "backgroundMethodComboBox": ("backgroundMethod", Parameters.BACKGROUND_METHODS),
    "inversionMethodComboBox": ("inversionMethod", Parameters.INVERSION_METHODS),
    "referenceMethodComboBox": ("referenceMethod", Parameters.REFERENCE_METHODS),
    "roiSourceComboBox": ("roiSource", Parameters.ROI_SOURCES),
    "readoutComboBox": ("readout", Parameters.READOUTS),
    "phaseSignComboBox": ("phaseSign", Parameters.PHASE_SIGNS),
    "deviceComboBox": ("device", Parameters.DEVICES),
}
#: Output check boxes: parameter node field -> output name of the logic.
OUTPUT_FIELDS = {
    "outputTotalField": "total_field",
    "outputLocalField": "local_field",
    "outputMask": "mask",
    "outputR2Star": "r2star",
}
#: Opacity of chi over the magnitude when "Show over the magnitude" is checked.
OVERLAY_OPACITY = 0.5
REQUESTER = "QSM Processing"


class QSMProcessingPanel(VTKObservationMixin):
    """The module's GUI: inputs, processing, outputs, Apply/Cancel, log and results.

    Parameters
    ----------
    moduleWidget : ScriptedLoadableModuleWidget
        The module's widget; the panel's .ui goes into its layout.
    """

    def __init__(self, moduleWidget: Any) -> None:
        VTKObservationMixin.__init__(self)
        self._moduleWidget = moduleWidget
        self.uiWidget = slicer.util.loadUI(moduleWidget.resourcePath("UI/QSMProcessing.ui"))
        self._moduleWidget.layout.addWidget(self.uiWidget)
        self.ui = slicer.util.childWidgetVariables(self.uiWidget)
        self.uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = QSMProcessingLogic()
        self.parameterNode: Optional[QSMProcessingParameterNode] = None
        self.lastResult: Optional[QSMOutputNodes] = None
        self.activeRun: Optional[QSMRun] = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._timer = qt.QTimer()
        self._timer.interval = POLL_INTERVAL_MS
        self._timer.connect("timeout()", self.onPollRun)

        for name, (_field, labels) in METHOD_COMBO_BOXES.items():
            combo: qt.QComboBox = getattr(self.ui, name)
            combo.clear()
            for label in labels.values():
                combo.addItem(label)
            # Connected after filling: adding the first item would report it as chosen.
            combo.connect("currentIndexChanged(int)", lambda index, name=name: self.onMethodChosen(name, index))
        self.ui.inversionParameterSpinBox.specialValueText = Parameters.AUTOMATIC_TEXT
        self.ui.inversionParameterSpinBox.connect("valueChanged(double)", self.onInversionParameterChanged)
        self.ui.progressBar.visible = False

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        self.ui.magnitudeSelector.connect("checkedNodesChanged()", self.onEchoSelectionChanged)
        self.ui.phaseSelector.connect("checkedNodesChanged()", self.onEchoSelectionChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsvButton)
        self.ui.showOverMagnitudeCheckBox.connect("toggled(bool)", self.onShowOverMagnitudeToggled)
        self.initializeParameterNode()

    @property
    def running(self) -> bool:
        """True while a computation started from the panel runs."""
        return self.activeRun is not None

    # Module life cycle -------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """The module is closing: stop the computation and every observation."""
        if self.activeRun is not None:
            self.activeRun.cancel()
            self.activeRun = None
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # A running computation goes on (and ends) while another module is shown.
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        if self.activeRun is not None:
            self._cancelRun(_("Cancelled: the scene was closed."))
        self.lastResult = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        self.ui.resultsTableView.setMRMLTableNode(None)
        self.ui.exportCsvButton.enabled = False
        if self._moduleWidget.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(QSMProcessingParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, parameterNode: Optional[QSMProcessingParameterNode]) -> None:
        self._disconnectParameterNode()
        self.parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def _disconnectParameterNode(self) -> None:
        if self.parameterNode is not None and self._parameterNodeGuiTag is not None:
            self.parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNodeGuiTag = None

    # Parameter node -> GUI ---------------------------------------------------------------------------

    def updateGUIFromParameterNode(self, caller: Any = None, event: Any = None) -> None:
        """Show what the wrapper does not bind: echo check marks, method boxes, the inversion parameter."""
        node = self.parameterNode
        if node is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            selector: slicer.qMRMLCheckableNodeComboBox
            for selector, chosen in ((self.ui.magnitudeSelector, node.magnitudeVolumes),
                                     (self.ui.phaseSelector, node.phaseVolumes)):
                chosenIds = {volume.GetID() for volume in chosen if volume is not None}
                for index in range(selector.nodeCount()):
                    candidate = selector.nodeFromIndex(index)
                    state = qt.Qt.Checked if candidate.GetID() in chosenIds else qt.Qt.Unchecked
                    if selector.checkState(candidate) != state:
                        selector.setCheckState(candidate, state)
            for name, (field, labels) in METHOD_COMBO_BOXES.items():
                combo: qt.QComboBox = getattr(self.ui, name)
                combo.currentIndex = list(labels).index(getattr(node, field))
            self.ui.roiSegmentationSelector.enabled = node.roiSource == "segmentation"
            self.ui.advancedCollapsibleGroupBox.enabled = node.preset == Parameters.CUSTOM_PRESET
            self.ui.backgroundRadiusSpinBox.enabled = node.backgroundMethod in Parameters.BACKGROUND_RADIUS
            self._showInversionParameter(node.inversionMethod, node.inversionParameter)
        finally:
            self._updatingGUI = False
        self._updateApplyButton()

    def _showInversionParameter(self, method: str, value: float) -> None:
        """Label, unit, precision and default of the chosen method's parameter; 0 shows as "Automatic"."""
        parameter = Parameters.INVERSION_PARAMETERS[method]
        spinBox = self.ui.inversionParameterSpinBox
        self.ui.inversionParameterLabel.text = parameter.label + ":"
        spinBox.decimals = parameter.decimals
        spinBox.singleStep = parameter.step
        spinBox.suffix = f" {parameter.unit}" if parameter.unit else ""
        spinBox.toolTip = Parameters.inversionParameterTooltip(method)
        spinBox.value = value

    def _updateApplyButton(self) -> None:
        if self.activeRun is not None:
            return  # the button is Cancel while a computation runs
        node = self.parameterNode
        ready = node is not None and bool(node.magnitudeVolumes) and bool(node.phaseVolumes) and bool(
            node.echoTimesMs.strip())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = (
            _("Compute the susceptibility map.") if ready
            else _("Select magnitude and phase echoes and give their echo times."))

    # GUI -> parameter node ---------------------------------------------------------------------------

    def onMethodChosen(self, comboName: str, index: int) -> None:
        if self._updatingGUI or self.parameterNode is None or index < 0:
            return
        field, labels = METHOD_COMBO_BOXES[comboName]
        with slicer.util.NodeModify(self.parameterNode):
            setattr(self.parameterNode, field, list(labels)[index])
            if field == "inversionMethod":
                # A value typed for another method means nothing for this one: back to Automatic.
                self.parameterNode.inversionParameter = 0.0

    def onInversionParameterChanged(self, value: float) -> None:
        if not self._updatingGUI and self.parameterNode is not None:
            self.parameterNode.inversionParameter = value

    def onEchoSelectionChanged(self) -> None:
        """Store the checked echoes (ordered by echo time when known) and fill echo times and B0."""
        if self._updatingGUI or self.parameterNode is None:
            return
        magnitude = self._echoOrder(list(self.ui.magnitudeSelector.checkedNodes()))
        phase = self._echoOrder(list(self.ui.phaseSelector.checkedNodes()))
        with slicer.util.NodeModify(self.parameterNode):
            self.parameterNode.magnitudeVolumes = magnitude
            self.parameterNode.phaseVolumes = phase
            for nodes in (phase, magnitude):
                try:
                    times = self.logic.readEchoTimes(nodes) if nodes else []
                except ValueError:
                    continue
                if times and None not in times:
                    self.parameterNode.echoTimesMs = Parameters.formatEchoTimesMs(times)
                    break
            fieldStrength = self.logic.readFieldStrength(phase + magnitude)
            if fieldStrength is not None:
                self.parameterNode.fieldStrengthTesla = round(fieldStrength, 3)

    def _echoOrder(self, nodes: list) -> list:
        """Nodes sorted by echo time when every one of them is a single echo with a known echo time."""
        try:
            times = self.logic.readEchoTimes(nodes)
        except ValueError:
            return nodes
        if len(times) != len(nodes) or None in times:
            return nodes
        return [node for _time, node in sorted(zip(times, nodes), key=lambda pair: pair[0])]

    def onNodeRemoved(self, caller: Any, event: Any) -> None:
        """A chosen echo was deleted: drop it from the selection (the stored list would hold None)."""
        node = self.parameterNode
        if node is None:
            return
        for field in ("magnitudeVolumes", "phaseVolumes"):
            volumes = list(getattr(node, field))
            present = [volume for volume in volumes if volume is not None and slicer.mrmlScene.IsNodePresent(volume)]
            if len(present) != len(volumes):
                setattr(node, field, present)

    # Apply, progress, Cancel -------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.activeRun is not None:
            self._cancelRun(_("Cancelled: the scene is unchanged."))
            return
        with slicer.util.tryWithErrorDisplay(_("QSM processing could not start."), waitCursor=True):
            ensureRequirements(self._moduleWidget.resourcePath("requirements.txt"), REQUESTER)
            node = self.parameterNode
            atlas = node.roiSource == "atlas"
            if atlas:  # the template and atlas data come with two more packages, installed on first use
                ensureRequirements(self._moduleWidget.resourcePath("requirements-atlas.txt"), REQUESTER)
            outputs = ["chi"] + [output for field, output in OUTPUT_FIELDS.items() if getattr(node, field)]
            config: Any = node.preset
            if node.preset == Parameters.CUSTOM_PRESET:
                config = Parameters.customConfig(
                    node.unwrapMethod, node.backgroundMethod, node.backgroundRadiusMm,
                    node.inversionMethod, node.inversionParameter, node.referenceMethod)
            self.ui.logTextEdit.clear()
            self.activeRun = self.logic.process(
                list(node.magnitudeVolumes), list(node.phaseVolumes), Parameters.parseEchoTimesMs(node.echoTimesMs),
                fieldStrengthTesla=node.fieldStrengthTesla, maskSegmentation=node.maskSegmentation,
                roiSegmentation=None if atlas else node.roiSegmentation, automaticRois="atlas" if atlas else None,
                config=config, outputs=outputs, wait=False,
                progressCallback=self.onProgress, outputVolume=node.outputVolume, logCallback=self.onLog,
                threads=node.threads, device=node.device, readout=node.readout,
                phaseSign=node.phaseSign)
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the computation; the scene is left as it was.")
            self.ui.progressBar.value = 0
            self.ui.progressBar.visible = True
            self.ui.statusLabel.text = _("Starting...")
            self._timer.start()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onPollRun(self) -> None:
        run = self.activeRun
        if run is None or not run.poll():
            return
        self.activeRun = None
        if run.error is not None:
            self._endRun(_("Failed."))
            slicer.util.errorDisplay(str(run.error))
            return
        result = run.result
        self.lastResult = result
        self._endRun(" ".join([_("Done."), *result.warnings]))
        self._showResult(result)

    def _cancelRun(self, message: str) -> None:
        run, self.activeRun = self.activeRun, None
        with slicer.util.WaitCursor():
            run.cancel()
        self._endRun(message)

    def _endRun(self, message: str) -> None:
        self._timer.stop()
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message
        self.ui.applyButton.text = _("Apply")
        self._updateApplyButton()

    # Results -----------------------------------------------------------------------------------------

    def onShowOverMagnitudeToggled(self, checked: bool) -> None:
        if self.lastResult is not None and slicer.mrmlScene.IsNodePresent(self.lastResult.chiVolume):
            self._showResult(self.lastResult)

    def _showResult(self, result: QSMOutputNodes) -> None:
        """Chi in the slice views (alone, or over the first magnitude echo) and the ROI table in the panel."""
        chi = result.chiVolume
        magnitude = self.parameterNode.magnitudeVolumes[0] if (
            self.parameterNode is not None and self.parameterNode.magnitudeVolumes) else None
        if self.ui.showOverMagnitudeCheckBox.checked and magnitude is not None and magnitude.IsA("vtkMRMLVolumeNode"):
            slicer.util.setSliceViewerLayers(background=magnitude, foreground=chi, foregroundOpacity=OVERLAY_OPACITY,
                                             fit=True)
        else:
            slicer.util.setSliceViewerLayers(background=chi, foreground=None, fit=True)
        table = result.statisticsTable
        self.ui.resultsTableView.setMRMLTableNode(table)
        self.ui.exportCsvButton.enabled = table is not None
        if table is not None:
            self.ui.resultsCollapsibleButton.collapsed = False

    def onExportCsvButton(self) -> None:
        table = self.ui.resultsTableView.mrmlTableNode()
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export ROI statistics"), f"{table.GetName()}.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Could not write the CSV file."), waitCursor=True):
                self.logic.exportStatisticsCsv(table, path)
