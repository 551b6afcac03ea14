"""One way to make and save a figure, shared by every plot the package writes (PNG, no screen)."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def figure(path: str | Path, figsize: tuple[float, float] = (6.4, 4.4), *, grid: bool = True,
           legend_size: float | None = 8):
    """Yields ``(fig, ax, plt)``; on leaving, draws the legend (when anything is labelled),
    lays the figure out, saves it to `path` at 120 dpi and closes it.

    The figure is closed whether or not the body raised, and nothing is saved when it did:
    a long job that draws after every step must not leak figures, nor leave a half-drawn file.
    `legend_size=None` draws no legend.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless machines and CI: never look for a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax, plt
        if grid:
            ax.grid(alpha=0.3)
        if legend_size is not None and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=legend_size)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
