"""MRML nodes <-> numpy arrays, geometry and acquisition metadata (no Qt).

Slicer's voxel arrays are in (k, j, i) order and a volume's geometry is its
IJKToRAS matrix. Everything here keeps both exactly: arrays are copied in
(k, j, i) order and written to NIfTI by QSMLib's own writer, whose affine maps
array axes (0, 1, 2) = (k, j, i) to RAS, so a file read back maps voxel
(i, j, k) to the same physical point as the node. QSMLib (and SimpleITK
behind it) is imported only when a file is written or read, never when the
module loads.

Echo times are read the way Slicer's importers store them:

* ``QSM.EchoTime`` attribute (seconds): set by this extension's sample data.
* Scalar volumes loaded by the DICOM module carry ``DICOM.instanceUIDs``;
  EchoTime (0018,0081, ms) is read from the DICOM database.
* Multi-volumes from the MultiVolumeImporter carry ``MultiVolume.FrameLabels``
  (comma-separated values) with ``MultiVolume.FrameIdentifyingDICOMTagName``
  = ``EchoTime`` and ``MultiVolume.FrameIdentifyingDICOMTagUnits`` = ``ms``;
  the importer copies the same attributes onto a sequence node when it loads
  the series as a volume sequence.
* Sequence nodes whose index is named ``EchoTime`` (unit ``ms`` or ``s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

#: Gyromagnetic ratio of 1H over 2 pi, MHz/T (field strength from the imaging frequency).
GAMMA_BAR_MHZ_PER_T = 42.577478
ECHO_TIME_ATTRIBUTE = "QSM.EchoTime"
FIELD_STRENGTH_ATTRIBUTE = "QSM.FieldStrength"
DICOM_TAG_ECHO_TIME = "0018,0081"
DICOM_TAG_IMAGING_FREQUENCY = "0018,0084"
DICOM_TAG_FIELD_STRENGTH = "0018,0087"
_GRID_TOLERANCE_MM = 1e-4


class DicomDatabase(Protocol):
    """The part of ``slicer.dicomDatabase`` (ctkDICOMDatabase) used here."""

    def fileForInstance(self, sopInstanceUID: str) -> str: ...

    def fileValue(self, fileName: str, tag: str) -> str: ...


@dataclass(frozen=True)
class EchoFrame:
    """One echo of the input: a scalar volume, or one frame of a multi-echo node.

    Attributes
    ----------
    volumeNode : vtkMRMLVolumeNode
        The node that holds the voxels (a sequence's data node for sequences).
    component : int or None
        Frame index inside a multi-volume (vector) image; None for scalars.
    echoTimeSeconds : float or None
        Echo time found in the node's metadata, None when unknown.
    label : str
        How to name this echo in messages.
    """

    volumeNode: Any
    component: Optional[int]
    echoTimeSeconds: Optional[float]
    label: str

    def voxels(self) -> np.ndarray:
        """A float32 copy of the echo's voxels in (k, j, i) order."""
        image = self.volumeNode.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            raise ValueError(f"{self.label} has no voxel data.")
        dims = image.GetDimensions()
        flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        components = image.GetNumberOfScalarComponents()
        array = flat.reshape((dims[2], dims[1], dims[0], components))
        return np.array(array[..., self.component or 0], dtype=np.float32)

    def shape(self) -> tuple[int, int, int]:
        """Voxel array shape in (k, j, i) order."""
        dims = self.volumeNode.GetImageData().GetDimensions()
        return (dims[2], dims[1], dims[0])

    def ijkToRas(self) -> np.ndarray:
        """The 4x4 IJKToRAS matrix."""
        return ijkToRasArray(self.volumeNode)


def ijkToRasArray(volumeNode: Any) -> np.ndarray:
    """IJKToRAS matrix of a volume node as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def echoFramesFromNodes(nodes: Sequence[Any], dicomDatabase: Optional[DicomDatabase] = None) -> list[EchoFrame]:
    """Split input nodes into echoes, in the order given.

    Parameters
    ----------
    nodes : sequence of MRML nodes
        Scalar volumes (one echo each), or multi-echo nodes: a sequence node
        of scalar volumes, or a multi-volume (one frame per echo).
    dicomDatabase : DicomDatabase, optional
        Where ``DICOM.instanceUIDs`` are looked up (``slicer.dicomDatabase``).

    Raises
    ------
    ValueError
        For an empty list, a missing node, or an unsupported node type.
    """
    if not nodes:
        raise ValueError("No input volumes given.")
    frames: list[EchoFrame] = []
    for node in nodes:
        if node is None:
            raise ValueError("An input volume is missing (None was given).")
        name = node.GetName()
        if node.IsA("vtkMRMLSequenceNode"):
            frames.extend(_sequenceFrames(node, dicomDatabase))
        elif node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None and (
            node.GetImageData().GetNumberOfScalarComponents() > 1
        ):
            components = node.GetImageData().GetNumberOfScalarComponents()
            times = _frameLabelEchoTimes(node, components)
            frames.extend(
                EchoFrame(node, index, times[index], f"'{name}' frame {index + 1}") for index in range(components)
            )
        elif node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
            frames.append(EchoFrame(node, None, volumeEchoTime(node, dicomDatabase), f"'{name}'"))
        else:
            raise ValueError(
                f"'{name}' is a {node.GetClassName()}: give scalar volumes (one per echo), "
                "a multi-volume or a volume sequence."
            )
    return frames


def _sequenceFrames(sequenceNode: Any, dicomDatabase: Optional[DicomDatabase]) -> list[EchoFrame]:
    name = sequenceNode.GetName()
    count = sequenceNode.GetNumberOfDataNodes()
    if count == 0:
        raise ValueError(f"Sequence '{name}' is empty.")
    labelTimes = _frameLabelEchoTimes(sequenceNode, count)
    indexIsEchoTime = sequenceNode.GetIndexName().replace(" ", "").lower() in ("echotime", "te")
    frames = []
    for index in range(count):
        dataNode = sequenceNode.GetNthDataNode(index)
        if dataNode is None or not dataNode.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError(f"Sequence '{name}' item {index + 1} is not a scalar volume.")
        if indexIsEchoTime:
            echoTime = _toSeconds(sequenceNode.GetNthIndexValue(index), sequenceNode.GetIndexUnit(), name)
        else:
            echoTime = labelTimes[index]
            if echoTime is None:
                echoTime = volumeEchoTime(dataNode, dicomDatabase)
        frames.append(EchoFrame(dataNode, None, echoTime, f"'{name}' item {index + 1}"))
    return frames


def _frameLabelEchoTimes(node: Any, count: int) -> list[Optional[float]]:
    """Echo times from MultiVolumeImporter attributes, or Nones."""
    tagName = node.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagName") or ""
    labels = node.GetAttribute("MultiVolume.FrameLabels") or ""
    if tagName != "EchoTime" or not labels:
        return [None] * count
    values = [value for value in labels.split(",") if value.strip()]
    if len(values) != count:
        raise ValueError(
            f"'{node.GetName()}' lists {len(values)} echo times in MultiVolume.FrameLabels for {count} frames."
        )
    unit = node.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits") or "ms"
    return [_toSeconds(value, unit, node.GetName()) for value in values]


def _toSeconds(value: str, unit: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"'{name}': echo time {value!r} is not a number.") from None
    scale = {"": 1e-3, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}.get(unit.strip().lower())
    if scale is None:
        raise ValueError(f"'{name}': echo time unit {unit!r} is not understood (expected ms or s).")
    return number * scale


def volumeEchoTime(volumeNode: Any, dicomDatabase: Optional[DicomDatabase] = None) -> Optional[float]:
    """Echo time (s) of a scalar volume from ``QSM.EchoTime`` or its DICOM files; None if unknown."""
    value = volumeNode.GetAttribute(ECHO_TIME_ATTRIBUTE)
    if value:
        return _toSeconds(value, "s", volumeNode.GetName())
    dicomValue = _dicomValue(volumeNode, DICOM_TAG_ECHO_TIME, dicomDatabase)
    return _toSeconds(dicomValue, "ms", volumeNode.GetName()) if dicomValue else None


def fieldStrengthFromNodes(nodes: Sequence[Any], dicomDatabase: Optional[DicomDatabase] = None) -> Optional[float]:
    """B0 in tesla from ``QSM.FieldStrength`` or DICOM (imaging frequency preferred); None if unknown."""
    for node in nodes:
        candidates = [node]
        if node is not None and node.IsA("vtkMRMLSequenceNode") and node.GetNumberOfDataNodes():
            candidates.append(node.GetNthDataNode(0))
        for candidate in candidates:
            if candidate is None:
                continue
            value = candidate.GetAttribute(FIELD_STRENGTH_ATTRIBUTE)
            if value:
                return float(value)
            frequency = _dicomValue(candidate, DICOM_TAG_IMAGING_FREQUENCY, dicomDatabase)
            if frequency:
                return float(frequency) / GAMMA_BAR_MHZ_PER_T
            strength = _dicomValue(candidate, DICOM_TAG_FIELD_STRENGTH, dicomDatabase)
            if strength:
                return float(strength)
    return None


def _dicomValue(node: Any, tag: str, dicomDatabase: Optional[DicomDatabase]) -> str:
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids or dicomDatabase is None:
        return ""
    fileName = dicomDatabase.fileForInstance(uids[0])
    if not fileName:
        return ""
    return (dicomDatabase.fileValue(fileName, tag) or "").split("\\")[0].strip()


def checkSameGrid(frames: Sequence[EchoFrame]) -> None:
    """Raise ValueError unless every echo has the first echo's shape and IJKToRAS."""
    reference = frames[0]
    for frame in frames[1:]:
        if frame.shape() != reference.shape():
            raise ValueError(
                f"{frame.label} has {frame.shape()[::-1]} voxels (i, j, k) but {reference.label} has "
                f"{reference.shape()[::-1]}: all echoes of magnitude and phase must share one voxel grid."
            )
        if not np.allclose(frame.ijkToRas(), reference.ijkToRas(), atol=_GRID_TOLERANCE_MM):
            raise ValueError(
                f"{frame.label} is not on the same voxel grid as {reference.label} (different origin, spacing "
                "or orientation): resample it onto the same grid first."
            )


def arrayAxesAffine(ijkToRas: np.ndarray) -> np.ndarray:
    """QSMLib's affine (array axes (k, j, i) -> RAS) from a volume's IJKToRAS matrix."""
    affine = np.array(ijkToRas, dtype=np.float64)
    affine[:, :3] = affine[:, [2, 1, 0]]
    return affine


def writeVolumeFile(path: str, voxels: np.ndarray, ijkToRas: np.ndarray) -> None:
    """Write a (k, j, i) array with the given IJKToRAS geometry (NIfTI, compressed)."""
    from QSMLib.io.nifti import write_volume

    write_volume(path, np.ascontiguousarray(voxels), arrayAxesAffine(ijkToRas))


def readVolumeFile(path: str) -> np.ndarray:
    """Voxels of a 3D image file in (k, j, i) order."""
    from QSMLib.io.nifti import read_volume

    voxels, _ = read_volume(path)
    if voxels.ndim != 3:
        raise RuntimeError(f"{path} is not a 3D scalar image.")
    return voxels


def segmentMasks(
    segmentationNode: Any, shape: Sequence[int], ijkToRas: np.ndarray, referenceTransformNode: Any = None
) -> list[tuple[str, str, np.ndarray]]:
    """Every segment of a segmentation resampled (nearest neighbour) onto a voxel grid.

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
    shape : (k, j, i) ints
        Shape of the target voxel array.
    ijkToRas : (4, 4) array
        Target grid geometry.
    referenceTransformNode : vtkMRMLTransformNode, optional
        Parent transform of the target volume; the segmentation's own parent
        transform is taken into account relative to it.

    Returns
    -------
    list of (segment ID, segment name, bool array in (k, j, i) order)
        In the segmentation's segment order.
    """
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(ijkToRas[row][column]))
    reference.SetImageToWorldMatrix(matrix)
    segmentToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        segmentationNode.GetParentTransformNode(), referenceTransformNode, segmentToVolume
    )
    segmentation = segmentationNode.GetSegmentation()
    masks = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        labelmap = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentationNode, segmentId, labelmap, False
        ):
            raise ValueError(
                f"Segment '{segment.GetName()}' of '{segmentationNode.GetName()}' has no binary labelmap."
            )
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False, segmentToVolume, 0
        )
        scalars = resampled.GetPointData().GetScalars()
        if scalars is None:
            mask = np.zeros(tuple(shape), dtype=bool)
        else:
            mask = numpy_support.vtk_to_numpy(scalars).reshape(tuple(shape)) == segment.GetLabelValue()
        masks.append((segmentId, segment.GetName(), np.array(mask, dtype=bool)))
    return masks
