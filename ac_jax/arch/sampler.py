"""The paper's random architecture sampler with rejection (Appendix 9), vectorised and seeded.

Each candidate: length ``L ~ U(2, 50)``; per layer ``t ~ U(1, 8)``, ``k ~ U(1, 10)``,
``s ~ U(1, 10)``, ``o ~ U(16, 4096)``, ``p ~ U(1, 10)`` (all inclusive). The last layer is replaced
by Linear to the class count, unused fields become 0, channel fields repeat the input's count,
pooling padding is capped at k // 2 (PyTorch's limit) and Dropout's field is ``p - 1`` (a rate in
0.0 .. 0.9). A candidate is rejected if it has no Conv, if any layer collapses the spatial size
below 1x1 or is spatial after the first Linear, or if it exceeds the parameter or MAC caps.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from ac_jax.arch.batch import FieldRanges, batch_analyze, batch_legalize
from ac_jax.arch.spec import Arch, LayerType


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Appendix 9 ranges plus the rejection caps.

    The default caps (1M parameters, 100M MACs per image) keep a 5-epoch x 5-seed Fashion-MNIST
    training of one architecture within seconds on a GPU; CONV-7 (708,010 parameters, 74.5M
    MACs) lies inside them, so its neighbourhood can be sampled under the same caps.
    """

    min_len: int = 2
    max_len: int = 50
    max_kernel: int = 10
    max_stride: int = 10
    min_channels: int = 16
    max_channels: int = 4096
    max_padding: int = 10
    max_params: int = 1_000_000
    max_macs: int = 100_000_000
    batch: int = 4096  # candidates drawn per vectorised round


@dataclasses.dataclass(frozen=True)
class SampledBatch:
    archs: list[Arch]
    matrices: np.ndarray  # [n, max_len, 5]
    num_params: np.ndarray
    macs: np.ndarray
    candidates: int  # drawn to get these


def _draw(rng: np.random.Generator, cfg: SamplerConfig, num_classes: int) -> np.ndarray:
    n, rows = cfg.batch, cfg.max_len
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n)
    t = rng.integers(1, 9, size=(n, rows))
    k = rng.integers(1, cfg.max_kernel + 1, size=(n, rows))
    o = rng.integers(cfg.min_channels, cfg.max_channels + 1, size=(n, rows))
    s = rng.integers(1, cfg.max_stride + 1, size=(n, rows))
    p = rng.integers(1, cfg.max_padding + 1, size=(n, rows))
    p = np.where(t == LayerType.DROPOUT, p - 1, p)
    mats = np.stack([t, k, o, s, p], axis=-1)
    positions = np.arange(rows)[None, :]
    mats[positions >= lengths[:, None]] = 0
    mats[np.arange(n), lengths - 1] = (LayerType.LINEAR, 0, num_classes, 0, 0)
    return mats, lengths


def sample_batches(
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
    cfg: SamplerConfig = SamplerConfig(),
) -> Iterator[SampledBatch]:
    """Endless stream of accepted architectures, in a fixed order for a given seed."""
    rng = np.random.default_rng(seed)
    while True:
        raw, lengths = _draw(rng, cfg, num_classes)
        # Cheap whole-matrix pre-filter before the per-position walk: a Conv must exist and no
        # Conv or pooling layer may follow the first Linear (which would be rejected anyway).
        types = raw[:, :, 0]
        positions = np.arange(cfg.max_len)[None, :]
        spatial = (types == LayerType.CONV) | (types == LayerType.MAXPOOL)
        spatial |= types == LayerType.AVGPOOL
        first_linear = np.where(types == LayerType.LINEAR, positions, cfg.max_len).min(axis=1)
        last_spatial = np.where(spatial, positions, -1).max(axis=1)
        plausible = (last_spatial < first_linear) & (types == LayerType.CONV).any(axis=1)
        raw, lengths = raw[plausible], lengths[plausible]
        ranges = FieldRanges(cfg.max_kernel, cfg.max_stride, cfg.max_padding, cfg.max_channels)
        legal, legal_lengths = batch_legalize(raw, input_shape, num_classes, cfg.max_len, ranges)
        unchanged = legal_lengths == lengths  # legalize dropped nothing: no collapsed layer
        legal, legal_lengths, lengths = legal[unchanged], legal_lengths[unchanged], lengths[unchanged]
        info = batch_analyze(legal, input_shape, num_classes)
        accept = (
            info.valid
            & (info.num_conv > 0)
            & (info.num_params <= cfg.max_params)
            & (info.macs <= cfg.max_macs)
        )
        idx = np.flatnonzero(accept)
        archs = [
            Arch.from_matrix(legal[i, : legal_lengths[i]], input_shape, num_classes) for i in idx
        ]
        yield SampledBatch(archs, legal[idx], info.num_params[idx], info.macs[idx], cfg.batch)


def sample(
    num: int,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int = 0,
    cfg: SamplerConfig = SamplerConfig(),
) -> tuple[list[Arch], float]:
    """The first `num` accepted architectures for `seed`, and the acceptance rate."""
    archs: list[Arch] = []
    drawn = 0
    for batch in sample_batches(input_shape, num_classes, seed, cfg):
        archs.extend(batch.archs)
        drawn += batch.candidates
        if len(archs) >= num:
            break
    return archs[:num], len(archs) / max(drawn, 1)


def _mutate(rng: np.random.Generator, arch: Arch, cfg: SamplerConfig) -> np.ndarray:
    """One random edit of `arch` as a raw matrix (legalised by the caller)."""
    width = 2.0 ** rng.uniform(-4.0, 0.5)  # global width multiplier
    drop_prob = rng.uniform(0.0, 0.6)
    rows = []
    for index, layer in enumerate(arch.layers):
        last = index == len(arch.layers) - 1
        t, k, o, s, p = layer
        if not last and rng.random() < drop_prob:
            continue
        if t in (LayerType.CONV, LayerType.LINEAR) and not last:
            o = int(round(o * width * 2.0 ** rng.uniform(-1.0, 1.0)))
        if t == LayerType.CONV and rng.random() < 0.15:
            k = int(rng.integers(1, 8))
            p = k // 2 if rng.random() < 0.7 else int(rng.integers(0, k + 1))
        if t in (LayerType.CONV, LayerType.MAXPOOL, LayerType.AVGPOOL) and rng.random() < 0.1:
            s = int(rng.integers(1, 4))
        rows.append((t, k, o, s, p))
        if not last and rng.random() < 0.1:
            kind = int(rng.integers(0, 4))
            extra = [
                (LayerType.DROPOUT, 0, 0, 0, int(rng.integers(1, 6))),
                (LayerType.BATCHNORM, 0, 0, 0, 0),
                (LayerType.RELU, 0, 0, 0, 0),
                (LayerType.MAXPOOL, 2, 0, 2, 0),
            ][kind]
            rows.append(extra)
    return np.asarray(rows, np.int64).reshape(-1, 5)


def sample_neighbourhood(
    seed_arch: Arch, num: int, seed: int = 0, cfg: SamplerConfig = SamplerConfig()
) -> list[Arch]:
    """`num` distinct random edits of `seed_arch`, valid and within the caps (deterministic).

    Not in the paper: the Appendix 9 sampler almost never produces networks like the ones users
    compress (its accepted architectures have one Conv on average), so the surrogate sees
    none of CONV-7's neighbourhood. Edits: a global width multiplier 2^U(-4, 0.5) times a
    per-layer 2^U(-1, 1) on Conv/Linear widths, each layer dropped with probability U(0, 0.6),
    occasional new kernel sizes, strides and inserted Dropout/BatchNorm/ReLU/MaxPool layers.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    ranges = FieldRanges(cfg.max_kernel, cfg.max_stride, cfg.max_padding, cfg.max_channels)
    seen: set[Arch] = {seed_arch}
    out: list[Arch] = []
    attempts = 0
    while len(out) < num:
        attempts += 1
        if attempts > 1000 + 100 * num:
            raise ValueError(f"could not find {num} valid neighbours of the seed architecture")
        arch, info = _legalized(_mutate(rng, seed_arch, cfg), seed_arch, cfg.max_len, ranges)
        if not (info.num_conv[0] > 0 and info.num_params[0] <= cfg.max_params):
            continue
        if info.macs[0] > cfg.max_macs:
            continue
        if arch not in seen:
            seen.add(arch)
            out.append(arch)
    return out


def _legalized(raw: np.ndarray, seed_arch: Arch, max_len: int, ranges: FieldRanges):
    """An edit's raw ``[T, 5]`` matrix, legalised for `seed_arch`'s task: the `Arch` and its
    `batch_analyze` record (one row) for the caller's acceptance rules."""
    (arch,), info = _legalized_batch([raw], seed_arch, max_len, ranges)
    return arch, info


# Uniform width multipliers of the region sampler's first draws: from 1.19x (params ~1.4x) down
# to 0.21x (params ~1/22): the plain "thinner network" family every compression is measured against.
REGION_WIDTH_LADDER = tuple(2.0 ** (-e / 4) for e in range(-1, 10))


def _scale_widths(arch: Arch, width) -> np.ndarray:
    """`arch` with every hidden Conv/Linear width multiplied (by a scalar or one per layer)."""
    return _scaled_batch(arch, np.asarray(width, np.float64).reshape(1, -1))[0]


def _scaled_batch(arch: Arch, widths: np.ndarray) -> np.ndarray:
    """``[N, T, 5]``: `arch` once per row of `widths` (``[N, 1]`` or ``[N, T]`` multipliers),
    every hidden Conv/Linear width ``max(1, round(o * w))`` (round half to even, as Python's
    `round` on a float64)."""
    base = np.asarray([tuple(layer) for layer in arch.layers], np.int64).reshape(-1, 5)
    widths = np.broadcast_to(widths, (widths.shape[0], len(base)))
    hidden = np.isin(base[:, 0], (LayerType.CONV, LayerType.LINEAR))
    hidden[-1] = False  # the classifier keeps its class count
    out = np.repeat(base[None], widths.shape[0], axis=0)
    scaled = np.maximum(1, np.rint(base[:, 2] * widths).astype(np.int64))
    out[:, :, 2] = np.where(hidden, scaled, base[:, 2])
    return out


def _widths_for_ratios(arch: Arch, ratios: np.ndarray) -> np.ndarray:
    """Per ratio, the uniform width multiplier that gives about that ratio x the parameters of
    `arch` (bisection on log2 of the width, all ratios at once: a classifier's fixed-size
    Linear makes parameters far from width squared). Parameters grow with the width, so each
    step halves every interval exactly as a one-ratio bisection would."""
    ratios = np.asarray(ratios, np.float64)
    target = ratios * arch.num_params
    lo, hi = np.full(len(ratios), -6.0), np.full(len(ratios), 2.0)
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        info = batch_analyze(_scaled_batch(arch, _exp2(mid)[:, None]), arch.input_shape,
                             arch.num_classes)
        below = info.num_params < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return _exp2(0.5 * (lo + hi))


def _exp2(x: np.ndarray) -> np.ndarray:
    """2 ** x by the C library's pow, as Python floats compute it: NumPy's vectorised power can
    differ in the last bit on some CPUs, and a width that lands on a rounding tie would then
    change a sample plan between machines."""
    return np.asarray([2.0 ** float(v) for v in x], np.float64)


@dataclasses.dataclass(frozen=True)
class _EditDraws:
    """One `_region_edit`'s random choices, drawn before its width is known."""

    ratio: float
    rows: list  # per kept layer: (t, k, p, jitter factor or None, inserted row or None)


def _region_edit_draws(rng: np.random.Generator, arch: Arch, min_ratio: float) -> _EditDraws:
    """The draws of one region edit, in the order the edit has always made them (a target
    ratio log-uniform in [1 / min_ratio, 1.4], then per layer: drop, width jitter, kernel,
    inserted no-op), so a sample plan stays what it was."""
    ratio = float(np.exp(rng.uniform(np.log(1.0 / min_ratio), np.log(1.4))))
    drop_prob = rng.uniform(0.0, 0.15)
    rows = []
    for index, layer in enumerate(arch.layers):
        last = index == len(arch.layers) - 1
        t, k, o, s, p = layer
        pooling = t in (LayerType.MAXPOOL, LayerType.AVGPOOL)
        if not last and not pooling and rng.random() < drop_prob:
            continue
        jitter = None
        if t in (LayerType.CONV, LayerType.LINEAR) and not last:
            jitter = 2.0 ** rng.uniform(-0.5, 0.5)
        if t == LayerType.CONV and rng.random() < 0.1:
            k = int(rng.choice([1, 3, 5]))
            p = k // 2
        inserted = None
        if not last and rng.random() < 0.05:
            inserted = [(LayerType.DROPOUT, 0, 0, 0, int(rng.integers(1, 6))),
                        (LayerType.BATCHNORM, 0, 0, 0, 0)][int(rng.integers(0, 2))]
        rows.append((index, k, p, jitter, inserted))
    return _EditDraws(ratio, rows)


def _region_edit_rows(arch: Arch, draws: _EditDraws, width: float) -> np.ndarray:
    """The edit's ``[T, 5]`` rows: Conv/Linear widths set from the global `width` with each
    layer's jitter."""
    out = []
    for index, k, p, jitter, inserted in draws.rows:
        t, _, o, s, _ = arch.layers[index]
        if jitter is not None:
            o = max(1, int(round(o * width * jitter)))
        out.append((t, k, o, s, p))
        if inserted is not None:
            out.append(inserted)
    return np.asarray(out, np.int64).reshape(-1, 5)


def _region_edits(rng: np.random.Generator, arch: Arch, min_ratio: float, num: int) -> list:
    """`num` random edits of `arch` aimed at parameter ratios log-uniform in [1 / min_ratio,
    1.4] (the same edits, in the same order, as drawing them one by one).

    Gentler than `_mutate`: pooling layers are never dropped (the spatial size, hence the cost,
    stays the input's), Conv/Linear layers only rarely, and the global width is set from the
    target ratio (`_widths_for_ratios`) with a per-layer jitter.
    """
    draws = [_region_edit_draws(rng, arch, min_ratio) for _ in range(num)]
    widths = _widths_for_ratios(arch, np.asarray([d.ratio for d in draws]))
    return [_region_edit_rows(arch, d, float(w)) for d, w in zip(draws, widths)]


def _legalized_batch(raws: list, seed_arch: Arch, max_len: int, ranges: FieldRanges):
    """`_legalized` for many raw matrices in one vectorised call (zero rows pad them: the first
    type-0 row ends a sequence): their `Arch`es and the `batch_analyze` record."""
    rows = max(len(r) for r in raws)
    padded = np.zeros((len(raws), rows, 5), np.int64)
    for i, raw in enumerate(raws):
        padded[i, : len(raw)] = raw
    legal, lengths = batch_legalize(padded, seed_arch.input_shape, seed_arch.num_classes,
                                    max_len, ranges)
    info = batch_analyze(legal, seed_arch.input_shape, seed_arch.num_classes)
    archs = [Arch.from_matrix(legal[i, : lengths[i]], seed_arch.input_shape,
                              seed_arch.num_classes) for i in range(len(raws))]
    return archs, info


# Region edits drawn, legalised and measured together: one vectorised call per this many
# instead of one per edit (a 600-sample pool took ~29 s per call on a 2-core AMD EPYC, nearly
# all of it per-edit overhead). The plan is unchanged: edits are accepted in draw order.
REGION_CHUNK = 64


def sample_region(
    seed_arch: Arch, num: int, seed: int = 0, cfg: SamplerConfig = SamplerConfig(),
    min_ratio: float = 20.0, max_macs: int | None = None,
) -> list[Arch]:
    """`num` distinct networks in the region a compression of `seed_arch` searches: the network
    itself, its uniformly thinner versions (`REGION_WIDTH_LADDER`; its 1.19x-wide rung passes
    only where the MAC and parameter caps allow), then random
    edits (`_region_edit`) between about `min_ratio` x fewer and 1.4x more parameters.

    Deterministic and prefix-stable in `num`. The MAC cap is `max_macs` (default 1.25x the seed
    network's own, so that its full-size neighbours are admitted where `cfg.max_macs`, the
    Appendix-9 sampler's cost guard, would reject them); `cfg.max_params` still applies.
    """
    if max_macs is None:
        max_macs = int(1.25 * seed_arch.macs)
    rng = np.random.default_rng([seed, 0x2E610])
    ranges = FieldRanges(cfg.max_kernel, cfg.max_stride, cfg.max_padding, cfg.max_channels)
    low, high = seed_arch.num_params / (1.25 * min_ratio), 1.6 * seed_arch.num_params
    seen: set[Arch] = set()
    out: list[Arch] = []
    pending = [_scale_widths(seed_arch, w) for w in (1.0, *REGION_WIDTH_LADDER)]
    attempts = 0
    while len(out) < num:
        if not pending:
            pending = _region_edits(rng, seed_arch, min_ratio, REGION_CHUNK)
        archs, info = _legalized_batch(pending, seed_arch, cfg.max_len, ranges)
        pending = []
        for i, arch in enumerate(archs):
            attempts += 1
            if attempts > 1000 + 100 * num:
                raise ValueError(f"could not find {num} networks in the region of the seed "
                                 "architecture")
            if not (info.valid[i] and info.num_conv[i] > 0):
                continue
            if not (low <= info.num_params[i] <= min(high, cfg.max_params)) or \
                    info.macs[i] > max_macs:
                continue
            if arch not in seen:
                seen.add(arch)
                out.append(arch)
                if len(out) == num:
                    break
    return out
