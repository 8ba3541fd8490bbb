"""Cohort processing: a BIDS dataset in, a BIDS derivatives dataset out, on Dask.

One task per multi-echo GRE acquisition (``*_part-mag_MEGRE`` and
``*_part-phase_MEGRE`` files of one subject/session/acquisition/run). A task
takes file paths, not arrays, so it runs on any Dask worker that sees the same
filesystem, and it runs exactly what ``qsm run`` runs (the same loader,
pipeline and :func:`~QSMLib.io.results.write_outputs`), so its chi equals a
single ``qsm run`` on the same files bit for bit.

Outputs of an acquisition ``sub-01_ses-a_run-1`` land in
``OUT/sub-01/ses-a/anat/`` (QC montage in ``OUT/sub-01/figures/``)::

    sub-01_ses-a_run-1_Chimap.nii.gz               chi, ppm (+ .json sidecar, Units)
    sub-01_ses-a_run-1_desc-brain_mask.nii.gz      brain mask
    sub-01_ses-a_run-1_desc-total_fieldmap.nii.gz  total field, Hz
    sub-01_ses-a_run-1_desc-local_fieldmap.nii.gz  local field, Hz
    sub-01_ses-a_run-1_R2starmap.nii.gz            R2*, 1/s (and _T2starmap, s) with relaxometry
    sub-01_ses-a_run-1_desc-roi_stats.tsv          ROI statistics, with a label map
    sub-01_ses-a_run-1_provenance.json             written last; lists every output's SHA-256

Writes are atomic: a task writes into a private folder, moves the files into
place and writes the provenance file last. An acquisition counts as complete
only when its provenance file exists, names the same configuration, outputs
and input checksums, and every listed output has the listed SHA-256;
anything else (a killed run, a deleted or edited output, changed inputs or
configuration) is redone.

Dask and its ``distributed`` scheduler are optional dependencies
(``pip install "qsmlib[cohort]"``), imported only here, when a cohort runs.
"""

from .cohort import run_cohort
from .discovery import find_acquisitions
from .layout import ALWAYS, DERIVATIVES, OPTIONAL, Acquisition, CohortSummary, Record
from .reports import write_reports
from .scheduling import ClusterPlan, plan_local_cluster
from .tasks import completed_record, process_acquisition, read_roi_tsv, task_signature

__all__ = [
    "Acquisition",
    "ALWAYS",
    "ClusterPlan",
    "CohortSummary",
    "completed_record",
    "DERIVATIVES",
    "find_acquisitions",
    "OPTIONAL",
    "plan_local_cluster",
    "process_acquisition",
    "read_roi_tsv",
    "Record",
    "run_cohort",
    "task_signature",
    "write_reports",
]
