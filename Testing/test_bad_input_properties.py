"""Property-based search for tracebacks: malformed configurations, sidecars and option values given to
``qsm`` must end in exit 0 (outputs written) or exit 2 (a message, nothing written), never in a traceback.

Examples are few and volumes tiny so that the suite stays fast; set ``QSM_FUZZ_EXAMPLES`` (e.g. 2000) to
search longer, and ``QSM_FUZZ_SEED`` to explore other examples than the fixed default ones.
"""

import contextlib
import inspect
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from synthetic import toy_head, write_acquisition

from QSMLib.cli import EXIT_INPUT, EXIT_OK, main
from QSMLib.io.nifti import write_volume
from QSMLib.pipeline import REGISTRY, PipelineConfig

EXAMPLES = int(os.environ.get("QSM_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("QSM_FUZZ_SEED", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
AFFINE = np.diag([10.0, 10.0, 10.0, 1.0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16x18x14 toy head at 10 mm (3 echoes with sidecars), its mask, total field and labels."""
    folder = tmp_path_factory.mktemp("fuzz")
    magnitude, phase, brain, field_hz = toy_head(shape=(16, 18, 14), voxel_mm=(10.0, 10.0, 10.0))
    files = write_acquisition(folder / "acquisition", magnitude, phase, AFFINE)
    files["mask"] = str(write_volume(folder / "mask.nii.gz", brain.astype(np.uint8), AFFINE))
    files["total_field"] = str(write_volume(folder / "field.nii.gz", np.where(brain, field_hz, 0), AFFINE))
    labels = np.where(brain, 1, 0).astype(np.int16)
    labels[6:10, 7:11, 5:9] = 2
    files["labels"] = str(write_volume(folder / "labels.nii.gz", labels, AFFINE))
    files["folder"] = folder
    anat = folder / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for role, part in (("mag", "mag"), ("phase", "phase")):
        for echo, path in enumerate(files[role], start=1):
            stem = f"sub-01_echo-{echo}_part-{part}_MEGRE"
            shutil.copy(path, anat / f"{stem}.nii.gz")
            shutil.copy(path.replace(".nii.gz", ".json"), anat / f"{stem}.json")
    (folder / "bids" / "dataset_description.json").write_text('{"Name": "tiny", "BIDSVersion": "1.10.0"}')
    shutil.copytree(folder / "acquisition", folder / "sidecars")  # whose sidecars the sidecar test rewrites
    return files


def run_and_check(argv):
    """Run ``qsm`` in this process and check the property; returns the exit code.

    Exit 0 must leave outputs; exit 2 must say ``Error:`` (or argparse's usage) and leave the output
    folder absent; nothing else (no exception, no traceback, no other code) may happen.
    """
    out = Path(tempfile.mkdtemp(prefix="qsm-fuzz-")) / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main([*map(str, argv), "--out", str(out)] if argv[0] == "run" else list(map(str, argv)))
            except SystemExit as stop:  # argparse refusing an option value
                code = stop.code
        text = stderr.getvalue()
        assert "Traceback" not in text, text
        assert code in (EXIT_OK, EXIT_INPUT), (code, text)
        if code == EXIT_INPUT:
            assert "Error:" in text or "usage:" in text, text
            assert not out.exists(), text
        elif argv[0] == "run":
            assert (out / "chi.nii.gz").is_file(), text
        event(f"exit {code}")
        return code
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# --- strategies ------------------------------------------------------------------------------------------

#: Numbers as people and programs mistype them; bounded, so that a valid iteration count stays quick.
numbers = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0.0, -0.0, 1e-12, 0.5, 1.0, 1.5, -1.0, 1e300, -1e300, math.nan, math.inf, -math.inf]),
    st.floats(-100, 100, allow_nan=False),
)
words = st.one_of(st.sampled_from(["auto", "false", "true", "", " ", "none", "high", "zero", "l2", "3T", "4ms",
                                   "NaN", "1e-3"]), st.text(max_size=6))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, words),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(words, inner, max_size=3)),
    max_leaves=6,
)


def near_default(function, name):
    """Values a user might try for one parameter: its default, scaled, at the edges, or anything at all."""
    default = inspect.signature(function).parameters[name].default
    candidates = [default, 1, 0, -1, 1e-9, 0.999]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        candidates += [default * 0.5, default * 2, type(default)(default + 1)]
    return st.one_of(st.sampled_from(candidates), json_values)


@st.composite
def stage_entries(draw, stage):
    """A stage's configuration: a method name or a {method, params} object, mostly right, sometimes wrong."""
    method = draw(st.one_of(st.sampled_from(sorted(REGISTRY[stage])), words, json_values)
                  if draw(st.integers(0, 4)) == 0 else st.sampled_from(sorted(REGISTRY[stage])))
    if draw(st.integers(0, 3)) == 0:
        return method
    entry = {"method": method}
    known = isinstance(method, str) and method in REGISTRY[stage]
    names = sorted(REGISTRY[stage][method].tunable_parameters()) if known else []
    if names:
        chosen = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        function = REGISTRY[stage][method].function
        entry["params"] = {name: draw(near_default(function, name)) for name in chosen}
    if draw(st.integers(0, 5)) == 0:
        entry["params"] = draw(st.one_of(st.dictionaries(words, json_values, max_size=2), json_values))
    if draw(st.integers(0, 9)) == 0:
        entry[draw(words)] = draw(json_values)
    return entry


@st.composite
def configurations(draw):
    """Configuration file contents: JSON objects with right and wrong stages, keys and values, other JSON,
    text in other encodings, and bytes that are no text at all."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.binary(max_size=20))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    stages = draw(st.lists(st.sampled_from(sorted(REGISTRY)), max_size=3, unique=True))
    data = {stage: draw(stage_entries(stage)) for stage in stages}
    if draw(st.integers(0, 3)) == 0:
        data["per_echo"] = draw(st.one_of(st.booleans(), json_values))
    if draw(st.integers(0, 9)) == 0:
        data[draw(words)] = draw(json_values)
    return json.dumps(data).encode(draw(st.sampled_from(["utf-8", "utf-16", "utf-32"])))


sidecar_numbers = st.one_of(numbers, words, st.none(), st.booleans(), st.lists(numbers, max_size=4),
                            st.sampled_from([0.004, 0.008, 3, 2.89, 123.2, 297.2, 4e-6, 0.95]))


@st.composite
def sidecars(draw, echo_time):
    """One JSON sidecar: mostly a good one with an odd entry, or another JSON value, or odd bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=12))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    content = {"EchoTime": echo_time, "MagneticFieldStrength": 3.0}
    if draw(st.booleans()):
        content["ImagingFrequency"] = 123.2
    for key in draw(st.lists(st.sampled_from(["EchoTime", "MagneticFieldStrength", "ImagingFrequency"]),
                             max_size=2, unique=True)):
        if draw(st.booleans()):
            content[key] = draw(sidecar_numbers)
        else:
            content.pop(key, None)
    return json.dumps(content).encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])))


option_text = st.one_of(words, st.lists(numbers, min_size=1, max_size=4).map(lambda v: ",".join(map(str, v))),
                        numbers.map(str))
#: Option values: plausible ones (so that runs also get past the checks) and odd ones.
option_values = {
    "--te": st.one_of(st.sampled_from(["0.004,0.008,0.012", "0.002,0.01,0.03", "4,8,12", "0.004,0.008"]),
                      option_text),
    "--b0": st.one_of(st.sampled_from(["3", "1.5", "7", "2.89", "0.1", "20"]), option_text),
    "--b0-direction": st.one_of(st.sampled_from(["0,0,1", "0,1,1", "1,0,0", "0,0,0", "0,0,-1"]), option_text),
    "--outputs": st.one_of(st.sampled_from(["r2star", "local_mask,t2star", "romeo_quality", "swi"]), option_text),
    "--phase-scale": st.sampled_from(["auto", "radians", "degrees", "integer", "range", "turns"]),
    "--phase-sign": st.sampled_from(["1", "-1", "0", "x"]),
    "--labels": st.one_of(st.just("labels file"), option_text),
    "--label-names": option_text,
    "--mask": st.one_of(st.just("mask file"), option_text),
}


# --- properties ------------------------------------------------------------------------------------------

@seed(SEED)
@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))  # a valid configuration runs the pipeline: the slow test
@given(content=configurations(), start=st.sampled_from(["field", "acquisition"]))
def test_no_configuration_gives_a_traceback(tiny, content, start):
    path = tiny["folder"] / "config.json"
    path.write_bytes(content)
    source = (["--total-field", tiny["total_field"], "--mask", tiny["mask"], "--b0", "3"] if start == "field"
              else ["--mag", *tiny["mag"], "--phase", *tiny["phase"]])
    code = run_and_check(["run", *source, "--config", path])
    if code == EXIT_OK:  # accepted configurations are valid ones
        PipelineConfig.from_json(content)


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_no_sidecar_gives_a_traceback(tiny, data):
    folder = tiny["folder"] / "sidecars"
    for sidecar in sorted(folder.glob("*.json")):
        sidecar.unlink()
    images = {role: [str(folder / Path(path).name) for path in tiny[role]] for role in ("mag", "phase")}
    for role in ("phase", "mag"):
        for path, echo_time in zip(images[role], (0.004, 0.008, 0.012)):
            if data.draw(st.integers(0, 9), label="sidecar kept") > 0:
                content = data.draw(sidecars(echo_time), label=Path(path).name)
                Path(path.replace(".nii.gz", ".json")).write_bytes(content)
    run_and_check(["run", "--mag", *images["mag"], "--phase", *images["phase"], "--config", "fast"])


@seed(SEED)
@FUZZ
@given(data=st.data())
def test_no_option_value_gives_a_traceback(tiny, data):
    argv = ["run", "--mag", *tiny["mag"], "--phase", *tiny["phase"], "--config", "fast"]
    for option in data.draw(st.lists(st.sampled_from(sorted(option_values)), min_size=1, max_size=4, unique=True)):
        value = data.draw(option_values[option], label=option)
        argv += [option, {"labels file": tiny["labels"], "mask file": tiny["mask"]}.get(value, value)]
    run_and_check(argv)


@seed(SEED)
@settings(FUZZ, max_examples=max(10, EXAMPLES // 3))
@given(options=st.fixed_dictionaries({}, optional={
    "--scheduler": st.one_of(words, st.text(max_size=12)), "--workers": st.integers(-3, 0).map(str),
    "--outputs": option_text, "--participant-label": words, "--phase-sign": option_text}))
def test_no_cohort_option_value_gives_a_traceback(tiny, tmp_path, options):
    """Invalid cohort options (a cluster is never started: each example has one bad value at least)."""
    from QSMLib.batch.scheduling import check_scheduler_address
    from QSMLib.errors import QSMInputError

    scheduler = options.get("--scheduler")
    if scheduler is not None:
        with contextlib.suppress(QSMInputError):  # a well-formed address would be looked up on the network
            check_scheduler_address(scheduler)
            options["--scheduler"] = scheduler + " x"
    if not {"--scheduler", "--workers"} & set(options):
        options["--workers"] = "0"
    argv = ["bids", tiny["folder"] / "bids", tiny["folder"] / "derivatives", "--progress", "none"]
    for option, value in options.items():
        argv += [option, value]
    assert run_and_check(argv) == EXIT_INPUT
    assert not (tiny["folder"] / "derivatives").exists()
