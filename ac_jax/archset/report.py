"""What an archset file holds, read back: counts, accuracy and timing (`summarize`), what its labels
say (`label_agreement`), two proxies compared on the same plan (`compare_proxies`), and plots."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from ac_jax.archset.store import ArchsetStore, arch_key
from ac_jax.plotting import figure


def summarize(path: str | Path) -> dict:
    """Counts, accuracy statistics and timing of an archset file."""
    with ArchsetStore(path, readonly=True) as store:
        records = store.records()
        meta = store.meta
    ok = [r for r in records if r.status == "ok"]
    acc = np.array([r.mean_accuracy for r in ok]) if ok else np.zeros(0)
    statuses = collections.Counter(r.status for r in records)
    train = np.array([r.train_seconds for r in records]) if records else np.zeros(0)
    return {
        "path": str(path),
        "dataset": meta.get("dataset"),
        "records": len(records),
        "statuses": dict(statuses),
        "sources": dict(collections.Counter(r.source.split(":")[0] for r in records)),
        "accuracy_mean": float(acc.mean()) if acc.size else None,
        "accuracy_median": float(np.median(acc)) if acc.size else None,
        "accuracy_max": float(acc.max()) if acc.size else None,
        "params_median": float(np.median([r.num_params for r in records])) if records else None,
        "train_seconds_total": float(train.sum()),
        "compile_seconds_total": float(sum(r.compile_seconds for r in records)),
        "schedule": meta.get("schedule"),
        "seeds": meta.get("seeds"),
        **label_agreement(ok),
    }


def label_agreement(ok_records) -> dict:
    """How much the labels say, over the trained records: Kendall tau between the first two
    seeds' accuracies (how well a second training ranks like the first), the estimated tau a
    perfect predictor of each network's expected accuracy would reach against the two-seed
    means (`oracle_tau`: what a surrogate can at best expect on held-out records; higher than
    the seed-vs-seed tau, whose two sides are both noisy), Kendall tau between parameter count
    and mean accuracy (the proxy's preference for size), and the median difference between the
    two seeds. None where there are too few records or seeds."""
    two = np.array([r.seed_accuracies[:2] for r in ok_records if len(r.seed_accuracies) >= 2],
                   float).reshape(-1, 2)
    two = two[np.isfinite(two).all(axis=1)]
    return {
        "seed_agreement_tau": kendall_tau(two[:, 0], two[:, 1]),
        "oracle_tau": oracle_tau(two),
        "median_seed_difference": (float(np.median(np.abs(two[:, 0] - two[:, 1])))
                                   if len(two) else None),
        "size_accuracy_tau": kendall_tau(np.array([r.num_params for r in ok_records], float),
                                  np.array([r.mean_accuracy for r in ok_records])),
    }


def oracle_tau(two_seeds, draws: int = 200, seed: int = 0) -> float | None:
    """Estimated Kendall tau between the networks' expected accuracies and their two-seed means
    (`two_seeds`: one row of two seed accuracies per network): the ceiling that label noise puts
    on a surrogate's held-out tau. Simulated, as the expectations are unknown: the means are
    shrunk towards their average until their variance is the expectations' (the means' variance
    minus their noise variance, mean((a - b)^2) / 4), and each draw adds every network's own noise
    back as +-(a - b) / 2 with a random sign (unbiased for its noise variance; networks that fail
    alike on both seeds get none). 0 when the noise explains all the spread; None where Kendall
    tau is undefined (under three networks, or constant means)."""
    two = np.asarray(two_seeds, float).reshape(-1, 2)
    means, half_diff = two.mean(axis=1), (two[:, 0] - two[:, 1]) / 2
    if len(two) < 3 or not np.ptp(means):
        return None
    spread = means.var() - np.mean(half_diff ** 2)
    if spread <= 0:
        return 0.0
    expected = means.mean() + np.sqrt(spread / means.var()) * (means - means.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(draws, len(two)))
    return float(np.mean([kendall_tau(expected, expected + s * half_diff) for s in signs]))


def kendall_tau(a, b) -> float | None:
    """Kendall tau over the pairs where both values are finite; None when fewer than three
    are left or either side is constant (tau is undefined there)."""
    from scipy.stats import kendalltau

    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or not np.ptp(a) or not np.ptp(b):
        return None
    return float(kendalltau(a, b).statistic)


def plot(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Accuracy histogram and accuracy vs log10(params) scatter, as PNG files."""
    with ArchsetStore(path, readonly=True) as store:
        records = store.records(("ok",))
        dataset = store.meta.get("dataset")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = np.array([r.mean_accuracy for r in records])
    params = np.array([r.num_params for r in records])
    neighbour = np.array([r.source != "appendix9" for r in records], bool)
    stem = Path(path).stem
    paths = [out_dir / f"{stem}_accuracy_hist.png", out_dir / f"{stem}_accuracy_vs_params.png"]
    with figure(paths[0], (6, 4), grid=False, legend_size=10) as (_, ax, _):
        groups = [(acc[m], label) for m, label in ((~neighbour, "Appendix 9 sampler"),
                                                    (neighbour, "neighbourhood")) if m.any()]
        ax.hist([g for g, _ in groups], bins=40, stacked=True,
                label=[label for _, label in groups])
        # The label is the archset's evaluation split: validation for archsets made since the
        # protocol (issue 20), so "test" would misname it.
        ax.set_xlabel("accuracy (mean over seeds, the archset's evaluation split)")
        ax.set_ylabel("architectures")
        ax.set_title(f"{dataset}: {len(acc)} trained architectures")
    with figure(paths[1], (6, 4), grid=False, legend_size=10) as (_, ax, _):
        for mask, label in ((~neighbour, "Appendix 9 sampler"), (neighbour, "neighbourhood")):
            if mask.any():
                ax.scatter(np.log10(params[mask]), acc[mask], s=8, alpha=0.6, label=label)
        ax.set_xlabel("log10(parameters)")
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.set_title(f"{dataset}: accuracy vs size")
    return paths


def compare_proxies(paths) -> dict:
    """The same plan trained under different proxies (archset files whose record ids overlap):
    per file, on the records every file trained, `label_agreement` and the mean accuracy; and the Kendall tau between each later
    file's mean accuracies and the first's. The files must hold the same architecture under
    each shared id (the same plan), else `ValueError`."""
    if len(paths) < 2:
        raise ValueError("comparing proxies needs at least two archset files")
    stores = []
    for path in paths:
        with ArchsetStore(path, readonly=True) as store:
            stores.append({r.idx: r for r in store.records(("ok",))})
    common = sorted(set.intersection(*(set(s) for s in stores)))
    if len(common) < 3:
        raise ValueError(f"the files share {len(common)} trained records; comparing needs 3")
    for path, records in zip(paths[1:], stores[1:]):
        other = [i for i in common if arch_key(records[i].arch) != arch_key(stores[0][i].arch)]
        if other:
            raise ValueError(f"{path} holds other architectures than {paths[0]} under the same "
                             f"ids (e.g. {other[0]}): not the same plan")
    first = np.array([stores[0][i].mean_accuracy for i in common])
    rows = []
    for k, (path, records) in enumerate(zip(paths, stores)):
        chosen = [records[i] for i in common]
        acc = np.array([r.mean_accuracy for r in chosen])
        rows.append({
            "path": str(path),
            **label_agreement(chosen),
            "accuracy_mean": float(acc.mean()),
            "tau_with_first": kendall_tau(first, acc) if k else None,
        })
    return {"records": len(common), "files": rows}
