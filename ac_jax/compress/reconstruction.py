"""Does the search start at the input network? Reconstruction rates of a trained surrogate.

The paper's search decodes every embedding from scratch, so its step 0 is ``decoder(encoder(x))``:
whatever the decoder gets wrong is reported as compression. The anchored search
(`SearchConfig.anchored`) starts at ``x`` by construction. This module measures both on any set
of networks (the zoo's and the surrogate's held-out archset records) through the search's own
compiled path, so the anchored rate is a measurement, not an assumption.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ac_jax.arch.spec import Arch
from ac_jax.compress.search import SearchConfig, search
from ac_jax.surrogate.encoding import encode_matrices


def _start_candidates(surrogate, archs: Sequence[Arch], anchored: bool) -> np.ndarray:
    """The search's step-0 candidates (legal, canonical) ``[N, T, 5]``."""
    cfg = SearchConfig(steps=1, lambdas=(1.0,), anchored=anchored)
    feats = encode_matrices(np.stack([a.to_matrix(surrogate.max_len) for a in archs]))
    ones = np.ones(len(archs))
    out = search(surrogate, cfg, feats, cfg.lambdas, ones, -ones)
    return np.asarray(out["candidates"])[:, 0, 0]


def reconstruction_rates(surrogate, archs: Sequence[Arch], batch: int = 64) -> dict:
    """Share of `archs` whose search starts exactly at the network, plain and anchored, and the
    plain start's parameter count relative to the network's (median, min, max)."""
    from ac_jax.compress.pipeline import canonical_matrices

    archs = list(archs)
    if not archs:
        raise ValueError("no networks to reconstruct")
    want = canonical_matrices(archs, surrogate.max_len)
    exact = {"plain": [], "anchored": []}
    ratios = []
    for start in range(0, len(archs), batch):
        chunk = archs[start : start + batch]
        target = want[start : start + batch]
        for mode in exact:
            got = _start_candidates(surrogate, chunk, anchored=mode == "anchored")
            exact[mode] += list((got == target).all(axis=(1, 2)))
            if mode == "plain":
                for arch, mat in zip(chunk, got):
                    rows = mat[mat[:, 0] > 0]
                    decoded = Arch.from_matrix(rows, arch.input_shape, arch.num_classes)
                    ratios.append(decoded.num_params / arch.num_params)
    ratios = np.array(ratios)
    return {
        "num": len(archs),
        "plain_exact_rate": float(np.mean(exact["plain"])),
        "anchored_exact_rate": float(np.mean(exact["anchored"])),
        "plain_params_ratio_median": float(np.median(ratios)),
        "plain_params_ratio_min": float(ratios.min()),
        "plain_params_ratio_max": float(ratios.max()),
    }


def heldout_archs(surrogate, archset_paths: Sequence[str]) -> list[Arch]:
    """The archset records the surrogate was not trained on (its id-hash hold-out)."""
    from ac_jax.archset.store import ArchsetStore
    from ac_jax.surrogate.splits import holdout_mask

    fraction = surrogate.config.holdout_fraction
    out = []
    for path in archset_paths:
        with ArchsetStore(path, readonly=True) as store:
            records = store.records(("ok",))
        mask = holdout_mask(np.array([r.idx for r in records]), fraction)
        out += [r.arch for r, held in zip(records, mask) if held and len(r.arch) <= surrogate.max_len]
    return out


def report(surrogate, zoo_names: Sequence[str], archset_paths: Sequence[str]) -> dict:
    """Rates per zoo network and over the held-out archset records."""
    from ac_jax.arch import zoo

    rows = {}
    for name in zoo_names:
        arch = zoo.get(name, surrogate.input_shape, surrogate.num_classes)
        rows[name] = {"params": arch.num_params, **reconstruction_rates(surrogate, [arch])}
    held = heldout_archs(surrogate, archset_paths)
    return {"zoo": rows,
            "heldout_archset": reconstruction_rates(surrogate, held) if held else None}
