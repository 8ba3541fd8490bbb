"""The "QSM head phantom" sample data: generated locally by QSMLib, nothing downloaded (no Qt).

QSMLib's phantom arrays have axes (0, 1, 2) = (left->right, posterior->anterior,
inferior->superior) with an affine from array index to RAS. Slicer's IJK is
taken as (axis 0, axis 1, axis 2), so IJKToRAS is that affine and the voxel
array in Slicer's (k, j, i) order is the transpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import slicer
import vtk

from . import Nodes

SAMPLE_NAME = "QSM head phantom"
DEFAULT_ECHO_TIMES_S = (0.004, 0.008, 0.012, 0.016, 0.020)


@dataclass
class HeadPhantomNodes:
    """Nodes of one loaded phantom."""

    magnitudeVolumes: list[Any]
    phaseVolumes: list[Any]
    segmentation: Any


def loadHeadPhantom(
    scene: Any,
    voxelSizeMm: float = 2.0,
    echoTimesSeconds: Sequence[float] = DEFAULT_ECHO_TIMES_S,
    fieldStrengthTesla: float = 3.0,
) -> HeadPhantomNodes:
    """Simulate the QSMLib head phantom and add it to ``scene``.

    Creates one magnitude and one phase volume per echo (with ``QSM.EchoTime``
    in seconds and ``QSM.FieldStrength`` in tesla as node attributes) and a
    segmentation with the deep grey matter structures, all under one subject
    in the subject hierarchy.

    Parameters
    ----------
    scene : vtkMRMLScene
    voxelSizeMm : float
        Isotropic voxel size; 2 mm gives 96 x 112 x 88 voxels.
    echoTimesSeconds : sequence of float
    fieldStrengthTesla : float
    """
    from QSMLib.phantom import deep_grey_matter_labels, simulate_head

    phantom = simulate_head(
        voxel_size_mm=(voxelSizeMm,) * 3, echo_times_s=tuple(echoTimesSeconds), b0_tesla=fieldStrengthTesla)
    acquisition = phantom.acquisition
    ijkToRas = np.asarray(acquisition.affine, dtype=np.float64)
    magnitudes, phases = [], []
    for echo, echoTime in enumerate(acquisition.echo_times_s):
        for role, data, nodes in (("magnitude", acquisition.magnitude, magnitudes),
                                  ("phase", acquisition.phase, phases)):
            node = _addVolume(scene, f"{SAMPLE_NAME} {role} echo {echo + 1}", data[echo], ijkToRas)
            node.SetAttribute(Nodes.ECHO_TIME_ATTRIBUTE, repr(float(echoTime)))
            node.SetAttribute(Nodes.FIELD_STRENGTH_ATTRIBUTE, repr(float(acquisition.b0_tesla)))
            nodes.append(node)
    segmentation = _addSegmentation(scene, phantom.labels, deep_grey_matter_labels(phantom), ijkToRas, magnitudes[0])
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    subject = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), SAMPLE_NAME)
    study = hierarchy.CreateStudyItem(subject, "Multi-echo GRE")
    for node in [*magnitudes, *phases, segmentation]:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, study)
        else:
            hierarchy.CreateItem(study, node)
    return HeadPhantomNodes(magnitudes, phases, segmentation)


def loadHeadPhantomSample(source: Any = None) -> None:
    """Sample Data button (``customDownloader``): build the phantom and show its first magnitude echo.

    Parameters
    ----------
    source : SampleDataSource, optional
        Passed by the Sample Data module; unused, the phantom is generated locally.
    """
    with slicer.util.WaitCursor():
        phantom = loadHeadPhantom(slicer.mrmlScene)
    slicer.util.setSliceViewerLayers(background=phantom.magnitudeVolumes[0], fit=True)


def _addVolume(scene: Any, name: str, axesArray: np.ndarray, ijkToRas: np.ndarray) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.transpose(axesArray, (2, 1, 0))))
    node.CreateDefaultDisplayNodes()
    return node


def _addSegmentation(
    scene: Any, labels: np.ndarray, names: dict[int, str], ijkToRas: np.ndarray, referenceVolume: Any
) -> Any:
    """Segmentation with one segment per named label (in label order), names kept."""
    ordered = sorted(names)
    compact = np.zeros(labels.shape, dtype=np.int16)
    for index, label in enumerate(ordered, start=1):
        compact[labels == label] = index
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__QSMPhantomLabels__")
    try:
        labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        slicer.util.updateVolumeFromArray(labelmap, np.ascontiguousarray(np.transpose(compact, (2, 1, 0))))
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{SAMPLE_NAME} deep grey matter")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode):
            raise RuntimeError("Could not build the phantom's deep grey matter segmentation.")
    finally:
        scene.RemoveNode(labelmap)
    segmentation = segmentationNode.GetSegmentation()
    colors = vtk.vtkNamedColors()
    palette = ("Gold", "Tomato", "DodgerBlue", "MediumSeaGreen", "Orchid", "Orange", "Turquoise", "SlateBlue")
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        segment.SetName(names[ordered[segment.GetLabelValue() - 1]])
        segment.SetColor(*colors.GetColor3d(palette[index % len(palette)]))
    return segmentationNode
