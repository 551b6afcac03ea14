"""Which surrogate ranks? Trains named variants of one surrogate config on the same archset(s)
and the same held-out split and tabulates their held-out metrics (issue 21's measurement).

Variants differ from the base config in one change each (and "all" in every one), so a row says
what that change does: the pairwise ranking loss, an accuracy-head ensemble, no-op-layer
augmentation. Each variant trains in its own run directory, so a killed run resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from ac_jax.surrogate.config import SurrogateConfig


def _ensemble(cfg: SurrogateConfig, heads: int) -> SurrogateConfig:
    return dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, ensemble=heads))


def _one_head(cfg: SurrogateConfig) -> SurrogateConfig:
    """The base every row changes one thing of: the paper's single accuracy head and none of the
    changes, whatever the config sets (the cpu configs ship the ensemble)."""
    return _ensemble(dataclasses.replace(cfg, rank_weight=0.0, noop_augment=0), 1)


VARIANTS: dict[str, Callable[[SurrogateConfig], SurrogateConfig]] = {
    "base": _one_head,
    "rank": lambda c: dataclasses.replace(_one_head(c), rank_weight=1.0),
    "ensemble5": lambda c: _ensemble(_one_head(c), 5),
    "noop2": lambda c: dataclasses.replace(_one_head(c), noop_augment=2),
    "all": lambda c: _ensemble(dataclasses.replace(_one_head(c), rank_weight=1.0,
                                                   noop_augment=2), 5),
}

COLUMNS = ("accuracy_kendall_tau", "accuracy_mae", "params_r2", "field_out_within_sqrt2",
           "accuracy_spread_mean", "spread_error_spearman", "num")


def run(base: SurrogateConfig, arrays, task: dict, out_dir: str | Path, variants=None,
        holdout_fraction: float | None = None, progress: bool = True, log=print) -> dict:
    """Trains every variant (resuming finished or partial runs) and returns
    ``{variant: {"config": ..., "holdout": metrics, "seconds": ...}}``."""
    from ac_jax.surrogate.train import train

    out_dir = Path(out_dir)
    if holdout_fraction is not None:
        base = dataclasses.replace(base, holdout_fraction=holdout_fraction)
    rows = {}
    for name in variants or list(VARIANTS):
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        cfg = VARIANTS[name](base)
        log(f"[ablation] {name}")
        outcome = train(cfg, arrays, out_dir / name, task, progress=progress, log=log)
        rows[name] = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))),
                      "holdout": outcome.metrics, "seconds": outcome.seconds}
    return rows


def holdout_label_agreement(paths, holdout_fraction: float) -> dict:
    """What the labels of the held-out records (the same id-hash split the variants are scored
    on) allow: how well a second training ranks them like the first (Kendall tau between their
    first two seeds) and the estimated tau of a perfect predictor of their expected accuracy
    against their two-seed means (`oracle_tau`, the ceiling on a surrogate's held-out tau)."""
    import numpy as np

    from ac_jax.archset.report import label_agreement
    from ac_jax.archset.store import ArchsetStore
    from ac_jax.surrogate.splits import holdout_mask

    held = []
    for path in paths:
        with ArchsetStore(path, readonly=True) as store:
            records = store.records(("ok",))
        mask = holdout_mask(np.array([r.idx for r in records], np.int64), holdout_fraction)
        held += [r for r, m in zip(records, mask) if m]
    agreement = label_agreement(held)
    return {"num": len(held), "seed_agreement_tau": agreement["seed_agreement_tau"],
            "oracle_tau": agreement["oracle_tau"]}


def markdown(rows: dict) -> str:
    head = "| variant | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in rows.items():
        m = row["holdout"]
        cells = []
        for key in COLUMNS:
            v = m.get(key)
            cells.append("" if v is None else (str(v) if key == "num" else f"{v:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
