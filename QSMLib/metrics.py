"""Quality metrics of a susceptibility map against ground truth.

They follow the QSM reconstruction challenge 2.0 (Marques et al., MRM 2021):
maps are compared inside a mask after removing each map's mean there.
"""

from __future__ import annotations

from typing import Mapping

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


def summary(
    estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    """NRMSE, detrended NRMSE, HFEN (percent) and correlation in one dict."""
    return {
        "nrmse": nrmse(estimate, truth, mask),
        "detrended_nrmse": detrended_nrmse(estimate, truth, mask),
        "hfen": hfen(estimate, truth, mask),
        "correlation": correlation(estimate, truth, mask),
    }
