"""Test accuracy against the final schedule's length: the study's schedule and every long final
stage run on the same picks with the same seed count, one line per network
(lengths_<picks>_x<S>.png).

The long final reports answer "who wins at E epochs?" one length at a time; this puts the lengths
side by side, because the question behind them is a trend (does the gap to the original close as
training gets longer?). The figures are like for like: seeds are numbered from 0 at every length,
so the study's schedule is read over the same seeds as the long stages (its
`study_same_seeds_accuracy`), and a pick is the same fixed network at every length.
"""

from __future__ import annotations

import json
from pathlib import Path

from ac_jax.plotting import figure


def collect(out: Path, picks: str, seeds: int) -> dict:
    """{'lengths': sorted epochs, 'original': {epochs: acc}, 'methods': {method: {repeat:
    {epochs: acc}}}} from every long_final_e*x<seeds>.json in `out` made on `picks`; a network
    without a figure at a length has no entry there."""
    original: dict[int, float] = {}
    methods: dict[str, dict[int, dict[int, float]]] = {}

    def put(curve: dict, epochs: int, acc) -> None:
        if acc is not None:
            curve[epochs] = acc

    for path in sorted(out.glob(f"long_final_e*x{seeds}.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        if s.get("picks") != picks or s.get("seeds") != seeds or s.get("distill"):
            continue  # other networks, other seeds, or another recipe (distilled)
        length, study_length = s["schedule"]["epochs"], s["study_final_schedule"]["epochs"]
        put(original, study_length, s["original"].get("study_same_seeds_accuracy"))
        put(original, length, s["original"].get("test_accuracy"))
        for method, m in s["methods"].items():
            for r in m["repeats"]:
                if not r.get("params"):
                    continue  # the search failed: no network to follow
                curve = methods.setdefault(method, {}).setdefault(r["repeat"], {})
                put(curve, study_length, r.get("study_same_seeds_accuracy"))
                put(curve, length, r.get("test_accuracy"))
    lengths = sorted({e for e in original} | {e for m in methods.values() for c in m.values()
                                              for e in c})
    return {"lengths": lengths, "original": original, "methods": methods}


def plot(curves: dict, path: Path, seeds: int, titles: dict | None = None) -> bool:
    """Writes the figure; False (and nothing written) while fewer than two lengths have figures."""
    if len(curves["lengths"]) < 2:
        return False
    with figure(path, (6.4, 4.6)) as (_, ax, plt):
        _draw(curves, ax, plt, seeds, titles or {})
    return True


def _draw(curves: dict, ax, plt, seeds: int, titles: dict) -> None:
    if curves["original"]:
        xs = sorted(curves["original"])
        ax.plot(xs, [100 * curves["original"][e] for e in xs], "k-o", lw=2.2,
                label="original", zorder=5)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, repeats) in enumerate(curves["methods"].items()):
        colour = colours[i % len(colours)]
        for repeat, curve in repeats.items():
            xs = sorted(curve)
            ax.plot(xs, [100 * curve[e] for e in xs], "o-", color=colour, lw=0.9, alpha=0.45,
                    ms=3)
        # The mean only where every repeat has a figure: a mean over the picks finished so far
        # would mix different networks from one length to the next.
        full = [e for e in curves["lengths"] if repeats and all(e in c for c in repeats.values())]
        if full:
            ax.plot(full, [100 * sum(c[e] for c in repeats.values()) / len(repeats)
                           for e in full], "s--", color=colour, lw=2,
                    label=f"{titles.get(method, method)}: mean of {len(repeats)} picks")
    ax.set_xscale("log")
    ax.set_xticks(curves["lengths"])
    ax.set_xticklabels([str(e) for e in curves["lengths"]])
    ax.minorticks_off()
    ax.set_xlabel("final schedule length (epochs; lr /10 at 60%)")
    ax.set_ylabel(f"test accuracy % (seed{'s' if seeds > 1 else ''} 0"
                  f"{f'-{seeds - 1}' if seeds > 1 else ''})")
    ax.set_title("the same fixed networks trained longer: thin lines are single picks",
                 fontsize=9)


def write(out: Path, picks: str, seeds: int, titles: dict | None = None) -> Path | None:
    """Collects and plots; returns the figure's path, or None while there is nothing to compare."""
    path = out / f"lengths_{picks}_x{seeds}.png"
    return path if plot(collect(out, picks, seeds), path, seeds, titles) else None
