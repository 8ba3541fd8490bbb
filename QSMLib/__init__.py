"""QSMLib: quantitative susceptibility mapping in pure Python.

The public API, in pipeline order; every stage is also usable on its own
from its module (``QSMLib.unwrap``, ``QSMLib.background``, ``QSMLib.inversion``...).
"""

from ._version import __version__
from .acquisition import MultiEchoGRE
from .errors import QSMCancelled, QSMInputError, QSMWarning
from .io.nifti import load_acquisition, read_volume, write_volume
from .pipeline import (
    PRESETS,
    PipelineConfig,
    QSMResult,
    StageConfig,
    load_config,
    run_pipeline,
    run_pipeline_from_field,
)
from .roi import roi_statistics

__all__ = [
    "PRESETS",
    "MultiEchoGRE",
    "PipelineConfig",
    "QSMCancelled",
    "QSMInputError",
    "QSMResult",
    "QSMWarning",
    "StageConfig",
    "__version__",
    "load_acquisition",
    "load_config",
    "read_volume",
    "roi_statistics",
    "run_pipeline",
    "run_pipeline_from_field",
    "write_volume",
]
