"""Pictures a person would rather look at than read: sample grids, metric charts, duplicate pairs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import numpy as np

from pipeline import io


def put_plot(staging: io.Location, name: str, draw: Callable[[str], None]) -> None:
    """Draw a plot into a local file (`draw(path)`), then copy it into the staged dataset."""
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, name)
        draw(local)
        staging.fs.put_file(local, staging.join(name).path)


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


def utility_bars(tstr_recall: list[float], trtr_recall: list[float], class_names: list[str], path: str) -> None:
    """Per-class recall of the classifier trained on synthetic vs on real data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(class_names))
    figure, axis = plt.subplots(figsize=(max(5.0, 0.5 * len(class_names) + 2), 3.2))
    axis.bar(positions - 0.2, trtr_recall, width=0.4, label="trained on real (TRTR)", color="#888888")
    axis.bar(positions + 0.2, tstr_recall, width=0.4, label="trained on synthetic (TSTR)", color="#d9622b")
    axis.set_xticks(positions, class_names, rotation=45 if len(class_names) > 12 else 0, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("recall on real test split")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def class_means(real: np.ndarray, synthetic: np.ndarray, class_names: list[str], path: str) -> None:
    """Mean image per class: real train split (top row) vs synthetic (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(class_names)
    figure, axes = plt.subplots(2, count, figsize=(count * 0.8 + 0.8, 2.0), squeeze=False)
    for row, (title, means) in enumerate((("real", real), ("synthetic", synthetic))):
        for k in range(count):
            image = means[k] / 255.0
            axis = axes[row, k]
            axis.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(class_names[k], fontsize=7)
        axes[row, 0].set_ylabel(title, fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def loss_curves(history: list[dict[str, float]], path: str) -> None:
    """Per-epoch training losses (every key but epoch/step/throughput), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("epoch", "step", "rows_per_s")]
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    epochs = [row["epoch"] + 1 for row in history]
    for axis, key in zip(axes[0], keys):
        axis.plot(epochs, [row[key] for row in history], marker=".")
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def column_distributions(real, synthetic, kinds: dict[str, str], path: str, max_categories: int = 12) -> None:
    """One panel per modelled column: histograms (numbers) or bar pairs (categories), real vs synthetic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.metrics.tabular import CATEGORY_KINDS, NUMERIC_KINDS, category_values, numeric_values

    names = [n for n, k in kinds.items() if k in NUMERIC_KINDS + CATEGORY_KINDS]
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        if kinds[name] in NUMERIC_KINDS:
            a, b = numeric_values(real[name], kinds[name]), numeric_values(synthetic[name], kinds[name])
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            low, high = np.quantile(a, [0.005, 0.995]) if len(a) else (0, 1)
            bins = np.linspace(low, high if high > low else low + 1, 40)
            ax.hist(np.clip(a, low, high), bins=bins, alpha=0.5, density=True, label="real")
            ax.hist(np.clip(b, low, high), bins=bins, alpha=0.5, density=True, label="synthetic")
        else:
            a, b = category_values(real[name]), category_values(synthetic[name])
            values, counts = np.unique(a, return_counts=True)
            top = values[np.argsort(-counts)][:max_categories]
            x = np.arange(len(top))
            ax.bar(x - 0.2, [np.mean(a == v) for v in top], 0.4, label="real")
            ax.bar(x + 0.2, [np.mean(b == v) for v in top], 0.4, label="synthetic")
            ax.set_xticks(x, [str(v)[:10] for v in top], rotation=60, fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def length_histograms(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], class_names: list[str],
                      path: str) -> None:
    """Words per text, one panel per class: real and synthetic histograms on shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = class_names[:12]
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat[len(shown):]:
        axis.axis("off")
    for axis, name in zip(axes.flat, shown):
        both = np.concatenate([real[name], synthetic[name]]) if len(real[name]) + len(synthetic[name]) else np.zeros(1)
        bins = np.linspace(0, max(1.0, np.quantile(both, 0.99)), 30)
        axis.hist(np.clip(real[name], 0, bins[-1]), bins=bins, alpha=0.6, density=True, label="real", color="#888888")
        axis.hist(np.clip(synthetic[name], 0, bins[-1]), bins=bins, alpha=0.6, density=True, label="synthetic",
                  color="#d9622b")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("words", fontsize=8)
        axis.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def duplicate_pairs(kept: np.ndarray, dropped: np.ndarray, distances: list[int], path: str) -> None:
    """One column per pair: the kept image above the dropped one, titled with their distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(distances)
    figure, axes = plt.subplots(2, cols, figsize=(cols * 0.9, 2.2), squeeze=False)
    for j, distance in enumerate(distances):
        for i, image in enumerate((kept[j], dropped[j])):
            grey = image.shape[2] == 1
            axes[i, j].imshow(image[:, :, 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
            axes[i, j].axis("off")
        axes[0, j].set_title(f"d={distance}", fontsize=8)
    axes[0, 0].text(-0.2, 0.5, "kept", transform=axes[0, 0].transAxes, ha="right", va="center", fontsize=8)
    axes[1, 0].text(-0.2, 0.5, "dropped", transform=axes[1, 0].transAxes, ha="right", va="center", fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def label_issues(images: np.ndarray, given: list[str], suggested: list[str], path: str, per_row: int = 8) -> None:
    """Flagged examples: each titled `given → suggested`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // per_row))
    figure, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.0, rows * 1.15), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, old, new in zip(axes.flat, images, given, suggested):
        grey = image.shape[2] == 1
        axis.imshow(image[:, :, 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        axis.set_title(f"{old} → {new}", fontsize=7)
    figure.suptitle("likely mislabelled: given → suggested", fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
