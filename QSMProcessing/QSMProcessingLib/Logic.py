"""QSMProcessingLogic: MRML nodes in, QSMLib in a background process, MRML nodes out (no Qt).

Usable from the Slicer Python console, from tests (with the ``slicer-core``
wheel) and from the module's widget::

    logic = QSMProcessingLogic()
    result = logic.process(magnitudeNodes, phaseNodes, [0.004, 0.008, 0.012], fieldStrengthTesla=3.0)
    result.chiVolume  # vtkMRMLScalarVolumeNode, ppm
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

#: Outputs a caller may ask for, with the QSMLib CLI's output key and the node name suffix.
OUTPUTS = {
    "chi": ("chi", "chi"),
    "total_field": ("total_field", "total field (Hz)"),
    "local_field": ("local_field", "local field (Hz)"),
    "mask": ("mask", "mask"),
    "r2star": ("r2star", "R2* (1/s)"),
}
#: Display window of chi maps in ppm (grey), as commonly used for brain QSM.
CHI_WINDOW_PPM = (-0.15, 0.25)
_MODULE_NAME = "QSMProcessing"
_STATISTICS_COLUMNS = (
    ("mean_ppm", "Mean", "ppm"),
    ("median_ppm", "Median", "ppm"),
    ("sd_ppm", "SD", "ppm"),
    ("voxels", "Voxels", ""),
    ("volume_ml", "Volume", "mL"),
)


@dataclass
class QSMOutputNodes:
    """Nodes created by one run; intermediates are None unless requested."""

    chiVolume: Any
    statisticsTable: Any = None
    totalFieldVolume: Any = None
    localFieldVolume: Any = None
    maskVolume: Any = None
    r2StarVolume: Any = None
    warnings: list[str] = field(default_factory=list)

    def nodes(self) -> list[Any]:
        """Every created node."""
        candidates = (self.chiVolume, self.totalFieldVolume, self.localFieldVolume, self.maskVolume,
                      self.r2StarVolume, self.statisticsTable)
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


class QSMRun:
    """A running QSM computation; poll it from the main thread, or wait for it.

    Nodes are created only in :meth:`poll` once the process has succeeded;
    cancelling or failing leaves the scene untouched, and the temporary
    folder is removed in every case.
    """

    def __init__(self, process: RunningProcess, job: _Job, progressCallback: Optional[ProgressCallback]):
        self._process = process
        self._job = job
        self._progressCallback = progressCallback
        self._outputFiles: dict[str, str] = {}
        self._errorMessage = ""
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
        """Stop the process, remove its temporary files; the scene stays as it was."""
        if self.finished:
            return
        self._process.kill()
        self.cancelled = True
        self._finish()

    def _finish(self) -> None:
        shutil.rmtree(self._job.workDirectory, ignore_errors=True)
        self.finished = True

    def _handleLine(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logging.debug("qsm: %s", line)
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "progress":
            if self._progressCallback is not None:
                self._progressCallback(float(event.get("fraction", 0.0)), str(event.get("message", "")))
        elif kind == "warning":
            self.warnings.append(str(event.get("message", "")))
            logging.warning("QSM: %s", event.get("message", ""))
        elif kind == "chosen":
            # values QSMLib chose from the data (e.g. the inversion's regularization and its rule)
            logging.info("QSM chose: %s", json.dumps(event.get("parameters", {}), sort_keys=True))
        elif kind == "done":
            self._outputFiles = {str(k): str(v) for k, v in dict(event.get("outputs", {})).items()}
        elif kind == "error":
            self._errorMessage = str(event.get("message", ""))


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
        config: Union[str, Mapping[str, Any]] = "consensus",
        outputs: Sequence[str] = ("chi",),
        wait: bool = True,
        progressCallback: Optional[ProgressCallback] = None,
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
        if not 0.1 <= float(b0) <= 20.0:
            raise ValueError(f"Field strength {b0} T is not plausible: give B0 in tesla (e.g. 3.0).")
        requested = _checkOutputs(outputs)
        configArgument = _checkConfig(config)
        frames = phaseFrames + magnitudeFrames
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
        workDirectory = Path(tempfile.mkdtemp(prefix="QSMProcessing-", dir=self.temporaryDirectory))
        try:
            arguments = self._writeInputs(
                workDirectory, magnitudeFrames, phaseFrames, ijkToRas, mask, labels, segmentNames, configArgument)
            arguments += ["--te", ",".join(repr(t) for t in echoTimes), "--b0", repr(float(b0)),
                          "--outputs", ",".join(OUTPUTS[name][0] for name in requested),
                          "--progress", "json", "--out", str(workDirectory / "output")]
            process = self.runner.start(
                [self._python(), "-m", "QSMLib.cli", "run", *arguments], _environmentWithQSMLib())
        except BaseException:
            shutil.rmtree(workDirectory, ignore_errors=True)
            raise
        job = _Job(scene, reference, referenceNode, _baseName(magnitudeList + phaseList), requested,
                   segmentNames, workDirectory)
        run = QSMRun(process, job, progressCallback)
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
        """Write the inputs as NIfTI (+ label names, config); return the CLI arguments for them."""
        arguments: list[str] = []
        for flag, role, frames in (("--mag", "magnitude", magnitudeFrames), ("--phase", "phase", phaseFrames)):
            paths = []
            for index, frame in enumerate(frames):
                path = directory / f"{role}_echo-{index + 1}.nii.gz"
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
        """Write a statistics table node to a CSV file (header row, then one row per segment)."""
        table = tableNode.GetTable()
        columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
        headers = []
        for column in columns:
            unit = tableNode.GetColumnUnitLabel(column.GetName())
            headers.append(f"{column.GetName()} ({unit})" if unit else column.GetName())
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(headers)
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
    if any(not math.isfinite(t) or t <= 0 for t in times) or any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"Echo times must be positive and increasing, got {times} s: list echoes in order.")
    if max(times) > 1.0:
        raise ValueError(f"Echo times {times} look like milliseconds: give them in seconds.")
    return times


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
    """Read the CLI's outputs, then create nodes (all or none)."""
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
    rows = _readStatistics(files["roi_stats"]) if job.segmentNames else []

    created: list[Any] = []
    try:
        nodes = {output: _addVolume(job, output, array, created) for output, array in arrays.items()}
        table = _addStatisticsTable(job, rows, created) if job.segmentNames else None
    except BaseException:
        for node in created:
            job.scene.RemoveNode(node)
        raise
    _placeInHierarchy(job, created)
    return QSMOutputNodes(
        chiVolume=nodes["chi"], statisticsTable=table, totalFieldVolume=nodes.get("total_field"),
        localFieldVolume=nodes.get("local_field"), maskVolume=nodes.get("mask"),
        r2StarVolume=nodes.get("r2star"), warnings=list(warnings))


def _addVolume(job: _Job, output: str, array: np.ndarray, created: list[Any]) -> Any:
    isMask = output == "mask"
    className = "vtkMRMLLabelMapVolumeNode" if isMask else "vtkMRMLScalarVolumeNode"
    node = job.scene.AddNewNodeByClass(className, job.scene.GenerateUniqueName(f"{job.baseName} {OUTPUTS[output][1]}"))
    created.append(node)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(job.referenceFrame.ijkToRas()))
    slicer.util.updateVolumeFromArray(node, array.astype(np.uint8 if isMask else np.float32))
    if job.referenceNode.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(job.referenceNode.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    created.append(node.GetDisplayNode())
    if output == "chi":
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*CHI_WINDOW_PPM)
        units = slicer.vtkCodedEntry()
        units.SetValueSchemeMeaning("[ppm]", "UCUM", "ppm")
        node.SetVoxelValueUnits(units)
    return node


def _readStatistics(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _addStatisticsTable(job: _Job, rows: Sequence[Mapping[str, str]], created: list[Any]) -> Any:
    byLabel = {int(row["label"]): row for row in rows}
    table = job.scene.AddNewNodeByClass("vtkMRMLTableNode", job.scene.GenerateUniqueName(
        f"{job.baseName} ROI statistics"))
    created.append(table)
    names = vtk.vtkStringArray()
    names.SetName("Segment")
    table.AddColumn(names)
    columns = []
    for key, title, unit in _STATISTICS_COLUMNS:
        column = vtk.vtkIntArray() if key == "voxels" else vtk.vtkDoubleArray()
        column.SetName(title)
        table.AddColumn(column)
        if unit:
            table.SetColumnUnitLabel(title, unit)
        columns.append((key, column))
    for label, name in enumerate(job.segmentNames, start=1):
        row = byLabel.get(label, {})
        names.InsertNextValue(name)
        for key, column in columns:
            text = row.get(key, "")
            if key == "voxels":
                column.InsertNextValue(int(float(text)) if text else 0)
            else:
                column.InsertNextValue(float(text) if text else math.nan)
    table.GetTable().Modified()
    return table


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
