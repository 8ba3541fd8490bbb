"""The validation suite: heads the defaults are chosen on, with their ground truth.

The cases themselves (name, kind, parameters) are the tables of
:mod:`.cases`; this module generates them and caches them on disk. Three
kinds of case:

- ``realistic``: the realistic head (:mod:`.realistic`) through our forward
  model (:func:`.realistic_scan.simulate_realistic_head`): supersampled
  field, shim, dephasing, phase offset, bipolar error, noise. The heads
  of :data:`CASES`, :data:`WARPED_CASES` and :data:`HELDOUT_CASES` record
  each echo's signal in k-space (``signal="kspace"``, since stop 45); the
  box-averaged twins of the first two are in :data:`TWIN_CASES`; the slabs
  of :data:`SLAB_CASES` and the small test heads are box-averaged. The
  heads of :data:`WARPED_CASES` (except its small test head) and the held-out ones
  carry a random susceptibility texture as in vivo (``texture_ppb``, since
  stop 46); the others are smooth within each structure.
- ``qsm_forward``: the same anatomy through the independent forward model of
  the ``qsm-forward`` package (Stewart et al.; its dipole kernel, padding,
  Legendre shim, phase offset, SPGR signal with R1, peak-SNR noise and
  optional k-space cropping to a coarser output grid).
- ``invivo``: the real in-vivo crop kept in Testing/data (no ground truth:
  plausibility checks only).

Every realistic case's truths: ``chi_ppm`` (relative to CSF, brain only),
total and local field (Hz), brain mask, labels with names (deep grey matter
left and right). The truths are means over each output voxel, except chi
where the signal is cropped in k-space: it is band-limited as the signal
is. Cases are cached on disk keyed by their parameters and the
code that made them (:func:`load_case`); the tables are not part of that
code, so a new case leaves the cached ones valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .._version import __version__
from ..acquisition import MultiEchoGRE
from ..errors import QSMInputError
from .cases import (
    CASES,
    HELDOUT_CASES,
    SLAB_CASES,
    SMALL_CASES,
    STRESS_CASES,
    TWIN_CASES,
    WARPED_CASES,
    CaseSpec,
)
from .forward import band_limited_samples
from .realistic import (
    _BRAIN_LABEL_MAX,
    REALISTIC_DEEP_GREY_MATTER,
    REALISTIC_LABEL_NAMES,
    realistic_model,
    rotation_about_axes,
)
from .realistic_scan import (
    add_brain_texture,
    grid_geometry,
    grid_points,
    sample_on_grid,
    simulate_realistic_head,
    tissue_texture,
)


@dataclass
class SuiteCase:
    """One generated case.

    Attributes
    ----------
    spec : CaseSpec
    acquisition : MultiEchoGRE
    chi_ppm, total_field_hz, local_field_hz : numpy.ndarray of float32 or None
        Truths (None for the in-vivo case): susceptibility relative to CSF
        inside the brain (0 outside), fields in Hz.
    brain_mask : numpy.ndarray of bool or None
    labels : numpy.ndarray of int16 or None
        :data:`.realistic.REALISTIC_LABEL_NAMES`.
    label_names : dict of int to str
    seconds : float
        Time the generation took (not the cache load).
    """

    spec: CaseSpec
    acquisition: MultiEchoGRE
    chi_ppm: Optional[np.ndarray] = None
    total_field_hz: Optional[np.ndarray] = None
    local_field_hz: Optional[np.ndarray] = None
    brain_mask: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    label_names: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def has_truth(self) -> bool:
        """Whether the case has a ground truth (all but the in-vivo case)."""
        return self.chi_ppm is not None

    @property
    def deep_grey_matter(self) -> dict[int, str]:
        """Label value -> name of the deep grey matter structures present."""
        if self.labels is None:
            return {}
        present = set(np.unique(self.labels).tolist())
        return {k: v for k, v in REALISTIC_DEEP_GREY_MATTER.items() if k in present}


def spec_by_name(name: str) -> CaseSpec:
    """The case of that name in any of the tables (:data:`CASES`, :data:`SMALL_CASES`, :data:`WARPED_CASES`,
    :data:`SLAB_CASES`, :data:`HELDOUT_CASES`, :data:`TWIN_CASES`, :data:`STRESS_CASES`)."""
    tables = (CASES, SMALL_CASES, WARPED_CASES, SLAB_CASES, HELDOUT_CASES, TWIN_CASES, STRESS_CASES)
    for table in tables:
        if name in table:
            return table[name]
    raise QSMInputError(f"Unknown suite case {name!r}; known: {', '.join(n for t in tables for n in t)}.")


def generate_case(spec: Union[CaseSpec, str]) -> SuiteCase:
    """Generate a case (no cache); see :func:`load_case`."""
    spec = spec_by_name(spec) if isinstance(spec, str) else spec
    began = time.perf_counter()
    if spec.kind == "realistic":
        phantom = simulate_realistic_head(**spec.parameters)
        case = SuiteCase(spec, phantom.acquisition, phantom.chi_ppm, phantom.total_field_hz, phantom.local_field_hz,
                         phantom.brain_mask, phantom.labels, dict(phantom.label_names))
    elif spec.kind == "qsm_forward":
        case = _qsm_forward_case(spec)
    elif spec.kind == "invivo":
        case = _invivo_case(spec)
    else:
        raise QSMInputError(f"Unknown case kind {spec.kind!r}.")
    case.seconds = time.perf_counter() - began
    return case


def _code_version() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())
    for name in ("realistic.py", "realistic_scan.py", "deform.py", "suite.py", "forward.py", "signal.py"):
        digest.update((here / name).read_bytes())
    try:
        import qsm_forward

        digest.update(str(qsm_forward.get_version()).encode())
    except Exception:  # noqa: BLE001 - any failure just means "no qsm-forward" in the key
        digest.update(b"no-qsm-forward")
    return digest.hexdigest()[:12]


def cache_key(spec: CaseSpec) -> str:
    """File stem of a case in the cache: name, parameters and code version."""
    parameters = json.dumps({"kind": spec.kind, **spec.parameters}, sort_keys=True, default=list)
    return f"{spec.name}-{hashlib.sha256(parameters.encode()).hexdigest()[:8]}-{_code_version()}"


def load_case(spec: Union[CaseSpec, str], cache_dir: Optional[Union[str, Path]] = None) -> SuiteCase:
    """A case from the cache, or generated (and cached when ``cache_dir`` is given).

    Parameters
    ----------
    spec : CaseSpec or str
        The case or its name (see :data:`CASES`, :data:`SMALL_CASES`, :data:`WARPED_CASES`).
    cache_dir : path, optional
        Folder of cached cases (e.g. ``benchmarks/results/suite_cache``).

    Returns
    -------
    SuiteCase
    """
    spec = spec_by_name(spec) if isinstance(spec, str) else spec
    if cache_dir is None:
        return generate_case(spec)
    path = Path(cache_dir) / f"{cache_key(spec)}.npz"
    if path.is_file():
        return _read(spec, path)
    case = generate_case(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own, so that processes sharing the folder never write into one file
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    _write(case, temporary)
    temporary.replace(path)
    return case


_ARRAYS = ("chi_ppm", "total_field_hz", "local_field_hz", "brain_mask", "labels")


def _write(case: SuiteCase, path: Path) -> None:
    acquisition = case.acquisition
    arrays = {name: getattr(case, name) for name in _ARRAYS if getattr(case, name) is not None}
    meta = {"echo_times_s": list(acquisition.echo_times_s), "b0_tesla": acquisition.b0_tesla,
            "bipolar": acquisition.bipolar, "label_names": {str(k): v for k, v in case.label_names.items()},
            "seconds": case.seconds}
    with open(path, "wb") as handle:
        np.savez(handle, magnitude=acquisition.magnitude, phase=acquisition.phase, affine=acquisition.affine,
                 meta=np.array(json.dumps(meta)), **arrays)


def _read(spec: CaseSpec, path: Path) -> SuiteCase:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        acquisition = MultiEchoGRE(magnitude=data["magnitude"], phase=data["phase"],
                                   echo_times_s=tuple(meta["echo_times_s"]), b0_tesla=meta["b0_tesla"],
                                   affine=data["affine"], bipolar=meta["bipolar"])
        arrays = {name: data[name] for name in _ARRAYS if name in data.files}
    return SuiteCase(spec, acquisition, label_names={int(k): v for k, v in meta["label_names"].items()},
                     seconds=float(meta["seconds"]), **arrays)


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return values
    n0, n1, n2 = (n // factor for n in values.shape)
    return values.reshape(n0, factor, n1, factor, n2, factor).mean(axis=(1, 3, 5), dtype=np.float32)


def _shift_to_block_centres(signal: np.ndarray, factor: int) -> np.ndarray:
    """The model grid's complex signal moved by ``(factor - 1) / 2`` model voxels along every axis (periodic).

    Cropping k-space keeps the samples at model voxels ``factor * j``, whereas the truth (chi, fields) is the
    mean of blocks of ``factor`` model voxels, centred ``(factor - 1) / 2`` voxels further on, where the
    labels are sampled too. Without this shift a cropped case's signal lay a quarter of an output voxel
    (factor 2) from its truth along each axis. On a scratch 1.5 mm head (3 T, factor 2) the pipeline's total
    field differed from the truth by 1.00 Hz RMS at 6-12 mm inside the brain and 0.58 Hz deeper than 24 mm;
    with the shift, 0.19 and 0.30 Hz, and chi NRMSE 34.95 -> 26.15 %.
    """
    shift = (factor - 1) / 2.0
    spectrum = np.fft.fftn(signal)
    for axis, n in enumerate(signal.shape):
        ramp = np.exp(2j * np.pi * np.fft.fftfreq(n) * shift).astype(spectrum.dtype)
        spectrum *= ramp.reshape([-1 if a == axis else 1 for a in range(signal.ndim)])
    return np.fft.ifftn(spectrum)


def _qsm_forward_case(spec: CaseSpec) -> SuiteCase:
    """The realistic anatomy through qsm-forward's field, shim, signal and noise models."""
    try:
        import qsm_forward
    except ImportError:
        raise QSMInputError("qsm_forward cases need the package 'qsm-forward' (pip install 'qsmlib[test]').") from None
    p = spec.parameters
    factor = int(p["model_factor"])
    output_voxel = float(p["voxel_mm"])
    model_voxel = output_voxel / factor
    shape = tuple(int(round(f / output_voxel)) * factor for f in p["fov_mm"])
    output_shape = tuple(n // factor for n in shape)
    model = realistic_model()
    _, _, grid_to_mni = grid_geometry(shape, (model_voxel,) * 3, centre_mni=p["centre_mni"])
    # partial volumes: two sub-samples per model voxel and axis
    sub_axes = [((np.arange(2 * n) + 0.5) / 2 - 0.5 - (n - 1) / 2.0) * model_voxel for n in shape]
    sums: dict[str, list[np.ndarray]] = {k: [] for k in ("chi_air_ppm", "chi_local_ppm", "m0", "r2star_3t", "r1")}
    texture = tissue_texture(int(p["seed"]), float(p["texture_ppb"])) if p.get("texture_ppb") else None
    for plane in range(0, sub_axes[0].size, 16):
        points = grid_points((sub_axes[0][plane:plane + 16], sub_axes[1], sub_axes[2]), grid_to_mni, p["centre_mni"])
        sampled = model.sample(*points)
        label = sampled["label"]
        if texture is not None:
            add_brain_texture(sampled, points, texture)
        # longitudinal relaxation rate (1/s at 3 T), only used by qsm-forward's SPGR weighting
        r1 = np.select([label == 16, (label > 0) & (label <= 14), label == 17, label == 31, label == 32],
                       [1.15, 0.9, 0.75, 2.0, 1.0], 0.3).astype(np.float32)
        sampled["r1"] = r1
        for key in sums:
            sums[key].append(_block_mean(sampled[key], 2))
    maps = {key: np.concatenate(value, axis=0) for key, value in sums.items()}
    axes = [((np.arange(n) - (n - 1) / 2.0) * output_voxel) for n in output_shape]
    labels = np.concatenate([sample_on_grid(model, (axes[0][i:i + 16], axes[1], axes[2]), grid_to_mni,
                                            p["centre_mni"])["label"] for i in range(0, len(axes[0]), 16)], axis=0)
    brain_output = (labels > 0) & (labels <= _BRAIN_LABEL_MAX)
    model_axes = [((np.arange(n) - (n - 1) / 2.0) * model_voxel) for n in shape]
    brain_model = np.concatenate([
        sample_on_grid(model, (model_axes[0][i:i + 16], model_axes[1], model_axes[2]), grid_to_mni,
                       p["centre_mni"])["label"] for i in range(0, len(model_axes[0]), 16)], axis=0)
    brain_model = (brain_model > 0) & (brain_model <= _BRAIN_LABEL_MAX)
    b0 = float(p["b0_tesla"])
    voxel = [model_voxel] * 3
    # the head tilted in the scanner: B0 in array axes for qsm-forward's kernel, and the affine's rotation
    # (b0_direction_from_affine gives the same vector back) for the pipeline
    tilt = rotation_about_axes(*p.get("b0_tilt_deg", (0.0, 0.0)))
    b0_direction = [float(v) for v in tilt[:, 2]]
    field_ppm = qsm_forward.generate_field(maps["chi_air_ppm"].astype(np.float64), voxel_size=voxel,
                                           B0_dir=b0_direction)
    local_ppm = qsm_forward.generate_field(maps["chi_local_ppm"].astype(np.float64), voxel_size=voxel,
                                           B0_dir=b0_direction)
    _, shimmed_ppm, _ = qsm_forward.generate_shimmed_field(field_ppm, brain_model, order=2)
    del field_ppm
    gamma_hz_per_ppm_tesla = 42.58  # qsm-forward's own constant, so the truth matches its phase
    phase_offset = qsm_forward.generate_phase_offset(maps["m0"], brain_model, shape)
    rng = np.random.default_rng(int(p["seed"]))
    r2star = maps["r2star_3t"] * np.float32(b0 / 3.0)
    magnitude, phase = [], []
    for te in p["echo_times_s"]:
        signal = qsm_forward.generate_signal(field=shimmed_ppm, B0=b0, TR=0.05, TE=float(te), flip_angle=15,
                                             phase_offset=phase_offset, R1=maps["r1"], R2star=r2star, M0=maps["m0"])
        if factor > 1:
            signal = qsm_forward.crop_kspace(_shift_to_block_centres(signal, factor), output_shape)
        signal = qsm_forward.add_noise(signal, peak_snr=float(p["peak_snr"]), rng=rng)
        magnitude.append(np.abs(signal).astype(np.float32))
        phase.append(np.angle(signal).astype(np.float32))
    total_hz = _block_mean((shimmed_ppm * b0 * gamma_hz_per_ppm_tesla).astype(np.float32), factor)
    local_hz = _block_mean((local_ppm * b0 * gamma_hz_per_ppm_tesla).astype(np.float32), factor)
    # a signal cropped in k-space carries chi's band, no more: its truth is band-limited the same way
    chi_output = (band_limited_samples(maps["chi_local_ppm"], factor) if factor > 1
                  else maps["chi_local_ppm"])
    chi = np.where(brain_output, chi_output, 0.0).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = tilt.T * output_voxel
    affine[:3, 3] = -tilt.T @ (output_voxel * (np.asarray(output_shape) - 1) / 2.0)
    acquisition = MultiEchoGRE(magnitude=np.stack(magnitude), phase=np.stack(phase),
                               echo_times_s=tuple(p["echo_times_s"]), b0_tesla=b0, affine=affine)
    return SuiteCase(spec, acquisition, chi, total_hz, local_hz, brain_output, labels.astype(np.int16),
                     dict(REALISTIC_LABEL_NAMES))


def _invivo_case(spec: CaseSpec) -> SuiteCase:
    from ..io.nifti import load_acquisition

    folder = Path(__file__).resolve().parents[2] / "Testing" / "data" / "invivo_3echo_crop"
    if not (folder / "mag.nii.gz").is_file():
        raise QSMInputError(f"The in-vivo crop is not at {folder} (it ships with the repository's Testing/data).")
    acquisition, _ = load_acquisition([folder / "mag.nii.gz"], [folder / "phase.nii.gz"],
                                      echo_times_s=list(spec.parameters["echo_times_s"]),
                                      b0_tesla=float(spec.parameters["b0_tesla"]))
    return SuiteCase(spec, acquisition)
