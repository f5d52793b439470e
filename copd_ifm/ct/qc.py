"""Registration previews: ``qc/<sid>.png`` shows whether the landmarks landed in the lungs.

Three slices through the lungs' centre of mass (axial, coronal; the
sagittal one through the centre of the lung on the low-x side) of the
resampled CT (window [-1024, 240] HU), the lung mask outline
and the centres of the patches whose cube crosses the slice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from copd_ifm.files import save_figure


def save_qc_png(path: Path, ct: np.ndarray, mask: np.ndarray, corners: np.ndarray, patch_size: int,
                title: str) -> None:
    """Write the preview of one subject atomically.

    ``ct`` and ``mask`` are ``[z, y, x]`` arrays on the subject's isotropic
    grid (HU, bool); ``corners`` are the mapped patch corners ([L, 3]
    continuous x, y, z voxel indices).
    """
    from matplotlib.figure import Figure      # no pyplot: renders with Agg, leaves the caller's backend alone

    points = np.argwhere(mask)
    centre = points.mean(0).round().astype(int) if len(points) else np.array(mask.shape) // 2
    low_x = points[points[:, 2] < centre[2]]
    if len(low_x):                                                    # sagittal through a lung, not the mediastinum
        centre[2] = int(round(low_x[:, 2].mean()))
    centres = np.asarray(corners)[:, ::-1] + patch_size / 2                 # patch centres, (z, y, x)
    views = [("axial", 0, (2, 1)), ("coronal", 1, (2, 0)), ("sagittal", 2, (1, 0))]
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, (name, axis, (col, row)) in zip(axes, views):
        index = int(np.clip(centre[axis], 0, ct.shape[axis] - 1))
        image = np.take(ct, index, axis=axis)
        outline = np.take(mask, index, axis=axis)
        # row index up: on the atlas-oriented grid that puts anterior (axial) and the head (coronal,
        # sagittal) at the top, and the patient's left on the image's right
        ax.imshow(image, cmap="gray", vmin=-1024, vmax=240, origin="lower", interpolation="nearest")
        if outline.any():
            ax.contour(outline.astype(float), levels=[0.5], colors="tab:cyan", linewidths=0.8, origin="lower")
        near = np.abs(centres[:, axis] - index) <= patch_size / 2
        ax.scatter(centres[near, col], centres[near, row], s=8, c="tab:red", marker="+", linewidths=0.8)
        ax.set_title(f"{name} slice {index}: {int(near.sum())} patches")
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
