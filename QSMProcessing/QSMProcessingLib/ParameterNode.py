"""The module's parameter node: everything the user chose, saved with the scene.

Needs Slicer's ``parameterNodeWrapper`` (the application, not the Qt-free
wheel), so only the widget imports this file. Fields whose widget carries a
``SlicerParameterName`` in the .ui are bound by the wrapper; the echo lists,
the method boxes (readable names for registry names) and the inversion
parameter (unit and precision per method) are kept in sync by the widget.
No GUI annotation (``Decimals``, ``SingleStep``) is used: the wrapper logs
"Unused annotations" for them; the .ui sets precision instead.
"""

from typing import Annotated

from slicer import vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from . import Parameters


@parameterNodeWrapper
class QSMProcessingParameterNode:
    """The choices of the QSM Processing module."""

    magnitudeVolumes: list[vtkMRMLNode]
    phaseVolumes: list[vtkMRMLNode]
    echoTimesMs: str
    fieldStrengthTesla: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    maskSegmentation: vtkMRMLSegmentationNode
    roiSegmentation: vtkMRMLSegmentationNode
    roiSource: Annotated[str, Choice(list(Parameters.ROI_SOURCES))] = "segmentation"
    readout: Annotated[str, Choice(list(Parameters.READOUTS))] = "detect"
    phaseSign: Annotated[str, Choice(list(Parameters.PHASE_SIGNS))] = "as_stored"
    preset: Annotated[str, Choice(list(Parameters.PRESET_LABELS))] = "consensus"
    unwrapMethod: Annotated[str, Choice(list(Parameters.UNWRAP_METHODS))] = "romeo"
    backgroundMethod: Annotated[str, Choice(list(Parameters.BACKGROUND_METHODS))] = "vsharp"
    backgroundRadiusMm: Annotated[float, WithinRange(1.0, 30.0)] = 12.0
    inversionMethod: Annotated[str, Choice(list(Parameters.INVERSION_METHODS))] = "medi"
    #: 0 is "Automatic": no value is passed and QSMLib's default decides.
    inversionParameter: Annotated[float, WithinRange(0.0, 1.0e6)] = 0.0
    referenceMethod: Annotated[str, Choice(list(Parameters.REFERENCE_METHODS))] = "whole_brain"
    #: 0 is "Automatic": every core.
    threads: Annotated[int, WithinRange(0, 256)] = 0
    device: Annotated[str, Choice(list(Parameters.DEVICES))] = "cpu"
    outputTotalField: bool = False
    outputLocalField: bool = False
    outputMask: bool = False
    outputR2Star: bool = False
    #: A previous chi map to overwrite (with the maps made with it); None creates new nodes.
    outputVolume: vtkMRMLScalarVolumeNode
    showOverMagnitude: bool = False
