"""Bad or unusual input through the ``qsm`` command line (issue 12): refused with exit 2, one message
naming the problem and the fix, and nothing written or overwritten; or processed with a stated warning."""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import ECHO_TIMES_S, toy_head, write_acquisition

from QSMLib.cli import EXIT_INPUT, EXIT_OK, main
from QSMLib.io.nifti import read_volume, write_volume

AFFINE = np.diag([8.0, 8.0, 8.0, 1.0])


def run_qsm(argv):
    """``main(argv)`` in this process: (exit code, stdout, stderr); argparse's exit counts as a code."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
    return code, stdout.getvalue(), stderr.getvalue()


def snapshot(folder):
    """Every file under ``folder`` with its bytes (to show that nothing was written or overwritten)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outputs(tmp_path):
    """An output root holding an earlier result in ``old/``, which a refused run must not touch."""
    root = tmp_path / "outputs"
    (root / "old").mkdir(parents=True)
    (root / "old" / "chi.nii.gz").write_bytes(b"an earlier result")
    return root


def assert_refused(argv, pattern, outputs, out_name="new"):
    """Exit 2, one ``Error:`` message matching ``pattern`` without a traceback, nothing written to ``outputs``."""
    before = snapshot(outputs)
    code, stdout, stderr = run_qsm([*argv, "--out", outputs / out_name, "--overwrite"])
    assert code == EXIT_INPUT, stderr
    assert "Traceback" not in stderr and stderr.count("Error:") == 1, stderr
    error = stderr[stderr.index("Error:"):]
    assert re.search(pattern, error), error
    assert snapshot(outputs) == before
    return error


def assert_processed(argv, out, warning=None):
    """Exit 0 with outputs written and, when given, a warning matching ``warning``; returns stderr."""
    code, _, stderr = run_qsm([*argv, "--out", out, "--config", "fast"])
    assert code == EXIT_OK, stderr
    assert (out / "chi.nii.gz").is_file() and "Traceback" not in stderr
    if warning is not None:
        warnings = [line for line in stderr.splitlines() if line.startswith("Warning:")]
        assert any(re.search(warning, line) for line in warnings), stderr
    return stderr


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small toy head as per-echo files with sidecars, its mask, and its total field in Hz."""
    folder = tmp_path_factory.mktemp("bad_input")
    magnitude, phase, brain, field_hz = toy_head(shape=(20, 24, 18), voxel_mm=(8.0, 8.0, 8.0))
    files = write_acquisition(folder / "good", magnitude, phase, AFFINE)
    files.update(
        magnitude=magnitude, phase_rad=phase, brain=brain, field_hz=field_hz, folder=folder,
        mask=str(write_volume(folder / "mask.nii.gz", brain.astype(np.uint8), AFFINE)),
        total_field=str(write_volume(folder / "total_field.nii.gz", np.where(brain, field_hz, 0), AFFINE)),
    )
    return files


def _field_map(folder, name, values, sidecar=None):
    path = write_volume(folder / f"{name}.nii.gz", values.astype(np.float32), AFFINE)
    if sidecar is not None:
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return str(path)


# --- D2: field strength of field-map runs, validated as on the magnitude/phase path ----------------------

@pytest.mark.parametrize("b0, pattern", [
    ("nan", r"Field strength nan T \(--b0\) is not a plausible MRI field.*Give B0 in tesla"),
    ("-3", r"-3 T .*B0 is positive.*--phase-sign"),
    ("300", r"300 T .*imaging frequency in MHz it would be 7.05 T"),
    ("0", r"0 T \(--b0\) is not a plausible MRI field"),
])
def test_field_map_runs_refuse_implausible_b0(toy, outputs, b0, pattern):
    assert_refused(["run", "--total-field", toy["total_field"], "--mask", toy["mask"], f"--b0={b0}"], pattern,
                   outputs)
    assert_refused(["run", "--mag", *toy["mag"], "--phase", *toy["phase"], f"--b0={b0}"], pattern, outputs)


def test_field_map_sidecar_field_strength_is_validated(toy, outputs, tmp_path):
    field = _field_map(tmp_path, "tesla_e-4", np.where(toy["brain"], toy["field_hz"], 0),
                       {"MagneticFieldStrength": 1e-4})
    assert_refused(["run", "--total-field", field, "--mask", toy["mask"]],
                   r"0.0001 T \(MagneticFieldStrength in the JSON sidecar\) is not a plausible", outputs)


# --- D3: magnitude given as phase ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["magnitude as phase", "swapped"])
def test_magnitude_given_as_phase_is_refused(toy, outputs, case):
    magnitude_files = toy["mag"] if case == "magnitude as phase" else toy["phase"]
    assert_refused(["run", "--mag", *magnitude_files, "--phase", *toy["mag"]],
                   r"phase images look like magnitude images.*not swapped.*--phase-scale", outputs)


def test_phase_given_as_magnitude_is_refused(toy, outputs):
    assert_refused(["run", "--mag", *toy["phase"], "--phase", *toy["phase"]],
                   r"Magnitude is negative in \d+ % of the voxels, as phase is.*not swapped", outputs)


def test_non_negative_integer_phase_is_still_accepted(toy, tmp_path):
    """The magnitude check must not refuse real phase stored as unsigned 12-bit integers."""
    unsigned = np.round((toy["phase_rad"] + np.pi) / (2 * np.pi) * 4095).astype(np.int16)
    files = write_acquisition(tmp_path / "unsigned", toy["magnitude"], unsigned, AFFINE)
    assert_processed(["run", "--mag", *files["mag"], "--phase", *files["phase"]], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["inputs"]["phase_scale"] == "integer"


# --- D4: echo order ------------------------------------------------------------------------------------

def test_te_contradicting_sidecars_is_warned(toy, tmp_path):
    assert_processed(["run", "--mag", *toy["mag"], "--phase", *toy["phase"], "--te", "0.005,0.010,0.015"],
                     tmp_path / "out", r"--te gives echo times 5, 10, 15 ms but the JSON sidecars say 4, 8, 12 ms")


def _numbered_echoes(toy, folder, numbers, template="{role}_echo-{n}.nii.gz"):
    """Per-echo files without sidecars whose names number the three echoes ``numbers``."""
    folder.mkdir()
    files = {"mag": [], "phase": []}
    for echo, number in enumerate(numbers):
        for role, data in (("mag", toy["magnitude"]), ("phase", toy["phase_rad"])):
            files[role].append(str(write_volume(folder / template.format(role=role, n=number), data[echo], AFFINE)))
    return files


def test_echo_files_given_out_of_order_are_put_in_echo_order(toy, tmp_path):
    files = _numbered_echoes(toy, tmp_path / "in", (1, 2, 10))
    te = ["--te", ",".join(map(str, ECHO_TIMES_S)), "--b0", "3"]
    ordered = tmp_path / "ordered"
    assert_processed(["run", "--mag", *files["mag"], "--phase", *files["phase"], *te], ordered)
    globbed = [0, 2, 1]  # as a shell sorts them: echo-1, echo-10, echo-2
    shuffled = tmp_path / "globbed"
    assert_processed(["run", "--mag", *np.array(files["mag"])[globbed], "--phase", *np.array(files["phase"])[globbed],
                      *te], shuffled, r"not given in echo order.*echo-1.*echo-2.*echo-10")
    np.testing.assert_array_equal(read_volume(shuffled / "chi.nii.gz")[0], read_volume(ordered / "chi.nii.gz")[0])


def test_ambiguous_echo_order_is_refused(toy, outputs, tmp_path):
    # sidecar EchoTime and the echo-<n> entity order the files differently
    contradicting = _numbered_echoes(toy, tmp_path / "contradicting", (1, 2, 3))
    for role in ("mag", "phase"):
        for path, echo_time in zip(contradicting[role], (0.008, 0.004, 0.012)):
            (tmp_path / "contradicting" / os.path.basename(path).replace(".nii.gz", ".json")).write_text(
                json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": 3}))
    assert_refused(["run", "--mag", *contradicting["mag"], "--phase", *contradicting["phase"]],
                   r"one echo order by the EchoTime in their sidecars and in another by the echo-<n>", outputs)
    # names numbered without an echo entity, given out of numeric order, nothing to confirm what they count
    numbered = _numbered_echoes(toy, tmp_path / "numbered", (1, 10, 2), "{role}_e{n}.nii.gz")
    assert_refused(["run", "--mag", *numbered["mag"], "--phase", *numbered["phase"], "--te", "0.004,0.008,0.012",
                    "--b0", "3"], r"numbered 1, 10, 2 in their names.*ls -v", outputs)
    # the same file twice
    assert_refused(["run", "--mag", toy["mag"][0], toy["mag"][0], toy["mag"][2], "--phase", *toy["phase"]],
                   r"Two magnitude files have the same EchoTime", outputs)
    # magnitude and phase of different echoes
    mixed = _numbered_echoes(toy, tmp_path / "mixed", (1, 2, 4))
    assert_refused(["run", "--mag", *toy["mag"], "--phase", *mixed["phase"], "--te",
                    "0.004,0.008,0.012", "--b0", "3"], r"not the same echoes: echo numbers.*\[1, 2, 3\].*\[1, 2, 4\]",
                   outputs)


# --- D5: ImagingFrequency and MagneticFieldStrength disagree ------------------------------------------

def test_disagreeing_field_strengths_are_warned(toy, tmp_path):
    folder = tmp_path / "seven_tesla"
    files = write_acquisition(folder, toy["magnitude"], toy["phase_rad"], AFFINE)
    for sidecar in folder.glob("*.json"):
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "ImagingFrequency": 297.2}))
    assert_processed(["run", "--mag", *files["mag"], "--phase", *files["phase"]], tmp_path / "out",
                     r"ImagingFrequency 297.2 MHz means 6.98 T, but MagneticFieldStrength says 3 T.*--b0")
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["inputs"]["b0_tesla"] == pytest.approx(297.2 / 42.577478)


# --- D6, D8, D9: configuration values of the wrong type or range --------------------------------------

@pytest.mark.parametrize("config, pattern", [
    ({"inversion": {"method": "medi", "params": {"regularization": "high"}}},
     r"Stage 'inversion', method 'medi', parameter 'regularization': got \"high\", allowed: a number above 0"),
    ({"inversion": {"method": "tv", "params": [1]}}, r"params must be an object.*got \[1\]"),
    ({"per_echo": "false"}, r"per_echo must be true or false, got \"false\""),
    ({"inversion": {"method": "tv", "params": {"max_iterations": 0}}},
     r"parameter 'max_iterations': got 0, allowed: a whole number at least 1"),
    ({"echo_fit": {"method": "weighted_linear", "params": {"intercept": "no"}}},
     r"parameter 'intercept': got \"no\", allowed: true or false"),
    ({"inversion": {"method": "l2", "params": {"regularization": "best"}}},
     r"parameter 'regularization': got \"best\", allowed: .*\"auto\""),
    ({"inversion": {"method": "tfi", "params": {"relaxation": 2.0}}},
     r"parameter 'relaxation': got 2.0, allowed: a number above 0 and below 2"),
    ({"inversion": {"method": "tkd", "params": {"threshold": 1.5, "pad_factor": True}}},
     r"Invalid configuration:\n  - .*'threshold': got 1.5, allowed: a number above 0 and at most 1\n"
     r"  - .*'pad_factor': got true, allowed: a number at least 1"),
    ([1], r"must be a JSON object, got an array"),
])
def test_invalid_configuration_values_are_refused(toy, outputs, tmp_path, config, pattern):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert_refused(["run", "--total-field", toy["total_field"], "--mask", toy["mask"], "--b0", "3", "--config",
                    path], pattern, outputs)


def test_nan_in_a_configuration_is_refused(toy, outputs, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"inversion": {"method": "tv", "params": {"tolerance": NaN}}}')
    assert_refused(["run", "--total-field", toy["total_field"], "--mask", toy["mask"], "--b0", "3", "--config",
                    path], r"'tolerance': got NaN, allowed: a number above 0", outputs)


def test_configuration_and_sidecars_in_utf16_are_read(toy, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"inversion": {"method": "tkd"}}), encoding="utf-16")
    folder = tmp_path / "utf16"
    files = write_acquisition(folder, toy["magnitude"], toy["phase_rad"], AFFINE)
    for sidecar in folder.glob("*.json"):
        sidecar.write_text(sidecar.read_text(), encoding="utf-16")
    out = tmp_path / "out"
    code, _, stderr = run_qsm(["run", "--mag", *files["mag"], "--phase", *files["phase"], "--config", config,
                               "--out", out])
    assert code == EXIT_OK, stderr
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config"]["inversion"]["method"] == "tkd"
    assert provenance["inputs"]["echo_times_s"] == list(ECHO_TIMES_S)


@pytest.mark.parametrize("content, pattern", [
    ({"EchoTime": 0.004, "MagneticFieldStrength": "3T"},
     r"MagneticFieldStrength in the JSON sidecar .*phase_echo-1.json must be a number in tesla \(e.g. 3\), "
     r"got \"3T\""),
    ({"EchoTime": ["4ms"], "MagneticFieldStrength": 3},
     r"EchoTime in the JSON sidecar .* must be a number or a list of numbers in seconds.*got \[\"4ms\"\]"),
    ([0.004, 3], r"holds a JSON array, not an object"),
    ("0.004", r"holds a JSON string, not an object"),
    (b"\xff\xfe\x00garbage\xe9", r"Cannot read the JSON sidecar"),
])
def test_malformed_sidecars_are_refused(toy, outputs, tmp_path, content, pattern):
    folder = tmp_path / "sidecars"
    files = write_acquisition(folder, toy["magnitude"], toy["phase_rad"], AFFINE)
    sidecar = folder / "phase_echo-1.json"
    if isinstance(content, bytes):
        sidecar.write_bytes(content)
    else:
        sidecar.write_text(json.dumps(content))
    assert_refused(["run", "--mag", *files["mag"], "--phase", *files["phase"]], pattern, outputs)


# --- D16: implausible echo times -----------------------------------------------------------------------

@pytest.mark.parametrize("times, pattern", [
    ((4e-6, 8e-6, 12e-6), r"4, 8, 12 microseconds .* converted from milliseconds to seconds twice.*"
                          r"0.004, 0.008, 0.012 s"),
    ((0.4, 0.6, 0.95), r"400, 600, 950 ms .* longer than gradient-echo QSM uses.*4, 6, 9.5 ms"),
    ((4, 8, 12), r"look like milliseconds: give them in seconds, e.g. 0.004, 0.008, 0.012"),
])
def test_implausible_echo_times_are_refused_with_the_unit_mistake(toy, outputs, tmp_path, times, pattern):
    assert_refused(["run", "--mag", *toy["mag"], "--phase", *toy["phase"], "--te", ",".join(map(str, times))],
                   pattern, outputs)
    folder = tmp_path / "sidecar_times"
    files = write_acquisition(folder, toy["magnitude"], toy["phase_rad"], AFFINE)
    for sidecar, echo_time in zip(sorted(folder.glob("*_echo-*.json")), [*times, *times]):
        sidecar.write_text(json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": 3}))
    assert_refused(["run", "--mag", *files["mag"], "--phase", *files["phase"]], pattern, outputs)


# --- 2D images, negative labels, negative magnitude, outputs not produced -------------------------------

def test_two_dimensional_images_are_refused(toy, outputs, tmp_path):
    files = {"mag": [], "phase": []}
    for role, data in (("mag", toy["magnitude"]), ("phase", toy["phase_rad"])):
        for echo in range(3):
            path = tmp_path / f"{role}{echo}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(data[echo, :, :, 9]), str(path))
            files[role].append(path)
    assert_refused(["run", "--mag", *files["mag"], "--phase", *files["phase"], "--te", "0.004,0.008,0.012",
                    "--b0", "3"], r"is a 2D image \(size \(24, 20\)\); QSM needs 3D volumes", outputs)


@pytest.mark.parametrize("labels, pattern", [
    (-1, r"negative labels \(down to -1\).*0 for background and positive whole numbers"),
    (0, r"is all 0 \(background\): it has no region"),
])
def test_unusable_label_maps_are_refused(toy, outputs, tmp_path, labels, pattern):
    label_map = write_volume(tmp_path / "labels.nii.gz", np.where(toy["brain"], labels, 0).astype(np.int16), AFFINE)
    assert_refused(["run", "--total-field", toy["total_field"], "--mask", toy["mask"], "--b0", "3", "--labels",
                    label_map], pattern, outputs)


def test_a_warning_noticed_before_a_failure_is_shown_before_its_message(toy, outputs, tmp_path):
    in_ppm = _field_map(tmp_path, "ppm", np.where(toy["brain"], toy["field_hz"], 0) / 127.7)
    label_map = write_volume(tmp_path / "labels.nii.gz", np.where(toy["brain"], -1, 0).astype(np.int16), AFFINE)
    error = assert_refused(["run", "--total-field", in_ppm, "--mask", toy["mask"], "--b0", "3", "--labels",
                            label_map], r"negative labels", outputs)
    _, _, stderr = run_qsm(["run", "--total-field", in_ppm, "--mask", toy["mask"], "--b0", "3", "--labels",
                            label_map, "--out", outputs / "new", "--overwrite"])
    lines = stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("Warning:") and "implausibly small" in line)
    assert warning < next(i for i, line in enumerate(lines) if line.startswith("Error:")) and error in stderr


def test_negative_magnitude_is_named(toy, outputs, tmp_path):
    files = write_acquisition(tmp_path / "negative", -toy["magnitude"] - 0.1, toy["phase_rad"], AFFINE)
    assert_refused(["run", "--mag", *files["mag"], "--phase", *files["phase"]],
                   r"Magnitude is negative everywhere.*not swapped", outputs)


def test_outputs_a_field_map_run_cannot_produce_are_warned(toy, tmp_path):
    assert_processed(["run", "--total-field", toy["total_field"], "--mask", toy["mask"], "--b0", "3", "--outputs",
                      "r2star"], tmp_path / "out", r"Output 'r2star' is not produced by this configuration")
    assert not (tmp_path / "out" / "r2star.nii.gz").exists()


# --- D17: field maps in other units ---------------------------------------------------------------------

@pytest.mark.parametrize("scale, kind, pattern", [
    (1 / 127.7, "total", r"total field map .* implausibly small for Hz.*in ppm \(multiply by 127.7 Hz/ppm\)"),
    (1e6, "total", r"total field map .* implausibly large for Hz.*scaled \(e.g. by 1e6\)"),
    (2 * np.pi * 0.004, "local", r"local field map .* implausibly small for Hz.*radians"),
])
def test_field_maps_in_other_units_are_warned(toy, tmp_path, scale, kind, pattern):
    field = np.where(toy["brain"], toy["field_hz"], 0)
    if kind == "local":  # a local field: the toy's total field without its brain-wide mean and gradient
        field = np.where(toy["brain"], field - field[toy["brain"]].mean(), 0) * 0.1
    path = _field_map(tmp_path, "scaled", field * scale)
    assert_processed(["run", f"--{kind}-field", path, "--mask", toy["mask"], "--b0", "3"], tmp_path / "out", pattern)
    # and the same map in Hz passes without that warning
    stderr = assert_processed(["run", f"--{kind}-field", _field_map(tmp_path, "hz", field), "--mask", toy["mask"],
                               "--b0", "3"], tmp_path / "hz_out")
    assert "implausibly" not in stderr


# --- D20: a reader that goes away ------------------------------------------------------------------------

def test_a_closed_stdout_ends_quietly_and_the_run_completes(toy, tmp_path):
    reader, writer = os.pipe()
    os.close(reader)  # as `| head -1` after its line: every write to stdout now fails with EPIPE
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "QSMLib.cli", "run", "--total-field", toy["total_field"], "--mask", toy["mask"],
         "--b0", "3", "--config", "fast", "--progress", "json", "--out", str(out)],
        stdout=writer, stderr=subprocess.PIPE, text=True, cwd=os.getcwd(), timeout=120)
    os.close(writer)
    assert completed.returncode == EXIT_OK, completed.stderr
    assert completed.stderr == ""  # no BrokenPipeError, no "Exception ignored"
    assert (out / "chi.nii.gz").is_file() and (out / "provenance.json").is_file()


def test_a_closed_stderr_does_not_turn_a_refusal_into_a_traceback(toy, tmp_path):
    reader, writer = os.pipe()
    os.close(reader)  # as `2>&1 | head -1` after the first line: every write to stderr fails with EPIPE
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "QSMLib.cli", "run", "--total-field", toy["total_field"], "--mask", toy["mask"],
         "--b0", "300", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=writer, text=True, cwd=os.getcwd(), timeout=120)
    os.close(writer)
    assert completed.returncode == EXIT_INPUT  # the refusal's own code, not 1 from a BrokenPipeError
    assert not out.exists()


# --- qsm bids: folders, DataLad links, schedulers ---------------------------------------------------------

def _bids_subject(toy, root, subject, *, name_subject=None, link_into=None, session=None, name_session=None):
    """One subject's MEGRE files (and sidecars) in ``root/sub-<subject>[/ses-<session>]/anat``; optionally named
    for another subject or session (``name_session`` "" leaves the entity out), or stored in ``link_into`` with
    symbolic links in the dataset (as DataLad/git-annex does)."""
    anat = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    anat.mkdir(parents=True)
    named_session = session if name_session is None else name_session
    prefix = f"sub-{name_subject or subject}" + (f"_ses-{named_session}" if named_session else "")
    for echo, echo_time in enumerate(ECHO_TIMES_S, start=1):
        for part, data in (("mag", toy["magnitude"]), ("phase", toy["phase_rad"])):
            stem = f"{prefix}_echo-{echo}_part-{part}_MEGRE"
            if link_into is None:
                write_volume(anat / f"{stem}.nii.gz", data[echo - 1], AFFINE)
            else:
                link_into.mkdir(parents=True, exist_ok=True)
                target = write_volume(link_into / f"MD5E-{subject}-{echo}-{part}.nii.gz", data[echo - 1], AFFINE)
                os.symlink(os.path.relpath(target, anat), anat / f"{stem}.nii.gz")
            (anat / f"{stem}.json").write_text(json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": 3}))


def test_bids_files_named_for_another_subject_are_refused(toy, outputs, tmp_path):
    root = tmp_path / "bids"
    _bids_subject(toy, root, "01")
    _bids_subject(toy, root, "03", name_subject="01")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    before = snapshot(outputs)
    code, _, stderr = run_qsm(["bids", root, outputs / "derivatives", "--progress", "none"])
    assert code == EXIT_INPUT and "Traceback" not in stderr, stderr
    assert ("File names disagree with the folders they are in: sub-03/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz "
            "says sub-01 (folder: sub-03)") in stderr and "rename or move" in stderr
    assert snapshot(outputs) == before


@pytest.mark.parametrize("name_session, says", [
    ("01", "sub-01/ses-02/anat/sub-01_ses-01_echo-1_part-mag_MEGRE.nii.gz says ses-01 (folder: ses-02)"),
    ("", "sub-01/ses-02/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz says no ses- entity (folder: ses-02)"),
])
def test_bids_files_named_for_another_session_or_none_are_refused(toy, outputs, tmp_path, name_session, says):
    root = tmp_path / "bids"
    _bids_subject(toy, root, "01", session="02", name_session=name_session)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    before = snapshot(outputs)
    code, _, stderr = run_qsm(["bids", root, outputs / "derivatives", "--progress", "none"])
    assert code == EXIT_INPUT and "Traceback" not in stderr and stderr.count("Error:") == 1, stderr
    assert says in stderr and "and 1 more" in stderr  # 3 echoes x 2 parts: five named, the sixth counted
    assert snapshot(outputs) == before


def test_bids_on_a_datalad_dataset_finds_sidecars_next_to_the_links(toy, tmp_path):
    root = tmp_path / "bids"
    _bids_subject(toy, root, "01", link_into=root / ".git" / "annex" / "objects")
    out = tmp_path / "derivatives"
    code, stdout, stderr = run_qsm(["bids", root, out, "--config", "fast", "--workers", "1", "--progress", "json"])
    assert code == EXIT_OK, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [(e["name"], e["status"]) for e in events if e["event"] == "acquisition"] == [("sub-01", "processed")]
    # no dataset_description.json in this dataset: said, before the work
    warnings = [e for e in events if e["event"] == "warning"]
    assert "has no dataset_description.json" in warnings[0]["message"]
    first_progress = next(i for i, e in enumerate(events) if e["event"] == "progress")
    assert events.index(warnings[0]) < first_progress
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("address, pattern", [
    ("node1", r"'node1' is not a Dask scheduler address: give it as tcp://HOST:PORT \(with its port: "
              r"tcp://node1:8786"),
    ("not a url", r"'not a url' is not a Dask scheduler address"),
    ("unreachable", r"Cannot reach the Dask scheduler at tcp://127.0.0.1:\d+ \(.*\)\. Start one with"),
])
def test_bad_or_unreachable_schedulers_fail_fast_and_write_nothing(toy, outputs, tmp_path, address, pattern):
    root = tmp_path / "bids"
    _bids_subject(toy, root, "01")
    if address == "unreachable":
        address = f"tcp://127.0.0.1:{_free_port()}"
    before = snapshot(outputs)
    began = time.monotonic()
    code, _, stderr = run_qsm(["bids", root, outputs / "derivatives", "--scheduler", address, "--progress", "none"])
    assert time.monotonic() - began < 10.0  # not the client's 20 s timeout, nor 40 s of retries
    assert code == EXIT_INPUT and "Traceback" not in stderr, stderr
    assert re.search(pattern, stderr), stderr
    assert snapshot(outputs) == before and not (outputs / "derivatives").exists()


def test_a_killed_task_leaves_no_empty_subject_folder(toy, tmp_path):
    root = tmp_path / "bids"
    _bids_subject(toy, root, "01")
    out = tmp_path / "derivatives"
    out.mkdir()
    # The task dies (as under SIGKILL) in the middle of writing its outputs.
    script = (
        "import os, sys\n"
        "from QSMLib.batch import find_acquisitions, tasks\n"
        "tasks.write_png = lambda *args, **kwargs: os._exit(9)\n"
        "from QSMLib.pipeline import load_config\n"
        f"tasks.process_acquisition(find_acquisitions({str(root)!r})[0], {str(out)!r}, load_config('fast').to_dict())\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert not (out / "sub-01").exists()
    assert [p.name.startswith("sub-01-") for p in (out / ".qsm-work").iterdir()] == [True]
    code, _, stderr = run_qsm(["bids", root, out, "--config", "fast", "--workers", "1", "--progress", "none"])
    assert code == EXIT_OK, stderr
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file() and not (out / ".qsm-work").exists()


# --- the library under the command line ----------------------------------------------------------------------

def test_every_default_and_preset_passes_the_configuration_checks():
    """The checks must never refuse what the methods themselves declare (e.g. regularization="auto")."""
    import inspect

    from QSMLib._validation import check_parameter
    from QSMLib.pipeline import PRESETS, REGISTRY

    for stage, methods in REGISTRY.items():
        for name, entry in methods.items():
            signature = inspect.signature(entry.function)
            for parameter in entry.tunable_parameters():
                default = signature.parameters[parameter].default
                assert check_parameter(entry.function, parameter, default) == (default, None), (stage, name, parameter)
    for preset in PRESETS.values():
        preset().validate()


def test_library_calls_refuse_what_the_command_line_refuses(toy):
    from QSMLib.errors import QSMInputError
    from QSMLib.pipeline import run_pipeline_from_field
    from QSMLib.roi import roi_statistics

    with pytest.raises(QSMInputError, match="not a plausible MRI field"):
        run_pipeline_from_field(toy["field_hz"], toy["brain"], field_kind="total", voxel_size_mm=(8, 8, 8),
                                b0_direction=(0, 0, 1), b0_tesla=0.0)
    with pytest.raises(QSMInputError, match="negative labels"):
        roi_statistics(toy["field_hz"], np.where(toy["brain"], -2, 0), (8, 8, 8))
