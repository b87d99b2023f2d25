"""Pictures a person would rather look at than read: the real-vs-synthetic sample grid."""

from __future__ import annotations

import numpy as np


def sample_grid(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], class_names: list[str],
                path: str, per_class: int = 6) -> None:
    """One row per class: `per_class` real images, a gap, `per_class` synthetic images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(class_names), 2 * per_class + 1
    figure, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.7 + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for offset, batch in ((0, real), (per_class + 1, synthetic)):
        for label in range(rows):
            images = batch["image"][batch["label"] == label][:per_class]
            for j, image in enumerate(images):
                grey = image.shape[2] == 1
                axes[label, offset + j].imshow(image[:, :, 0] if grey else image, cmap="gray" if grey else None,
                                               vmin=0, vmax=255)
    for label, name in enumerate(class_names):
        axes[label, 0].text(-0.3, 0.5, name, transform=axes[label, 0].transAxes, ha="right", va="center", fontsize=8)
    axes[0, per_class // 2].set_title("real", fontsize=9)
    axes[0, per_class + 1 + per_class // 2].set_title("synthetic", fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
