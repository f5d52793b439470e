"""A picture of CT subjects: axial, coronal and sagittal slices with the lung mask outlined."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from copd_ifm.files import save_figure

#: Lung window (level −600 HU, width 1500 HU).
WINDOW_HU = (-1350.0, 150.0)


def _views(ct: np.ndarray, lung: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Three slices through the lungs of ``[z, y, x]`` arrays in display orientation.

    Assumes the atlas orientation (z to the head, y to the front, x to the patient's
    left): axial at 65 % of the lung height (upper zone), front up and the patient's
    right on the viewer's left; coronal through the lung centre, head up; sagittal
    through the right lung, head up and front to the left.
    """
    z, y, x = np.nonzero(lung)
    k = int(z.min() + 0.65 * (z.max() - z.min()))
    j = int(np.median(y))
    right = x < np.median(x)
    i = int(np.median(x[right])) if right.any() else int(np.median(x))
    return [("axial", ct[k, ::-1, :], lung[k, ::-1, :]),
            ("coronal", ct[::-1, j, :], lung[::-1, j, :]),
            ("sagittal", ct[::-1, :, i][:, ::-1], lung[::-1, :, i][:, ::-1])]


def write_preview(subjects: Sequence[tuple[str, Path, Path]], out: Path) -> Path:
    """Write a PNG with one row per ``(title, image path, lung-mask path)`` and return its path.

    Images are read with SimpleITK and shown in the lung window; arrays are assumed
    isotropic (each pixel is square). Written through a temporary file and renamed.
    """
    fig, axes = plt.subplots(len(subjects), 3, figsize=(12, 4.2 * len(subjects)), squeeze=False)
    for row, (title, image_path, mask_path) in zip(axes, subjects):
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
        lung = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
        for column, (ax, (view, picture, outline)) in enumerate(zip(row, _views(ct, lung))):
            ax.imshow(picture, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], interpolation="nearest")
            ax.contour(outline.astype(np.uint8), levels=[0.5], colors="tab:orange", linewidths=0.6)
            ax.set_title(f"{title}\n{view}" if column == 1 else f"\n{view}", fontsize=9)
            ax.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out, dpi=90)
    plt.close(fig)
    return out
