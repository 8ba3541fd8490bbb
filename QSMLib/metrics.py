"""Quality metrics of a susceptibility map against ground truth.

They follow the QSM reconstruction challenge 2.0 (Marques et al., MRM 2021):
maps are compared inside a mask after removing each map's mean there.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import scipy.ndimage as ndi


def _demeaned(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    inside = np.asarray(values, dtype=np.float64)[mask]
    return inside - inside.mean()


def nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Normalised RMS error in percent, ``100 ||x - t|| / ||t||``, both demeaned in ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    x, t = _demeaned(estimate, mask), _demeaned(truth, mask)
    return float(100.0 * np.linalg.norm(x - t) / np.linalg.norm(t))


def detrended_nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """NRMSE after the best linear fit of ``estimate`` to ``truth`` (scale errors removed)."""
    mask = np.asarray(mask, dtype=bool)
    x, t = _demeaned(estimate, mask), _demeaned(truth, mask)
    slope = float(x @ t / max(x @ x, 1e-30))
    return float(100.0 * np.linalg.norm(slope * x - t) / np.linalg.norm(t))


def hfen(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray, sigma_voxels: float = 1.5) -> float:
    """High-frequency error norm: NRMSE of Laplacian-of-Gaussian filtered maps (percent)."""
    mask = np.asarray(mask, dtype=bool)
    x = np.where(mask, np.asarray(estimate, dtype=np.float64) - np.asarray(estimate)[mask].mean(), 0.0)
    t = np.where(mask, np.asarray(truth, dtype=np.float64) - np.asarray(truth)[mask].mean(), 0.0)
    log_x = ndi.gaussian_laplace(x, sigma_voxels)[mask]
    log_t = ndi.gaussian_laplace(t, sigma_voxels)[mask]
    return float(100.0 * np.linalg.norm(log_x - log_t) / np.linalg.norm(log_t))


def correlation(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation coefficient inside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    return float(np.corrcoef(np.asarray(estimate)[mask], np.asarray(truth)[mask])[0, 1])


def roi_mean_errors_ppb(
    estimate: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    label_names: Mapping[int, str],
    reference_mask: np.ndarray,
) -> dict[str, float]:
    """Per-label error of the mean (estimate - truth) in ppb, each map referenced to its mean in ``reference_mask``."""
    reference_mask = np.asarray(reference_mask, dtype=bool)
    est = np.asarray(estimate, dtype=np.float64) - np.asarray(estimate)[reference_mask].mean()
    tru = np.asarray(truth, dtype=np.float64) - np.asarray(truth)[reference_mask].mean()
    errors = {}
    for index, name in label_names.items():
        region = labels == index
        if region.any():
            errors[name] = float(1000.0 * (est[region].mean() - tru[region].mean()))
    return errors


def xsim(
    estimate: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    *,
    data_range_ppm: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.001,
) -> float:
    """XSIM: structural similarity with constants suited to susceptibility maps in ppm.

    SSIM (Wang et al. 2004) over a 3 x 3 x 3 uniform window with sample
    covariances, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` and ``L = 1`` ppm, the
    choices of XSIM (Milovic et al.) and of QSM-CI's earlier scoring
    (:func:`xsim_qsm_ci` is its scorer's since). Both maps are demeaned
    inside ``mask`` and set to 0 outside it, so their references do not
    matter; the SSIM map is averaged over ``mask``.

    Parameters
    ----------
    estimate, truth : numpy.ndarray, shape (n0, n1, n2)
        Susceptibility in ppm.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where to compare.
    data_range_ppm, k1, k2 : float
        SSIM constants (XSIM's defaults).

    Returns
    -------
    float
        1 for identical maps, lower for worse ones (down to -1).

    References
    ----------
    Milovic C, et al. XSIM: a structural similarity index measure optimized
    for MRI QSM. Magn Reson Med 2025;93:411-421. Wang Z, et al. Image
    quality assessment: from error visibility to structural similarity.
    IEEE Trans Image Process 2004;13:600-612.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.random.default_rng(0).normal(0, 0.05, (8, 8, 8))
    >>> mask = np.ones(truth.shape, bool)
    >>> round(xsim(truth, truth, mask), 6)
    1.0
    """
    mask = np.asarray(mask, dtype=bool)
    x = np.where(mask, np.asarray(estimate, np.float64) - np.asarray(estimate, np.float64)[mask].mean(), 0.0)
    y = np.where(mask, np.asarray(truth, np.float64) - np.asarray(truth, np.float64)[mask].mean(), 0.0)
    window = 27
    # sample (not population) covariances, as scikit-image's structural_similarity uses
    numerator, denominator = _ssim_terms(x, y, lambda values: ndi.uniform_filter(values, 3, mode="reflect"),
                                         window / (window - 1.0), (k1 * data_range_ppm) ** 2,
                                         (k2 * data_range_ppm) ** 2)
    return float((numerator / denominator)[mask].mean())


def xsim_qsm_ci(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """XSIM as QSM-CI's scorer computes it (its primary metric for chi maps, 2026).

    The same index as :func:`xsim` with three differences that QSM-CI's
    scorer (``eval/qsm_eval.py``, ported from QSM.rs) makes: 5 x 5 x 5
    uniform windows, cut where they run past the volume's edge (each mean
    over the voxels inside); population rather than sample (co)variances;
    and the maps as given, not demeaned, so an offset between them (their
    references: whole brain, CSF) lowers the score. ``C1 = 1e-4`` and
    ``C2 = 1e-6`` (L = 1 ppm); the index is averaged over the voxels of
    ``mask`` whose denominator is positive. QSM-CI's mask is the brain mask
    where the map is non-zero.

    Parameters
    ----------
    estimate, truth : numpy.ndarray, shape (n0, n1, n2)
        Susceptibility in ppm, each on its own reference.
    mask : numpy.ndarray of bool, shape (n0, n1, n2)
        Where to average.

    Returns
    -------
    float
        1 for identical maps, lower for worse ones.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.random.default_rng(0).normal(0, 0.05, (8, 8, 8))
    >>> mask = np.ones(truth.shape, bool)
    >>> round(xsim_qsm_ci(truth, truth, mask), 6), xsim_qsm_ci(truth + 0.05, truth, mask) < 0.8
    (1.0, True)
    """
    mask = np.asarray(mask, dtype=bool)
    x, y = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)

    def window_mean(values: np.ndarray) -> np.ndarray:
        # sums over the window's voxels inside the volume, divided by their count
        return ndi.uniform_filter(values, 5, mode="constant", cval=0.0) / counts

    counts = ndi.uniform_filter(np.ones(x.shape), 5, mode="constant", cval=0.0)
    numerator, denominator = _ssim_terms(x, y, window_mean, 1.0, 1e-4, 1e-6)
    valid = mask & (denominator > 0)
    ssim_map = numerator / np.where(valid, denominator, 1.0)
    return float(ssim_map[valid].mean()) if valid.any() else 0.0


def _ssim_terms(x: np.ndarray, y: np.ndarray, window_mean: Callable[[np.ndarray], np.ndarray], scale: float,
                c1: float, c2: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM's numerator and denominator per voxel: means over the windows of ``window_mean``, (co)variances
    from them times ``scale`` (1: population; n / (n - 1): sample)."""
    mean_x, mean_y = window_mean(x), window_mean(y)
    var_x = scale * (window_mean(x * x) - mean_x * mean_x)
    var_y = scale * (window_mean(y * y) - mean_y * mean_y)
    cov_xy = scale * (window_mean(x * y) - mean_x * mean_y)
    return ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2),
            (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))


def roi_slope(estimate_means: Mapping[str, float], truth_means: Mapping[str, float]) -> float:
    """Slope of the least-squares line of estimated against true ROI means (1 = no scale error).

    Examples
    --------
    >>> roi_slope({"a": 0.1, "b": 0.3}, {"a": 0.2, "b": 0.6})
    0.5
    """
    names = [name for name in truth_means if name in estimate_means]
    t = np.array([truth_means[n] for n in names], np.float64)
    e = np.array([estimate_means[n] for n in names], np.float64)
    t, e = t - t.mean(), e - e.mean()
    return float(t @ e / max(t @ t, 1e-30))


def roi_means_ppm(
    chi: np.ndarray, labels: np.ndarray, label_names: Mapping[int, str], reference_mask: np.ndarray
) -> dict[str, float]:
    """Mean of ``chi`` per label (ppm), after subtracting its mean in ``reference_mask``."""
    reference_mask = np.asarray(reference_mask, dtype=bool)
    values = np.asarray(chi, np.float64) - np.asarray(chi, np.float64)[reference_mask].mean()
    means = {}
    for index, name in label_names.items():
        region = labels == index
        if region.any():
            means[name] = float(values[region].mean())
    return means


def summary(
    estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """NRMSE, detrended NRMSE, HFEN (percent), XSIM and correlation in one dict."""
    return {
        "nrmse": nrmse(estimate, truth, mask),
        "detrended_nrmse": detrended_nrmse(estimate, truth, mask),
        "hfen": hfen(estimate, truth, mask),
        "xsim": xsim(estimate, truth, mask),
        "correlation": correlation(estimate, truth, mask),
    }
