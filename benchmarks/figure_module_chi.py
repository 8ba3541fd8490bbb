"""Render README's figure of the Slicer module's result: chi of its sample head phantom, default settings.

    python benchmarks/figure_module_chi.py [--out Resources/Screenshots/QSMProcessing-chi-figure.png]

The QSM Processing module's sample data (``QSMProcessingLib.SampleData.loadHeadPhantom``: QSMLib's head
phantom at 2 mm with the sample's echo times at 3 T) reconstructed with the ``consensus`` preset, which is
what the module runs by default. Axial, coronal and sagittal slices through the centre of the volume, in
display orientation, window -0.15 to 0.25 ppm, with a grey bar of that window on the right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from QSMLib.phantom import simulate_head
from QSMLib.pipeline import load_config, run_pipeline
from QSMLib.report import orthogonal_slices, to_display_orientation, write_png

#: The module's sample echo times (QSMProcessingLib.SampleData.DEFAULT_ECHO_TIMES_S).
SAMPLE_ECHO_TIMES_S = (0.004, 0.008, 0.012, 0.016, 0.020)
WINDOW_PPM = (-0.15, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="Resources/Screenshots/QSMProcessing-chi-figure.png")
    options = parser.parse_args()
    phantom = simulate_head(voxel_size_mm=(2.0,) * 3, echo_times_s=SAMPLE_ECHO_TIMES_S, b0_tesla=3.0)
    result = run_pipeline(phantom.acquisition, load_config("consensus"))
    low, high = WINDOW_PPM
    display = to_display_orientation(result.chi_ppm, phantom.acquisition.affine)
    slices = [np.clip((panel - low) / (high - low), 0.0, 1.0) for panel in orthogonal_slices(display)]
    height = max(panel.shape[0] for panel in slices)
    gap = np.zeros((height, 4))
    bar = np.repeat(np.linspace(1.0, 0.0, height)[:, None], 6, axis=1)
    columns = []
    for panel in slices:
        padded = np.full((height, panel.shape[1]), (0.0 - low) / (high - low))
        padded[(height - panel.shape[0]) // 2:][:panel.shape[0]] = panel
        columns += [padded, gap]
    image = np.concatenate(columns + [bar], axis=1)
    path = write_png(Path(options.out), np.round(255 * image).astype(np.uint8), upscale=4)
    print(f"{path}: chi of the module's sample phantom ({result.parameters['inversion'].get('regularization_rule')})")


if __name__ == "__main__":
    main()
