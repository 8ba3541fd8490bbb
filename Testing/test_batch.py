"""``qsm bids``: a synthetic BIDS cohort on a local Dask cluster and on a separately started
scheduler: valid derivatives equal to ``qsm run``, failures reported, finished work skipped."""

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import SimpleITK as sitk

from QSMLib import __version__
from QSMLib.batch import (
    Acquisition,
    completed_record,
    find_acquisitions,
    plan_local_cluster,
    run_cohort,
)
from QSMLib.batch.layout import (
    TASK_MEMORY_BYTES,
    ZERO_FILL_MEMORY_FACTOR,
)
from QSMLib.batch.scheduling import _future_record
from QSMLib.cli import EXIT_INPUT, EXIT_OK, EXIT_SOME_FAILED, main
from QSMLib.errors import QSMCancelled, QSMInputError
from QSMLib.inversion.tfi import frame_voxels_estimate
from QSMLib.io.files import file_checksum
from QSMLib.io.nifti import read_volume, write_volume
from QSMLib.phantom import deep_grey_matter_labels, simulate_head
from QSMLib.pipeline import load_config
from QSMLib.report import method_reference

#: Subjects of the synthetic cohort: echo times, obliquity, where the files go.
COHORT = {
    "01": {"echo_times_s": (0.004, 0.008, 0.012), "oblique_deg": 0.0, "session": None},
    "02": {"echo_times_s": (0.004, 0.008, 0.012, 0.016), "oblique_deg": 15.0, "session": None},
    "03": {"echo_times_s": (0.005, 0.010), "oblique_deg": 0.0, "session": "b"},
    "04": {"echo_times_s": (0.004, 0.008, 0.012), "oblique_deg": 0.0, "session": None},  # corrupt phase file
    "05": {"echo_times_s": (0.004, 0.008, 0.012), "oblique_deg": 0.0, "session": None},  # no sidecars
}
GOOD = ("sub-01", "sub-02", "sub-03_ses-b_run-1")


def _prefix(label):
    session = COHORT[label]["session"]
    return f"sub-{label}" + (f"_ses-{session}_run-1" if session else "")


def _anat(root, label):
    session = COHORT[label]["session"]
    return root / f"sub-{label}" / (f"ses-{session}" if session else "") / "anat"


def write_subject(root, labels_root, label, seed):
    """One phantom subject as BIDS MEGRE files with sidecars, plus its deep-grey-matter label map."""
    spec = COHORT[label]
    phantom = simulate_head(voxel_size_mm=(4, 4, 4), fov_mm=(160, 192, 168), echo_times_s=spec["echo_times_s"],
                            oblique_deg=spec["oblique_deg"], seed=seed)
    acquisition = phantom.acquisition
    anat = _anat(root, label)
    anat.mkdir(parents=True, exist_ok=True)
    for echo, echo_time in enumerate(spec["echo_times_s"], start=1):
        for part, volume in (("mag", acquisition.magnitude), ("phase", acquisition.phase)):
            stem = f"{_prefix(label)}_echo-{echo}_part-{part}_MEGRE"
            write_volume(anat / f"{stem}.nii.gz", volume[echo - 1], acquisition.affine)
            (anat / f"{stem}.json").write_text(json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": 3.0,
                                                           "ImagingFrequency": 127.7324}))
    names = deep_grey_matter_labels(phantom)
    labels = np.where(np.isin(phantom.labels, list(names)), phantom.labels, 0).astype(np.int16)
    label_anat = _anat(labels_root, label)
    label_anat.mkdir(parents=True, exist_ok=True)
    write_volume(label_anat / f"{_prefix(label)}_dseg.nii.gz", labels, acquisition.affine)
    (labels_root / "dseg.tsv").write_text("index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(names.items())))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five phantom subjects (2, 3 and 4 echoes, one oblique, one session) and two broken ones."""
    root = tmp_path_factory.mktemp("cohort") / "bids"
    labels_root = root / "derivatives" / "labels"
    for seed, label in enumerate(COHORT):
        write_subject(root, labels_root, label, seed)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.10.0"}))
    corrupt = _anat(root, "04") / "sub-04_echo-2_part-phase_MEGRE.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:2000])
    for sidecar in _anat(root, "05").glob("*.json"):
        sidecar.unlink()
    return {"root": root, "labels": labels_root}


def run_cli(argv):
    """``main(argv)`` with stdout/stderr captured: (exit code, JSON events, stderr, seconds)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    events = [json.loads(line) for line in stdout.getvalue().splitlines() if line.startswith("{")]
    return code, events, stderr.getvalue(), time.perf_counter() - began


def bids_args(dataset, out, *extra):
    return ["bids", str(dataset["root"]), str(out), "--config", "fast", "--labels", str(dataset["labels"]),
            "--progress", "json", *extra]


def statuses(events):
    return {e["name"]: e["status"] for e in events if e["event"] == "acquisition"}


@pytest.fixture(scope="module")
def local_run(dataset, tmp_path_factory):
    """The cohort processed once on a local Dask cluster with 2 workers."""
    out = tmp_path_factory.mktemp("local") / "derivatives"
    code, events, stderr, seconds = run_cli(bids_args(dataset, out, "--workers", "2"))
    return {"out": out, "code": code, "events": events, "stderr": stderr, "seconds": seconds}


VOID_ELEMENTS = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Collects links and checks that every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.links, self.errors, self.text, self.ids = [], [], [], [], set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.links += [attributes[k] for k in ("href", "src") if k in attributes]
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def check_html(text):
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!DOCTYPE html>")
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


def test_index_is_well_formed_and_links_only_existing_files(local_run):
    out = local_run["out"]
    checker = check_html((out / "index.html").read_text())
    files = [link for link in checker.links if not link.startswith("#")]
    anchors = [link[1:] for link in checker.links if link.startswith("#")]
    assert files and all(not urlparse(link).scheme and not link.startswith("/") for link in files)
    missing = [link for link in files if not (out / unquote(link)).is_file()]
    assert not missing, missing
    assert set(anchors) <= checker.ids and set(GOOD) <= checker.ids
    images = {link for link in files if link.endswith(".png")}
    assert len(images) == len(GOOD)
    assert {"methods.md", "group_roi_stats.tsv", "summary.json"} <= set(files)
    text = " ".join(checker.text)
    assert "sub-04_echo-2_part-phase_MEGRE.nii.gz is corrupt" in text and "No echo times" in text
    assert "globus_pallidus" in text and "3 processed, 0 already complete (skipped), 2 failed" in text


def test_methods_names_the_algorithms_parameters_versions_and_papers(local_run):
    text = (local_run["out"] / "methods.md").read_text()
    for expected in ("`romeo`", "`weighted_linear` (intercept = False)", "`sstv`", "`whole_brain`",
                     f"QSMLib {__version__}", "3 multi-echo", "2/3/4 echoes", "the `fast` preset"):
        assert expected in text, expected
    # each method's paper, as its own documentation gives it
    assert method_reference("inversion", "sstv").rstrip(".") in text
    assert "`ismv`" not in text  # the single-step inversion runs no background removal
    assert "bipolar" not in text.lower()  # configured but never run: the data are monopolar
    assert "consensus recommendations" not in text  # the fast preset is not the consensus


def test_qc_figures_are_labelled_five_row_montages(local_run):
    from test_report_qc import find, text_image

    def written(text, value=255):  # as write_png enlarges the figure: each pixel becomes 2 x 2
        return np.kron(text_image(text, value=value), np.ones((2, 2), np.uint8))

    figures = {path.name.split("_desc-qc")[0]: path for path in Path(local_run["out"]).rglob("*_desc-qc_Chimap.png")}
    assert sorted(figures) == sorted(GOOD)
    for name, path in figures.items():
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert image.dtype == np.uint8 and image.ndim == 2 and image.max() == 255 and image.std() > 20
        # titled with the acquisition; rows magnitude, total field, local field, chi, mask outline, each with
        # its unit and the window on its colour bar; columns axial, coronal, sagittal
        assert find(image, written(f"{name}:"))[0][0] < 20
        for text in ("axial", "coronal", "sagittal", "magnitude", "(a.u.)", "total field", "local field", "(Hz)",
                     "chi", "(ppm)", "brain mask", "0.25 ppm", "-0.15 ppm", "0 a.u."):
            assert find(image, written(text)), (name, text)
        assert len(find(image, written("auto window", value=170))) == 5  # four rows and the footnote
        assert len(find(image, written("fixed window", value=170))) == 1  # chi, so that figures compare


def test_good_acquisitions_give_valid_derivatives_and_bad_ones_are_reported(local_run):
    assert local_run["code"] == EXIT_SOME_FAILED, local_run["stderr"]
    assert statuses(local_run["events"]) == {"sub-01": "processed", "sub-02": "processed",
                                             "sub-03_ses-b_run-1": "processed", "sub-04": "failed",
                                             "sub-05": "failed"}
    reasons = {e["name"]: e["reason"] for e in local_run["events"] if e["event"] == "acquisition"}
    assert "sub-04_echo-2_part-phase_MEGRE.nii.gz is corrupt or truncated" in reasons["sub-04"]
    assert "No echo times" in reasons["sub-05"]
    summary_event = [e for e in local_run["events"] if e["event"] == "summary"][0]
    assert summary_event["counts"] == {"processed": 3, "skipped": 0, "failed": 2}
    assert "2 worker(s)" in summary_event["cluster"]
    assert local_run["events"][-1]["event"] == "error" and "2 of 5 acquisitions failed" in local_run["stderr"]

    out = local_run["out"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "QSMLib" and description["GeneratedBy"][0]["Version"]
    for prefix, anat in (("sub-01", "sub-01/anat"), ("sub-03_ses-b_run-1", "sub-03/ses-b/anat")):
        folder = out / anat
        chi, _ = read_volume(folder / f"{prefix}_Chimap.nii.gz")
        assert chi.dtype == np.float32 and np.abs(chi).max() > 0.05
        assert json.loads((folder / f"{prefix}_Chimap.json").read_text())["Units"] == "ppm"
        for kind in ("total", "local"):
            assert json.loads((folder / f"{prefix}_desc-{kind}_fieldmap.json").read_text())["Units"] == "Hz"
        mask, _ = read_volume(folder / f"{prefix}_desc-brain_mask.nii.gz")
        assert set(np.unique(mask)) == {0, 1}
        rows = (folder / f"{prefix}_desc-roi_stats.tsv").read_text().splitlines()
        assert [r.split("\t")[1] for r in rows[1:]] == list(deep_grey_matter_labels().values())
        provenance = json.loads((folder / f"{prefix}_provenance.json").read_text())
        listed = provenance["derivatives"]["outputs"]
        assert len(listed) == 10  # 4 maps, their 4 sidecars, the ROI table and the QC figure
        assert all(file_checksum(out / path) == digest for path, digest in listed.items())
        assert provenance["config"]["inversion"]["method"] == "sstv"
    assert not [p for p in out.rglob(".*")], "staging or work folders were left behind"
    assert not (out / "sub-04").exists() and not (out / "sub-05").exists()


def test_chi_equals_a_single_qsm_run_on_the_same_files(local_run, dataset, tmp_path):
    for label in ("01", "02"):  # axial and oblique
        anat = _anat(dataset["root"], label)
        out = tmp_path / label
        code, _, stderr, _ = run_cli([
            "run", "--mag", *map(str, sorted(anat.glob("*part-mag*.nii.gz"))),
            "--phase", *map(str, sorted(anat.glob("*part-phase*.nii.gz"))),
            "--labels", str(_anat(dataset["labels"], label) / f"sub-{label}_dseg.nii.gz"),
            "--label-names", str(dataset["labels"] / "dseg.tsv"), "--config", "fast", "--out", str(out),
            "--progress", "none"])
        assert code == EXIT_OK, stderr
        derived = local_run["out"] / f"sub-{label}" / "anat"
        for single, cohort in (("chi.nii.gz", "Chimap.nii.gz"), ("mask.nii.gz", "desc-brain_mask.nii.gz"),
                               ("local_field_hz.nii.gz", "desc-local_fieldmap.nii.gz")):
            expected, expected_affine = read_volume(out / single)
            actual, actual_affine = read_volume(derived / f"sub-{label}_{cohort}")
            assert np.array_equal(actual, expected), f"sub-{label} {cohort} differs from qsm run"
            assert np.array_equal(actual_affine, expected_affine)
        assert (derived / f"sub-{label}_desc-roi_stats.tsv").read_text() == (out / "roi_stats.tsv").read_text()


def test_progress_is_reported_as_json_lines_with_an_eta(local_run):
    progress = [e for e in local_run["events"] if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(progress) == 6  # the start and one per task
    assert all(e["stage"] == "cohort" for e in progress) and "ETA" in progress[-1]["message"]


def test_group_table_collects_every_good_subjects_roi_rows(local_run):
    out = local_run["out"]
    lines = (out / "group_roi_stats.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["participant_id", "session_id", "acquisition"] and "mean_ppm" in header
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert {r["acquisition"] for r in rows} == set(GOOD) and len(rows) == 3 * 7
    sub03 = [r for r in rows if r["participant_id"] == "sub-03"]
    assert {r["session_id"] for r in sub03} == {"ses-b"}
    own = (out / "sub-03/ses-b/anat/sub-03_ses-b_run-1_desc-roi_stats.tsv").read_text().splitlines()
    assert [r["mean_ppm"] for r in sub03] == [line.split("\t")[2] for line in own[1:]]


def test_rerun_skips_complete_acquisitions_and_redoes_partial_ones(local_run, dataset, tmp_path):
    out = tmp_path / "derivatives"
    shutil.copytree(local_run["out"], out)
    untouched = out / "sub-03/ses-b/anat/sub-03_ses-b_run-1_Chimap.nii.gz"
    mtime = untouched.stat().st_mtime_ns
    # sub-01 as a killed run leaves it: outputs moved in, provenance not yet written (plus a work folder)
    (out / "sub-01/anat/sub-01_provenance.json").unlink()
    (out / ".qsm-work/sub-01-killed").mkdir(parents=True)
    # sub-02 with an output that no longer matches its provenance
    chi = out / "sub-02/anat/sub-02_Chimap.nii.gz"
    chi.write_bytes(chi.read_bytes()[:-10] + b"0123456789")

    code, events, stderr, seconds = run_cli(bids_args(dataset, out, "--workers", "2"))
    assert code == EXIT_SOME_FAILED, stderr
    assert statuses(events) == {"sub-01": "processed", "sub-02": "processed", "sub-03_ses-b_run-1": "skipped",
                                "sub-04": "failed", "sub-05": "failed"}
    assert untouched.stat().st_mtime_ns == mtime
    assert not (out / ".qsm-work").exists()
    original, _ = read_volume(local_run["out"] / "sub-02/anat/sub-02_Chimap.nii.gz")
    assert np.array_equal(read_volume(chi)[0], original)

    code, events, _, rerun_seconds = run_cli(bids_args(dataset, out, "--workers", "2"))
    assert statuses(events) == {"sub-01": "skipped", "sub-02": "skipped", "sub-03_ses-b_run-1": "skipped",
                                "sub-04": "failed", "sub-05": "failed"}
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["message"] == "cohort: 0/2 acquisitions"  # only the two failing ones became tasks
    print(f"first run {local_run['seconds']:.1f} s, rerun redoing 2 of 5 {seconds:.1f} s, "
          f"rerun with all good ones complete {rerun_seconds:.1f} s")


def test_completeness_depends_on_configuration_outputs_and_inputs(local_run, dataset):
    acquisition = [a for a in find_acquisitions(dataset["root"], ["01"], dataset["labels"])][0]
    fast = load_config("fast").to_dict()
    assert completed_record(acquisition, local_run["out"], fast, (), 1)["status"] == "skipped"
    assert completed_record(acquisition, local_run["out"], load_config("consensus").to_dict(), (), 1) is None
    assert completed_record(acquisition, local_run["out"], fast, ("local_mask",), 1) is None
    assert completed_record(acquisition, local_run["out"], fast, (), -1) is None
    assert completed_record(acquisition, local_run["out"], fast, (), 1, None, False) is None  # a readout now declared
    moved = Acquisition(acquisition.entities, acquisition.magnitude[::-1], acquisition.phase, acquisition.labels,
                        acquisition.label_names, acquisition.n_voxels, acquisition.n_echoes)
    assert completed_record(moved, local_run["out"], fast, (), 1) is None


@pytest.fixture
def dask_cluster(tmp_path):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped afterwards."""
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        # the scheduler creates the file before it has written it: wait until it reads as JSON
        deadline = time.monotonic() + 60
        address = None
        while address is None and time.monotonic() < deadline:
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.1)
        assert address is not None, "the dask scheduler wrote no address within 60 s"
        assert address.startswith("tcp://127.0.0.1:")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nworkers", "2",
             "--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for process in reversed(processes):  # workers first, so they do not wait for a lost scheduler
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_declared_readout_reaches_every_task_and_redoes_the_acquisitions(local_run, dataset, tmp_path):
    out = tmp_path / "derivatives"
    shutil.copytree(local_run["out"], out)
    code, events, stderr, _ = run_cli(bids_args(dataset, out, "--workers", "2", "--monopolar"))
    assert code == EXIT_SOME_FAILED, stderr
    assert statuses(events) == {"sub-01": "processed", "sub-02": "processed", "sub-03_ses-b_run-1": "processed",
                                "sub-04": "failed", "sub-05": "failed"}
    name = "sub-01/anat/sub-01_"
    declared = json.loads((out / f"{name}provenance.json").read_text())
    detected = json.loads((local_run["out"] / f"{name}provenance.json").read_text())
    assert declared["derivatives"]["signature"]["readout"] == "monopolar"
    assert "readout" not in detected["derivatives"]["signature"]
    # told monopolar, the pipeline does not look; left to itself it looked and found the same (same chi)
    assert "bipolar" not in declared["chosen_parameters"]
    assert detected["chosen_parameters"]["bipolar"]["readout"] == "detected monopolar"
    np.testing.assert_array_equal(read_volume(out / f"{name}Chimap.nii.gz")[0],
                                  read_volume(local_run["out"] / f"{name}Chimap.nii.gz")[0])


def test_an_existing_scheduler_gives_the_same_outputs(local_run, dataset, dask_cluster, tmp_path):
    out = tmp_path / "derivatives"
    code, events, stderr, _ = run_cli(bids_args(dataset, out, "--scheduler", dask_cluster))
    assert code == EXIT_SOME_FAILED, stderr
    assert statuses(events) == statuses(local_run["events"])
    assert f"Dask scheduler {dask_cluster}" in [e for e in events if e["event"] == "summary"][0]["cluster"]
    for prefix, anat in (("sub-01", "sub-01/anat"), ("sub-02", "sub-02/anat"),
                         ("sub-03_ses-b_run-1", "sub-03/ses-b/anat")):
        for suffix in ("Chimap.nii.gz", "desc-local_fieldmap.nii.gz", "desc-brain_mask.nii.gz",
                       "desc-roi_stats.tsv"):
            name = f"{anat}/{prefix}_{suffix}"
            assert file_checksum(out / name) == file_checksum(local_run["out"] / name), name


def test_bad_cohort_input_is_refused_before_any_work(dataset, tmp_path):
    code, _, stderr, _ = run_cli(["bids", str(tmp_path / "missing"), str(tmp_path / "out"), "--progress", "none"])
    assert code == EXIT_INPUT and "does not exist" in stderr
    code, _, stderr, _ = run_cli(["bids", str(dataset["root"]), str(tmp_path / "out"), "--participant-label", "99",
                                  "--progress", "none"])
    assert code == EXIT_INPUT and "99" in stderr and "sub-01" in stderr
    code, _, stderr, _ = run_cli(["bids", str(dataset["root"]), str(tmp_path / "out"), "--outputs", "swi",
                                  "--progress", "none"])
    assert code == EXIT_INPUT and "local_mask, r2star, t2star" in stderr
    code, _, stderr, _ = run_cli(["bids", str(dataset["root"]), str(dataset["root"]), "--progress", "none"])
    assert code == EXIT_INPUT and "derivatives to their own folder" in stderr
    assert not (tmp_path / "out").exists()


def test_a_cancelled_run_leaves_only_complete_and_valid_acquisitions(dataset, tmp_path):
    cancel = threading.Event()
    cancel.set()
    out = tmp_path / "derivatives"
    with pytest.raises(QSMCancelled):
        run_cohort(dataset["root"], out, config="fast", labels_dir=dataset["labels"], n_workers=2, cancel=cancel)
    assert not (out / "summary.json").exists()
    fast = load_config("fast").to_dict()
    for acquisition in find_acquisitions(dataset["root"], labels_dir=dataset["labels"]):
        provenance = out / acquisition.output_path("provenance")
        assert not provenance.exists() or completed_record(acquisition, out, fast, (), 1) is not None


def test_missing_dask_is_explained(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(QSMInputError, match=r'pip install "qsmlib\[cohort\]"'):
        run_cohort(dataset["root"], tmp_path / "out")


def test_the_memory_estimate_counts_the_grid_a_coarse_scan_may_be_zero_filled_onto():
    def acquisition(shape, voxel):
        return Acquisition((("sub", "01"),), ("m.nii",), ("p.nii",), n_voxels=int(np.prod(shape)), n_echoes=5,
                           grid_shape=shape, voxel_size_mm=voxel, b0_axes=(False, False, True))

    coarse = acquisition((128, 128, 88), (2.0, 2.0, 2.0))
    plain = coarse.memory_bytes(None)
    base, per_voxel, per_voxel_echo, per_frame_voxel = TASK_MEMORY_BYTES["tfi"]
    frame = frame_voxels_estimate((128, 128, 88), (2.0, 2.0, 2.0), (False, False, True))
    assert plain == base + coarse.n_voxels * (per_voxel + 5 * per_voxel_echo) + frame * per_frame_voxel
    # "auto" may solve it on 1 mm voxels (8 times as many), as zero_fill_mm 1.0 does, and TFI's frame with them
    fine_frame = frame_voxels_estimate((256, 256, 176), (1.0, 1.0, 1.0), (False, False, True))
    assert 7.5 * frame < fine_frame < 8.5 * frame
    assert coarse.memory_bytes() == coarse.memory_bytes(1.0) == base + int(
        ZERO_FILL_MEMORY_FACTOR * 8 * coarse.n_voxels * (per_voxel + 5 * per_voxel_echo) + fine_frame * per_frame_voxel)
    assert coarse.memory_bytes(1.5) < coarse.memory_bytes(1.0)
    # "auto" zero-fills only for TFI (zero_fill.AUTO_ZERO_FILL_INVERSIONS); a number, whatever the inversion
    assert coarse.memory_bytes("auto", "medi") == plain and coarse.memory_bytes(1.0, "medi") == coarse.memory_bytes(1.0)
    fine = acquisition((256, 256, 176), (1.0, 1.0, 1.0))
    assert fine.memory_bytes() == fine.memory_bytes(None)  # nothing to refine
    unknown = Acquisition((("sub", "01"),), ("m.nii",), ("p.nii",), n_voxels=coarse.n_voxels, n_echoes=5)
    assert unknown.memory_bytes() == base + coarse.n_voxels * (
        per_voxel + 5 * per_voxel_echo)  # a header without spacing: the scan's voxels only


def test_the_memory_estimate_of_a_slab_counts_tfis_sources_beyond_the_faces_that_cut_the_brain():
    # A 56 mm axial slab (the seed protocol's kind) holds a quarter of a head's voxels, but TFI solves on the
    # brain's box with 72 mm of outside sources beyond each face that cuts the brain along B0: a cohort task
    # peaked at 1572 MiB on it, against 850 MiB estimated from its voxels before this term (README, "Sizing").
    def acquisition(shape, b0_axes):
        return Acquisition((("sub", "01"),), ("m.nii",), ("p.nii",), n_voxels=int(np.prod(shape)), n_echoes=9,
                           grid_shape=shape, voxel_size_mm=(1.0, 1.0, 1.0), b0_axes=b0_axes)

    slab = acquisition((192, 224, 56), (False, False, True))
    assert slab.memory_terms()[2] == (155 + 24) * (190 + 24) * (56 + 144) > 3 * slab.n_voxels
    # the same grid cut across B0 (a coronal slab) has no such shell; unknown orientation takes the larger
    coronal = acquisition((192, 224, 56), (False, True, False))
    assert coronal.memory_terms()[2] < slab.memory_terms()[2] == acquisition((192, 224, 56), ()).memory_terms()[2]
    # a whole head's frame is the brain's box and a shell, less than its field of view
    head = acquisition((256, 256, 176), (False, False, True))
    assert head.memory_terms()[2] < head.n_voxels
    # the constants cover, by 25 %, the peaks bench_cohort_memory.py measured on that slab and a 1 mm head
    # with 9 echoes, heldout_slab56mm_oblique_bipolar and the benchmark's head
    mib = 2**20
    assert slab.memory_bytes() >= 1.25 * 1572 * mib and head.memory_bytes() >= 1.25 * 2160 * mib



def test_the_fast_presets_estimate_counts_ss_tvs_frame_which_has_no_shell_of_outside_sources():
    # The fast preset inverts with SS-TV, which solves on the brain's box and its ball's margin (5 voxels a side
    # at 1 mm): on the 56 mm slab a task peaked at 999 MiB with fast, 1558 with consensus (README, "Sizing")
    def acquisition(shape):
        return Acquisition((("sub", "01"),), ("m.nii",), ("p.nii",), n_voxels=int(np.prod(shape)), n_echoes=9,
                           grid_shape=shape, voxel_size_mm=(1.0, 1.0, 1.0), b0_axes=(False, False, True))

    slab, head = acquisition((192, 224, 56)), acquisition((256, 256, 176))
    fast_frame = slab.memory_terms("auto", "sstv")[2]
    assert fast_frame == (155 + 10) * (190 + 10) * (56 + 10) < slab.memory_terms()[2] / 3
    assert head.memory_terms(None, "sstv")[2] == (155 + 10) * (190 + 10) * (160 + 10)
    # an inversion whose peak was not measured is charged TFI's frame, the larger
    assert slab.memory_terms("auto", "medi")[2] == slab.memory_terms()[2]
    # the constants cover, by 25 %, what the benchmark measured with fast on that slab and the 1 mm 9-echo head,
    # and give fewer bytes than consensus needs
    mib = 2**20
    assert slab.memory_bytes("auto", "sstv") >= 1.25 * 999 * mib
    assert head.memory_bytes(None, "sstv") >= 1.25 * 1854 * mib
    assert slab.memory_bytes("auto", "sstv") < 0.7 * slab.memory_bytes()


def test_a_worker_that_died_is_reported_with_what_its_configuration_needs():
    class KilledWorker(Exception):
        """What Dask raises for a task whose worker died (out of memory, for instance)."""

    class DeadTask:
        def result(self):
            raise KilledWorker("the worker died")

    slab = Acquisition((("sub", "01"),), ("m.nii",), ("p.nii",), n_voxels=192 * 224 * 56, n_echoes=9,
                       grid_shape=(192, 224, 56), voxel_size_mm=(1.0, 1.0, 1.0), b0_axes=(False, False, True))
    for preset in ("fast", "consensus"):
        config = load_config(preset).to_dict()
        record = _future_record(DeadTask(), slab, config)
        needs = slab.memory_bytes(config["zero_fill_mm"], config["inversion"]["method"]) / 2**30
        assert record["status"] == "failed"
        assert f"out of memory? it needs about {needs:.1f} GiB" in record["reason"]
    assert slab.memory_bytes("auto", "sstv") < slab.memory_bytes() - 2**29  # the two messages differ

def test_discovery_groups_echoes_and_parts_and_names_problems(tmp_path):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    volume = np.ones((4, 5, 6), np.float32)

    def image(relative):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_volume(path, volume, affine)

    for echo in (1, 2):
        image(f"sub-a/anat/sub-a_run-2_echo-{echo}_part-mag_MEGRE.nii.gz")
        image(f"sub-a/anat/sub-a_run-2_echo-{echo}_part-phase_MEGRE.nii.gz")
    image("sub-a/anat/sub-a_run-3_echo-1_part-mag_MEGRE.nii.gz")
    image("sub-a/anat/sub-a_run-3_echo-1_part-phase_MEGRE.nii.gz")
    image("sub-a/anat/sub-a_run-3_echo-2_part-mag_MEGRE.nii.gz")
    image("sub-b/ses-x/anat/sub-b_ses-x_echo-1_part-real_MEGRE.nii.gz")
    image("sub-b/ses-x/anat/sub-b_ses-x_echo-1_part-imag_MEGRE.nii.gz")
    image("sub-c/anat/sub-c_echo-1_MEGRE.nii.gz")
    image("sub-c/anat/sub-c_T1w.nii.gz")
    found = {a.name: a for a in find_acquisitions(tmp_path)}
    assert sorted(found) == ["sub-a_run-2", "sub-a_run-3", "sub-b_ses-x", "sub-c"]
    good = found["sub-a_run-2"]
    assert good.problem is None and good.n_echoes == 2 and good.n_voxels == 120
    assert good.grid_shape == (4, 5, 6) and good.voxel_size_mm == (4.0, 4.0, 4.0)
    assert good.b0_axes == (False, False, True)  # array axis 2 runs along the scanner's z
    assert [Path(p).name for p in good.phase] == ["sub-a_run-2_echo-1_part-phase_MEGRE.nii.gz",
                                                  "sub-a_run-2_echo-2_part-phase_MEGRE.nii.gz"]
    assert good.output_path("chi") == Path("sub-a/anat/sub-a_run-2_Chimap.nii.gz")
    assert good.output_path("qc") == Path("sub-a/figures/sub-a_run-2_desc-qc_Chimap.png")
    assert "magnitude echoes [1, 2] and phase echoes [1]" in found["sub-a_run-3"].problem
    assert "real" in found["sub-b_ses-x"].problem and "dicom2bids" in found["sub-b_ses-x"].problem
    assert "no part-phase" in found["sub-c"].problem
    assert [a.name for a in find_acquisitions(tmp_path, ["sub-c"])] == ["sub-c"]
    # stored sagittally (the second array axis along the scanner's z, the first along y): B0 on that axis
    affine = np.array([[0.0, 0.0, 4.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    for part in ("mag", "phase"):
        image(f"sub-d/anat/sub-d_part-{part}_MEGRE.nii.gz")
    assert [a.b0_axes for a in find_acquisitions(tmp_path, ["sub-d"])] == [(False, True, False)]


def test_local_cluster_is_sized_by_cores_tasks_and_memory():
    gib = 2**30
    plan = plan_local_cluster(2 * gib, 10, cpu_count=8, available_bytes=100 * gib)
    assert plan.n_workers == 8 and plan.memory_limit_bytes >= 2 * gib and plan.note == ""
    assert plan_local_cluster(2 * gib, 3, cpu_count=8, available_bytes=100 * gib).n_workers == 3
    by_memory = plan_local_cluster(4 * gib, 10, cpu_count=8, available_bytes=10 * gib)
    assert by_memory.n_workers == 2 and "reduced from 8 to 2" in by_memory.note
    limited = plan_local_cluster(10 * gib, 10, cpu_count=8, available_bytes=35 * gib, requested_workers=6)
    assert limited.n_workers == 3 and limited.memory_limit_bytes >= 10 * gib and "reduced from 6 to 3" in limited.note
    assert limited.n_workers * limited.memory_limit_bytes <= 35 * gib
    too_big = plan_local_cluster(50 * gib, 4, cpu_count=8, available_bytes=20 * gib)
    assert too_big.n_workers == 1 and "may run out of memory" in too_big.note


def test_the_thread_count_does_not_make_finished_acquisitions_stale(tmp_path):
    from QSMLib.batch.tasks import task_signature

    image = tmp_path / "sub-01_echo-1_part-mag_MEGRE.nii.gz"
    image.write_bytes(b"data")
    acquisition = Acquisition(entities=(("sub", "01"),), magnitude=(str(image),), phase=(str(image),))
    config = load_config("fast").to_dict()
    signature = task_signature(acquisition, {**config, "threads": 1}, [], 1)
    assert signature == task_signature(acquisition, {**config, "threads": 4}, [], 1)
    assert signature != task_signature(acquisition, {**config, "per_echo": True}, [], 1)


def test_workers_times_threads_stay_within_the_cores():
    gib = 2**30
    for workers, threads, tasks in [(None, 0, 10), (None, 0, 3), (None, 2, 10), (4, 0, 10), (2, 4, 10), (3, 3, 10)]:
        plan = plan_local_cluster(gib, tasks, cpu_count=8, available_bytes=100 * gib, requested_workers=workers,
                                  requested_threads=threads)
        assert plan.n_workers * plan.threads_per_task <= 8, (workers, threads, plan)
    # idle cores go to the tasks: 3 tasks on 8 cores get 2 threads each; 2 threads asked -> 4 workers
    assert plan_local_cluster(gib, 3, cpu_count=8, available_bytes=100 * gib).threads_per_task == 2
    assert plan_local_cluster(gib, 10, cpu_count=8, available_bytes=100 * gib, requested_threads=2).n_workers == 4
    crowded = plan_local_cluster(gib, 10, cpu_count=8, available_bytes=100 * gib, requested_workers=3,
                                 requested_threads=3)
    assert crowded.threads_per_task == 2 and "reduced from 3 to 2" in crowded.note
    by_memory = plan_local_cluster(30 * gib, 10, cpu_count=8, available_bytes=70 * gib)
    assert (by_memory.n_workers, by_memory.threads_per_task) == (2, 4)
