"""The shared figure helper: saves a PNG, closes the figure, and leaves no file when drawing fails."""

import matplotlib.pyplot as plt
import pytest

from ac_jax.plotting import figure


def test_saves_a_png_and_closes_the_figure(tmp_path):
    before = set(plt.get_fignums())
    path = tmp_path / "line.png"
    with figure(path) as (fig, ax, _):
        ax.plot([1, 2, 3], [3, 1, 2], label="a line")
        assert fig.number in plt.get_fignums()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == before


def test_a_failing_body_writes_nothing_and_still_closes(tmp_path):
    before = set(plt.get_fignums())
    path = tmp_path / "broken.png"
    with pytest.raises(ZeroDivisionError):
        with figure(path) as (_, ax, _):
            ax.plot([0, 1], [0, 1])
            1 / 0
    assert not path.exists()
    assert set(plt.get_fignums()) == before


def test_no_legend_without_labels_or_when_asked(tmp_path):
    with figure(tmp_path / "unlabelled.png") as (_, ax, _):
        ax.plot([0, 1], [0, 1])
    assert ax.get_legend() is None
    with figure(tmp_path / "labelled.png", legend_size=None) as (_, ax, _):
        ax.plot([0, 1], [0, 1], label="labelled")
    assert ax.get_legend() is None
    with figure(tmp_path / "legend.png") as (_, ax, _):
        ax.plot([0, 1], [0, 1], label="labelled")
    assert ax.get_legend() is not None
