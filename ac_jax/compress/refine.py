"""Refinement rounds (paper Section 5.3: the regressors drift a few steps away from the archset).

Each round trains the most promising candidates with the archset's proxy schedule, stores them in
``<work_dir>/refine.sqlite`` (a regular archset file, so a killed round resumes), fine-tunes the
surrogate on archset + refined records, and searches again from the original network.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ac_jax.archset.store import ArchsetArrays, ArchsetStore, load_arrays, record_of
from ac_jax.compress.candidates import pick

# Refined records get ids far above any sample-plan position, so they never collide.
REFINE_ID_BASE = 10_000_000


def concat_arrays(a: ArchsetArrays, b: ArchsetArrays) -> ArchsetArrays:
    return dataclasses.replace(
        a,
        matrices=np.concatenate([a.matrices, b.matrices]),
        lengths=np.concatenate([a.lengths, b.lengths]),
        accuracy=np.concatenate([a.accuracy, b.accuracy]),
        num_params=np.concatenate([a.num_params, b.num_params]),
        macs=np.concatenate([a.macs, b.macs]),
        idx=np.concatenate([a.idx, b.idx]),
    )


def spread(front_candidates: list, top: int) -> list:
    """Up to `top` candidates spread evenly along the Pareto set (small to large)."""
    ordered = sorted(front_candidates, key=lambda c: c.num_params)
    if len(ordered) <= top:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, top).round().astype(int))
    return [ordered[i] for i in picks]


def to_train(candidates: list, front: np.ndarray, top: int, max_params: int) -> list:
    """The `top` candidates a round trains: spread along the Pareto set, then, when the set is
    smaller than `top` (a surrogate that over-rates one small network puts it alone on the
    front), the best-predicted other candidates with fewer than `max_params` parameters (the
    original's size). Those are what the next search would pick once the front's members are
    corrected, so they are where a wrong accuracy regressor does harm and where a trained record
    corrects it most."""
    # The original itself (the anchored search's step 0 is on the front) is not a candidate.
    chosen = spread([candidates[i] for i in front if candidates[i].num_params < max_params], top)
    if len(chosen) < top:
        taken = {c.arch for c in chosen}
        others = sorted((c for c in candidates
                         if c.arch not in taken and c.num_params < max_params),
                        key=lambda c: (-c.predicted_accuracy, c.num_params))
        chosen += others[: top - len(chosen)]
    return chosen


def size_limit(original, constraint) -> int:
    """The largest parameter count a pick may have under `constraint`."""
    if constraint.max_params is not None:
        return int(constraint.max_params)
    if constraint.target_ratio is not None:
        return int(original.num_params / constraint.target_ratio)
    return int(original.num_params) - 1  # accuracy-floor picks: smaller than the original


def acquire(candidates, surrogate, top: int, limit: int, kappa: float, exclude=()) -> list:
    """The `top` candidates with the highest upper confidence bound ``mean + kappa * spread``
    of predicted accuracy (the accuracy heads' mean and spread, `scoring.score_matrices_spread`;
    a one-head surrogate ranks by its prediction) among those within `limit` parameters and not
    in `exclude` (architectures already trained). Trained where the surrogate is either
    promising or unsure under the size constraint, a record either confirms a pick or corrects
    the surrogate where the next search would go wrong."""
    from ac_jax.compress.candidates import CandidateList, columns
    from ac_jax.compress.scoring import score_matrices_spread

    if not len(candidates):
        return []
    (params,) = columns(candidates, "num_params")
    if isinstance(candidates, CandidateList):
        rows = candidates.rows
    else:
        rows = np.stack([c.arch.to_matrix(surrogate.max_len) for c in candidates])
    mean, sd, _ = score_matrices_spread(surrogate, rows)
    ucb = mean + kappa * sd
    exclude = set(exclude)
    chosen = []
    for i in np.argsort(-ucb, kind="stable"):
        if params[i] > limit:
            continue
        cand = candidates[int(i)]
        if cand.arch in exclude:
            continue
        chosen.append(cand)
        exclude.add(cand.arch)
        if len(chosen) == top:
            break
    return chosen


# Region samples drawn per round for the acquisition (`region_pool`): on CONV-7 about a third fall
# under an 8x size limit (a few hundred networks), drawn in ~10 s on the 2-core CPU.
DEFAULT_POOL = 600


def region_pool(surrogate, original, num: int, seed: int, limit: int) -> list:
    """Those of `num` networks of `original`'s compression region (`arch.sampler.sample_region`,
    the sampler of the region archset the surrogate was trained on, so its predictions there are
    in distribution) within `limit` parameters, as scored `Candidate`s (lam nan, step -1).

    The anchored search proposes a few hundred networks along a handful of trajectories, all
    within the trust region around the input; under a tight size limit it may propose none
    (study of issue 21, repeat 0: none of 327 under 8x), and the acquisition then has nothing to
    choose from. The pool gives the acquisition a broad set of networks that fit the limit."""
    from ac_jax.arch.sampler import sample_region
    from ac_jax.compress.candidates import original_candidates

    if num <= 0:
        return []
    archs = [a for a in sample_region(original, num, seed=seed)
             if a.num_params <= limit and len(a) <= surrogate.max_len]
    if not archs:
        return []
    return [dataclasses.replace(c, step=-1) for c in original_candidates(surrogate, archs)]


def archset_candidates(arrays: ArchsetArrays) -> list:
    """The archset's records as `Candidate`s measured at their stored accuracy."""
    from ac_jax.arch.spec import Arch
    from ac_jax.compress.candidates import Candidate

    out = []
    for mat, length, acc, macs in zip(arrays.matrices, arrays.lengths, arrays.accuracy,
                                      arrays.macs):
        arch = Arch.from_matrix(mat[:length], arrays.input_shape, arrays.num_classes)
        out.append(Candidate(arch, arch.num_params, int(macs), float(acc), float("nan"), -1,
                             measured_accuracy=float(acc)))
    return out


def _archset_accuracy(arrays: ArchsetArrays, arch, max_len: int) -> float | None:
    """The archset's accuracy of `arch` (None: no record of it)."""
    row = arch.to_matrix(max_len)
    hits = np.flatnonzero((arrays.matrices == row[None]).all(axis=(1, 2)))
    return float(arrays.accuracy[hits[0]]) if len(hits) else None


def measured_pick(trained: list, original, constraint):
    """The pick among *trained* candidates by the constraint's rule applied to their measured
    proxy accuracies (under a size cap: the most accurate within it; for an accuracy floor: the
    fewest parameters at least as accurate as the floor, which is set from the original's
    measured accuracy). None when the constraint is the paper's lambda mode, when a floor needs
    the original's accuracy and it is unknown, or when no trained candidate satisfies it.

    Refinement ends with the surrogate's predictions corrected only near what was trained, so a
    measured accuracy beats a prediction wherever there is one; the final search's pick is kept
    when no trained candidate qualifies.
    """
    capped = constraint.max_params is not None or constraint.target_ratio is not None
    if constraint.lam is not None or not trained:
        return None
    if original.measured_accuracy is None and not capped:  # the floor needs the original's
        return None
    as_measured = [dataclasses.replace(c, predicted_accuracy=c.measured_accuracy) for c in trained]
    anchor = dataclasses.replace(original, predicted_accuracy=original.measured_accuracy)
    best = pick(as_measured, anchor, constraint)
    if best is anchor:
        return None
    return trained[as_measured.index(best)]


ACQUISITIONS = ("ucb", "pareto")


def refine(result, surrogate, cfg, search_cfg, constraint, rounds: int, top: int, work_dir,
           finetune_steps: int = 400, dataset=None, archset_path=None, log=print,
           base_arrays: ArchsetArrays | None = None, acquisition: str = "ucb",
           kappa: float = 1.0, runner=None, pool: int = DEFAULT_POOL, pool_seed: int = 0):
    """Returns a new `CompressResult` after `rounds` rounds; `result.rounds` describes each.

    `cfg` is the config the surrogate's archset was made with (`configs.for_surrogate`): the
    candidates train with its proxy schedule and seeds, on the training set minus the
    validation split, judged on that split (`protocol.search_view`), like the archset's
    records, so they can join it. The archset the surrogate is
    fine-tuned on is `base_arrays`, else the file `archset_path`, else the config's archset.

    Round r trains `top` candidates of the current search (round 1 also the original), adds them
    to the archset, fine-tunes the surrogate and searches again; the last search's candidates are
    trained too, and the final pick is the best *trained* candidate under the constraint
    (`measured_pick`), or the last search's pick when none qualifies.

    `acquisition`: "pareto" (as above: spread along the Pareto set) or "ucb", active learning:
    each round trains the `top` untrained candidates under the constraint's size limit with the
    highest ``mean + kappa * spread`` (`acquire`), and the final pick is over every trained
    record, the archset's included, by measured (validation) accuracy. The acquisition is
    maximised over the search's candidates and `pool` region samples under the size limit
    (`region_pool`, a new draw each round from seed `pool_seed`; 0: the search's candidates
    only); each trained record says whether it came from the pool. Refined records are
    never held out of fine-tuning. `runner` (`ac_jax.distributed.RayRunner`) trains each
    round's batch on a cluster (records stored as they arrive).
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
    active = acquisition == "ucb" and constraint.lam is None
    if acquisition == "ucb" and not active:
        log("refine: the lambda mode picks the trajectory's last step; rounds use the Pareto "
            "spread, not the acquisition")
    from ac_jax.archset.generate import archset_meta
    from ac_jax.child.trainer import ChildTrainer, to_device
    from ac_jax.runtime import repo_path
    from ac_jax.compress.pipeline import compress_batch
    from ac_jax.data import load, protocol
    from ac_jax.surrogate.checkpoint import load_surrogate
    from ac_jax.surrogate.train import train

    work_dir = Path(work_dir) / result.name
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataset if dataset is not None else load(cfg.dataset, cfg.data_dir)
    dataset = protocol.search_view(dataset)
    a = cfg.archset
    trainer = None if runner is not None else ChildTrainer(
        to_device(dataset, a.schedule, seed=a.sample_seed), a.schedule, a.seeds)
    base = base_arrays if base_arrays is not None else load_arrays(
        archset_path or repo_path(a.path), max_len=surrogate.max_len)
    original = result.original.arch
    history = list(result.rounds)
    meta = archset_meta(cfg, dataset.input_shape, dataset.num_classes)
    measured: dict = {}  # arch -> Candidate with measured_accuracy (ok trainings only)
    original_accuracy = _archset_accuracy(base, original, surrogate.max_len)

    # Every network in refine.sqlite whatever its training's status (a resumed run's too),
    # kept up to date by `train_all`.
    with ArchsetStore(work_dir / "refine.sqlite", meta) as store:
        tried: set = {rec.arch for rec in store.records()}

    def train_all(chosen, label):
        """Trains (or finds in refine.sqlite) every candidate of `chosen`; a round's info."""
        nonlocal original_accuracy
        info = {"round": label, "trained": []}
        with ArchsetStore(work_dir / "refine.sqlite", meta) as store:
            done = {rec.arch: rec for rec in store.records()}
            tried.update(done)
            next_id = REFINE_ID_BASE + len(store)
            missing = list(dict.fromkeys(c.arch for c in chosen if c.arch not in done))
            fresh = set(missing)  # trained by this call: their predictions are out of sample
            if runner is not None and missing:  # the round's batch on the cluster
                log(f"refine round {label}: training {len(missing)} candidates on Ray")

                def stored(key, arch, out):
                    nonlocal next_id
                    rec = record_of(next_id, arch, "refine", out)
                    store.add(rec)
                    done[arch] = rec
                    tried.add(arch)
                    next_id += 1

                runner.run(dataset, a.schedule, a.seeds,
                           [(arch, arch, list(range(a.seeds))) for arch in missing],
                           on_result=stored, data_seed=a.sample_seed)
            for cand in chosen:
                rec = done.get(cand.arch)
                if rec is None:
                    log(f"refine round {label}: training a {cand.num_params:,}-parameter candidate")
                    out = trainer.train(cand.arch, list(range(a.seeds)))
                    rec = record_of(next_id, cand.arch, "refine", out)
                    store.add(rec)
                    done[cand.arch] = rec  # the same network twice in `chosen` trains once
                    tried.add(cand.arch)
                    next_id += 1
                is_original = cand.arch == original
                if rec.status == "ok":
                    if is_original:
                        original_accuracy = rec.mean_accuracy
                    else:
                        measured.setdefault(cand.arch, dataclasses.replace(
                            cand, measured_accuracy=rec.mean_accuracy))
                info["trained"].append({"original": is_original, "num_params": cand.num_params,
                                        "predicted": cand.predicted_accuracy,
                                        "trained": rec.mean_accuracy, "status": rec.status,
                                        "fresh": cand.arch in fresh,
                                        "seed_accuracies": [float(v) for v in
                                                            rec.seed_accuracies],
                                        "from_pool": cand.arch in pool_archs})
                fresh.discard(cand.arch)  # listed twice: counted once
            info["refined_records"] = len(store)  # distinct networks trained so far
        return info

    limit = size_limit(original, constraint)
    archset_trained = archset_candidates(base) if active else []
    known = {c.arch for c in archset_trained}
    pool_archs: set = set()  # networks the acquisition drew from the region pool

    def next_batch(result, round_index):
        if not active:
            return to_train(result.candidates, result.front, top, original.num_params)
        # One stream per (pool_seed, round): rounds draw fresh samples, repeats differ.
        try:
            extra = region_pool(surrogate, original, pool,
                                7_000_003 * (pool_seed + 1) + round_index, limit)
        except ValueError as err:  # a network whose region the sampler cannot fill
            log(f"refine: no region pool ({err}); the search's candidates only")
            extra = []
        pool_archs.update(c.arch for c in extra)
        cands = list(result.candidates) + extra if extra else result.candidates
        return acquire(cands, surrogate, top, limit, kappa, exclude=known | tried)

    for r in range(rounds):
        chosen = next_batch(result, r)
        capped = constraint.max_params is not None or constraint.target_ratio is not None
        if r == 0 and original_accuracy is None and not (active and capped):
            # The pick is judged against the original's accuracy; one trained record of the
            # original anchors its prediction (the archset may hold nothing that big).
            chosen = [result.original] + chosen
        round_info = train_all(chosen, r + 1)
        if not chosen:  # nothing untrained under the size limit: nothing left to learn from
            log(f"refine round {r + 1}: no untrained candidate within {limit:,} parameters")
            round_info["chosen_params"] = result.chosen.num_params
            history.append(round_info)
            break
        try:
            refined = load_arrays(work_dir / "refine.sqlite", max_len=surrogate.max_len)
        except ValueError:  # every training so far failed: no record to fine-tune on
            round_info["chosen_params"] = result.chosen.num_params
            history.append(round_info)
            continue
        scfg = dataclasses.replace(surrogate.config, steps=finetune_steps,
                                   checkpoint_every=finetune_steps, eval_every=finetune_steps)
        run_dir = work_dir / f"surrogate_round{r + 1}"
        own = np.concatenate([np.zeros(len(base.idx), bool), np.ones(len(refined.idx), bool)])
        train(scfg, concat_arrays(base, refined), run_dir, surrogate.meta["task"], progress=False,
              init_variables=surrogate.variables, normaliser=surrogate.normaliser, log=log,
              always_train=own)
        surrogate = load_surrogate(run_dir)
        (result,) = compress_batch(surrogate, [original], [result.name], search_cfg, constraint)
        round_info["chosen_params"] = result.chosen.num_params
        history.append(round_info)
    if rounds:
        final = train_all(next_batch(result, rounds), "final")
        anchor = dataclasses.replace(result.original, measured_accuracy=original_accuracy)
        best = measured_pick(list(measured.values()) + archset_trained, anchor, constraint)
        final["search_pick_params"] = result.chosen.num_params
        final["original_measured"] = original_accuracy
        final["pick"] = "trained" if best is not None else "search"
        if best is not None:
            result.chosen = best
            # Where the pick was proposed: an archset record, the region pool, or the search.
            final["pick_source"] = ("archset" if best.arch in known else
                                    "pool" if best.arch in pool_archs else "search")
        result.original = anchor
        final["chosen_params"] = result.chosen.num_params
        history.append(final)
    result.rounds = history
    return result
