"""Compression end to end: batched search, candidates, pick, optional refinement and verification,
outputs (report.json, PyTorch printout and module file, Pareto plot)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ac_jax.arch.spec import Arch
from ac_jax.compress.candidates import (
    Candidate,
    CandidateList,
    Constraint,
    build_candidates,
    columns,
    original_candidates,
    pareto_front,
    pick,
    timed,
    timed_items,
)
from ac_jax.compress.search import SearchConfig, search
from ac_jax.plotting import figure
from ac_jax.surrogate.checkpoint import TrainedSurrogate
from ac_jax.surrogate.encoding import encode_matrices


@dataclasses.dataclass
class CompressResult:
    name: str
    original: Candidate
    candidates: CandidateList | list[Candidate]
    front: np.ndarray  # indices into candidates
    chosen: Candidate
    constraint: Constraint
    reconstructed_exactly: bool  # decoder(encoder(x)) rounds back to x
    seconds: float
    verify: dict | None = None
    rounds: list[dict] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.original.num_params / max(self.chosen.num_params, 1)

    @property
    def pareto(self) -> list[Candidate]:
        """The Pareto set (fewest parameters vs highest predicted accuracy), small to large."""
        return sorted((self.candidates[int(i)] for i in self.front), key=lambda c: c.num_params)

    @property
    def archs_trained(self) -> int:
        """Networks trained to reach this result beyond the surrogate's archset (refinement)."""
        return self.rounds[-1]["refined_records"] if self.rounds else 0


def targets(surrogate: TrainedSurrogate, archs: Sequence[Arch], cfg: SearchConfig, c: Constraint):
    """Per-network (a0, p0): the accuracy target and the normalised parameter target.

    p0 is the user's parameter budget when one is given; otherwise the archset's mean (the
    paper's ``L_p(p, 0)``), but never above the network itself, so a network already smaller
    than the archset average is not pushed to grow.
    """
    norm = surrogate.normaliser
    p_orig = np.array([a.num_params for a in archs], np.float64)
    if c.max_params is not None:
        p0 = norm.to_target(np.full_like(p_orig, c.max_params))
    elif c.target_ratio is not None:
        p0 = norm.to_target(p_orig / c.target_ratio)
    else:
        p0 = np.minimum(0.0, norm.to_target(p_orig))
    a0 = np.full(len(archs), c.min_accuracy if c.min_accuracy is not None else cfg.accuracy_target)
    return a0, p0


# Networks per compiled search call. One call over 256 networks needed ~7.8 GB of temporaries on
# the 2-core CPU and searched at half the rate of calls over 64 (10.4 vs 20.4 networks/s; 64 in
# one call ran as fast as one at a time), so bigger batches are split into calls of this size.
NETWORKS_PER_CALL = 64


def search_chunks(surrogate, cfg, feats, lambdas, a0, p0, networks_per_call: int):
    """Yields `search`'s candidate matrices ``[n, L, S, T, 5]`` and lengths ``[n, L, S]`` (host
    arrays) for consecutive chunks of at most `networks_per_call` networks; a short last chunk is
    searched padded (its last network repeated) so that every call has the same shapes, and
    trimmed again."""
    if networks_per_call < 1:
        raise ValueError(f"networks_per_call must be >= 1, got {networks_per_call}")
    n = len(feats)
    size = min(networks_per_call, n)  # every call's batch size: one compilation serves them all
    for start in range(0, n, size):
        index = np.minimum(np.arange(start, start + size), n - 1)
        out = search(surrogate, cfg, feats[index], lambdas, a0[index], p0[index])
        keep = min(size, n - start)
        yield np.asarray(out["candidates"])[:keep], np.asarray(out["lengths"])[:keep]


def compress_batch(
    surrogate: TrainedSurrogate,
    archs: Sequence[Arch],
    names: Sequence[str],
    cfg: SearchConfig = SearchConfig(),
    constraint: Constraint = Constraint(),
    networks_per_call: int = NETWORKS_PER_CALL,
    timings: dict | None = None,
) -> list[CompressResult]:
    """Searches all `archs` over the lambda grid in one compiled program, then ranks candidates.

    Up to `networks_per_call` networks go into one call of the program; more are searched in
    calls of that size (`search_chunks`: one compilation serves them all), and the candidates of
    each call's networks are built together. `timings` (optional) collects seconds per stage:
    the search calls (legal, canonical candidate matrices on the host) and each stage of the
    host's post-processing.
    """
    start = time.perf_counter()
    for arch in archs:
        if tuple(arch.input_shape) != surrogate.input_shape or arch.num_classes != surrogate.num_classes:
            raise ValueError(
                f"network is for input {arch.input_shape} with {arch.num_classes} classes, the "
                f"surrogate for {surrogate.input_shape} with {surrogate.num_classes}"
            )
    with timed(timings, "inputs (score originals, encode, targets)"):
        originals = original_candidates(surrogate, archs)
        feats = encode_matrices(np.stack([a.to_matrix(surrogate.max_len) for a in archs]))
        lambdas = np.array([constraint.lam] if constraint.lam is not None else cfg.lambdas)
        a0, p0 = targets(surrogate, archs, cfg, constraint)
    shape, classes = surrogate.input_shape, surrogate.num_classes
    per_network = []
    chunks = search_chunks(surrogate, cfg, feats, lambdas, a0, p0, networks_per_call)
    stage = "search, legalize, canonicalize (compiled)"
    for mats, lengths in timed_items(chunks, timings, stage):
        per_network += build_candidates(surrogate, mats, lengths, lambdas, cfg.decode_every,
                                        shape, classes, timings)
    results = []
    with timed(timings, "Pareto set and pick"):
        starts = canonical_matrices(archs, surrogate.max_len)
        for start_matrix, name, orig, cands in zip(starts, names, originals, per_network):
            # The search's starting point decodes to the input (always, when anchored)
            exact = cands.contains_matrix(start_matrix, first_step_only=True)
            seconds = time.perf_counter() - start
            results.append(_result(name, orig, cands, constraint, exact, seconds))
    return results


def canonical_matrices(archs: Sequence[Arch], max_len: int) -> np.ndarray:
    """``[N, T, 5]`` canonical forms of `archs`, as the search's candidates are written."""
    from ac_jax.arch.batch import batch_canonicalize, batch_legalize

    mats = np.stack([a.to_matrix(max_len) for a in archs])
    shape, classes = archs[0].input_shape, archs[0].num_classes
    legal, _ = batch_canonicalize(*batch_legalize(mats, shape, classes, max_len=max_len))
    return legal


def _result(name, orig, cands, constraint, exact, seconds) -> CompressResult:
    params, acc = columns(cands, "num_params", "predicted_accuracy")
    front = pareto_front(params, acc) if cands else np.zeros(0, np.int64)
    chosen = pick(cands, orig, constraint) if cands else orig
    return CompressResult(name, orig, cands, front, chosen, constraint, exact, seconds)


# ----------------------------------------------------------------------------- verification


def verify(
    original: Arch,
    chosen: Arch,
    dataset,
    schedule,
    seeds: Sequence[int],
    log: Callable[[str], None] = print,
) -> dict:
    """Trains both with the same schedule, data order and seeds; a Table-1 row.

    Reported numbers: both train on the training set minus the validation split and are
    evaluated on the test set (`protocol.final_view`), after the pick was made.
    """
    from ac_jax.child.trainer import ChildTrainer, to_device
    from ac_jax.data import protocol

    data = to_device(protocol.final_view(dataset), schedule, seed=0)
    trainer = ChildTrainer(data, schedule, len(seeds))
    row = {"schedule": dataclasses.asdict(schedule), "seeds": list(seeds)}
    for label, arch in (("original", original), ("compressed", chosen)):
        log(f"verify: training the {label} network ({arch.num_params:,} parameters, "
            f"{schedule.epochs} epochs x {len(seeds)} seeds)")
        result = trainer.train(arch, seeds)
        row[f"{label}_status"] = result.status
        row[f"{label}_reason"] = result.reason
        row[f"{label}_seed_accuracies"] = list(result.seed_accuracies)
        row[f"{label}_accuracy"] = result.mean_accuracy if result.seed_accuracies else None
        row[f"{label}_params"] = arch.num_params
        row[f"{label}_train_seconds"] = result.train_seconds
        row[f"{label}_compile_seconds"] = result.compile_seconds
    if row["original_accuracy"] is not None and row["compressed_accuracy"] is not None:
        row["delta_accuracy"] = row["compressed_accuracy"] - row["original_accuracy"]
    else:
        row["delta_accuracy"] = None
    row["compression_ratio"] = original.num_params / chosen.num_params
    return row


def table1_row(name: str, row: dict) -> str:
    def pct(v):
        return "failed" if v is None else f"{100 * v:.2f}%"

    delta = row["delta_accuracy"]
    return (
        "| network | accuracy | params | compressed accuracy | compressed params | delta acc | ratio |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {name} | {pct(row['original_accuracy'])} | {row['original_params']:,} | "
        f"{pct(row['compressed_accuracy'])} | {row['compressed_params']:,} | "
        f"{'n/a' if delta is None else f'{100 * delta:+.2f}%'} | "
        f"{row['compression_ratio']:.2f}x |"
    )


# ----------------------------------------------------------------------------- outputs


def proposal_ranking(rounds: list) -> dict:
    """How well the surrogate ranked the candidates the refinement trained, each judged by the
    prediction made before it was trained (the round's surrogate had not seen it): Kendall tau
    and mean absolute error of predicted vs measured proxy accuracy, over the distinct
    proposals that trained (the original excluded), and `oracle_tau`, the tau a perfect
    predictor would be estimated to reach against those two-seed labels (`archset.report.
    oracle_tau`; None for rounds written before the seeds were recorded): a batch of proposals
    packed into a narrow accuracy band can be unrankable under the proxy's seed noise.
    `from_pool` counts those proposals that came from the region pool (`refine.region_pool`)."""
    from scipy.stats import kendalltau

    from ac_jax.archset.report import oracle_tau

    pairs, legacy, two_seeds, from_pool = [], {}, [], 0
    for info in rounds:
        for t in info.get("trained", ()):
            if t["original"] or t["status"] != "ok":
                continue
            if "fresh" in t:
                if t["fresh"]:
                    pairs.append((t["predicted"], t["trained"]))
                    two_seeds.append(t.get("seed_accuracies", [])[:2])
                    from_pool += bool(t.get("from_pool"))
            else:  # rounds written before `fresh` existed: each (size, accuracy) once
                legacy.setdefault((t["num_params"], t["trained"]), t["predicted"])
    pairs += [(predicted, trained) for (_, trained), predicted in legacy.items()]
    if not pairs:
        return {"count": 0, "kendall_tau": None, "mae": None, "oracle_tau": None, "from_pool": 0}
    predicted, trained = np.asarray(pairs, np.float64).T
    tau = kendalltau(predicted, trained).statistic if len(pairs) > 1 else float("nan")
    seeded = not legacy and all(len(s) == 2 for s in two_seeds)
    return {"count": len(pairs), "kendall_tau": None if np.isnan(tau) else float(tau),
            "mae": float(np.abs(predicted - trained).mean()),
            "oracle_tau": oracle_tau(two_seeds) if seeded else None, "from_pool": from_pool}


def report_dict(result: CompressResult, surrogate: TrainedSurrogate, extra: dict) -> dict:
    from ac_jax.arch.json_spec import to_json

    def cand(c: Candidate) -> dict:
        d = c.to_dict()
        d["lambda"] = None if math.isnan(c.lam) else c.lam
        return d

    return {
        "name": result.name,
        "constraint": result.constraint.describe(),
        "original": {**cand(result.original), "spec": to_json(result.original.arch)},
        "chosen": cand(result.chosen),
        "compression_ratio": result.ratio,
        "reconstructed_exactly": result.reconstructed_exactly,
        "num_candidates": len(result.candidates),
        "archs_trained": result.archs_trained,  # read by bin/baselines.py --random-archs archset
        "pareto": [cand(result.candidates[i]) for i in result.front],
        "verify": result.verify,
        "rounds": result.rounds,
        # Kendall tau / MAE of the surrogate on the candidates it proposed and refinement trained.
        "proposal_ranking": proposal_ranking(result.rounds) if result.rounds else None,
        "surrogate": str(surrogate.path) if surrogate.path else None,
        "wall_seconds": result.seconds,
        **extra,
    }


def write_outputs(
    result: CompressResult, surrogate: TrainedSurrogate, out_dir: str | Path, extra: dict
) -> dict[str, Path]:
    from ac_jax.arch.export import to_printout, to_torch_module_source

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out_dir / "report.json",
        "printout": out_dir / "compressed.txt",
        "module": out_dir / "compressed_model.py",
        "original_printout": out_dir / "original.txt",
        "pareto_plot": out_dir / "pareto.png",
    }
    paths["report"].write_text(json.dumps(report_dict(result, surrogate, extra), indent=1) + "\n")
    paths["printout"].write_text(to_printout(result.chosen.arch) + "\n")
    paths["original_printout"].write_text(to_printout(result.original.arch) + "\n")
    paths["module"].write_text(to_torch_module_source(result.chosen.arch, "CompressedModel"))
    plot_pareto(result, paths["pareto_plot"])
    return paths


def plot_pareto(result: CompressResult, path: Path) -> None:
    with figure(path, legend_size=7) as (_, ax, _):
        _draw_pareto(result, ax)


def _draw_pareto(result: CompressResult, ax) -> None:
    params, acc = columns(result.candidates, "num_params", "predicted_accuracy")
    if len(params):
        ax.scatter(params, acc, s=9, c="0.65", label=f"candidates ({len(params)})")
        front = result.front[np.argsort(params[result.front])]
        ax.plot(params[front], acc[front], "-o", ms=4, c="tab:blue", label="Pareto set")
    o, ch = result.original, result.chosen
    ax.scatter([o.num_params], [o.predicted_accuracy], marker="*", s=160, c="tab:red",
               label=f"original ({o.num_params:,})", zorder=3)
    ax.scatter([ch.num_params], [ch.predicted_accuracy], marker="D", s=60, c="tab:green",
               label=f"chosen ({ch.num_params:,}, {result.ratio:.1f}x)", zorder=3)
    if result.verify and result.verify.get("compressed_accuracy") is not None:
        v = result.verify
        ax.scatter([v["original_params"], v["compressed_params"]],
                   [v["original_accuracy"], v["compressed_accuracy"]], marker="x", s=60,
                   c="k", label="trained (verify)", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (exact)")
    ax.set_ylabel("predicted accuracy (surrogate)")
    ax.set_title(f"{result.name}: {result.constraint.describe()}", fontsize=8)
