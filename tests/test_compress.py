"""Compression: descent in the embedding, batching over networks and lambdas, exact candidates,
Pareto picks, verification and the bin/compress.py command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ac_jax.arch import shapes, zoo
from ac_jax.arch.batch import batch_canonicalize, batch_legalize
from ac_jax.arch.legalize import canonicalize
from ac_jax.arch.sampler import SamplerConfig, sample
from ac_jax.arch.json_spec import parse_json
from ac_jax.arch.printout import parse_printout
from ac_jax.compress import pipeline
from ac_jax.compress.candidates import Candidate, Constraint, pareto_front, pick
from ac_jax.compress.search import SearchConfig, compression_loss, search
from ac_jax.surrogate.checkpoint import load_surrogate
from ac_jax.surrogate.encoding import decode_features, encode_matrices

REPO = Path(__file__).resolve().parent.parent
SHAPE, CLASSES = (12, 12, 1), 4
CFG = SearchConfig(steps=12, step_size=0.5, lambdas=(0.1, 1.0, 10.0), decode_every=3)
# The plain update rule, unbounded: what the step-by-step checks rewrite independently.
CFG_FREE = dataclasses.replace(CFG, trust_radius=None)


@pytest.fixture(scope="module")
def surrogate(tiny_surrogate_dir):
    return load_surrogate(tiny_surrogate_dir)


@pytest.fixture(scope="module")
def nets():
    archs, _ = sample(5, SHAPE, CLASSES, seed=7,
                      cfg=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000))
    return [zoo.get("tinycnn", SHAPE, CLASSES), *archs]


def _descent_step(surrogate, lam, step_size):
    """One step of the search's update rule, written out independently of `search`."""
    def step(y):
        g = jax.grad(lambda v: compression_loss(surrogate.model, surrogate.variables, v, lam,
                                                1.0, -1.0))(y)
        return y - step_size * g / jnp.maximum(1.0, jnp.linalg.norm(g)), g
    return jax.jit(step)


def test_search_takes_clipped_gradient_steps_and_decodes_every_one(surrogate, nets):
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    a0, p0 = np.ones(len(nets)), np.full(len(nets), -1.0)
    out = search(surrogate, CFG_FREE, feats, CFG.lambdas, a0, p0)
    assert out["decoded"].shape == (len(nets), 3, CFG.snapshots, 16, 6)
    # Rounded on the device by the same rules as on the host (`decode_features`).
    assert out["matrices"].shape == (len(nets), 3, CFG.snapshots, 16, 5)
    np.testing.assert_array_equal(out["matrices"], decode_features(np.asarray(out["decoded"])))
    # ... and legalized and canonicalized there by the host's rules too.
    flat = np.asarray(out["matrices"]).reshape(-1, 16, 5)
    legal, lengths = batch_canonicalize(*batch_legalize(flat, SHAPE, CLASSES, max_len=16))
    np.testing.assert_array_equal(np.asarray(out["candidates"]).reshape(-1, 16, 5), legal)
    np.testing.assert_array_equal(np.asarray(out["lengths"]).reshape(-1), lengths)
    # Every trajectory starts at the encoding and follows eq. 17's clipped gradient: each
    # snapshot is `decode_every` steps of the update rule from the previous one. (Same
    # arithmetic in another program: equal up to float rounding.)
    y0 = surrogate.encode(feats)
    for li, lam in enumerate(CFG.lambdas):
        step = _descent_step(surrogate, lam, CFG.step_size)
        np.testing.assert_allclose(out["y"][:, li, 0], y0, rtol=1e-5, atol=1e-6)
        for n in range(len(nets)):
            for s in range(CFG.snapshots - 1):
                y = out["y"][n, li, s]
                for _ in range(CFG.decode_every):
                    y, _ = step(y)
                np.testing.assert_allclose(out["y"][n, li, s + 1], y, rtol=1e-4, atol=1e-5)


def test_a_short_step_of_the_update_rule_lowers_the_compression_loss(surrogate, nets):
    # The search's step is along minus the gradient (the paper's eq. 18 prints "+"). For a step
    # this short the first-order decrease, eta * |g|^2 (|g| <= 1), dominates: the loss is
    # piecewise smooth in y (ReLU regressors, sigmoid, Huber), so it can only fail where the step
    # crosses a ReLU kink (measure zero). In float64, so that rounding (~1e-16) cannot decide
    # it however small the gradient. Over tiny-surrogate seeds 0-11 (2026-12-01, float32) the
    # decrease was 0.92-1.0 of eta * |g|^2, which was at least 2.4e-6. (The old check, "K steps
    # of eta = 0.5 end lower", was false for seed 6: a step that long can overshoot.)
    eta = 1e-3
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), surrogate.variables)
        wide = dataclasses.replace(surrogate, variables=variables)
        y0 = jnp.asarray(surrogate.encode(encode_matrices(
            np.stack([a.to_matrix(16) for a in nets]))), jnp.float64)
        for lam in CFG.lambdas:
            step = _descent_step(wide, lam, eta)
            moved = 0
            for y in y0:
                y1, g = step(y)
                assert y1.dtype == jnp.float64
                before, after = (float(compression_loss(wide.model, variables, v, lam, 1.0, -1.0))
                                 for v in (y, y1))
                expected = eta * float(jnp.sum(g * g)) / max(1.0, float(jnp.linalg.norm(g)))
                if expected == 0.0:  # a flat start (dead regressor units): nothing to descend
                    continue
                moved += 1
                assert after < before - 0.5 * expected, (lam, before, after, expected)
            assert moved >= len(nets) // 2, f"lambda {lam}: most starts have no gradient"


def test_batched_search_equals_one_network_at_a_time(surrogate, nets):
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    a0, p0 = np.ones(len(nets)), np.zeros(len(nets))
    batched = search(surrogate, CFG, feats, CFG.lambdas, a0, p0)
    for n in (0, 3):
        alone = search(surrogate, CFG, feats[n : n + 1], CFG.lambdas, a0[:1], p0[:1])
        np.testing.assert_allclose(alone["y"][0], batched["y"][n], rtol=1e-4, atol=1e-4)


def test_search_in_calls_of_a_few_networks_equals_one_call(surrogate, nets):
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    a0, p0 = np.ones(len(nets)), np.zeros(len(nets))
    ((whole, whole_lengths),) = pipeline.search_chunks(surrogate, CFG, feats, CFG.lambdas, a0,
                                                       p0, len(nets))
    chunks = list(pipeline.search_chunks(surrogate, CFG, feats, CFG.lambdas, a0, p0, 4))
    assert [len(m) for m, _ in chunks] == [4, 2]  # the last call padded to 4, trimmed back
    split = np.concatenate([m for m, _ in chunks])
    assert split.shape == whole.shape == (len(nets), 3, CFG.snapshots, 16, 5)
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_array_equal(np.concatenate([n for _, n in chunks]), whole_lengths)
    with pytest.raises(ValueError, match="networks_per_call"):
        list(pipeline.search_chunks(surrogate, CFG, feats, CFG.lambdas, a0, p0, 0))


def test_candidates_of_a_batch_equal_those_of_each_network_alone(surrogate, nets):
    names = [f"n{i}" for i in range(len(nets))]
    together = pipeline.compress_batch(surrogate, nets, names, CFG, networks_per_call=4)
    for i in (0, 4):
        (alone,) = pipeline.compress_batch(surrogate, [nets[i]], [names[i]], CFG)
        assert [c.arch for c in alone.candidates] == [c.arch for c in together[i].candidates]
        assert [c.step for c in alone.candidates] == [c.step for c in together[i].candidates]
    # seconds since the call started (a wall time, not a clock reading)
    assert all(0 < r.seconds < 600 for r in together)


def test_stage_timings_cover_every_stage_and_change_nothing(surrogate, nets):
    names = [f"n{i}" for i in range(len(nets))]
    timings: dict = {}
    timed = pipeline.compress_batch(surrogate, nets, names, CFG, networks_per_call=4,
                                    timings=timings)
    plain = pipeline.compress_batch(surrogate, nets, names, CFG, networks_per_call=4)
    assert [[c.arch for c in r.candidates] for r in timed] == [
        [c.arch for c in r.candidates] for r in plain]
    assert set(timings) == {
        "inputs (score originals, encode, targets)", "search, legalize, canonicalize (compiled)",
        "dedupe", "exact counts", "re-score (surrogate, encoding compiled in)", "per-network candidate lists",
        "Pareto set and pick"}
    assert all(seconds > 0 for seconds in timings.values())
    # Stages are parts of the call: together no longer than its wall time (the last network's
    # seconds are read just before its own Pareto set and pick, hence the small margin).
    assert sum(timings.values()) <= max(r.seconds for r in timed) + 0.05


def test_candidates_are_valid_canonical_and_exactly_counted(surrogate, nets):
    results = pipeline.compress_batch(surrogate, nets, [f"n{i}" for i in range(len(nets))], CFG)
    assert len(results) == len(nets)
    for result in results:
        assert result.candidates
        seen = set()
        for c in result.candidates:
            assert shapes.is_valid(c.arch)
            assert canonicalize(c.arch) == c.arch
            assert c.num_params == c.arch.num_params and c.macs == c.arch.macs
            assert c.arch not in seen
            seen.add(c.arch)
        # chosen obeys the default rule: no larger than the original
        assert result.chosen.num_params <= result.original.num_params


def test_candidate_lists_make_objects_on_demand_and_rank_like_lists(surrogate, nets):
    from ac_jax.compress.candidates import CandidateList, columns

    (result,) = pipeline.compress_batch(surrogate, [nets[0]], ["n0"], CFG)
    lazy = result.candidates
    assert isinstance(lazy, CandidateList)
    # The pipeline built the pick's object and nothing else (none when the pick is the
    # original, which is not one of the candidates).
    if result.chosen is result.original:
        assert lazy._made == {}
    else:
        assert list(lazy._made.values()) == [result.chosen]
    eager = list(lazy)  # every object, as a plain list
    assert lazy[0] is eager[0] and lazy[-1] is eager[-1] and lazy[1:3] == eager[1:3]
    with pytest.raises(IndexError):
        lazy[len(lazy)]
    fields = ("num_params", "macs", "predicted_accuracy", "lam", "step")
    for got, want in zip(columns(lazy, *fields), columns(eager, *fields), strict=True):
        np.testing.assert_array_equal(got, want)
    for constraint in (Constraint(), Constraint(max_params=lazy.num_params.min() + 1),
                       Constraint(lam=CFG.lambdas[1]), Constraint(min_accuracy=0.0)):
        assert pick(lazy, result.original, constraint) == pick(eager, result.original, constraint)


def test_candidate_list_finds_matrices_by_step():
    from ac_jax.compress.candidates import CandidateList

    archs = [nets_arch for nets_arch in sample(4, SHAPE, CLASSES, seed=11, cfg=SamplerConfig(
        max_len=12, max_params=40_000, max_macs=400_000))[0]]
    rows = np.stack([a.to_matrix(16) for a in archs]).astype(np.uint16)
    steps = [0, 0, 3, 6]  # two architectures decoded at the start, two later
    lazy = CandidateList(rows, [len(a) for a in archs], [a.num_params for a in archs],
                         [a.macs for a in archs], [0.5] * 4, [0.1] * 4, steps, SHAPE, CLASSES)
    assert [c.arch for c in lazy] == archs and [c.step for c in lazy] == steps
    for arch, step in zip(archs, steps):
        assert lazy.contains_matrix(arch.to_matrix(16))
        assert lazy.contains_matrix(arch.to_matrix(16), first_step_only=True) == (step == 0)
    other = zoo.get("tinycnn", SHAPE, CLASSES)
    assert other not in archs and not lazy.contains_matrix(other.to_matrix(16))


def test_scoring_integer_matrices_equals_scoring_their_encoding(surrogate, nets):
    from ac_jax.compress.scoring import score, score_matrices

    # Legal canonical matrices like the search's (the nets themselves) and arbitrary in-range
    # fields, 37 rows: more than one padded batch of 16 and a ragged last one.
    legal = np.stack([canonicalize(a).to_matrix(16) for a in nets])
    rng = np.random.default_rng(0)
    arbitrary = rng.integers(0, 70, (31, 16, 5))
    arbitrary[:, :, 0] = rng.integers(1, 9, (31, 16))
    mats = np.concatenate([legal, arbitrary]).astype(np.uint16)
    for got, want in zip(score_matrices(surrogate, mats, batch=16),
                         score(surrogate, encode_matrices(mats), batch=16)):
        assert got.shape == want.shape == (37,)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="0..65535"):
        score_matrices(surrogate, np.full((1, 16, 5), 70_000))


def test_pareto_front_and_picks():
    params = np.array([10, 20, 30, 40, 25])
    acc = np.array([0.5, 0.7, 0.6, 0.9, 0.8])
    assert list(pareto_front(params, acc)) == [0, 1, 4, 3]
    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    cands = [Candidate(arch, int(p), 0, float(a), 1.0, i) for i, (p, a) in enumerate(zip(params, acc))]
    orig = Candidate(arch, 100, 0, 0.85, float("nan"), 0)
    assert pick(cands, orig, Constraint(max_params=26)).num_params == 25
    assert pick(cands, orig, Constraint(target_ratio=5)).num_params == 20  # <= 20 params
    assert pick(cands, orig, Constraint(min_accuracy=0.75)).num_params == 25
    assert pick(cands, orig, Constraint(max_drop=0.06)).num_params == 25  # >= 0.79
    assert pick(cands, orig, Constraint(max_params=5)) is orig  # nothing fits: keep the original
    assert pick(cands, orig, Constraint(lam=1.0)).step == 4  # last step of that lambda


def test_budget_constraint_is_met_by_exact_count(surrogate, nets):
    (free,) = pipeline.compress_batch(surrogate, nets[:1], ["tiny"], CFG)
    middle = int(np.median(free.candidates.num_params))
    # A budget every candidate meets, one none can meet (every network ends in a Linear with a
    # bias per class, so it has at least 4 parameters), and one in between, where the
    # budget-steered search decides.
    for budget in (10**15, middle, 1):
        (result,) = pipeline.compress_batch(surrogate, nets[:1], ["tiny"], CFG,
                                            Constraint(max_params=budget))
        fits = result.candidates.num_params <= budget
        assert fits.all() if budget == 10**15 else True
        assert not fits.any() if budget == 1 else True
        if fits.any():  # the most accurate predicted candidate within the budget, by exact count
            assert result.chosen is not result.original and result.chosen.num_params <= budget
            best = result.candidates.predicted_accuracy[fits].max()
            assert result.chosen.predicted_accuracy == best
        else:
            assert result.chosen is result.original


def test_verify_trains_both_with_the_same_seeds():
    from ac_jax.child.trainer import TrainSchedule
    from ac_jax.data import load

    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    small = arch.replace_layers([x if x.t != 1 else x._replace(o=max(2, x.o // 2)) for x in arch.layers])
    schedule = TrainSchedule(epochs=1, batch_size=32, lr=0.01, eval_batch_size=128)
    row = pipeline.verify(arch, small, load("synthetic"), schedule, [0, 1], log=lambda s: None)
    assert row["original_status"] == "ok" and row["compressed_status"] == "ok"
    assert len(row["compressed_seed_accuracies"]) == 2
    assert row["compression_ratio"] == pytest.approx(arch.num_params / small.num_params)
    assert "| tinycnn |" in pipeline.table1_row("tinycnn", row)


def run_cli(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, str(REPO / "bin" / "compress.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=None if env is None else {**os.environ, **env})


def test_cli_writes_report_printout_module_and_plot(tiny_surrogate_dir, tmp_path, nets):
    net_file = tmp_path / "nets" / "sampled.json"
    net_file.parent.mkdir()
    from ac_jax.arch.json_spec import to_json
    from ac_jax.arch.export import to_printout

    net_file.write_text(to_json(nets[2]))
    (tmp_path / "nets" / "tiny.txt").write_text(to_printout(nets[0]))
    cache = tmp_path / "xla_cache"
    proc = run_cli("--dataset", "tiny", "--surrogate", str(tiny_surrogate_dir), "--models",
                   str(tmp_path / "nets"), "--out", str(tmp_path / "out"), "--steps", "6",
                   "--lambdas", "0.3", "3", "--quiet", env={"AC_JAX_COMPILE_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The compiled search went into the persistent cache, so a rerun skips compiling it.
    assert cache.is_dir() and any(cache.iterdir())
    for name in ("sampled", "tiny"):
        d = tmp_path / "out" / name
        report = json.loads((d / "report.json").read_text())
        chosen = parse_json(report["chosen"]["spec"])
        assert chosen.num_params == report["chosen"]["num_params"]
        assert parse_printout((d / "compressed.txt").read_text(), SHAPE) == chosen
        assert "class CompressedModel" in (d / "compressed_model.py").read_text()
        assert (d / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())) == 2


def test_cli_without_a_surrogate_says_how_to_build_one(tmp_path):
    proc = run_cli("--dataset", "svhn", "--surrogate", str(tmp_path / "missing"))
    assert proc.returncode != 0
    assert "bin/make_archset.py --dataset svhn" in proc.stderr
    assert "bin/train_surrogate.py --dataset svhn" in proc.stderr


def test_cli_rejects_a_malformed_model(tiny_surrogate_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Model(\n  (features): Sequential(\n    (0): AdaptiveAvgPool2d(output_size=1)\n  )\n)\n")
    proc = run_cli("--dataset", "tiny", "--surrogate", str(tiny_surrogate_dir), "--model", str(bad))
    assert proc.returncode != 0 and "AdaptiveAvgPool2d" in proc.stderr


def test_refinement_trains_candidates_and_searches_again(surrogate, tiny_archset, tmp_path):
    from ac_jax.archset.store import ArchsetStore
    from ac_jax.compress import refine
    from configs import get_config
    from ac_jax.data import load

    cfg = get_config("tiny")
    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    (first,) = pipeline.compress_batch(surrogate, [arch], ["tiny"], CFG)
    round1 = [c.arch for c in refine.to_train(first.candidates, first.front, 2, arch.num_params)]
    result = refine.refine(first, surrogate, cfg, CFG, Constraint(), rounds=1, top=2,
                           work_dir=tmp_path, finetune_steps=50, dataset=load("synthetic"),
                           archset_path=tiny_archset, log=lambda s: None, acquisition="pareto")
    info, final = result.rounds
    # Round 1 trains the original (not in the archset) first, then what `to_train` chose.
    round1 = [arch] + round1
    assert [t["num_params"] for t in info["trained"]] == [a.num_params for a in round1]
    assert [t["original"] for t in info["trained"]] == [True] + [a == arch for a in round1[1:]]
    assert info["trained"][0]["status"] == "ok"  # tinycnn trains on the synthetic task
    for t in info["trained"] + final["trained"]:
        assert t["status"] in ("ok", "diverged", "oom")
        if t["status"] == "ok":
            assert 0 <= t["trained"] <= 1
        if t["status"] == "oom":  # nothing trained, nothing measured
            assert t["trained"] is None
    # The last search's candidates are trained too.
    last = [c.arch for c in refine.to_train(result.candidates, result.front, 2, arch.num_params)]
    assert final["round"] == "final"
    assert [t["num_params"] for t in final["trained"]] == [a.num_params for a in last]
    original_measured = info["trained"][0]["trained"]
    assert final["original_measured"] == original_measured == result.original.measured_accuracy
    # The pick: the fewest parameters among trained candidates measured within 0.01 of the
    # original, else the last search's own pick.
    qualifying = [t for t in info["trained"] + final["trained"]
                  if not t["original"] and t["status"] == "ok"
                  and t["num_params"] < arch.num_params and t["trained"] >= original_measured - 0.01]
    if qualifying:
        assert final["pick"] == "trained"
        assert result.chosen.measured_accuracy >= original_measured - 0.01
        assert result.chosen.num_params == min(t["num_params"] for t in qualifying)
    else:
        assert final["pick"] == "search"
        assert result.chosen.num_params == final["search_pick_params"]
    with ArchsetStore(tmp_path / "tiny" / "refine.sqlite", readonly=True) as store:
        # every distinct network is trained and stored once (the final round may meet round-1
        # candidates again)
        assert {r.arch for r in store.records()} == set(round1) | set(last)
        assert len(store) == len(set(round1) | set(last))
        # the report's cost count (bin/baselines.py --random-archs archset reads it)
        assert result.archs_trained == len(store) == final["refined_records"]
    report = pipeline.report_dict(result, surrogate, {})
    assert report["archs_trained"] == result.archs_trained
    assert (tmp_path / "tiny" / "surrogate_round1" / "surrogate.json").exists()
    # Fine-tuning a successor leaves the caller's surrogate usable (its buffers not donated).
    (again,) = pipeline.compress_batch(surrogate, [arch], ["tiny"], CFG)
    assert again.chosen.num_params == first.chosen.num_params


def test_refinement_fills_a_small_front_with_the_best_predicted_smaller_candidates():
    from ac_jax.compress import refine

    archs = [zoo.get("tinycnn", SHAPE, CLASSES)]
    sampled, _ = sample(6, SHAPE, CLASSES, seed=3,
                        cfg=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000))
    archs += sampled
    # (params, predicted accuracy): index 0 alone on the front (smallest and best predicted)
    specs = [(100, 0.9), (500, 0.5), (300, 0.8), (900, 0.85), (200, 0.1), (5000, 0.95), (400, 0.7)]
    cands = [Candidate(a, p, 0, acc, 0.1, 1) for a, (p, acc) in zip(archs, specs)]
    picked = refine.to_train(cands, np.array([0]), top=3, max_params=1000)
    # the front member, then the best-predicted others under the original's 1,000 parameters
    assert [c.num_params for c in picked] == [100, 900, 300]
    # a front as large as `top` is only spread, nothing added
    spread = refine.to_train(cands, np.array([0, 2, 6, 1]), top=2, max_params=1000)
    assert [c.num_params for c in spread] == [100, 500]


def test_refinement_trains_like_the_archset_the_surrogate_was_trained_on():
    from types import SimpleNamespace

    from configs import for_surrogate, get_config

    default = get_config("fashion_mnist")  # what bin/compress.py starts with
    shipped = SimpleNamespace(meta={"task": {"config": "fashion_mnist/cpu"}})
    own = for_surrogate(shipped, default.replace(data_dir="/data"))
    cpu = get_config("fashion_mnist", "cpu").archset
    assert own.archset.path == cpu.path and own.archset.schedule == cpu.schedule
    assert own.archset.seeds == cpu.seeds and own.data_dir == "/data"
    unnamed = SimpleNamespace(meta={"task": {"dataset": "synthetic"}})
    assert for_surrogate(unnamed, default) is default


def test_measured_pick_prefers_trained_accuracy_over_prediction():
    import dataclasses

    from ac_jax.compress import refine

    archs, _ = sample(4, SHAPE, CLASSES, seed=5,
                      cfg=SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000))
    original = Candidate(zoo.get("tinycnn", SHAPE, CLASSES), 10_000, 0, 0.6, float("nan"), 0,
                         measured_accuracy=0.50)
    # (params, predicted, measured): the surrogate over-rates the smallest one
    specs = [(1_000, 0.90, 0.30), (2_000, 0.55, 0.495), (3_000, 0.70, 0.70), (20_000, 0.9, 0.9)]
    trained = [Candidate(a, p, 0, pred, 0.1, 1, measured_accuracy=m)
               for a, (p, pred, m) in zip(archs, specs)]
    # default constraint: fewest parameters measured within 0.01 of the original's 0.50
    assert refine.measured_pick(trained, original, Constraint()) is trained[1]
    assert refine.measured_pick(trained, original, Constraint(max_params=2_500)) is trained[1]
    assert refine.measured_pick(trained, original, Constraint(min_accuracy=0.6)) is trained[2]
    # nothing qualifies, the original's accuracy is unknown, or the paper's lambda mode: None
    assert refine.measured_pick(trained, original, Constraint(max_params=500)) is None
    unknown = dataclasses.replace(original, measured_accuracy=None)
    assert refine.measured_pick(trained, unknown, Constraint()) is None
    assert refine.measured_pick(trained, original, Constraint(lam=1.0)) is None


def test_first_per_network_keeps_first_occurrences_within_each_network():
    from ac_jax.compress.candidates import first_per_network

    a, b, c = (np.full((3, 5), v, np.int64) for v in (1, 2, 3))
    # two networks of four rows each; `a` recurs within network 0 and again in network 1
    mats = np.stack([a, b, a, c, b, a, a, b])
    assert first_per_network(mats, 4).tolist() == [0, 1, 3, 4, 5]


# ----------------------------------------------------------------------------- anchored search


@pytest.mark.parametrize("objective", ["embedding", "decoded"])
def test_anchored_search_starts_at_the_input_network_exactly(surrogate, nets, objective):
    # By construction (x + decoder(y0) - decoder(y0) = x), whatever the decoder's error: the
    # tiny surrogate's plain decoder reproduces few of these networks.
    cfg = dataclasses.replace(CFG, objective=objective)
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    out = search(surrogate, cfg, feats, cfg.lambdas, np.ones(len(nets)), np.full(len(nets), -1.0))
    start = np.asarray(out["candidates"])[:, :, 0]  # [N, L, T, 5]
    want = pipeline.canonical_matrices(nets, 16)
    for li in range(len(cfg.lambdas)):
        np.testing.assert_array_equal(start[:, li], want)
    results = pipeline.compress_batch(surrogate, nets, [str(i) for i in range(len(nets))], cfg)
    assert all(r.reconstructed_exactly for r in results)


def test_anchored_decoding_is_the_input_plus_the_decoders_edits(surrogate, nets):
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    out = search(surrogate, CFG, feats, CFG.lambdas, np.ones(len(nets)), np.full(len(nets), -1.0))
    plain = search(surrogate, dataclasses.replace(CFG, anchored=False), feats, CFG.lambdas,
                   np.ones(len(nets)), np.full(len(nets), -1.0))
    np.testing.assert_allclose(out["y"], plain["y"], rtol=1e-5, atol=1e-6)  # same walk
    dec0 = np.asarray(plain["decoded"])[:, :, :1]
    np.testing.assert_allclose(out["decoded"], feats[:, None, None] + plain["decoded"] - dec0,
                               rtol=1e-5, atol=1e-5)


def test_trust_region_keeps_the_walk_near_the_start(surrogate, nets):
    cfg = dataclasses.replace(CFG, step_size=5.0, trust_radius=0.05)
    feats = encode_matrices(np.stack([a.to_matrix(16) for a in nets]))
    out = search(surrogate, cfg, feats, cfg.lambdas, np.ones(len(nets)), np.full(len(nets), -1.0))
    y = np.asarray(out["y"], np.float64)
    y0 = y[:, :, :1]
    dist = np.linalg.norm(y - y0, axis=-1)
    limit = 0.05 * np.linalg.norm(y0, axis=-1)
    assert (dist <= limit * (1 + 1e-4) + 1e-6).all()


def test_search_config_refuses_settings_that_mean_nothing():
    with pytest.raises(ValueError, match="objective"):
        SearchConfig(objective="both")
    with pytest.raises(ValueError, match="anchored"):
        SearchConfig(objective="decoded", anchored=False)
    with pytest.raises(ValueError, match="trust_radius"):
        SearchConfig(trust_radius=0.0)


def test_reconstruction_rates_measure_the_start_of_both_decodings(tiny_surrogate_dir, tiny_archset,
                                                                   nets, tmp_path):
    from ac_jax.compress import reconstruction

    surrogate = load_surrogate(tiny_surrogate_dir)
    rates = reconstruction.reconstruction_rates(surrogate, nets)
    assert rates["num"] == len(nets)
    assert rates["anchored_exact_rate"] == 1.0  # by construction, measured on the search's path
    assert 0.0 <= rates["plain_exact_rate"] <= 1.0
    assert rates["plain_params_ratio_min"] <= rates["plain_params_ratio_median"] \
        <= rates["plain_params_ratio_max"]
    held = reconstruction.heldout_archs(surrogate, [tiny_archset])
    assert 0 < len(held) < 60  # the id-hash hold-out of the tiny archset's 60 records
    out = tmp_path / "rec.json"
    import importlib.util  # the script in-process: a subprocess would import JAX and compile anew

    spec = importlib.util.spec_from_file_location("reconstruction_script",
                                                  REPO / "bin/reconstruction.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--dataset", "tiny", "--surrogate", str(tiny_surrogate_dir), "--models",
                 "tinycnn", "--archset", str(tiny_archset), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["zoo"]["tinycnn"]["anchored_exact_rate"] == 1.0
    assert report["heldout_archset"]["num"] == len(held)


# ----------------------------------------------------------------------------- active learning


def test_acquisition_takes_the_highest_bound_under_the_size_limit(surrogate, nets):
    from ac_jax.compress import refine
    from ac_jax.compress.scoring import score_matrices_spread

    (result,) = pipeline.compress_batch(surrogate, nets[:1], ["n"], CFG)
    cands = result.candidates
    limit = int(np.median(cands.num_params))
    exclude = {cands[0].arch}
    chosen = refine.acquire(cands, surrogate, 3, limit, kappa=1.0, exclude=exclude)
    assert 0 < len(chosen) <= 3 and len({c.arch for c in chosen}) == len(chosen)
    assert all(c.num_params <= limit and c.arch not in exclude for c in chosen)
    mean, sd, _ = score_matrices_spread(surrogate, cands.rows)
    ucb = mean + sd  # one head: sd is 0 and the bound is the prediction
    np.testing.assert_allclose(sd, 0.0, atol=1e-7)
    eligible = [i for i in range(len(cands)) if cands.num_params[i] <= limit
                and cands[i].arch not in exclude]
    best = sorted(ucb[eligible], reverse=True)[: len(chosen)]
    got = [ucb[next(i for i in range(len(cands)) if cands[i] is c)] for c in chosen]
    np.testing.assert_allclose(got, best, rtol=1e-6)


def test_active_refinement_picks_the_best_trained_record_under_the_cap(surrogate, tiny_archset,
                                                                       tmp_path, fake_training):
    # Made-up accuracies (`fake_training`): the pick rule is what is tested here (the Pareto
    # refinement test above trains for real).
    from ac_jax.archset.store import ArchsetStore, load_arrays
    from ac_jax.compress import refine
    from configs import get_config
    from ac_jax.data import load

    cfg = get_config("tiny")
    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    cap = Constraint(max_params=arch.num_params // 2)
    (first,) = pipeline.compress_batch(surrogate, [arch], ["tiny"], CFG, cap)
    result = refine.refine(first, surrogate, cfg, CFG, cap, rounds=1, top=2, work_dir=tmp_path,
                           finetune_steps=50, dataset=load("synthetic"),
                           archset_path=tiny_archset, log=lambda s: None, acquisition="ucb",
                           pool=60)  # a tenth of the default pool: the same path, a tenth of the draw
    info, final = result.rounds
    # Under a cap the original's accuracy decides nothing: it is not trained.
    assert not any(t["original"] for t in info["trained"] + final["trained"])
    for t in info["trained"] + final["trained"]:
        assert t["num_params"] <= cap.max_params
    with ArchsetStore(tmp_path / "tiny" / "refine.sqlite", readonly=True) as store:
        refined = [r for r in store.records() if r.status == "ok"]
        # no network trained twice, none that the archset already holds
        assert len({r.arch for r in store.records()}) == len(store)
        num_refined = len(store)
    base = load_arrays(tiny_archset, max_len=16)
    archset = refine.archset_candidates(base)
    assert not {r.arch for r in refined} & {c.arch for c in archset}
    pool = [(r.mean_accuracy, r.arch) for r in refined if r.num_params <= cap.max_params]
    pool += [(c.measured_accuracy, c.arch) for c in archset if c.num_params <= cap.max_params]
    assert result.chosen.measured_accuracy == max(acc for acc, _ in pool)
    assert result.chosen.num_params <= cap.max_params
    # The proposals' ranking counts each trained network once, by its pre-training prediction.
    fresh = [t for t in info["trained"] + final["trained"] if t["fresh"]]
    assert len(fresh) == num_refined
    ranking = pipeline.report_dict(result, surrogate, {})["proposal_ranking"]
    assert ranking["count"] == sum(t["status"] == "ok" for t in fresh)
    if ranking["count"] > 1:
        assert -1 <= ranking["kendall_tau"] <= 1 and ranking["mae"] >= 0
    # Each trained entry keeps its seeds' accuracies, from which the label ceiling is estimated.
    assert all(len(t["seed_accuracies"]) == cfg.archset.seeds for t in fresh if t["status"] == "ok")
    if ranking["count"] > 2 and ranking["oracle_tau"] is not None:
        assert -1 <= ranking["oracle_tau"] <= 1


def test_fine_tuning_never_holds_out_the_refined_records(tiny_archset, tiny_surrogate_config,
                                                         tmp_path):
    from ac_jax.archset.store import load_arrays
    from ac_jax.surrogate.splits import holdout_mask
    from ac_jax.surrogate.train import train as train_surrogate

    arrays = load_arrays(tiny_archset, max_len=16)
    held = holdout_mask(arrays.idx, tiny_surrogate_config.holdout_fraction)
    assert held.any()
    keep = held.copy()  # force every would-be held-out record but one into training
    keep[np.flatnonzero(held)[0]] = False
    cfg = dataclasses.replace(tiny_surrogate_config, steps=250)
    outcome = train_surrogate(cfg, arrays, tmp_path / "s", {"dataset": "synthetic",
                              "input_shape": list(SHAPE), "num_classes": CLASSES},
                              progress=False, always_train=keep)
    assert outcome.metrics["num"] == 1


def test_active_refinement_never_retrains_a_failed_candidate(surrogate, tiny_archset, tmp_path,
                                                            monkeypatch):
    from ac_jax.archset.store import ArchsetStore
    from ac_jax.child import trainer as trainer_lib
    from ac_jax.compress import refine
    from configs import get_config
    from ac_jax.data import load

    calls = []

    def diverge(self, arch, seeds, init=None):  # every training fails
        calls.append(arch)
        return trainer_lib.TrainResult("diverged", "loss nan", (), (), 0.0, 0.0)

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train", diverge)
    monkeypatch.setattr(trainer_lib.ChildTrainer, "compile", lambda self, arch: (None, 0.0))
    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    cap = Constraint(max_params=arch.num_params - 1)
    (first,) = pipeline.compress_batch(surrogate, [arch], ["tiny"], CFG, cap)
    refine.refine(first, surrogate, get_config("tiny"), CFG, cap, rounds=3, top=2,
                  work_dir=tmp_path, finetune_steps=20, dataset=load("synthetic"),
                  archset_path=tiny_archset, log=lambda s: None, acquisition="ucb", pool=60)
    assert len(calls) == len(set(calls))  # a failed network is never picked again
    with ArchsetStore(tmp_path / "tiny" / "refine.sqlite", readonly=True) as store:
        assert len(store) == len(calls) and all(r.status == "diverged" for r in store.records())


def test_acquisition_pool_supplies_a_batch_when_the_search_proposes_nothing_small_enough(
        surrogate, tiny_archset, tmp_path, monkeypatch):
    from ac_jax.child import trainer as trainer_lib
    from ac_jax.compress import refine
    from configs import get_config
    from ac_jax.data import load

    calls = []

    def diverge(self, arch, seeds, init=None):  # fast: what is trained is all this test reads
        calls.append(arch)
        return trainer_lib.TrainResult("diverged", "loss nan", (), (), 0.0, 0.0)

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train", diverge)
    monkeypatch.setattr(trainer_lib.ChildTrainer, "compile", lambda self, arch: (None, 0.0))
    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    cap = Constraint(max_params=arch.num_params // 4)
    (first,) = pipeline.compress_batch(surrogate, [arch], ["tiny"], CFG, cap)
    first.candidates = []  # a search whose walk stayed above the size limit

    def run(pool, folder):
        return refine.refine(dataclasses.replace(first), surrogate, get_config("tiny"), CFG, cap,
                             rounds=1, top=3, work_dir=tmp_path / folder, finetune_steps=20,
                             dataset=load("synthetic"), archset_path=tiny_archset,
                             log=lambda s: None, acquisition="ucb", pool=pool, pool_seed=5)

    without = run(0, "no_pool")
    assert without.rounds[0]["trained"] == [] and not calls  # nothing to acquire
    with_pool = run(200, "pool")
    trained = [t for info in with_pool.rounds for t in info["trained"]]
    assert len(trained) == 6 and len(set(calls)) == 6  # both batches full, no network twice
    assert all(t["from_pool"] and t["num_params"] <= cap.max_params for t in trained)
    assert all(a != arch for a in calls)


def test_region_pool_is_deterministic_scored_and_within_the_limit(surrogate):
    from ac_jax.compress import refine

    arch = zoo.get("tinycnn", SHAPE, CLASSES)
    limit = arch.num_params // 3
    a = refine.region_pool(surrogate, arch, 100, seed=3, limit=limit)
    b = refine.region_pool(surrogate, arch, 100, seed=3, limit=limit)
    assert a and [c.arch for c in a] == [c.arch for c in b]
    assert all(c.num_params <= limit and 0 <= c.predicted_accuracy <= 1 for c in a)
    assert [c.arch for c in refine.region_pool(surrogate, arch, 100, seed=4, limit=limit)] != \
        [c.arch for c in a]
    assert refine.region_pool(surrogate, arch, 0, seed=3, limit=limit) == []


def test_proposal_ranking_reports_the_label_ceiling_of_the_proposals():
    def entry(predicted, seeds, fresh=True, original=False):
        return {"original": original, "status": "ok", "predicted": predicted,
                "trained": float(np.mean(seeds)), "fresh": fresh, "num_params": 1,
                "seed_accuracies": list(seeds)}

    # Seeds that agree exactly: a perfect predictor ranks perfectly, so the ceiling is 1.
    exact = [{"trained": [entry(0.1 * i, (0.5 + 0.1 * i, 0.5 + 0.1 * i)) for i in range(4)]
                         + [entry(0.9, (0.2, 0.2), original=True), entry(0.3, (0.6, 0.6), False)]}]
    out = pipeline.proposal_ranking(exact)
    assert out["count"] == 4 and out["kendall_tau"] == pytest.approx(1.0)
    assert out["oracle_tau"] == pytest.approx(1.0)
    # Seeds whose disagreement dwarfs the spread of the means: nothing to rank (ceiling 0).
    noisy = [{"trained": [entry(0.1 * i, (0.5 + 0.001 * i + 0.2, 0.5 + 0.001 * i - 0.2))
                          for i in range(5)]}]
    assert pipeline.proposal_ranking(noisy)["oracle_tau"] == 0.0
    # Rounds written before seeds were recorded: no ceiling.
    legacy = [{"trained": [{k: v for k, v in entry(0.1 * i, (0.5, 0.6 + 0.1 * i)).items()
                            if k != "seed_accuracies"} for i in range(4)]}]
    assert pipeline.proposal_ranking(legacy)["oracle_tau"] is None


def test_proposal_ranking_counts_pool_proposals_among_those_that_trained():
    def entry(predicted, pool, status="ok"):
        return {"original": False, "status": status, "predicted": predicted, "trained": predicted,
                "fresh": True, "num_params": 1, "seed_accuracies": [predicted, predicted],
                "from_pool": pool}

    rounds = [{"trained": [entry(0.1, True), entry(0.2, False), entry(0.3, True, status="failed")]},
              {"trained": [entry(0.4, True)]}]
    out = pipeline.proposal_ranking(rounds)
    # The failed pool proposal is in neither the count nor the pool share.
    assert out["count"] == 3 and out["from_pool"] == 2
    assert pipeline.proposal_ranking([])["from_pool"] == 0
