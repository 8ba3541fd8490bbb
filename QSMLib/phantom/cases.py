"""The validation suite's cases: each a name, a kind, a description and the parameters that generate it.

The tables are data, kept apart from the code that generates and caches the
cases (:mod:`.suite`): a case's cache key holds its own parameters and a
digest of that code, so adding or editing a case here leaves every other
cached case valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ms = 1e-3


@dataclass(frozen=True)
class CaseSpec:
    """A suite case: its kind, parameters and a one-line description."""

    name: str
    kind: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


def _echoes(first_ms: float, spacing_ms: float, count: int) -> tuple[float, ...]:
    return tuple(round((first_ms + spacing_ms * n) * _ms, 6) for n in range(count))


#: The suite (at least 8 cases with ground truth, voxel 0.7-2 mm, 1.5/3/7 T, 3-9 echoes, SNR 20-200).
CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("axial_1mm_3T", "realistic", "1 mm, 3 T, 5 echoes 4-20 ms, SNR 100, axial, monopolar",
             dict(signal="kspace", voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 176.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 4, 5), snr=100.0, seed=1)),
    CaseSpec("low_field_2mm_1p5T", "realistic", "2 mm, 1.5 T, 4 echoes 10-40 ms, SNR 50, axial",
             dict(signal="kspace", voxel_size_mm=(2.0, 2.0, 2.0), fov_mm=(192.0, 224.0, 176.0), b0_tesla=1.5,
                  echo_times_s=_echoes(10, 10, 4), snr=50.0, seed=2)),
    CaseSpec("slab_0p7mm_7T", "realistic", "0.7 mm, 7 T, 4 echoes 4-16 ms, SNR 60, 42 mm axial slab through "
             "the basal ganglia", dict(signal="kspace", voxel_size_mm=(0.7, 0.7, 0.7), fov_mm=(168.0, 201.6, 42.0),
                                       b0_tesla=7.0, centre_mni=(0.0, -12.0, 2.0), echo_times_s=_echoes(4, 4, 4),
                                       snr=60.0, seed=3)),
    CaseSpec("bipolar_oblique_9echo", "realistic", "1 mm, 3 T, 9 echoes 4-36 ms bipolar, 15 deg oblique slab, "
             "SNR 80 (the seed protocol)",
             dict(signal="kspace", voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 176.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 4, 9), snr=80.0, bipolar=True, slab_rotation_deg=(15.0, 0.0), seed=4)),
    CaseSpec("noisy_1p5mm_3echo", "realistic", "1.5 mm, 3 T, 3 echoes 5-15 ms, SNR 20, axial",
             dict(signal="kspace", voxel_size_mm=(1.5, 1.5, 1.5), fov_mm=(192.0, 225.0, 177.0), b0_tesla=3.0,
                  echo_times_s=_echoes(5, 5, 3), snr=20.0, seed=5)),
    CaseSpec("aniso_tilted_1x1x2", "realistic", "1 x 1 x 2 mm, 3 T, 6 echoes 3-28 ms, head tilted 20 deg "
             "(pitch) and 10 deg (roll), SNR 200",
             dict(signal="kspace", voxel_size_mm=(1.0, 1.0, 2.0), fov_mm=(192.0, 224.0, 176.0), b0_tesla=3.0,
                  echo_times_s=_echoes(3, 5, 6), snr=200.0, head_rotation_deg=(20.0, 10.0),
                  slab_rotation_deg=(20.0, 10.0), seed=6)),
    CaseSpec("qsmforward_1p06mm_2p89T", "qsm_forward", "qsm-forward: 1.06 mm, 2.89 T, 5 echoes 4-24 ms, peak "
             "SNR 100, chi sampled on the output grid (as QSM-CI does)",
             dict(voxel_mm=1.06, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=2.89,
                  echo_times_s=_echoes(4, 5, 5), peak_snr=100.0, model_factor=1, seed=7)),
    CaseSpec("qsmforward_7T_kspace", "qsm_forward", "qsm-forward: 7 T, 1 mm model cropped in k-space to 2 mm, "
             "4 echoes 5-20 ms, peak SNR 80",
             dict(voxel_mm=2.0, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=7.0,
                  echo_times_s=_echoes(5, 5, 4), peak_snr=80.0, model_factor=2, seed=8)),
    CaseSpec("qsmforward_oblique_1p06mm", "qsm_forward", "qsm-forward: 1.06 mm, 2.89 T, 5 echoes 4-24 ms, peak SNR "
             "100, B0 17 deg oblique to the grid (head pitched 15 and rolled 8 deg in the scanner)",
             dict(voxel_mm=1.06, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=2.89,
                  echo_times_s=_echoes(4, 5, 5), peak_snr=100.0, model_factor=1, b0_tilt_deg=(15.0, 8.0), seed=9)),
    CaseSpec("qsmforward_textured_1p06mm", "qsm_forward", "qsm-forward: 1.06 mm, 2.89 T, 5 echoes 4-24 ms, peak "
             "SNR 100, the brain's susceptibility with random texture (20 ppb SD, 1-5 mm grain) as in vivo",
             dict(voxel_mm=1.06, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=2.89,
                  echo_times_s=_echoes(4, 5, 5), peak_snr=100.0, model_factor=1, texture_ppb=20.0, seed=10)),
    CaseSpec("invivo_crop", "invivo", "real 3 T in-vivo crop (51x51x41, 0.47x0.47x1 mm, 3 echoes): no ground "
             "truth, plausibility only", dict(echo_times_s=_echoes(4, 4, 3), b0_tesla=3.0)),
)}

#: Small variants that generate in seconds, for unit tests.
SMALL_CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("small_axial", "realistic", "3 mm, 3 T, 3 echoes, SNR 100, 120 x 150 x 72 mm around the basal ganglia",
             dict(voxel_size_mm=(3.0, 3.0, 3.0), fov_mm=(120.0, 150.0, 72.0), centre_mni=(0.0, -15.0, 5.0),
                  b0_tesla=3.0, echo_times_s=_echoes(4, 5, 3), snr=100.0, seed=11)),
    CaseSpec("small_qsmforward", "qsm_forward", "qsm-forward: 3 mm, 3 T, 3 echoes, peak SNR 100",
             dict(voxel_mm=3.0, fov_mm=(192.0, 240.0, 222.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 5, 3), peak_snr=100.0, model_factor=1, seed=12)),
    CaseSpec("small_oblique", "realistic", "3 mm, 3 T, 3 echoes, SNR 100, 120 x 150 x 72 mm around the basal ganglia, "
             "head tilted 15 deg (pitch) and 8 deg (roll) with the slab: B0 oblique to the grid",
             dict(voxel_size_mm=(3.0, 3.0, 3.0), fov_mm=(120.0, 150.0, 72.0), centre_mni=(0.0, -15.0, 5.0),
                  b0_tesla=3.0, echo_times_s=_echoes(4, 5, 3), snr=100.0, head_rotation_deg=(15.0, 8.0),
                  slab_rotation_deg=(15.0, 8.0), seed=14)),
    CaseSpec("small_qsmforward_kspace", "qsm_forward", "qsm-forward: 3 T, 1.5 mm model cropped in k-space to 3 mm "
             "(as a scanner records it), 3 echoes, peak SNR 100",
             dict(voxel_mm=3.0, fov_mm=(192.0, 240.0, 222.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 5, 3), peak_snr=100.0, model_factor=2, seed=12)),
    CaseSpec("small_qsmforward_oblique", "qsm_forward", "qsm-forward: 3 mm, 3 T, 3 echoes, peak SNR 100, B0 17 deg "
             "oblique to the grid",
             dict(voxel_mm=3.0, fov_mm=(192.0, 240.0, 222.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 5, 3), peak_snr=100.0, model_factor=1, b0_tilt_deg=(15.0, 8.0), seed=13)),
)}

#: Other subjects: the realistic head under smooth random deformations (:mod:`.deform`) with a receive-coil
#: bias, so that an atlas has to be registered to them (the suite's heads are the template's own anatomy).
#: Each warp has its own seed, size (scale), orientation and shape; every value is drawn by hand once.
WARPED_CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("warped_1mm_3T_a", "realistic", "another subject (warp 101: 3 mm RMS, larger, rotated 6/-4 deg), "
             "1 mm, 3 T, 5 echoes 4-20 ms, SNR 100, head tilted 8 deg, receive bias 30 %, texture 15 ppb SD",
             dict(signal="kspace", texture_ppb=15.0, voxel_size_mm=(1.0, 1.0, 1.0),
                  fov_mm=(192.0, 224.0, 176.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 4, 5), snr=100.0, head_rotation_deg=(8.0, 0.0),
                  slab_rotation_deg=(8.0, 0.0), seed=21, receive_bias=0.3,
                  anatomy_warp=dict(seed=101, displacement_mm=3.0, scale=(1.05, 1.03, 0.97),
                                    rotation_deg=(6.0, -4.0), shift_mm=(2.0, -3.0, 4.0)))),
    CaseSpec("warped_1mm_3T_b", "realistic", "another subject (warp 102: 3.5 mm RMS, smaller), 1 mm, 3 T, "
             "9 echoes 4-36 ms bipolar, 15 deg oblique slab, SNR 80, receive bias 40 %, texture 20 ppb SD",
             dict(signal="kspace", texture_ppb=20.0, voxel_size_mm=(1.0, 1.0, 1.0),
                  fov_mm=(192.0, 224.0, 176.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 4, 9), snr=80.0, bipolar=True, slab_rotation_deg=(15.0, 0.0), seed=22,
                  receive_bias=0.4,
                  anatomy_warp=dict(seed=102, displacement_mm=3.5, scale=(0.94, 0.96, 0.98),
                                    rotation_deg=(-5.0, 3.0), shift_mm=(-3.0, 2.0, -2.0)))),
    CaseSpec("warped_1p5mm_3T_c", "realistic", "another subject (warp 103: 3 mm RMS, wide and short), 1.5 mm, "
             "3 T, 4 echoes 5-20 ms, SNR 50, head tilted 15/8 deg, receive bias 30 %, texture 15 ppb SD",
             dict(signal="kspace", texture_ppb=15.0, voxel_size_mm=(1.5, 1.5, 1.5),
                  fov_mm=(192.0, 225.0, 177.0), b0_tesla=3.0,
                  echo_times_s=_echoes(5, 5, 4), snr=50.0, head_rotation_deg=(15.0, 8.0),
                  slab_rotation_deg=(15.0, 8.0), seed=23, receive_bias=0.3,
                  anatomy_warp=dict(seed=103, displacement_mm=3.0, scale=(1.07, 0.98, 0.94),
                                    rotation_deg=(-8.0, 5.0), shift_mm=(4.0, 5.0, -5.0)))),
    CaseSpec("warped_2mm_1p5T_d", "realistic", "another subject (warp 104: 4 mm RMS), 2 mm, 1.5 T, 4 echoes "
             "10-40 ms, SNR 50, receive bias 20 %, texture 20 ppb SD",
             dict(signal="kspace", texture_ppb=20.0, voxel_size_mm=(2.0, 2.0, 2.0),
                  fov_mm=(192.0, 224.0, 176.0), b0_tesla=1.5,
                  echo_times_s=_echoes(10, 10, 4), snr=50.0, seed=24, receive_bias=0.2,
                  anatomy_warp=dict(seed=104, displacement_mm=4.0, scale=(0.97, 1.05, 1.04),
                                    rotation_deg=(4.0, 6.0), shift_mm=(-2.0, -4.0, 3.0)))),
    CaseSpec("warped_small_3mm", "realistic", "another subject (warp 105: 3 mm RMS), whole head at 3 mm, 3 T, "
             "3 echoes, SNR 100, receive bias 30 %: for tests",
             dict(voxel_size_mm=(3.0, 3.0, 3.0), fov_mm=(180.0, 216.0, 168.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 5, 3), snr=100.0, seed=25, receive_bias=0.3, supersample=2,
                  anatomy_warp=dict(seed=105, displacement_mm=3.0, scale=(1.04, 0.97, 1.02),
                                    rotation_deg=(5.0, -3.0), shift_mm=(2.0, 3.0, -2.0)))),
)}


#: Slabs that the field of view cuts along B0 (besides the suite's ``slab_0p7mm_7T``): on them TFI's shell beyond
#: the cut faces (``cut_margin_mm``) was chosen. Positions, thicknesses and protocols drawn by hand once.
SLAB_CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("slab_1mm_3T_40mm_upper", "realistic", "1 mm, 3 T, 6 echoes 4-29 ms, SNR 100, 40 mm axial slab through "
             "the caudate and putamen",
             dict(voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 40.0), b0_tesla=3.0,
                  centre_mni=(0.0, -12.0, 8.0), echo_times_s=_echoes(4, 5, 6), snr=100.0, seed=31)),
    CaseSpec("slab_1mm_3T_64mm_low", "realistic", "1 mm, 3 T, 6 echoes 4-29 ms, SNR 80, 64 mm axial slab from the "
             "cerebellum to the basal ganglia",
             dict(voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 64.0), b0_tesla=3.0,
                  centre_mni=(0.0, -15.0, -8.0), echo_times_s=_echoes(4, 5, 6), snr=80.0, seed=32)),
    CaseSpec("slab_1mm_3T_48mm_oblique_bipolar", "realistic", "1 mm, 3 T, 9 echoes 4-36 ms bipolar, SNR 80, 48 mm "
             "slab 15 deg oblique (the seed protocol as a slab)",
             dict(voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 48.0), b0_tesla=3.0,
                  centre_mni=(0.0, -12.0, 0.0), echo_times_s=_echoes(4, 4, 9), snr=80.0, bipolar=True,
                  slab_rotation_deg=(15.0, 0.0), seed=33)),
    CaseSpec("slab_1mm_3T_80mm_mid", "realistic", "1 mm, 3 T, 6 echoes 4-29 ms, SNR 100, 80 mm axial slab centred "
             "on the basal ganglia",
             dict(voxel_size_mm=(1.0, 1.0, 1.0), fov_mm=(192.0, 224.0, 80.0), b0_tesla=3.0,
                  centre_mni=(0.0, -12.0, 0.0), echo_times_s=_echoes(4, 5, 6), snr=100.0, seed=35)),
    CaseSpec("slab_qsmforward_1p06mm_50mm", "qsm_forward", "qsm-forward: 1.06 mm, 2.89 T, 5 echoes 4-24 ms, peak SNR "
             "100, 50 mm axial slab through the basal ganglia",
             dict(voxel_mm=1.06, fov_mm=(192.0, 240.0, 50.0), centre_mni=(0.0, -15.0, 0.0), b0_tesla=2.89,
                  echo_times_s=_echoes(4, 5, 5), peak_snr=100.0, model_factor=1, seed=34)),
    CaseSpec("slab_qsmforward_1p06mm_40mm_low", "qsm_forward", "qsm-forward: 1.06 mm, 2.89 T, 5 echoes 4-24 ms, "
             "peak SNR 100, 40 mm axial slab through the midbrain",
             dict(voxel_mm=1.06, fov_mm=(192.0, 240.0, 40.0), centre_mni=(0.0, -15.0, -15.0), b0_tesla=2.89,
                  echo_times_s=_echoes(4, 5, 5), peak_snr=100.0, model_factor=1, seed=36)),
)}


#: Heads held out from every choice: drawn by hand once at stop 41, after the defaults were set, and measured with
#: them (README, "Held-out heads"); recorded in k-space since stop 45, the own simulator's with texture since stop
#: 46; three more drawn at stop 56 (README, "Held-out heads drawn at stop 56"). Keep them out of tuning, or they
#: stop telling how the defaults carry over.
HELDOUT_CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("heldout_1p2mm_3T_7echo_bipolar", "realistic", "another subject (warp 201: 3.5 mm RMS), 1.2 mm, 3 T, "
             "7 echoes 3.5-31.1 ms bipolar, SNR 60, head tilted 10/-6 deg, receive bias 35 %, texture 20 ppb SD",
             dict(signal="kspace", texture_ppb=20.0, voxel_size_mm=(1.2, 1.2, 1.2),
                  fov_mm=(192.0, 228.0, 180.0), b0_tesla=3.0,
                  echo_times_s=_echoes(3.5, 4.6, 7), snr=60.0, bipolar=True, head_rotation_deg=(10.0, -6.0),
                  slab_rotation_deg=(10.0, -6.0), seed=41, receive_bias=0.35,
                  anatomy_warp=dict(seed=201, displacement_mm=3.5, scale=(1.02, 0.95, 1.03),
                                    rotation_deg=(3.0, 7.0), shift_mm=(1.0, -2.0, 2.0)))),
    CaseSpec("heldout_0p9mm_7T", "realistic", "another subject (warp 202: 4 mm RMS, smaller), 0.9 mm, 7 T, 5 echoes "
             "3-17 ms, SNR 50, receive bias 50 %, texture 15 ppb SD",
             dict(signal="kspace", texture_ppb=15.0, voxel_size_mm=(0.9, 0.9, 0.9),
                  fov_mm=(180.0, 216.0, 162.0), b0_tesla=7.0,
                  echo_times_s=_echoes(3, 3.5, 5), snr=50.0, seed=42, receive_bias=0.5,
                  anatomy_warp=dict(seed=202, displacement_mm=4.0, scale=(0.95, 0.97, 1.01),
                                    rotation_deg=(-4.0, 4.0), shift_mm=(2.0, 1.0, -1.0)))),
    CaseSpec("heldout_1p5mm_1p5T_5echo", "realistic", "another subject (warp 203: 3 mm RMS), 1.5 mm, 1.5 T, 5 echoes "
             "6-38 ms, SNR 40, receive bias 25 %, texture 20 ppb SD",
             dict(signal="kspace", texture_ppb=20.0, voxel_size_mm=(1.5, 1.5, 1.5),
                  fov_mm=(192.0, 225.0, 177.0), b0_tesla=1.5,
                  echo_times_s=_echoes(6, 8, 5), snr=40.0, seed=43, receive_bias=0.25,
                  anatomy_warp=dict(seed=203, displacement_mm=3.0, scale=(0.96, 1.04, 0.99),
                                    rotation_deg=(-6.0, -2.0), shift_mm=(-2.0, 3.0, 1.0)))),
    CaseSpec("heldout_slab56mm_oblique_bipolar", "realistic", "another subject (warp 204: 3 mm RMS), 1 mm, 3 T, "
             "9 echoes 4-36 ms bipolar, SNR 70, 56 mm slab 15 deg oblique, receive bias 30 %, texture 15 ppb SD",
             dict(signal="kspace", texture_ppb=15.0, voxel_size_mm=(1.0, 1.0, 1.0),
                  fov_mm=(192.0, 224.0, 56.0), b0_tesla=3.0,
                  centre_mni=(0.0, -14.0, 2.0), echo_times_s=_echoes(4, 4, 9), snr=70.0, bipolar=True,
                  slab_rotation_deg=(15.0, 0.0), seed=44, receive_bias=0.3,
                  anatomy_warp=dict(seed=204, displacement_mm=3.0, scale=(1.03, 1.0, 0.96),
                                    rotation_deg=(4.0, -5.0), shift_mm=(0.0, 2.0, -3.0)))),
    CaseSpec("heldout_qsmforward_1p2mm_textured_tilted", "qsm_forward", "qsm-forward: 1.2 mm, 3 T, 6 echoes 3-28 ms, "
             "peak SNR 60, texture 15 ppb SD, B0 16 deg oblique to the grid",
             dict(voxel_mm=1.2, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=3.0,
                  echo_times_s=_echoes(3, 5, 6), peak_snr=60.0, model_factor=1, texture_ppb=15.0,
                  b0_tilt_deg=(-10.0, 12.0), seed=45)),
    CaseSpec("heldout_qsmforward_1mm_9echo_textured_tilted", "qsm_forward", "qsm-forward: 1 mm, 3 T, 9 echoes "
             "4-36 ms, peak SNR 50, texture 20 ppb SD, B0 12 deg oblique to the grid",
             dict(voxel_mm=1.0, fov_mm=(192.0, 240.0, 220.0), centre_mni=(0.0, -15.0, -10.0), b0_tesla=3.0,
                  echo_times_s=_echoes(4, 4, 9), peak_snr=50.0, model_factor=1, texture_ppb=20.0,
                  b0_tilt_deg=(6.0, -10.0), seed=46)),
    CaseSpec("heldout_1mm_7T_6echo_bipolar", "realistic", "another subject (warp 205: 4 mm RMS, larger), 1 mm, 7 T, "
             "6 echoes 3-23 ms bipolar, SNR 40, head tilted -8/5 deg, receive bias 40 %, texture 20 ppb SD",
             dict(signal="kspace", texture_ppb=20.0, voxel_size_mm=(1.0, 1.0, 1.0),
                  fov_mm=(196.0, 232.0, 180.0), b0_tesla=7.0,
                  echo_times_s=_echoes(3, 4, 6), snr=40.0, bipolar=True, head_rotation_deg=(-8.0, 5.0),
                  slab_rotation_deg=(-8.0, 5.0), seed=47, receive_bias=0.4,
                  anatomy_warp=dict(seed=205, displacement_mm=4.0, scale=(1.04, 1.06, 1.02),
                                    rotation_deg=(-3.0, -6.0), shift_mm=(3.0, -1.0, 2.0)))),
    CaseSpec("heldout_1p3mm_3T_5echo_snr25", "realistic", "another subject (warp 206: 3.5 mm RMS, smaller), 1.3 mm, "
             "3 T, 5 echoes 5-35 ms, SNR 25, receive bias 30 %, texture 15 ppb SD",
             dict(signal="kspace", texture_ppb=15.0, voxel_size_mm=(1.3, 1.3, 1.3),
                  fov_mm=(187.2, 223.6, 175.5), b0_tesla=3.0,
                  echo_times_s=_echoes(5, 7.5, 5), snr=25.0, seed=48, receive_bias=0.3,
                  anatomy_warp=dict(seed=206, displacement_mm=3.5, scale=(0.97, 0.95, 0.98),
                                    rotation_deg=(5.0, 3.0), shift_mm=(-1.0, 3.0, -2.0)))),
)}


def _stress_warp(seed: int) -> dict[str, Any]:
    return dict(seed=seed, displacement_mm=3.5, scale=(1.0, 0.97, 1.0), rotation_deg=(3.0, -3.0),
                shift_mm=(1.0, 0.0, -1.0))


#: Acquisitions outside the suite's usual range, drawn at stop 60 with the defaults of the day to look for failures
#: (validation record, stop 60); they chose nothing. Textured (15 ppb SD), receive bias, another subject each.
_STRESS_HEAD = dict(signal="kspace", texture_ppb=15.0, fov_mm=(192.0, 228.0, 180.0), receive_bias=0.3)
STRESS_CASES: dict[str, CaseSpec] = {spec.name: spec for spec in (
    CaseSpec("stress_1p2mm_7T_late_echoes", "realistic", "1.2 mm, 7 T, 4 echoes 8-32 ms (a late first echo), "
             "SNR 40, receive bias 40 %",
             dict(_STRESS_HEAD, voxel_size_mm=(1.2, 1.2, 1.2), b0_tesla=7.0, echo_times_s=_echoes(8, 8, 4),
                  snr=40.0, seed=71, receive_bias=0.4, anatomy_warp=_stress_warp(301))),
    CaseSpec("stress_1p3mm_3T_uneven_echoes", "realistic", "1.3 mm, 3 T, 5 echoes 3.5/5.5/12/24/36 ms, SNR 60",
             dict(_STRESS_HEAD, voxel_size_mm=(1.3, 1.3, 1.3), fov_mm=(187.2, 223.6, 175.5), b0_tesla=3.0,
                  echo_times_s=tuple(round(t * _ms, 6) for t in (3.5, 5.5, 12.0, 24.0, 36.0)), snr=60.0, seed=72,
                  anatomy_warp=_stress_warp(302))),
    CaseSpec("stress_1p2mm_3T_2echo", "realistic", "1.2 mm, 3 T, 2 echoes 10 and 20 ms, SNR 60",
             dict(_STRESS_HEAD, voxel_size_mm=(1.2, 1.2, 1.2), b0_tesla=3.0, echo_times_s=_echoes(10, 10, 2),
                  snr=60.0, seed=73, anatomy_warp=_stress_warp(303))),
    CaseSpec("stress_1p5mm_1p5T_long_echoes", "realistic", "1.5 mm, 1.5 T, 6 echoes 8-58 ms, SNR 30",
             dict(_STRESS_HEAD, voxel_size_mm=(1.5, 1.5, 1.5), b0_tesla=1.5, echo_times_s=_echoes(8, 10, 6),
                  snr=30.0, seed=74, anatomy_warp=_stress_warp(304))),
    CaseSpec("stress_1p3mm_3T_12echo_bipolar", "realistic", "1.3 mm, 3 T, 12 echoes 2-29.5 ms bipolar, SNR 50",
             dict(_STRESS_HEAD, voxel_size_mm=(1.3, 1.3, 1.3), fov_mm=(187.2, 223.6, 175.5), b0_tesla=3.0,
                  echo_times_s=_echoes(2, 2.5, 12), snr=50.0, bipolar=True, seed=75, anatomy_warp=_stress_warp(305))),
    CaseSpec("stress_0p8x0p8x2p4mm_3T", "realistic", "0.8 x 0.8 x 2.4 mm (a clinical SWI-like grid), 3 T, 4 echoes "
             "6-30 ms, SNR 50",
             dict(_STRESS_HEAD, voxel_size_mm=(0.8, 0.8, 2.4), fov_mm=(192.0, 224.0, 172.8), b0_tesla=3.0,
                  echo_times_s=_echoes(6, 8, 4), snr=50.0, seed=76, anatomy_warp=_stress_warp(306))),
    CaseSpec("stress_1p5mm_3T_no_shim", "realistic", "1.5 mm, 3 T, 5 echoes 4-24 ms, SNR 60, no shim",
             dict(_STRESS_HEAD, voxel_size_mm=(1.5, 1.5, 1.5), b0_tesla=3.0, echo_times_s=_echoes(4, 5, 5),
                  snr=60.0, seed=77, shim_order=None, anatomy_warp=_stress_warp(307))),
    CaseSpec("stress_1p5mm_3T_shimmed", "realistic", "stress_1p5mm_3T_no_shim with the second-order shim",
             dict(_STRESS_HEAD, voxel_size_mm=(1.5, 1.5, 1.5), b0_tesla=3.0, echo_times_s=_echoes(4, 5, 5),
                  snr=60.0, seed=77, shim_order=2, anatomy_warp=_stress_warp(307))),
)}

#: Twins for comparisons: each of the suite's own-simulator heads (:data:`CASES`, :data:`WARPED_CASES`, recorded in
#: k-space) box-averaged as the suite's heads were before stop 45, ``<name>_box``; and ``axial_1mm_3T``'s head with
#: B0 27 degrees off the grid's axis, ``tilted27_1mm_3T``, and its box-averaged twin (README, stops 44 and 45); and
#: three twins of the seed protocol's slab (below).
_TILTED27 = dict(CASES["axial_1mm_3T"].parameters, head_rotation_deg=(25.0, -10.0), slab_rotation_deg=(25.0, -10.0))
TWIN_CASES: dict[str, CaseSpec] = {
    f"{spec.name}_box": CaseSpec(f"{spec.name}_box", "realistic", f"{spec.name}, its voxels box averages of the fine "
                                 "grid's signal", dict(spec.parameters, signal="box"))
    for table in (CASES, WARPED_CASES) for spec in table.values() if spec.parameters.get("signal") == "kspace"
}
TWIN_CASES.update({spec.name: spec for spec in (
    CaseSpec("tilted27_1mm_3T", "realistic", "axial_1mm_3T's head and scan, head and grid pitched 25 and rolled "
             "-10 deg (B0 27 deg off the grid's axis)", _TILTED27),
    CaseSpec("tilted27_1mm_3T_box", "realistic", "tilted27_1mm_3T, its voxels box averages of the fine grid's signal",
             dict(_TILTED27, signal="box")),
)})

#: The seed protocol's slab (``slab_1mm_3T_48mm_oblique_bipolar``) with one thing changed each, to tell what its
#: parts cost (README, stop 48): the readout (monopolar), the slab's tilt against the anatomy (axial slab, B0 along
#: the grid), and B0's angle to the grid alone (the head tilted with the slab: it covers what the axial slab covers).
_SEED_SLAB = SLAB_CASES["slab_1mm_3T_48mm_oblique_bipolar"].parameters
TWIN_CASES.update({spec.name: spec for spec in (
    CaseSpec("slab_1mm_3T_48mm_oblique_monopolar", "realistic", "slab_1mm_3T_48mm_oblique_bipolar, read out "
             "monopolar", dict(_SEED_SLAB, bipolar=False)),
    CaseSpec("slab_1mm_3T_48mm_axial_bipolar", "realistic", "slab_1mm_3T_48mm_oblique_bipolar, the slab axial "
             "(B0 along the grid's axis)", dict(_SEED_SLAB, slab_rotation_deg=(0.0, 0.0))),
    CaseSpec("slab_1mm_3T_48mm_b0_oblique_bipolar", "realistic", "slab_1mm_3T_48mm_oblique_bipolar with the head "
             "pitched with the slab: the axial slab's anatomy, B0 15 deg off the grid's axis",
             dict(_SEED_SLAB, head_rotation_deg=(15.0, 0.0))),
)})
