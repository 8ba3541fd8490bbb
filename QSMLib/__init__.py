"""QSMLib: quantitative susceptibility mapping in pure Python.

The public API, in pipeline order; every stage is also usable on its own
from its module (``QSMLib.unwrap``, ``QSMLib.background``, ``QSMLib.inversion``...).
"""

__version__ = "0.1.0"

from .acquisition import MultiEchoGRE  # noqa: E402
from .errors import QSMCancelled, QSMInputError, QSMWarning  # noqa: E402
from .io.nifti import load_acquisition, read_volume, write_volume  # noqa: E402
from .phantom import HeadPhantom, simulate_head  # noqa: E402
from .pipeline import (  # noqa: E402
    PRESETS,
    PipelineConfig,
    QSMResult,
    StageConfig,
    load_config,
    run_pipeline,
    run_pipeline_from_field,
)
from .roi import roi_statistics  # noqa: E402

__all__ = [
    "PRESETS",
    "HeadPhantom",
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
    "simulate_head",
    "write_volume",
]
