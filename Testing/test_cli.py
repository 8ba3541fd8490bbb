"""The ``qsm`` command: outputs, progress for programs, and bad input refused
with a clear message before anything is written."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from synthetic import ECHO_TIMES_S, TEST_DATA, toy_files, toy_head, write_acquisition  # noqa: F401

from QSMLib.cli import EXIT_INPUT, EXIT_OK, main
from QSMLib.io.nifti import read_volume, write_volume


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_writes_named_outputs_on_the_input_grid(toy_files, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = _run(["run", "--mag", *toy_files["mag"], "--phase", *toy_files["phase"],
                                 "--labels", toy_files["labels"], "--config", "fast", "--out", str(out),
                                 "--progress", "json"], capsys)
    assert code == EXIT_OK, stderr
    names = {"chi.nii.gz", "mask.nii.gz", "total_field_hz.nii.gz", "local_field_hz.nii.gz", "roi_stats.tsv",
             "provenance.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    for name in ("chi.nii.gz", "mask.nii.gz", "local_field_hz.nii.gz"):
        volume, affine = read_volume(out / name)
        assert volume.shape == (40, 48, 36)
        np.testing.assert_allclose(affine, toy_files["affine"], atol=1e-5)
    chi, _ = read_volume(out / "chi.nii.gz")
    assert np.all(np.isfinite(chi)) and np.abs(chi).max() > 0

    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["chi"].endswith("chi.nii.gz")
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"unwrap", "inversion"} <= {e["stage"] for e in events if e["event"] == "progress"}
    # the lambda chosen from the data is reported (the Slicer module logs this event) and kept in provenance
    chosen = [e["parameters"] for e in events if e["event"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["inversion"]["regularization_rule"].startswith("noise-proportional")
    assert chosen[0]["inversion"]["regularization"] > 0

    rows = (out / "roi_stats.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["label", "name", "mean_ppm", "median_ppm", "sd_ppm", "voxels", "volume_ml"]
    assert [r.split("\t")[1] for r in rows[1:]] == ["brain", "blob"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["software"]["QSMLib"]
    assert provenance["config"]["inversion"]["method"] == "sstv"
    assert provenance["inputs"]["echo_times_s"] == list(ECHO_TIMES_S)
    assert len(provenance["inputs"]["files"]) == 7 and all(len(v) == 64 for v in provenance["inputs"]["files"].values())
    assert set(provenance["timings_s"]) >= {"unwrap", "echo_fit", "inversion"}
    assert "background" not in provenance["timings_s"]  # `fast` inverts the total field in one step
    assert provenance["chosen_parameters"] == chosen[0]


def test_roi_means_match_numpy(toy_files, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = _run(["run", "--mag", *toy_files["mag"], "--phase", *toy_files["phase"], "--mask",
                            toy_files["mask"], "--labels", toy_files["labels"], "--config", "fast", "--outputs",
                            "local_mask", "--out", str(out)], capsys)
    assert code == EXIT_OK, stderr
    chi, _ = read_volume(out / "chi.nii.gz")
    valid, _ = read_volume(out / "local_mask.nii.gz")
    labels, _ = read_volume(toy_files["labels"])
    row = (out / "roi_stats.tsv").read_text().splitlines()[2].split("\t")
    region = (labels == 2) & (valid > 0)
    assert float(row[2]) == pytest.approx(float(chi[region].mean()), abs=1e-5)
    assert int(row[5]) == int(region.sum())


@pytest.mark.parametrize("kind", ["total", "local"])
def test_run_from_a_field_map(toy_files, tmp_path, capsys, kind):
    out = tmp_path / kind
    code, _, stderr = _run(["run", f"--{kind}-field", toy_files["total_field"], "--mask", toy_files["mask"],
                            "--b0", "3", "--config", "fast", "--out", str(out)], capsys)
    assert code == EXIT_OK, stderr
    chi, _ = read_volume(out / "chi.nii.gz")
    assert np.abs(chi).max() > 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["inputs"]["field_kind"] == kind


def test_existing_outputs_are_kept_unless_overwrite(toy_files, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["run", "--total-field", toy_files["total_field"], "--mask", toy_files["mask"], "--b0", "3",
                 "--config", "fast", "--out", str(out)]
    assert _run(arguments, capsys)[0] == EXIT_OK
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, stderr = _run(arguments, capsys)
    assert code == EXIT_INPUT and "--overwrite" in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _run([*arguments, "--overwrite"], capsys)[0] == EXIT_OK
    assert json.loads((out / "provenance.json").read_text())["created"]


def _bad_input_cases(toy, folder):
    """(name, argv builder) pairs; each must fail with a message and write nothing."""
    magnitude, phase, brain, _ = toy
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    good = write_acquisition(folder / "good", magnitude, phase, affine)
    nosidecar = write_acquisition(folder / "nosidecar", magnitude, phase, affine, sidecars=False)
    small = write_acquisition(folder / "small", magnitude[:, :-2], phase[:, :-2], affine)
    flat = write_acquisition(folder / "flat", magnitude, np.full_like(phase, 0.3), affine)
    nan = write_acquisition(folder / "nan", magnitude, np.full_like(phase, np.nan), affine)
    two_d = [str(write_volume(folder / f"slice{e}.nii.gz", phase[e, :, :, 10:11], affine)) for e in range(3)]
    empty_mask = write_volume(folder / "empty.nii.gz", np.zeros(brain.shape, np.uint8), affine)
    wrong_mask = write_volume(folder / "wrong.nii.gz", brain[:-1].astype(np.uint8), affine)
    a_file = folder / "a_file"
    a_file.write_text("not a folder")
    mag, ph = good["mag"], good["phase"]
    return {
        "shape mismatch": (["--mag", *mag, "--phase", *small["phase"]], "same voxel grid|must match"),
        "wrong echo count": (["--mag", *mag, "--phase", *ph, "--te", "0.004,0.008"], "2 echo time"),
        "non-increasing TE": (["--mag", *mag, "--phase", *ph, "--te", "0.004,0.012,0.008"], "strictly increasing"),
        "no TE anywhere": (["--mag", *nosidecar["mag"], "--phase", *nosidecar["phase"], "--b0", "3"],
                           "No echo times"),
        "2D data": (["--mag", *two_d, "--phase", *two_d, "--te", "0.004,0.008,0.012", "--b0", "3"], "2D"),
        "all-NaN phase": (["--mag", *mag, "--phase", *nan["phase"], "--phase-scale", "radians"],
                          "non-finite|no finite"),
        "constant phase": (["--mag", *mag, "--phase", *flat["phase"], "--phase-scale", "radians"], "constant"),
        "empty mask": (["--mag", *mag, "--phase", *ph, "--mask", str(empty_mask)], "empty"),
        "mismatched mask": (["--mag", *mag, "--phase", *ph, "--mask", str(wrong_mask)], "not on the image grid"),
        "unwritable output": (["--mag", *mag, "--phase", *ph, "--out", str(a_file / "sub")],
                              "Cannot write|not a folder"),
        "unknown preset": (["--mag", *mag, "--phase", *ph, "--config", "best"], "neither a preset"),
    }


def test_bad_input_is_refused_before_writing(tmp_path, capsys):
    cases = _bad_input_cases(toy_head(shape=(20, 24, 18), voxel_mm=(8.0, 8.0, 8.0)), tmp_path / "inputs")
    for name, (arguments, message) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        if "--out" not in arguments:
            arguments = [*arguments, "--out", str(out)]
        code, _, stderr = _run(["run", *arguments], capsys)
        assert code == EXIT_INPUT, (name, stderr)
        assert "Traceback" not in stderr and stderr.startswith("Error:"), (name, stderr)
        assert re.search(message, stderr), (name, stderr)
        assert not out.exists(), name


def test_console_script_reports_error_without_traceback(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "QSMLib.cli", "run", "--mag", str(tmp_path / "missing.nii"),
                                "--phase", str(tmp_path / "missing.nii"), "--out", str(tmp_path / "o")],
                               capture_output=True, text=True)
    assert completed.returncode == EXIT_INPUT
    assert "File not found" in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "o").exists()


#: Run in a fresh interpreter: the qsm command (console_main) or a program calling main(), then free 64 MiB.
_ALLOCATOR_PROBE = """
import os, sys
import numpy as np
try:
    from numpy._core.multiarray import _get_madvise_hugepage
except ImportError:  # numpy 1
    from numpy.core.multiarray import _get_madvise_hugepage
from QSMLib import cli
hugepages_before = _get_madvise_hugepage()
entry = cli.console_main if sys.argv[1] == "console" else cli.main
missing = os.path.join(sys.argv[2], "missing.nii")
assert entry(["run", "--mag", missing, "--phase", missing, "--out", os.path.join(sys.argv[2], "o")]) == 2
def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
array = np.ones(64 * 2**20, dtype=np.uint8)
held = resident_mib()
del array
print(held - resident_mib(), hugepages_before, _get_madvise_hugepage())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist on Linux only")
def test_the_command_keeps_freed_memory_and_a_calling_program_keeps_its_allocator(tmp_path):
    results = {}
    for entry in ("console", "library"):
        completed = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, entry, str(tmp_path)],
                                   capture_output=True, text=True, check=True)
        released_mib, before, after = completed.stdout.split()
        results[entry] = float(released_mib), before, after
    released_mib, _, hugepages = results["console"]
    assert released_mib < 8 and hugepages == "False"  # the 64 MiB stay for the next array, on ordinary pages
    released_mib, before, after = results["library"]
    assert released_mib > 56 and before == after  # malloc hands them back; numpy's setting untouched


def test_real_in_vivo_crop_end_to_end(tmp_path, capsys):
    data = TEST_DATA / "invivo_3echo_crop"
    out = tmp_path / "invivo"
    code, _, stderr = _run(["run", "--mag", str(data / "mag.nii.gz"), "--phase", str(data / "phase.nii.gz"),
                            "--te", "0.004,0.008,0.012", "--b0", "3", "--out", str(out)], capsys)
    assert code == EXIT_OK, stderr
    chi, affine = read_volume(out / "chi.nii.gz")
    mask, _ = read_volume(out / "mask.nii.gz")
    _, input_affine = read_volume(data / "mag.nii.gz")
    np.testing.assert_allclose(affine, input_affine, atol=1e-5)
    assert np.all(np.isfinite(chi)) and mask.sum() > 0.2 * mask.size
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["inputs"]["phase_scale"] == "range"
    # Brain tissue susceptibility spans about +-0.2 ppm; a scaling error would not.
    assert 0.005 < np.std(chi[mask > 0]) < 0.2


def test_demo_reconstructs_the_phantom_and_writes_reproducible_inputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, stderr = _run(["demo", "--out", str(out), "--voxel-size", "3"], capsys)
    assert code == EXIT_OK, stderr
    assert {"chi.nii.gz", "roi_stats.tsv", "qc.png", "provenance.json"} <= {p.name for p in out.iterdir()}
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["inputs"]["accuracy"]["correlation"] > 0.6
    assert "globus_pallidus" in provenance["inputs"]["roi_error_ppb"] and "nrmse" in stdout
    import SimpleITK as sitk
    from test_report_qc import find, text_image

    qc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "qc.png")))
    assert qc.ndim == 2 and qc.std() > 10  # an image with content, not a blank
    for text in ("QSM demo, head phantom:", "axial", "sagittal", "chi", "(ppm)", "0.25 ppm", "local field", "(Hz)"):
        assert find(qc, np.kron(text_image(text), np.ones((2, 2), np.uint8))), text  # labelled (upscaled twice)
    names = [line.split("\t")[1] for line in (out / "roi_stats.tsv").read_text().splitlines()[1:]]
    assert names[:3] == ["caudate", "putamen", "globus_pallidus"] and not any(n.startswith("label_") for n in names)
    inputs = out / "inputs"
    rerun = tmp_path / "rerun"
    code, _, stderr = _run(["run", "--mag", *sorted(map(str, inputs.glob("magnitude_echo-*.nii.gz"))),
                            "--phase", *sorted(map(str, inputs.glob("phase_echo-*.nii.gz"))),
                            "--out", str(rerun)], capsys)
    assert code == EXIT_OK, stderr
    np.testing.assert_array_equal(read_volume(rerun / "chi.nii.gz")[0], read_volume(out / "chi.nii.gz")[0])


def test_bipolar_data_without_a_flag_are_corrected_and_monopolar_turns_it_off(tmp_path, capsys):
    from QSMLib.phantom import simulate_head

    echo_times = (0.004, 0.008, 0.012, 0.016, 0.020)
    phantom = simulate_head(voxel_size_mm=(4.0, 4.0, 4.0), echo_times_s=echo_times, bipolar=True)
    acquisition = phantom.acquisition
    folder = tmp_path / "bipolar"
    folder.mkdir()
    affine = acquisition.affine
    mag = [str(write_volume(folder / f"mag{e}.nii.gz", m, affine)) for e, m in enumerate(acquisition.magnitude)]
    phase = [str(write_volume(folder / f"ph{e}.nii.gz", p, affine)) for e, p in enumerate(acquisition.phase)]
    common = ["run", "--mag", *mag, "--phase", *phase, "--te", ",".join(map(str, echo_times)), "--b0", "3",
              "--progress", "json"]
    code, stdout, stderr = _run([*common, "--out", str(tmp_path / "detected")], capsys)
    assert code == EXIT_OK, stderr
    warned = [json.loads(line)["message"] for line in stdout.splitlines() if '"warning"' in line]
    assert any("bipolar readout" in message and "--monopolar" in message for message in warned), warned
    provenance = json.loads((tmp_path / "detected" / "provenance.json").read_text())
    assert provenance["chosen_parameters"]["bipolar"]["readout"] == "detected bipolar"
    for flag, name in (("--bipolar", "declared"), ("--monopolar", "plain")):
        code, stdout, stderr = _run([*common, flag, "--out", str(tmp_path / name)], capsys)
        assert code == EXIT_OK, stderr
        assert not any("bipolar" in line for line in stdout.splitlines() if '"warning"' in line)
    np.testing.assert_array_equal(read_volume(tmp_path / "detected" / "chi.nii.gz")[0],
                                  read_volume(tmp_path / "declared" / "chi.nii.gz")[0])
    brain = phantom.brain_mask
    errors = {}
    for name in ("plain", "declared"):
        total, _ = read_volume(tmp_path / name / "total_field_hz.nii.gz")
        difference = (total - phantom.total_field_hz)[brain]
        errors[name] = float(np.std(difference))
    assert errors["declared"] < 0.5 * errors["plain"], errors
    with pytest.raises(SystemExit):
        main([*common, "--bipolar", "--monopolar", "--out", str(tmp_path / "both")])
    assert "--monopolar: not allowed with argument --bipolar" in capsys.readouterr().err
