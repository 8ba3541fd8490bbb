"""QSM Processing logic against a real MRML scene (slicer-core wheel) and the real ``qsm`` CLI.

The wheel has MRML, volume/segmentation/table nodes and ``slicer.util``, but no
Qt, ``slicer.app`` or scripted-module base classes: the logic is Qt-free and is
tested here directly.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from warped_head import warped_head  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMProcessing"))

from QSMProcessingLib import Nodes  # noqa: E402
from QSMProcessingLib.Logic import (  # noqa: E402
    CHI_WINDOW_PPM,
    RESULT_REFERENCE_ROLES,
    QSMProcessingLogic,
    describeProvenance,
    displaySettings,
)
from QSMProcessingLib.SampleData import loadHeadPhantom  # noqa: E402

from QSMLib.phantom import deep_grey_matter_labels, simulate_head  # noqa: E402
from QSMLib.rois import ROI_NAMES  # noqa: E402

ECHO_TIMES_S = (0.004, 0.008, 0.012)
_converterRules = []


@pytest.fixture
def slicer_scene():
    """A fresh scene as ``slicer.mrmlScene``, with the segmentation converters Slicer registers at startup."""
    if not _converterRules:
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        _converterRules.append(True)
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # as the Colors module does in Slicer
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(True)


@pytest.fixture
def slicer_phantom(slicer_scene):
    """The sample data (QSM head phantom) at 4 mm with three echoes."""
    return loadHeadPhantom(slicer_scene, voxelSizeMm=4.0, echoTimesSeconds=ECHO_TIMES_S)


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _writeNifti(path: Path, axesArray: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI from an array indexed (i, j, k) and its index -> RAS affine, written by SimpleITK directly."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(axesArray, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).reshape(-1).tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))


def _loadVolume(scene, path: Path):
    """Load a file with Slicer's own ITK-based reader (as File > Add Data would)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def test_oblique_nifti_volumes_give_chi_on_the_input_grid_equal_to_the_cli(slicer_scene, tmp_path):
    phantom = simulate_head(voxel_size_mm=(4.0, 4.0, 4.0), echo_times_s=ECHO_TIMES_S, oblique_deg=20.0)
    acquisition = phantom.acquisition
    files = {"magnitude": [], "phase": []}
    for echo in range(len(ECHO_TIMES_S)):
        for role, data in (("magnitude", acquisition.magnitude), ("phase", acquisition.phase)):
            path = tmp_path / f"{role}_{echo + 1}.nii.gz"
            _writeNifti(path, data[echo], acquisition.affine)
            files[role].append(path)
    magnitudeNodes = [_loadVolume(slicer_scene, p) for p in files["magnitude"]]
    phaseNodes = [_loadVolume(slicer_scene, p) for p in files["phase"]]
    np.testing.assert_allclose(_matrix(phaseNodes[0]), acquisition.affine, atol=1e-5)

    result = QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(
        magnitudeNodes, phaseNodes, list(ECHO_TIMES_S), fieldStrengthTesla=3.0, config="fast")

    np.testing.assert_array_equal(_matrix(result.chiVolume), _matrix(phaseNodes[0]))
    out = tmp_path / "cli"
    completed = subprocess.run(
        [sys.executable, "-m", "QSMLib.cli", "run", "--mag", *map(str, files["magnitude"]),
         "--phase", *map(str, files["phase"]), "--te", ",".join(map(str, ECHO_TIMES_S)), "--b0", "3",
         "--config", "fast", "--out", str(out)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "chi.nii.gz")))
    chi = slicer.util.arrayFromVolume(result.chiVolume)
    assert chi.shape == expected.shape
    np.testing.assert_allclose(chi, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(chi).max() > 0.05
    display = result.chiVolume.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx(CHI_WINDOW_PPM)
    presets = [(display.GetWindowPreset(i), display.GetLevelPreset(i))
               for i in range(display.GetNumberOfWindowLevelPresets())]
    assert presets[0] == pytest.approx((0.4, 0.05)) and len(presets) == 3
    assert result.chiVolume.GetVoxelValueUnits().GetCodeMeaning() == "ppm"
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(result.chiVolume)
    assert legend is not None and legend.GetTitleText() == "chi (ppm)"
    assert not any(tmp_path.glob("QSMProcessing-*"))


def test_the_phase_sign_reaches_the_engine_and_a_negated_map_is_warned_about(slicer_phantom, tmp_path):
    # the phantom's phase is right-handed: declared reversed, its map comes out negated and the log says so
    log = []
    result = QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(
        slicer_phantom.magnitudeVolumes, slicer_phantom.phaseVolumes, None, config="fast", phaseSign="reversed",
        logCallback=log.append)
    assert log[0].endswith(", phase negated (reversed sign)."), log[0]
    warned = [line for line in log if line.startswith("Warning: The susceptibility map looks sign-reversed")]
    assert len(warned) == 1 and "in Slicer, Phase sign: As stored" in warned[0], log
    assert result.provenance["chosen_parameters"]["sign_check"]["reversed"]


def test_roi_table_has_one_row_per_named_segment_with_numpy_means(slicer_phantom, slicer_scene, tmp_path):
    log = []
    result = QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(
        slicer_phantom.magnitudeVolumes, slicer_phantom.phaseVolumes, None,
        roiSegmentation=slicer_phantom.segmentation, config="fast", outputs=("chi", "local_field", "mask"),
        logCallback=log.append)

    truth = simulate_head(voxel_size_mm=(4.0, 4.0, 4.0), echo_times_s=ECHO_TIMES_S)
    names = deep_grey_matter_labels(truth)
    chi = slicer.util.arrayFromVolume(result.chiVolume).astype(np.float64)
    labels = np.transpose(truth.labels, (2, 1, 0))  # phantom axes (i, j, k) -> Slicer (k, j, i)
    table = result.statisticsTable
    segmentation = slicer_phantom.segmentation.GetSegmentation()
    assert table.GetNumberOfRows() == segmentation.GetNumberOfSegments() == len(names)
    column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    # The Segment Statistics module's column names, in its order: count, volume, mean, SD, median.
    assert list(column) == ["Segment", "Number of voxels [voxels]", "Volume [mm3]", "Mean [ppm]",
                            "Standard Deviation [ppm]", "Median [ppm]"]
    for row, label in enumerate(sorted(names)):
        assert table.GetCellText(row, column["Segment"]) == segmentation.GetNthSegment(row).GetName() == names[label]
        region = labels == label
        assert int(table.GetCellText(row, column["Number of voxels [voxels]"])) == int(region.sum())
        assert float(table.GetCellText(row, column["Volume [mm3]"])) == pytest.approx(64.0 * region.sum())
        assert float(table.GetCellText(row, column["Mean [ppm]"])) == pytest.approx(chi[region].mean(), abs=2e-6)
        assert float(table.GetCellText(row, column["Median [ppm]"])) == pytest.approx(np.median(chi[region]),
                                                                                       abs=2e-6)
        assert float(table.GetCellText(row, column["Standard Deviation [ppm]"])) == pytest.approx(
            chi[region].std(ddof=1), rel=1e-3, abs=2e-6)
    assert table.GetColumnUnitLabel("Mean [ppm]") == "ppm" and table.GetColumnUnitLabel("Volume [mm3]") == "mm3"

    field = result.localFieldVolume
    assert field.GetVoxelValueUnits().GetCodeMeaning() == "Hz"
    hz = 0.05 * 42.577478 * 3.0  # the local field window is +-0.05 ppm of the Larmor frequency
    display = field.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((-hz, hz))
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(field) is None
    assert result.chiVolume.GetNodeReference(RESULT_REFERENCE_ROLES["local_field"]) is field
    assert result.chiVolume.GetNodeReference(RESULT_REFERENCE_ROLES["statistics"]) is table

    assert log[0].startswith("Started: 3 echoes, TE 4, 8, 12 ms, B0 3.000 T, configuration fast")
    assert any(line.endswith("%  unwrap: starting") for line in log)
    assert "  inversion: Single-step TV (no background step) (tolerance=0.01)" in log and log[-1] == "Done.", log
    assert any(line.startswith("Reference: reference=whole_brain, offset_ppm=") for line in log)
    # the readout was left to QSMLib: the log says what it found
    assert any(line.startswith("bipolar chose from the data: readout=detected monopolar") for line in log), log
    assert not any("looks sign-reversed" in line for line in log), log
    assert result.provenance["config"]["inversion"]["method"] == "sstv"

    for node in (result.localFieldVolume, result.maskVolume):
        np.testing.assert_array_equal(_matrix(node), _matrix(slicer_phantom.phaseVolumes[0]))
    assert result.maskVolume.IsA("vtkMRMLLabelMapVolumeNode")
    assert result.chiVolume.GetName() == "QSM head phantom chi"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    # Outputs sit in the input's study under its patient, as DICOM export needs (study and patient tags).
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(slicer_phantom.phaseVolumes[0]))
    assert hierarchy.GetItemLevel(study) == "Study"
    assert hierarchy.GetItemLevel(hierarchy.GetItemParent(study)) == "Patient"
    for node in result.nodes():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study

    csvPath = tmp_path / "stats.csv"
    QSMProcessingLogic.exportStatisticsCsv(table, str(csvPath))
    rows = list(csv.reader(csvPath.open()))
    assert rows[0] == list(column)
    assert [r[0] for r in rows[1:]] == [names[label] for label in sorted(names)]
    assert float(rows[1][3]) == pytest.approx(float(table.GetCellText(0, column["Mean [ppm]"])))


def test_a_rerun_into_the_previous_chi_replaces_it_and_its_maps_instead_of_adding_nodes(
        slicer_phantom, slicer_scene, tmp_path):
    logic = QSMProcessingLogic(temporaryDirectory=str(tmp_path))
    arguments = dict(magnitudeNodes=slicer_phantom.magnitudeVolumes, phaseNodes=slicer_phantom.phaseVolumes,
                     echoTimesSeconds=None, roiSegmentation=slicer_phantom.segmentation,
                     outputs=("chi", "local_field"))
    first = logic.process(config="fast", **arguments)
    first.chiVolume.SetName("my chi")
    before = slicer.util.arrayFromVolume(first.chiVolume).copy()
    count = slicer_scene.GetNumberOfNodes()

    tkd = {"inversion": {"method": "tkd", "params": {}}}
    second = logic.process(config=tkd, outputVolume=first.chiVolume, **arguments)

    assert slicer_scene.GetNumberOfNodes() == count
    assert second.chiVolume is first.chiVolume and second.chiVolume.GetName() == "my chi"
    assert second.localFieldVolume is first.localFieldVolume
    assert second.statisticsTable is first.statisticsTable
    assert second.statisticsTable.GetNumberOfRows() == first.statisticsTable.GetNumberOfRows()
    assert not np.allclose(slicer.util.arrayFromVolume(second.chiVolume), before)
    assert second.provenance["config"]["inversion"]["method"] == "tkd"
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(second.chiVolume) is not None

    third = logic.process(config="fast", outputVolume=second.chiVolume,
                          **{**arguments, "outputs": ("chi", "local_field", "mask")})
    assert third.maskVolume is not None and slicer_scene.GetNumberOfNodes() > count  # a new map is added
    assert third.chiVolume.GetNodeReference(RESULT_REFERENCE_ROLES["mask"]) is third.maskVolume


def test_each_map_has_its_units_window_and_presets_scaled_with_b0():
    chi = displaySettings("chi", 7.0)
    assert chi.units == ("[ppm]", "UCUM", "ppm") and chi.window == CHI_WINDOW_PPM and chi.window in chi.presets
    hzPerPpm = 42.577478 * 3.0
    total, local = displaySettings("total_field", 3.0), displaySettings("local_field", 3.0)
    assert total.units[2] == local.units[2] == "Hz"
    assert total.window == pytest.approx((-hzPerPpm, hzPerPpm)) and local.window == pytest.approx(
        (-0.05 * hzPerPpm, 0.05 * hzPerPpm))
    assert displaySettings("local_field", 7.0).window[1] == pytest.approx(local.window[1] * 7.0 / 3.0)
    r2star = displaySettings("r2star", 3.0)
    assert r2star.units[0] == "/s" and r2star.window == (0.0, 60.0) and len(r2star.presets) == 3
    assert displaySettings("mask", 3.0) is None


def test_provenance_is_described_for_the_log_with_any_section_qsmlib_adds():
    provenance = {
        "software": {"QSMLib": "0.1.0", "numpy": "2.0"},
        "config": {"unwrap": {"method": "romeo", "params": {}},
                   "inversion": {"method": "nltv", "params": {"regularization": 0.0003}},
                   "relaxometry": {"method": "none", "params": {}}, "per_echo": False},
        "reference": {"reference": "whole_brain", "offset_ppm": -0.0891234},
        "chosen_parameters": {"inversion.regularization": 0.000312},
        "timings_s": {"unwrap": 0.04, "inversion": 1.26},
        "inputs": {"files": {}}, "created": "2026-01-01T00:00:00",
    }
    assert describeProvenance(provenance) == [
        "Configuration used:",
        "  unwrap: ROMEO (path based)",
        "  inversion: Nonlinear TV (FANSI) (regularization=0.0003)",
        "  per_echo: False",
        "Reference: reference=whole_brain, offset_ppm=-0.08912",
        "Chosen parameters: inversion.regularization=0.000312",
        "Time per stage: unwrap 0.0 s, inversion 1.3 s",
        "Software: QSMLib 0.1.0, numpy 2.0",
    ]
    assert describeProvenance({}) == []


def _volume(scene, name, attributes=None, value=1.0, shape=(6, 7, 8)):
    node = slicer.util.addVolumeFromArray(np.full(shape, value, np.float32), np.diag([2.0, 2.0, 3.0, 1.0]), name)
    for key, text in (attributes or {}).items():
        node.SetAttribute(key, text)
    return node


class FakeDicomDatabase:
    """Stands in for ``slicer.dicomDatabase``: one file per instance UID."""

    def __init__(self, values):
        self.values = values  # uid -> {tag: value}

    def fileForInstance(self, uid):
        return f"/dicom/{uid}.dcm" if uid in self.values else ""

    def fileValue(self, fileName, tag):
        return self.values[Path(fileName).stem].get(tag, "")


def test_echo_times_are_read_where_slicer_importers_store_them(slicer_scene):
    logic = QSMProcessingLogic(dicomDatabase=FakeDicomDatabase({
        "1.2.1": {"0018,0081": "4.0", "0018,0084": "123.2"}, "1.2.2": {"0018,0081": "8.5"}}))
    ours = [_volume(slicer_scene, f"e{n}", {"QSM.EchoTime": str(t)}) for n, t in enumerate(ECHO_TIMES_S)]
    assert logic.readEchoTimes(ours) == pytest.approx(list(ECHO_TIMES_S))

    dicom = [_volume(slicer_scene, "d1", {"DICOM.instanceUIDs": "1.2.1 1.2.9"}),
             _volume(slicer_scene, "d2", {"DICOM.instanceUIDs": "1.2.2"}),
             _volume(slicer_scene, "d3", {"DICOM.instanceUIDs": "9.9.9"})]
    assert logic.readEchoTimes(dicom) == [pytest.approx(0.004), pytest.approx(0.0085), None]
    assert logic.readFieldStrength(dicom) == pytest.approx(123.2 / 42.577478)

    multiVolume = slicer_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "mv")
    slicer.util.updateVolumeFromArray(multiVolume, np.random.default_rng(0).random((6, 7, 8, 3)).astype(np.float32))
    for key, text in {"MultiVolume.FrameLabels": "4.0,8.0,12.0", "MultiVolume.NumberOfFrames": "3",
                      "MultiVolume.FrameIdentifyingDICOMTagName": "EchoTime",
                      "MultiVolume.FrameIdentifyingDICOMTagUnits": "ms"}.items():
        multiVolume.SetAttribute(key, text)
    frames = Nodes.echoFramesFromNodes([multiVolume])
    assert [f.echoTimeSeconds for f in frames] == pytest.approx(list(ECHO_TIMES_S))
    np.testing.assert_array_equal(frames[1].voxels(), slicer.util.arrayFromVolume(multiVolume)[..., 1])

    indexed = slicer_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "seq")
    indexed.SetIndexName("EchoTime")
    indexed.SetIndexUnit("ms")
    copied = slicer_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "seq from MultiVolumeImporter")
    for key in ("MultiVolume.FrameLabels", "MultiVolume.FrameIdentifyingDICOMTagName",
                "MultiVolume.FrameIdentifyingDICOMTagUnits"):
        copied.SetAttribute(key, multiVolume.GetAttribute(key))
    for n, milliseconds in enumerate(("4", "8", "12")):
        indexed.SetDataNodeAtValue(ours[n], milliseconds)
        copied.SetDataNodeAtValue(ours[n], str(n))
    assert logic.readEchoTimes([indexed]) == pytest.approx(list(ECHO_TIMES_S))
    assert logic.readEchoTimes([copied]) == pytest.approx(list(ECHO_TIMES_S))


def test_missing_echo_times_are_a_clear_error_before_any_node(slicer_scene, tmp_path):
    magnitude = [_volume(slicer_scene, f"m{n}", value=n + 1.0) for n in range(3)]
    phase = [_volume(slicer_scene, f"p{n}", {"QSM.EchoTime": "0.004"} if n == 0 else None) for n in range(3)]
    count = slicer_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"Echo times are unknown for echo 2 \('p1'\), echo 3 \('p2'\).*ms"):
        QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(magnitude, phase, None, fieldStrengthTesla=3.0)
    assert slicer_scene.GetNumberOfNodes() == count and not any(tmp_path.iterdir())


def test_bad_inputs_are_refused_before_anything_is_created(slicer_phantom, slicer_scene, tmp_path):
    logic = QSMProcessingLogic(temporaryDirectory=str(tmp_path))
    magnitude, phase = slicer_phantom.magnitudeVolumes, slicer_phantom.phaseVolumes
    small = _volume(slicer_scene, "small", shape=(4, 4, 4))
    moved = _volume(slicer_scene, "moved", shape=slicer.util.arrayFromVolume(phase[0]).shape)
    overlapping = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "overlap")
    overlapping.SetReferenceImageGeometryParameterFromVolumeNode(magnitude[0])
    for name in ("left", "right"):  # one labelmap layer each, same voxels
        labelmap = slicer.vtkOrientedImageData()
        labelmap.SetExtent(10, 20, 10, 20, 10, 20)
        labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(_matrix(magnitude[0])))
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        labelmap.GetPointData().GetScalars().Fill(1)
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.AddRepresentation("Binary labelmap", labelmap)
        overlapping.GetSegmentation().AddSegment(segment)
    cases = {
        "2 magnitude echo": dict(magnitudeNodes=magnitude[:2]),
        "increasing": dict(echoTimesSeconds=[0.008, 0.004, 0.012]),
        "milliseconds": dict(echoTimesSeconds=[4, 8, 12]),
        "one per echo": dict(echoTimesSeconds=[0.004, 0.008]),
        "share one voxel grid": dict(phaseNodes=[*phase[:2], small]),
        "'moved' is not on the same voxel grid": dict(magnitudeNodes=[moved, *magnitude[1:]]),
        "not a plausible MRI field": dict(fieldStrengthTesla=300.0),
        "overlap": dict(roiSegmentation=overlapping),
        "Unknown output": dict(outputs=("chi", "swi")),
        "neither a preset": dict(config="best"),
        "Unknown inversion method": dict(config={"inversion": {"method": "magic"}}),
        "is a vtkMRMLSegmentationNode": dict(phaseNodes=[overlapping]),
        "Output volume 'label' is a vtkMRMLLabelMapVolumeNode": dict(
            outputVolume=slicer_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")),
        "is one of the input echoes": dict(outputVolume=phase[1]),
        "threads must be a whole number": dict(threads=-1),
        "device must be one of": dict(device="gpu"),
        "readout must be one of": dict(readout="flyback"),
        "phaseSign must be one of": dict(phaseSign="-1"),
    }
    count = slicer_scene.GetNumberOfNodes()
    for message, change in cases.items():
        arguments = dict(magnitudeNodes=magnitude, phaseNodes=phase, echoTimesSeconds=list(ECHO_TIMES_S))
        arguments.update(change)
        with pytest.raises(ValueError, match=message):
            logic.process(**arguments)
        assert slicer_scene.GetNumberOfNodes() == count, message
    assert not any(tmp_path.iterdir())


def test_cancel_leaves_the_scene_unchanged_and_no_temporary_folder(slicer_scene, tmp_path):
    phantom = loadHeadPhantom(slicer_scene, voxelSizeMm=2.0, echoTimesSeconds=ECHO_TIMES_S)
    count = slicer_scene.GetNumberOfNodes()
    messages, log = [], []
    run = QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(
        phantom.magnitudeVolumes, phantom.phaseVolumes, None, config="consensus", wait=False,
        progressCallback=lambda fraction, message: messages.append((fraction, message)), logCallback=log.append)
    deadline = time.monotonic() + 60
    while not messages and time.monotonic() < deadline:
        assert not run.poll()
        time.sleep(0.02)
    assert messages and 0.0 <= messages[0][0] < 1.0
    assert run.engineRunning()
    run.cancel()
    assert run.finished and run.cancelled and run.result is None
    assert not run.engineRunning()
    assert log[-1] == "Cancelled: the scene is unchanged."
    assert slicer_scene.GetNumberOfNodes() == count
    assert not any(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="cancelled"):
        run.wait()


def test_a_failed_run_reports_the_cli_message_and_changes_nothing(slicer_scene, tmp_path):
    magnitude = [_volume(slicer_scene, f"m{n}", value=5.0, shape=(12, 12, 12)) for n in range(3)]
    phase = [_volume(slicer_scene, f"p{n}", value=0.3, shape=(12, 12, 12)) for n in range(3)]
    count = slicer_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="constant"):
        QSMProcessingLogic(temporaryDirectory=str(tmp_path)).process(
            magnitude, phase, list(ECHO_TIMES_S), fieldStrengthTesla=3.0, config="fast")
    assert slicer_scene.GetNumberOfNodes() == count and not any(tmp_path.iterdir())


class FakeProcess:
    """A RunningProcess that replays JSON lines, for what the real CLI cannot be made to do on demand."""

    def __init__(self, lines, code):
        self.lines, self.code = list(lines), code

    def readLines(self):
        lines, self.lines = self.lines, []
        return lines

    def returnCode(self):
        return self.code

    def errorOutput(self):
        return ""

    def kill(self):
        self.code = -15

    def running(self):
        return self.code is None


class FakeRunner:
    def __init__(self, process):
        self.process, self.arguments = process, None

    def start(self, arguments, environment=None):
        self.arguments, self.environment = list(arguments), dict(environment)
        assert str(Path(__file__).resolve().parents[1]) in environment["PYTHONPATH"].split(os.pathsep)
        return self.process


def test_custom_config_and_inputs_reach_the_cli_and_missing_outputs_fail(slicer_phantom, slicer_scene, tmp_path):
    lines = [json.dumps({"event": "progress", "fraction": 0.5, "stage": "unwrap", "message": "unwrap: half"}),
             "not json", json.dumps({"event": "done", "outputs": {}})]
    runner = FakeRunner(FakeProcess(lines, 0))
    config = {"inversion": {"method": "tv", "params": {"regularization": 1e-3}}}
    count = slicer_scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="failed"):
        QSMProcessingLogic(runner=runner, temporaryDirectory=str(tmp_path)).process(
            slicer_phantom.magnitudeVolumes, slicer_phantom.phaseVolumes, None,
            maskSegmentation=slicer_phantom.segmentation, config=config, outputs=("chi", "total_field"), threads=2,
            device="auto", readout="bipolar", phaseSign="reversed")
    arguments = runner.arguments
    assert arguments[1:4] == ["-m", "QSMLib.cli", "run"]
    assert len(arguments[arguments.index("--mag") + 1:arguments.index("--phase")]) == 3
    assert arguments[arguments.index("--te") + 1] == "0.004,0.008,0.012"
    assert arguments[arguments.index("--b0") + 1] == "3.0"
    assert arguments[arguments.index("--outputs") + 1] == "chi,total_field"
    assert arguments[arguments.index("--config") + 1].endswith("config.json")
    assert "--mask" in arguments and "--labels" not in arguments
    assert arguments[arguments.index("--threads") + 1] == "2" and runner.environment["OPENBLAS_NUM_THREADS"] == "2"
    assert arguments[arguments.index("--device") + 1] == "auto"
    assert "--bipolar" in arguments and "--monopolar" not in arguments
    assert arguments[arguments.index("--phase-sign") + 1] == "-1"
    # temporary files: echoes and outputs uncompressed
    assert arguments[arguments.index("--compress") + 1] == "none"
    assert all(path.endswith(".nii") for path in arguments[arguments.index("--mag") + 1:arguments.index("--phase")])
    assert slicer_scene.GetNumberOfNodes() == count and not any(tmp_path.iterdir())
    # the default readout is left to QSMLib to detect, and the phase goes in as stored: no flags
    runner = FakeRunner(FakeProcess(lines, 0))
    with pytest.raises(RuntimeError, match="failed"):
        QSMProcessingLogic(runner=runner, temporaryDirectory=str(tmp_path)).process(
            slicer_phantom.magnitudeVolumes, slicer_phantom.phaseVolumes, None)
    assert not {"--bipolar", "--monopolar", "--phase-sign"} & set(runner.arguments)


def test_parameter_node_is_one_singleton_per_scene(slicer_scene):
    logic = QSMProcessingLogic()
    node = logic.getParameterNode()
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetModuleName() == "QSMProcessing"
    assert logic.getParameterNode() is node
    assert slicer_scene.GetSingletonNode("QSMProcessing", "vtkMRMLScriptedModuleNode") is node


def test_automatic_deep_grey_matter_rois_become_a_segmentation_with_their_statistics(
        slicer_scene, tmp_path, warped_head):
    acquisition = warped_head.acquisition
    files = {"magnitude": [], "phase": []}
    for echo in range(acquisition.n_echoes):
        for role, data in (("magnitude", acquisition.magnitude), ("phase", acquisition.phase)):
            path = tmp_path / f"{role}_{echo + 1}.nii.gz"
            _writeNifti(path, data[echo], acquisition.affine)
            files[role].append(path)
    magnitudeNodes = [_loadVolume(slicer_scene, p) for p in files["magnitude"]]
    phaseNodes = [_loadVolume(slicer_scene, p) for p in files["phase"]]
    logic = QSMProcessingLogic(temporaryDirectory=str(tmp_path))
    drawn = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    before = slicer_scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="either an ROI segmentation or automatic ROIs"):
        logic.process(magnitudeNodes, phaseNodes, list(acquisition.echo_times_s), fieldStrengthTesla=3.0,
                      roiSegmentation=drawn, automaticRois="atlas")
    with pytest.raises(ValueError, match="Unknown automatic ROIs"):
        logic.process(magnitudeNodes, phaseNodes, list(acquisition.echo_times_s), fieldStrengthTesla=3.0,
                      automaticRois="freesurfer")
    assert slicer_scene.GetNumberOfNodes() == before

    log = []
    result = logic.process(magnitudeNodes, phaseNodes, list(acquisition.echo_times_s), fieldStrengthTesla=3.0,
                           automaticRois="atlas", config="fast", logCallback=log.append)

    segmentationNode = result.roiSegmentation
    assert segmentationNode.IsA("vtkMRMLSegmentationNode") and segmentationNode.GetName().endswith("(atlas)")
    segmentation = segmentationNode.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == list(ROI_NAMES.values())
    assert result.chiVolume.GetNodeReference(RESULT_REFERENCE_ROLES["rois"]) is segmentationNode
    shape, ijkToRas = slicer.util.arrayFromVolume(result.chiVolume).shape, _matrix(result.chiVolume)
    masks = {name: mask for _, name, mask in Nodes.segmentMasks(segmentationNode, shape, ijkToRas)}
    truth = np.transpose(warped_head.labels, (2, 1, 0))  # phantom axes (i, j, k) -> Slicer (k, j, i)
    for label, name in ROI_NAMES.items():
        assert masks[name].any() and np.mean(truth[masks[name]] == label) > 0.75, name  # 1.0 measured

    table = result.statisticsTable
    column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    rows = [table.GetCellText(r, column["Segment"]) for r in range(table.GetNumberOfRows())]
    assert rows == [*ROI_NAMES.values(), "caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra",
                    "red_nucleus"]
    chi = slicer.util.arrayFromVolume(result.chiVolume).astype(np.float64)
    for row, name in enumerate(rows):
        region = (masks[name] if name in masks else
                  masks[f"{name}_left"] | masks[f"{name}_right"])
        # the cores lie inside the local mask, so the table counts every voxel of the segments
        assert int(table.GetCellText(row, column["Number of voxels [voxels]"])) == int(region.sum()), name
        assert float(table.GetCellText(row, column["Mean [ppm]"])) == pytest.approx(chi[region].mean(), abs=2e-6)
    assert result.provenance["rois"]["core_depth_mm"] == 1.75
    assert any(line.startswith("Rois: method=AAL3 atlas registered") for line in log), log
