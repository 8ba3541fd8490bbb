"""Per-label statistics of any map (e.g. chi in ppm over deep grey matter)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .errors import QSMInputError

COLUMNS = ("label", "name", "mean_ppm", "median_ppm", "sd_ppm", "voxels", "volume_ml")


def roi_statistics(
    values: np.ndarray,
    labels: np.ndarray,
    voxel_size_mm: Sequence[float],
    *,
    label_names: Optional[Mapping[int, str]] = None,
    mask: Optional[np.ndarray] = None,
) -> list[dict]:
    """Mean, median, SD, voxel count and volume of ``values`` per label.

    Parameters
    ----------
    values : numpy.ndarray, shape (n0, n1, n2)
        The map (e.g. chi in ppm).
    labels : numpy.ndarray of int, shape (n0, n1, n2)
        Label map; 0 is background.
    voxel_size_mm : sequence of 3 float
        Voxel size (for volumes in mL).
    label_names : mapping of int to str, optional
        Names per label index (default ``label_<n>``). Labels named here but
        absent from the map get a row with 0 voxels and NaN statistics.
    mask : numpy.ndarray of bool, optional
        Only voxels inside it count (e.g. where chi is valid).

    Returns
    -------
    list of dict
        One row per label with the keys of :data:`COLUMNS`, sorted by label.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[0.1, 0.2, 0.3, 0.05]]], np.float32)
    >>> labels = np.array([[[1, 1, 2, 0]]])
    >>> rows = roi_statistics(chi, labels, (1.0, 1.0, 1.0), label_names={1: "caudate", 2: "putamen"})
    >>> [(row["name"], row["voxels"], round(row["mean_ppm"], 3)) for row in rows]
    [('caudate', 2, 0.15), ('putamen', 1, 0.3)]
    """
    labels = np.asarray(labels)
    if labels.shape != values.shape:
        raise QSMInputError(f"The label map has shape {labels.shape}, the map {values.shape}: they must match.")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise QSMInputError("The label map must hold whole numbers (one integer per region).")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise QSMInputError(f"The label map has negative labels (down to {labels.min()}): labels are 0 for "
                            "background and positive whole numbers for regions.")
    inside = labels > 0 if mask is None else (labels > 0) & np.asarray(mask, dtype=bool)
    voxel_ml = float(np.prod(voxel_size_mm)) / 1000.0
    present = set(int(v) for v in np.unique(labels[labels > 0]))
    indices = sorted(present | set(int(k) for k in (label_names or {})))
    order = np.argsort(labels[inside], kind="stable")
    sorted_labels = labels[inside][order]
    sorted_values = np.asarray(values, dtype=np.float64)[inside][order]
    rows = []
    for index in indices:
        start, stop = np.searchsorted(sorted_labels, [index, index + 1])
        region = sorted_values[start:stop]
        count = int(region.size)
        rows.append({
            "label": index,
            "name": (label_names or {}).get(index, f"label_{index}"),
            "mean_ppm": float(region.mean()) if count else float("nan"),
            "median_ppm": float(np.median(region)) if count else float("nan"),
            "sd_ppm": float(region.std(ddof=1)) if count > 1 else float("nan"),
            "voxels": count,
            "volume_ml": count * voxel_ml,
        })
    return rows


def format_tsv(rows: Sequence[Mapping]) -> str:
    """Rows of :func:`roi_statistics` as tab-separated text with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({
            key: (f"{row[key]:.6f}" if isinstance(row[key], float) else row[key]) for key in COLUMNS
        })
    return buffer.getvalue()


def read_label_names(path: Union[str, Path]) -> dict[int, str]:
    """Label names from a TSV (columns ``index`` and ``name``, BIDS dseg.tsv) or JSON ``{"1": "caudate"}``."""
    path = Path(path)
    if not path.is_file():
        raise QSMInputError(f"Label-name file not found: {path}.")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return {int(k): str(v) for k, v in json.loads(text).items()}
        except (ValueError, AttributeError) as error:
            raise QSMInputError(f"{path} must map label numbers to names, e.g. {{\"1\": \"caudate\"}} ({error}).") \
                from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    if not reader.fieldnames or "index" not in reader.fieldnames or "name" not in reader.fieldnames:
        raise QSMInputError(f"{path} needs tab-separated columns 'index' and 'name' (as a BIDS dseg.tsv).")
    try:
        return {int(row["index"]): row["name"] for row in reader}
    except ValueError as error:
        raise QSMInputError(f"{path}: every 'index' must be an integer ({error}).") from None
