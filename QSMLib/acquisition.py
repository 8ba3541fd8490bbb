"""The multi-echo gradient-echo acquisition that every pipeline starts from."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ._progress import CancelToken, ProgressCallback
from .dipole import unit_vector
from .errors import QSMInputError, QSMWarning
from .units import GAMMA_BAR_HZ_PER_T

#: Echo times that gradient-echo QSM can have, seconds: from ultrashort readouts (tens of
#: microseconds) to the longest useful echo (brain T2* is 20-70 ms; by 200 ms nothing is left).
ECHO_TIME_RANGE_S = (1e-5, 0.2)
#: Share of negative magnitude voxels above which the image cannot be a magnitude (interpolated or
#: denoised magnitudes may dip a little below 0; phase in the magnitude's place is negative in half).
MAX_NEGATIVE_MAGNITUDE_FRACTION = 0.05
#: Field strengths of MRI scanners, tesla (very low field systems to preclinical magnets).
FIELD_STRENGTH_RANGE_T = (0.05, 25.0)


def check_echo_times(
    echo_times_s: Sequence[float], *, n_echoes: Optional[int] = None, source: str = "echo times"
) -> tuple[float, ...]:
    """Validate echo times in seconds: numbers, positive, increasing and plausible for GRE.

    The one check shared by every way in (``--te``, BIDS sidecars, the Slicer
    module, field maps' sidecars): values outside :data:`ECHO_TIME_RANGE_S`
    are refused with the unit mistake they most likely come from.

    Parameters
    ----------
    echo_times_s : sequence of float
        Echo times, seconds.
    n_echoes : int, optional
        How many there must be.
    source : str
        Where they came from (``--te``, ``the JSON sidecars``...), for the message.

    Returns
    -------
    tuple of float

    Raises
    ------
    QSMInputError
        Naming the problem and the fix.

    Examples
    --------
    >>> check_echo_times([0.004, 0.008])
    (0.004, 0.008)
    >>> check_echo_times([4, 8])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    QSMLib.errors.QSMInputError: Echo times [4.0, 8.0] (echo times) look like milliseconds: give them in seconds...
    """
    try:
        times = np.asarray(echo_times_s, dtype=np.float64)
        if times.ndim > 1:
            raise ValueError
        times = times.reshape(-1)
    except (TypeError, ValueError):
        raise QSMInputError(f"Echo times ({source}) must be numbers in seconds, got {echo_times_s!r}.") from None
    if n_echoes is not None and times.size != n_echoes:
        raise QSMInputError(
            f"{times.size} echo time(s) given for {n_echoes} echo(es) ({source}): give exactly one echo "
            "time per echo (seconds), e.g. --te 0.004,0.008,0.012."
        )
    if times.size == 0:
        raise QSMInputError(f"No echo times ({source}): give them in seconds, e.g. --te 0.004,0.008,0.012.")
    listed = times.tolist()
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise QSMInputError(f"Echo times must be positive seconds, got {listed} ({source}).")
    if np.any(np.diff(times) <= 0):
        raise QSMInputError(
            f"Echo times must be strictly increasing, got {listed} ({source}): list the echoes in acquisition order."
        )
    low, high = ECHO_TIME_RANGE_S
    if times.max() > 1.0:
        raise QSMInputError(
            f"Echo times {listed} ({source}) look like milliseconds: give them in seconds, e.g. "
            f"{', '.join(f'{t / 1000:g}' for t in times)}."
        )
    in_ms = ", ".join(f"{1000 * t:g}" for t in times)
    if times.max() > high:
        raise QSMInputError(
            f"Echo times {in_ms} ms ({source}) are longer than gradient-echo QSM uses (up to {1000 * high:g} ms; "
            f"brain T2* is 20-70 ms). A slipped decimal point? Divided by 100 they would be "
            f"{', '.join(f'{10 * t:g}' for t in times)} ms. Give the echo times in seconds, e.g. 0.004."
        )
    if times.min() < low:
        raise QSMInputError(
            f"Echo times {', '.join(f'{1e6 * t:g}' for t in times)} microseconds ({source}) are shorter than any "
            f"gradient-echo readout (at least {1e6 * low:g} us): they look converted from milliseconds to seconds "
            f"twice. Times 1000 they would be {', '.join(f'{1e6 * t:g}' for t in times)} ms, i.e. "
            f"{', '.join(f'{1000 * t:g}' for t in times)} s."
        )
    return tuple(float(t) for t in times)


def check_field_strength(b0_tesla: float, *, source: str = "field strength") -> float:
    """Validate the main field strength in tesla; implausible values name the likely unit mistake.

    Shared by every way in (``--b0``, sidecar ``MagneticFieldStrength`` and
    ``ImagingFrequency``, field-map runs, the phantom).

    Parameters
    ----------
    b0_tesla : float
        Field strength, tesla.
    source : str
        Where it came from, for the message.

    Returns
    -------
    float

    Raises
    ------
    QSMInputError
        Outside :data:`FIELD_STRENGTH_RANGE_T`, not a number, or not finite.

    Examples
    --------
    >>> check_field_strength(2.89)
    2.89
    """
    try:
        value = float(b0_tesla)
    except (TypeError, ValueError):
        raise QSMInputError(f"The field strength ({source}) must be a number in tesla, got {b0_tesla!r}.") from None
    if isinstance(b0_tesla, bool):
        raise QSMInputError(f"The field strength ({source}) must be a number in tesla, got {b0_tesla!r}.")
    low, high = FIELD_STRENGTH_RANGE_T
    if math.isfinite(value) and low <= value <= high:
        return value
    if not math.isfinite(value) or value == 0:
        hint = "Give B0 in tesla, e.g. --b0 3."
    elif value < 0:
        hint = ("B0 is positive: give it in tesla, e.g. --b0 3 (the handedness of the phase is set with "
                "--phase-sign, not with the sign of B0).")
    elif value > high:
        as_frequency = value * 1e6 / GAMMA_BAR_HZ_PER_T
        readings = [f"as {unit} it would be {tesla:.3g} T" for unit, tesla in (
            ("a proton imaging frequency in MHz", as_frequency), ("gauss", value / 1e4), ("millitesla", value / 1e3))
            if low <= tesla <= high]
        hint = (f"Read {'; or '.join(readings)}. " if readings else "") + "Give B0 in tesla, e.g. --b0 3."
    else:
        hint = (f"Times 1000 it would be {1000 * value:.3g} T. " if low <= 1000 * value <= high else "") + (
            "Give B0 in tesla, e.g. --b0 3.")
    raise QSMInputError(
        f"Field strength {value:g} T ({source}) is not a plausible MRI field ({low:g}-{high:g} T). {hint}"
    )


def b0_direction_from_affine(affine: np.ndarray) -> np.ndarray:
    """B0 direction in array-axis coordinates from a voxel-to-world affine.

    ``affine`` maps (array index along axis 0, 1, 2, 1) to world mm (RAS or
    LPS; both share the bore axis z). With ``M`` the direction matrix (unit
    columns), the bore axis seen from the array is ``b = M^T z``.
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms < 1e-9):
        raise QSMInputError("The image affine has a zero-length axis: the file's geometry is broken.")
    return unit_vector((matrix / norms).T @ np.array([0.0, 0.0, 1.0]))


def voxel_size_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm per array axis from a voxel-to-world affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def affine_from_geometry(voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Axis-aligned affine for arrays that come without one (origin at 0)."""
    return np.diag([*map(float, voxel_size_mm), 1.0])


@dataclass
class MultiEchoGRE:
    """A multi-echo GRE acquisition: magnitude, phase in radians and geometry.

    Parameters
    ----------
    magnitude : numpy.ndarray, shape (echo, n0, n1, n2)
        Magnitude images (any positive scale); stored as float32 (float32
        arrays are kept, not copied, and never written into).
    phase : numpy.ndarray, shape (echo, n0, n1, n2)
        Phase in radians (wrapped or not); stored as float32 like the
        magnitude. Use :func:`QSMLib.phase.scaling.phase_to_radians` for raw
        scanner ranges.
    echo_times_s : sequence of float
        Echo times in seconds, positive and strictly increasing, one per echo.
    b0_tesla : float
        Main field strength in tesla (prefer the imaging frequency / gamma).
    affine : numpy.ndarray, shape (4, 4), optional
        Maps (array index along axes 0, 1, 2, 1) to world mm. When given,
        ``voxel_size_mm`` and ``b0_direction`` default to what it implies.
    voxel_size_mm : sequence of 3 float, optional
        Voxel size in mm per array axis.
    b0_direction : sequence of 3 float, optional
        Unit vector of B0 in array-axis coordinates (default from the
        affine, else (0, 0, 1)).
    phase_sign : {+1, -1}
        Handedness of the phase: -1 for left-handed (e.g. some GE) data.
    bipolar : bool or None
        The readout: True when even echoes were read out with reversed
        gradients (their phase error is corrected), False for a monopolar
        readout (never corrected), None (default) when not known: the
        pipeline then corrects the even echoes if they look bipolar
        (:func:`QSMLib.phase.bipolar.looks_bipolar`; see
        :func:`QSMLib.pipeline.run_pipeline`).

    Attributes
    ----------
    invalid_voxels : numpy.ndarray of bool, shape (n0, n1, n2)
        Voxels where any echo of either image was not finite. Their values
        are set to 0 and they are excluded from every mask.

    Examples
    --------
    >>> import numpy as np
    >>> magnitude = np.ones((3, 8, 8, 8), np.float32)
    >>> phase = np.random.default_rng(0).uniform(-np.pi, np.pi, (3, 8, 8, 8)).astype(np.float32)
    >>> acquisition = MultiEchoGRE(magnitude, phase, (0.004, 0.008, 0.012), 3.0, voxel_size_mm=(1.0, 1.0, 2.0))
    >>> acquisition.n_echoes, acquisition.spatial_shape, acquisition.b0_direction
    (3, (8, 8, 8), (0.0, 0.0, 1.0))
    """

    magnitude: np.ndarray
    phase: np.ndarray
    echo_times_s: Sequence[float]
    b0_tesla: float
    affine: Optional[np.ndarray] = None
    voxel_size_mm: Optional[Sequence[float]] = None
    b0_direction: Optional[Sequence[float]] = None
    phase_sign: int = 1
    bipolar: Optional[bool] = None
    invalid_voxels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.magnitude = _as_echo_array(self.magnitude, "magnitude")
        self.phase = _as_echo_array(self.phase, "phase")
        if self.magnitude.shape != self.phase.shape:
            raise QSMInputError(
                f"Magnitude has shape {self.magnitude.shape} but phase has shape {self.phase.shape}: "
                "they must match (echo, x, y, z). Check that both files come from the same series."
            )
        self.echo_times_s = check_echo_times(self.echo_times_s, n_echoes=self.phase.shape[0])
        self.b0_tesla = check_field_strength(self.b0_tesla)
        if self.phase_sign not in (1, -1):
            raise QSMInputError(f"phase_sign must be +1 or -1, got {self.phase_sign!r}.")
        if self.bipolar is not None and not isinstance(self.bipolar, (bool, np.bool_)):
            raise QSMInputError(f"bipolar must be True (bipolar readout), False (monopolar) or None (not known: "
                                f"detected from the echoes), got {self.bipolar!r}.")
        self.bipolar = None if self.bipolar is None else bool(self.bipolar)

        self._set_geometry()
        self._handle_non_finite()
        self._check_phase_varies()

    @classmethod
    def from_coils(
        cls,
        magnitude: np.ndarray,
        phase: np.ndarray,
        echo_times_s: Sequence[float],
        b0_tesla: float,
        *,
        affine: Optional[np.ndarray] = None,
        voxel_size_mm: Optional[Sequence[float]] = None,
        b0_direction: Optional[Sequence[float]] = None,
        phase_sign: int = 1,
        bipolar: Optional[bool] = None,
        offset_echoes: Sequence[int] = (0, 1),
        sigma_mm: float = 5.0,
        estimation_voxel_mm: float = 2.0,
        progress: ProgressCallback = None,
        cancel: CancelToken = None,
    ) -> MultiEchoGRE:
        """Combine uncombined receive channels (MCPC-3D-S), then build the acquisition.

        Parameters
        ----------
        magnitude, phase : numpy.ndarray, shape (echo, coil, n0, n1, n2)
            Per-channel magnitude and phase (radians).
        echo_times_s, b0_tesla, affine, voxel_size_mm, b0_direction, phase_sign, bipolar
            As for the constructor; the voxel size (given or from the affine)
            is needed for the combination.
        offset_echoes, sigma_mm, estimation_voxel_mm
            See :func:`QSMLib.phase.coils.combine_coils_mcpc3ds`.
        progress, cancel
            Progress callback and cancel token for the combination.

        Returns
        -------
        MultiEchoGRE
            Combined magnitude (root-sum-of-squares) and offset-free phase.
            Voxels non-finite in any channel or echo are combined as 0 and
            marked in ``invalid_voxels``.
        """
        from .phase.coils import combine_coils_mcpc3ds

        magnitude = np.array(magnitude, dtype=np.float32, copy=True)
        phase = np.array(phase, dtype=np.float32, copy=True)
        if magnitude.ndim != 5 or magnitude.shape != phase.shape:
            raise QSMInputError(
                f"Coil data must be 5D (echo, coil, x, y, z) with matching magnitude and phase; got shapes "
                f"{magnitude.shape} and {phase.shape}."
            )
        if voxel_size_mm is None:
            if affine is None:
                raise QSMInputError("Voxel size unknown: give an affine or voxel_size_mm (mm per array axis).")
            voxel_size_mm = voxel_size_from_affine(np.asarray(affine, dtype=np.float64))
        bad = ~np.isfinite(magnitude) | ~np.isfinite(phase)
        invalid = np.any(bad, axis=(0, 1))
        if invalid.any():
            magnitude[bad] = 0.0
            phase[bad] = 0.0
        combined_magnitude, combined_phase = combine_coils_mcpc3ds(
            magnitude, phase, echo_times_s, voxel_size_mm, offset_echoes=offset_echoes, sigma_mm=sigma_mm,
            estimation_voxel_mm=estimation_voxel_mm, progress=progress, cancel=cancel,
        )
        # NaN marks them for the constructor, which zeroes, excludes and reports them.
        combined_magnitude[:, invalid] = np.nan
        return cls(
            magnitude=combined_magnitude, phase=combined_phase, echo_times_s=echo_times_s, b0_tesla=b0_tesla,
            affine=affine, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction, phase_sign=phase_sign,
            bipolar=bipolar,
        )

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return int(self.phase.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Shape of one echo volume (array-axis order)."""
        return tuple(int(n) for n in self.phase.shape[1:])  # type: ignore[return-value]

    @property
    def complex_signal(self) -> np.ndarray:
        """``magnitude * exp(i * phase_sign * phase)`` as complex64, (echo, n0, n1, n2)."""
        return (self.magnitude * np.exp(1j * self.phase_sign * self.phase)).astype(np.complex64)

    def _set_geometry(self) -> None:
        if self.affine is not None:
            affine = np.asarray(self.affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
                raise QSMInputError(f"The affine must be a finite 4x4 matrix, got shape {affine.shape}.")
            self.affine = affine
            implied_voxel = voxel_size_from_affine(affine)
            if self.voxel_size_mm is None:
                self.voxel_size_mm = implied_voxel
            if self.b0_direction is None:
                self.b0_direction = b0_direction_from_affine(affine)
        if self.voxel_size_mm is None:
            raise QSMInputError("Voxel size unknown: give an affine or voxel_size_mm (mm per array axis).")
        voxel = np.asarray(self.voxel_size_mm, dtype=np.float64).reshape(-1)
        if voxel.shape != (3,) or not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
            raise QSMInputError(f"Voxel size must be three positive numbers in mm, got {self.voxel_size_mm!r}.")
        self.voxel_size_mm = tuple(float(v) for v in voxel)
        if self.affine is None:
            self.affine = affine_from_geometry(self.voxel_size_mm)
        self.b0_direction = tuple(
            float(v) for v in unit_vector(self.b0_direction if self.b0_direction is not None else (0, 0, 1))
        )

    def _handle_non_finite(self) -> None:
        # An echo at a time: no 4D boolean temporaries.
        invalid = np.zeros(self.spatial_shape, dtype=bool)
        for echo in range(self.n_echoes):
            invalid |= ~np.isfinite(self.magnitude[echo])
            invalid |= ~np.isfinite(self.phase[echo])
        n_invalid = int(invalid.sum())
        if n_invalid == invalid.size:
            raise QSMInputError(
                "Every voxel has a non-finite (NaN or infinite) value in magnitude or phase: "
                "the files hold no usable data."
            )
        if n_invalid:
            warnings.warn(
                f"{n_invalid} voxel(s) ({100.0 * n_invalid / invalid.size:.2f} %) have NaN or infinite "
                "magnitude/phase; they are set to 0 and excluded from the mask.",
                QSMWarning,
                stacklevel=3,
            )
            # New arrays, not in place: the caller's arrays may be these very ones.
            self.magnitude = np.where(np.isfinite(self.magnitude), self.magnitude, np.float32(0.0))
            self.phase = np.where(np.isfinite(self.phase), self.phase, np.float32(0.0))
        self.invalid_voxels = invalid

    def _check_phase_varies(self) -> None:
        valid = None if not self.invalid_voxels.any() else ~self.invalid_voxels
        for echo in range(self.n_echoes):
            values = self.phase[echo] if valid is None else self.phase[echo][valid]
            low, high = float(values.min()), float(values.max())
            if high - low <= 1e-6 * max(1.0, abs(low), abs(high)):
                raise QSMInputError(
                    f"Phase of echo {echo + 1} is constant ({low:g}): this is not phase data. "
                    "Check that the phase and magnitude files are not swapped or blank."
                )
        # Invalid voxels hold 0 by now, so whole-echo counts need no masked copy of the magnitude.
        n_valid = self.invalid_voxels.size - int(np.count_nonzero(self.invalid_voxels))
        negative = sum(int(np.count_nonzero(echo < 0)) for echo in self.magnitude) / (self.n_echoes * n_valid)
        if not any(np.any(echo > 0) for echo in self.magnitude):
            raise QSMInputError(
                "Magnitude is negative everywhere: magnitude images are never negative. Check the magnitude file "
                "and that magnitude and phase are not swapped." if negative == 1.0 else
                "Magnitude is zero everywhere (or zero and negative): check the magnitude file.")
        if negative > MAX_NEGATIVE_MAGNITUDE_FRACTION:
            raise QSMInputError(
                f"Magnitude is negative in {100 * negative:.0f} % of the voxels, as phase is: magnitude images are "
                "never negative. Check that magnitude and phase are not swapped (--mag, --phase)."
            )


def _as_echo_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if np.iscomplexobj(array):
        raise QSMInputError(
            f"{name} is complex: pass magnitude = abs(signal) and phase = angle(signal) separately."
        )
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4:
        hint = (
            " A 5D array may be uncombined coil data (echo, coil, x, y, z): combine the channels with "
            "MultiEchoGRE.from_coils (MCPC-3D-S) or pass the echoes of one combined image."
            if array.ndim == 5
            else ""
        )
        raise QSMInputError(
            f"{name} must be 3D (one echo) or 4D (echo, x, y, z); got {array.ndim}D with shape "
            f"{array.shape}.{hint}"
        )
    if min(array.shape[1:]) < 2:
        raise QSMInputError(f"{name} has shape {array.shape}: each spatial axis needs at least 2 voxels.")
    # No copy of float32 input (a 4D array can be gigabytes): the acquisition never writes into its arrays.
    return np.asarray(array, dtype=np.float32)
