"""The evaluation protocol (validation split), the one trainer's options, N2N's budget and the
equal-budget study (bin/study.py) end to end on the tiny config."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest
from flax import serialization

from ac_jax.arch import zoo
from ac_jax.arch.json_spec import parse_json, to_json
from ac_jax.archset.store import ArchsetStore
from ac_jax.child import resume
from ac_jax.child import trainer as trainer_lib
from ac_jax.child.trainer import (
    ChildTrainer,
    Distillation,
    TrainOptions,
    TrainResult,
    TrainSchedule,
    to_device,
)
from ac_jax.data import load, protocol
from conftest import TEST_SEED, Interrupted, made_up_accuracy

SCHEDULE = TrainSchedule(epochs=1, batch_size=32, lr=0.01, eval_batch_size=128)


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


# --------------------------------------------------------------------------------------------
# Validation protocol
# --------------------------------------------------------------------------------------------


def test_validation_split_is_fixed_stratified_and_disjoint(synthetic):
    val = protocol.validation_indices(synthetic.train_y)
    assert len(val) == protocol.validation_size(len(synthetic.train_y)) == len(synthetic.train_y) // 10
    np.testing.assert_array_equal(val, protocol.validation_indices(synthetic.train_y))
    search, final = protocol.search_view(synthetic), protocol.final_view(synthetic)
    assert search.evaluation == "validation" and final.evaluation == "final"
    # Same training images in both views, none of them in the validation split.
    np.testing.assert_array_equal(search.train_x, final.train_x)
    assert len(search.train_y) + len(val) == len(synthetic.train_y)
    np.testing.assert_array_equal(search.test_x, synthetic.train_x[val])
    np.testing.assert_array_equal(final.test_x, synthetic.test_x)
    # Stratified: every class's share of the split is its share of the training set +- 1.
    counts = np.bincount(synthetic.train_y[val], minlength=synthetic.num_classes)
    expected = np.bincount(synthetic.train_y) * len(val) / len(synthetic.train_y)
    assert np.all(np.abs(counts - expected) <= 1)


def test_views_compose_and_refuse_to_mix(synthetic):
    search = protocol.search_view(synthetic)
    assert protocol.search_view(search) is search
    with pytest.raises(ValueError, match="already a 'validation' view"):
        protocol.final_view(search)
    assert protocol.validation_size(60_000) == 5_000  # Fashion-MNIST
    assert protocol.validation_size(50_000) == 5_000  # CIFAR
    with pytest.raises(ValueError, match="evaluation"):
        dataclasses.replace(synthetic, evaluation="dev")


def test_archset_records_are_validation_accuracies(synthetic, tmp_path):
    from ac_jax.archset.generate import archset_meta, generate
    from configs.tiny import get_config

    cfg = get_config()
    path = tmp_path / "a.sqlite"
    generate(cfg, 1, path, dataset=synthetic, progress=False)
    with ArchsetStore(path, readonly=True) as db:
        assert db.meta["evaluation"] == "validation"
        assert db.meta == json.loads(json.dumps(
            archset_meta(cfg, synthetic.input_shape, synthetic.num_classes)))


# --------------------------------------------------------------------------------------------
# The trainer's options
# --------------------------------------------------------------------------------------------


def test_kept_weights_warm_start_and_distillation(synthetic):
    from ac_jax.baselines.common import evaluate

    arch = zoo.tinycnn()
    data = to_device(protocol.search_view(synthetic), SCHEDULE)
    seeds = [TEST_SEED, TEST_SEED + 1]
    kept = ChildTrainer(data, SCHEDULE, 2, TrainOptions(keep_weights=True)).train(arch, seeds)
    assert kept.ok and len(kept.variables) == 2
    for acc, variables in zip(kept.seed_accuracies, kept.variables):
        # The trainer's accuracy is that of the weights it returns (a second evaluation
        # program may flip one float-rounding argmax tie at most).
        assert abs(evaluate(arch, variables, data, SCHEDULE) - acc) <= 1 / data.num_test + 1e-9
    # A warm start with a vanishing learning rate leaves the given weights where they were.
    still = dataclasses.replace(SCHEDULE, lr=1e-12)
    warm = ChildTrainer(data, still, 1, TrainOptions(warm_start=True, keep_weights=True))
    again = warm.train(arch, [TEST_SEED + 7], init=kept.variables[0])
    np.testing.assert_allclose(again.variables[0]["params"]["Conv_0"]["kernel"],
                               kept.variables[0]["params"]["Conv_0"]["kernel"], atol=1e-6)
    with pytest.raises(ValueError, match="init"):
        warm.train(arch, [0])
    # KD with alpha = 0 is cross-entropy on the labels: the same training as without a teacher.
    ce = ChildTrainer(data, SCHEDULE, 1).train(arch, seeds[:1])
    kd = ChildTrainer(data, SCHEDULE, 1, TrainOptions(distill=Distillation(arch, alpha=0.0)),
                      kept.variables[1]).train(arch, seeds[:1])
    np.testing.assert_allclose(kd.epoch_losses, ce.epoch_losses, rtol=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        ChildTrainer(data, SCHEDULE, 1, TrainOptions(distill=Distillation(arch)))


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def _study(tmp_path, **changes):
    from ac_jax.study import StudyConfig, final_schedule
    from configs.tiny import get_config

    cfg = get_config()
    cfg = cfg.replace(archset=dataclasses.replace(cfg.archset, path=str(tmp_path / "none.sqlite")))
    base = dict(cfg=cfg, model="tinycnn", target_ratio=4, budget=8, repeats=2,
                references=(), final_schedule=final_schedule(cfg, 1), rounds=1, refine_top=1,
                refine_finetune_steps=20, surrogate_steps=40, seed=TEST_SEED,
                acquisition_pool=60)  # a tenth of the default pool: drawing 600 took ~20 s here
    base.update(changes)
    return StudyConfig(**base)


def test_study_end_to_end_resumes_without_duplicates(synthetic, fake_training, tmp_path):
    from ac_jax.study import run_study

    study = _study(tmp_path)
    out = tmp_path / "study"
    fake_training["stop_after"] = 30  # killed part-way through the searches
    with pytest.raises(Interrupted):
        run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    done_before = len(fake_training["calls"])
    fake_training["stop_after"] = None
    summary = run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    calls = fake_training["calls"]
    # Resumed: nothing trained twice within any store, and the stores hold every training.
    stores = sorted(out.glob("*.sqlite")) + sorted(out.glob("work/*/refine/*/refine.sqlite"))
    total = 0
    for path in stores:
        with ArchsetStore(path, readonly=True) as db:
            records = db.records()
        assert len(records) == len({r.arch for r in records}), path
        total += len(records)
    assert total == len(calls) and done_before == 30
    budget, max_params = study.budget, summary["constraint"]["max_params"]
    assert max_params == zoo.tinycnn().num_params // 4
    assert set(summary["methods"]) == {"ac_jax", "ac_jax_rounds", "random_search", "n2n"}
    for method, m in summary["methods"].items():
        assert [r["repeat"] for r in m["repeats"]] == [0, 1]
        for r in m["repeats"]:
            assert r["trained_archs"] <= budget, method
            if r["within_constraint"]:
                assert r["params"] <= max_params and r["test_accuracy"] is not None
            else:
                assert r["test_accuracy"] is None
    for r in summary["methods"]["random_search"]["repeats"]:
        assert r["trained_archs"] == budget  # exactly N under the constraint
        # The pick is the best validation accuracy among its own trainings (fake: per arch).
        assert r["val_accuracy"] == pytest.approx(made_up_accuracy(parse_json(r["spec"])))
    for r in summary["methods"]["ac_jax"]["repeats"]:
        assert r["trained_archs"] == budget  # the archset subset is the whole spend
    for repeat in (0, 1):  # N2N's store: its teacher's proxy run first, then students
        with ArchsetStore(out / f"n2n_r{repeat}.sqlite", readonly=True) as db:
            records = sorted(db.records(), key=lambda r: r.idx)
        assert records[0].source == "teacher" and len(records) <= budget
        assert summary["methods"]["n2n"]["repeats"][repeat]["trained_archs"] == len(records)
    seeds = {r["search_seed"] for r in summary["methods"]["random_search"]["repeats"]}
    assert seeds == {TEST_SEED, TEST_SEED + 1}
    assert (out / "summary.md").read_text().count("| random search |") == 1
    for method in ("ac_jax", "ac_jax_rounds"):  # the surrogate's ranking, per repeat
        for r in summary["methods"][method]["repeats"]:
            assert r["surrogate"]["holdout_records"] >= 0
            most = study.refine_trainings if method == "ac_jax_rounds" else 0
            assert 0 <= r["surrogate"]["proposals"] <= most
    assert "| surrogate of |" in (out / "summary.md").read_text()
    assert (out / "anytime.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["original"]["params"] == 1876
    # A second rerun trains nothing.
    calls.clear()
    run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    assert calls == []

    # The amortised case: a second network compressed with repeat 0's archset and surrogate.
    from ac_jax.study import run_amortised

    other = tmp_path / "other.json"
    other.write_text(to_json(zoo.tinycnn().replace_layers(
        [layer._replace(o=2 * layer.o) if layer.t == 1 else layer
         for layer in zoo.tinycnn().layers])))
    amortised = run_amortised(study, [str(other)], out, dataset=synthetic, progress=False,
                              log=lambda *a: None)
    first, second = amortised["networks"]
    assert first["model"] == "tinycnn" and second["params"] > first["params"]
    shared = amortised["shared_archset_records"]
    assert shared == budget - study.refine_trainings
    for net in amortised["networks"]:
        # Active rounds train only untrained candidates under the cap: maybe none at all.
        assert 0 <= net["ac_jax"]["extra_trainings"] <= study.refine_trainings
        assert net["random_search"]["trainings"] == budget
    totals = amortised["total_trainings"]
    assert totals["ac_jax"] == shared + sum(n["ac_jax"]["extra_trainings"]
                                            for n in amortised["networks"])
    assert totals["random_search"] == 2 * budget
    assert "| tinycnn |" in (out / "amortised.md").read_text()


def test_study_refuses_impossible_settings(tmp_path):
    with pytest.raises(ValueError, match="no archset"):
        _study(tmp_path, budget=3, rounds=2, refine_top=2)
    with pytest.raises(ValueError, match="unknown method"):
        _study(tmp_path, methods=("grid",))
    with pytest.raises(ValueError, match="ratio"):
        _study(tmp_path, target_ratio=1.0)


def test_report_arithmetic():
    from ac_jax.study import report

    assert report.relative_improvement(
        [{"repeat": 0, "test_accuracy": 0.9}, {"repeat": 1, "test_accuracy": None}],
        [{"repeat": 0, "test_accuracy": 0.8}, {"repeat": 1, "test_accuracy": 0.8}],
    ) == [pytest.approx(12.5)]
    curve = report.best_so_far([None, 0.5, 0.4, None, 0.7], 7)
    assert np.isnan(curve[0])
    np.testing.assert_allclose(curve[1:], [0.5, 0.5, 0.5, 0.7, 0.7, 0.7])


def test_ac_jax_settings_are_pinned_and_the_issue_20_folders_still_resume(tmp_path):
    from ac_jax.study.config import LEGACY_AC_JAX, StudyConfig
    from ac_jax.study.runner import _check_study_meta, study_meta

    legacy = _study(tmp_path, plain_decoding=True, acquisition="pareto")
    assert legacy.ac_jax_settings() == LEGACY_AC_JAX
    assert "ac_jax" not in study_meta(legacy)  # what issue-20 folders hold: nothing to add
    new = _study(tmp_path)
    assert study_meta(new)["ac_jax"]["acquisition"] == "ucb"
    # The acquisition's region pool is pinned; folders made before it (no pool) hold no key.
    assert study_meta(new)["ac_jax"]["acquisition_pool"] == 60
    assert StudyConfig.__dataclass_fields__["acquisition_pool"].default == 600  # the default
    assert "acquisition_pool" not in study_meta(_study(tmp_path, acquisition_pool=0))["ac_jax"]
    out = tmp_path / "s"
    out.mkdir()
    _check_study_meta(legacy, out)
    _check_study_meta(legacy, out)  # same settings: resumes
    with pytest.raises(ValueError, match="ac_jax"):
        _check_study_meta(new, out)
    with pytest.raises(ValueError, match="acquisition"):
        _study(tmp_path, acquisition="greedy")
    # A surrogate with several accuracy heads is pinned too (issue-20 folders had one head).
    assert "surrogate_heads" not in study_meta(legacy)
    cfg = legacy.cfg.replace(surrogate=dataclasses.replace(
        legacy.cfg.surrogate, arch=dataclasses.replace(legacy.cfg.surrogate.arch, ensemble=5)))
    heads = dataclasses.replace(legacy, cfg=cfg)
    assert study_meta(heads)["surrogate_heads"] == 5
    with pytest.raises(ValueError, match="surrogate_heads"):
        _check_study_meta(heads, out)
    assert "surrogate_losses" not in study_meta(heads)
    ranked = dataclasses.replace(legacy, cfg=legacy.cfg.replace(surrogate=dataclasses.replace(
        legacy.cfg.surrogate, rank_weight=1.0, noop_augment=2)))
    assert study_meta(ranked)["surrogate_losses"] == {"rank_weight": 1.0, "noop_augment": 2}
    with pytest.raises(ValueError, match="surrogate_losses"):
        _check_study_meta(ranked, out)


def test_archset_subset_draws_the_region_share_from_region_records(tmp_path):
    from ac_jax.arch.sampler import SamplerConfig, sample, sample_region
    from ac_jax.archset.store import Record
    from ac_jax.study.methods import archset_subset

    shape, classes = (12, 12, 1), 4
    base = tmp_path / "base.sqlite"
    region = tmp_path / "region.sqlite"
    archs, _ = sample(20, shape, classes, seed=3, cfg=SamplerConfig(max_len=12, max_params=40_000,
                                                                   max_macs=400_000))
    near = sample_region(zoo.tinycnn(), 20, seed=0, min_ratio=8.0)
    meta = {"input_shape": list(shape), "num_classes": classes, "dataset": "synthetic"}
    for path, items, src, offset in ((base, archs, "appendix9", 0),
                                     (region, near, "region:tinycnn", 100_000)):
        with ArchsetStore(path, meta) as db:
            for i, arch in enumerate(items):
                db.add(Record(offset + i, arch, src, arch.num_params, arch.macs, "ok", "",
                              (0.5,), 0.5, ((1.0,),), 0.0, 0.0))
    arrays, chosen = archset_subset([base, region], 10, 0, 16, region_share=0.7)
    assert len(chosen) == 10 and sum(r.source.startswith("region:") for r in chosen) == 7
    assert sorted(arrays.idx.tolist()) == sorted(r.idx for r in chosen)
    _, uniform = archset_subset([base, region], 40, 0, 16)
    assert len(uniform) == 40  # everything, from both files
    again, _ = archset_subset([base, region], 10, 0, 16, region_share=0.7)
    np.testing.assert_array_equal(again.idx, arrays.idx)  # deterministic per seed


def test_random_search_can_draw_its_neighbours_from_the_region_sampler():
    from ac_jax.arch.sampler import SamplerConfig
    from ac_jax.baselines.random_search import sample_under_budget

    net = zoo.tinycnn()
    cap = net.num_params // 4
    cfg = SamplerConfig(max_len=12, max_params=40_000, max_macs=400_000)
    region = sample_under_budget(12, net.input_shape, net.num_classes, cap, cfg, net, 0.5, 1,
                                 neighbourhood_kind="region")
    edits = sample_under_budget(12, net.input_shape, net.num_classes, cap, cfg, net, 0.5, 1)
    assert all(a.num_params <= cap for a, _ in region + edits)
    assert sum(src == "neighbourhood" for _, src in region) == 6
    assert region != edits  # another sampler, other neighbours
    assert [a for a, s in region if s == "appendix9"] == [a for a, s in edits if s == "appendix9"]


def test_thin_reference_trains_the_thinned_original_like_a_pick(synthetic, fake_training,
                                                               monkeypatch, tmp_path):
    from ac_jax.baselines import common
    from ac_jax.study import run_study

    def no_teacher(*args, **kwargs):
        raise AssertionError("the thin reference needs no trained original")

    monkeypatch.setattr(common, "train_network", no_teacher)
    study = _study(tmp_path, methods=("random_search",), repeats=1, references=("thin",))
    out = tmp_path / "study"
    summary = run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    row = summary["references"]["thin"]
    thin = common.width_scaled_to(zoo.tinycnn(), summary["constraint"]["max_params"])
    assert row["params"] == thin.num_params <= summary["constraint"]["max_params"]
    assert row["test_accuracy"] == pytest.approx(made_up_accuracy(thin))
    assert len(row["test_seed_accuracies"]) == study.final_seeds
    with ArchsetStore(out / "final.sqlite", readonly=True) as db:  # stored like the picks
        assert [r.source for r in db.records() if r.arch == thin] == ["thin_reference"]
    assert "| uniform thinning, from scratch (reference, 2 seeds) |" in (
        out / "summary.md").read_text()
    fake_training["calls"].clear()  # a rerun reads the row back, training nothing
    assert run_study(study, out, dataset=synthetic, progress=False,
                     log=lambda *a: None)["references"] == summary["references"]
    assert fake_training["calls"] == []
    with pytest.raises(ValueError, match="references: pruning, kd, thin$"):  # names the optional
        _study(tmp_path, references=("thinner",))


def test_final_trainings_batch_on_a_runner_once_per_network(synthetic, fake_training, tmp_path):
    from ac_jax.study.runner import FinalTrainer

    class InProcessRunner:  # stands in for `distributed.RayRunner`
        batches = []

        def run(self, dataset, schedule, num_seeds, items, on_result, progress=None,
                data_seed=0):
            items = list(items)
            self.batches.append([key for key, _, _ in items])
            trainer = trainer_lib.ChildTrainer(dataset, schedule, num_seeds)
            for key, arch, seeds in reversed(items):  # completion order is not submission's
                on_result(key, arch, trainer.train(arch, seeds))

    finals = FinalTrainer(_study(tmp_path), synthetic, tmp_path)
    small, big = zoo.tinycnn(), zoo.tinycnn().replace_layers(
        [layer._replace(o=2 * layer.o) if layer.t == 1 else layer for layer in zoo.tinycnn().layers])
    finals.train(small, "original", log=lambda *a: None)
    runner = InProcessRunner()
    items = [(small, "original"), (big, "a_r0"), (big, "b_r0")]  # one pick found twice
    finals.prefetch(items, runner, log=lambda *a: None)
    assert runner.batches == [["a_r0"]]
    fake_training["calls"].clear()
    assert finals.train(big, "b_r0", log=lambda *a: None).mean_accuracy == made_up_accuracy(big)
    assert fake_training["calls"] == []  # read from the store
    finals.prefetch(items, runner, log=lambda *a: None)  # a rerun submits nothing
    assert runner.batches == [["a_r0"]]
    finals.prefetch(items, None, log=lambda *a: None)  # no runner: `train` trains one by one
    finals.options = trainer_lib.TrainOptions(
        distill=trainer_lib.Distillation(small, temperature=4.0, alpha=0.9))
    wider = small.replace_layers([layer._replace(o=3 * layer.o) if layer.t == 1 else layer
                                  for layer in small.layers])  # not trained yet
    finals.prefetch([(wider, "c_r0")], runner, log=lambda *a: None)
    assert runner.batches == [["a_r0"]]  # the runner cannot distil: `train` trains them here


def test_fidelity_stage_picks_on_the_longer_schedule_and_resumes(synthetic, fake_training,
                                                                  monkeypatch, tmp_path):
    from ac_jax.study import run_study
    from ac_jax.study.fidelity import FidelityConfig, run_fidelity

    study = _study(tmp_path, repeats=1, methods=("ac_jax_rounds", "random_search", "n2n"))
    out = tmp_path / "study"
    fid = FidelityConfig(top=3, epochs=3, seeds=1)  # 3 epochs: no other schedule of the study
    with pytest.raises(ValueError, match="no finished study"):
        run_fidelity(study, out, fid, dataset=synthetic, log=lambda *a: None)
    run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    proxy_train, fidelity_calls = trainer_lib.ChildTrainer.train, []

    def train(self, arch, seeds, init=None):  # the longer schedule reverses the proxy's order
        result = proxy_train(self, arch, seeds, init)
        if self.schedule.epochs != fid.epochs:
            return result
        fidelity_calls.append(arch)
        return dataclasses.replace(result, seed_accuracies=(1 - made_up_accuracy(arch),) * len(seeds))

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train", train)
    calls = fake_training["calls"]
    calls.clear()
    result = run_fidelity(study, out, fid, dataset=synthetic, log=lambda *a: None)
    max_params = result["constraint"]["max_params"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(result["methods"]) == {"ac_jax_rounds", "random_search", "n2n"}
    for method, m in result["methods"].items():
        (row,) = m["repeats"]
        cands = row["candidates"]
        assert 1 <= len(cands) <= fid.top, method
        proxies = [c["proxy_val_accuracy"] for c in cands]
        assert proxies == sorted(proxies, reverse=True)  # the search's best proxy records
        assert all(c["params"] <= max_params for c in cands)
        # Picked on the fidelity accuracy, which here ranks them backwards: the last one.
        assert [c["spec_is_pick"] for c in cands] == [False] * (len(cands) - 1) + [True]
        assert row["pick"]["changed"] == (len(cands) > 1)
        pick = parse_json(row["pick"]["spec"])
        assert row["pick"]["test_accuracy"] == pytest.approx(made_up_accuracy(pick))  # final run
        assert row["search_pick"]["test_accuracy"] == summary["methods"][method]["repeats"][0][
            "test_accuracy"]
        if method == "random_search":  # its top-1 is its own pick
            assert cands[0]["proxy_val_accuracy"] == pytest.approx(
                row["search_pick"]["val_accuracy"])
    with ArchsetStore(out / "fidelity_e3x1.sqlite", readonly=True) as db:
        records = db.records()
    assert len(records) == len({r.arch for r in records}) == len(fidelity_calls)
    assert 0 < result["cost"]["fraction_of_budget"]
    assert "| random search |" in (out / "fidelity_top3_e3x1.md").read_text()
    calls.clear()  # a rerun reads every training from its store
    assert run_fidelity(study, out, fid, dataset=synthetic, log=lambda *a: None)["methods"] == \
        result["methods"]
    assert calls == []
    with pytest.raises(ValueError, match="top, epochs and seeds"):
        FidelityConfig(top=0)


def test_long_final_schedule_retrains_the_fixed_picks_original_first_and_resumes(
        synthetic, fake_training, monkeypatch, tmp_path):
    from ac_jax.study import run_study
    from ac_jax.study.long_final import LongFinalConfig, run_long_final

    # Listed against the stage's order (random search's picks before N2N's); ac_jax's searches
    # are left out for the suite's time: the order and the stores are what is tested here.
    study = _study(tmp_path, repeats=2, methods=("n2n", "random_search"))
    out = tmp_path / "study"
    lf = LongFinalConfig(epochs=4, seeds=1, chunk_epochs=3)  # 4 epochs: no other schedule here
    with pytest.raises(ValueError, match="no finished study"):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="no fidelity_top3_e2x2.json"):
        run_long_final(study, out, dataclasses.replace(lf, picks="fidelity_top3_e2x2"),
                       dataset=synthetic, log=lambda *a: None)
    summary = json.loads((out / "summary.json").read_text())
    calls, checkpoints = [], []

    def long_accuracy(arch):  # the longer schedule's made-up outcome: not the short one's
        return 0.5 + 0.4 * (zlib.crc32(to_json(arch).encode()) % 1000) / 1000

    def train_resumable(self, arch, seeds, checkpoint, chunk_epochs, init=None, log=print,
                        remove_checkpoint=True):
        assert (self.schedule.epochs, chunk_epochs, remove_checkpoint) == (4, 3, False)
        assert self.schedule.lr_decay_epochs == (2,)  # the recipe's decay at 60%, rounded
        assert self.data.evaluation == "final"  # the test set: picks are fixed, this reports
        if len(calls) == 2 and kill["now"]:  # killed after its first stretch's checkpoint
            resume.save(checkpoint, {}, resume.Progress({"w": np.zeros(2, np.float32)}, 3,
                                                        np.ones((1, 3), np.float32), 7.0))
            checkpoints.append(checkpoint)
            raise Interrupted
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"state")  # as a real one leaves it, for the store to discard
        checkpoints.append(checkpoint)
        calls.append(arch)
        return TrainResult("ok", "", (long_accuracy(arch),) * len(seeds), ((1.0,) * 4,) *
                           len(seeds), 0.0, 1.0)

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train_resumable", train_resumable)
    kill = {"now": True}
    with pytest.raises(Interrupted):  # killed during its third training
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    partial = json.loads((out / "long_final_e4x1.json").read_text())
    assert partial["original"]["status"] == "ok" and partial["pending"] > 0
    # Killed again at once: the report written as the rerun starts shows the checkpoint's progress.
    with pytest.raises(Interrupted):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    partial = json.loads((out / "long_final_e4x1.json").read_text())
    started = [(f"{m}_r{r['repeat']}", r) for m, v in partial["methods"].items()
               for r in v["repeats"] if "checkpointed_epochs" in r]
    assert len(started) == 1  # the killed training, the stage's third
    label, killed = started[0]
    assert (killed["status"], killed["checkpointed_epochs"],
            killed["checkpoint_train_seconds"]) == ("pending", 3, 7.0)
    text = (out / "long_final_e4x1.md").read_text()
    assert f"(in progress: {label} 3 of 4 epochs)" in text
    assert "pending (3 epochs checkpointed)" in text
    original = zoo.get("tinycnn", synthetic.input_shape, synthetic.num_classes)
    first = parse_json(summary["methods"]["random_search"]["repeats"][0]["spec"])
    assert calls[0] == original and calls[1] == first  # the original, then the stage's order
    kill["now"] = False
    result = run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    picks = {m: [parse_json(r["spec"]) for r in summary["methods"][m]["repeats"]
                 if r["spec"] and r["within_constraint"]] for m in study.methods}
    distinct = {original, *picks["n2n"], *picks["random_search"]}
    assert len(calls) == len(set(calls)) == len(distinct)  # each network trained once
    assert not any(c.exists() for c in checkpoints)  # discarded once stored
    assert result["pending"] == 0
    assert result["original"]["test_accuracy"] == pytest.approx(long_accuracy(original))
    assert result["original"]["study_test_accuracy"] == summary["original"]["test_accuracy"]
    # One seed here against the study's seeds: the like-for-like study figure is seed 0's.
    assert study.final_seeds > lf.seeds
    assert result["original"]["study_same_seeds_accuracy"] == pytest.approx(
        summary["original"]["test_seed_accuracies"][0])
    for method in study.methods:
        rows = result["methods"][method]["repeats"]
        assert [r["study_test_accuracy"] for r in rows] == [
            r["test_accuracy"] for r in summary["methods"][method]["repeats"]]
        assert [r["study_same_seeds_accuracy"] for r in rows] == pytest.approx(
            [r["test_seed_accuracies"][0] for r in summary["methods"][method]["repeats"]])
        assert [r["test_accuracy"] for r in rows] == pytest.approx(
            [long_accuracy(a) for a in picks[method]])
    assert list(result["methods"]) == ["random_search", "n2n"]
    assert "| random search |" in (out / "long_final_e4x1.md").read_text()
    # The lengths plot: the study's schedule (same seed) and this length, per fixed network.
    from ac_jax.study import lengths

    curves = lengths.collect(out, "search", 1)
    study_epochs = summary["final_schedule"]["epochs"]
    assert curves["lengths"] == sorted({study_epochs, 4})
    assert curves["original"] == pytest.approx({
        study_epochs: summary["original"]["test_seed_accuracies"][0],
        4: long_accuracy(original)})
    for method in study.methods:
        got = curves["methods"][method]
        for r, arch in zip(result["methods"][method]["repeats"], picks[method]):
            assert got[r["repeat"]][4] == pytest.approx(long_accuracy(arch))
    assert (out / "lengths_search_x1.png").stat().st_size > 0
    assert lengths.collect(out, "fidelity_top3_e2x2", 1)["lengths"] == []  # other picks: none
    calls.clear()  # a rerun reads every training from its store
    assert run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)["methods"] \
        == result["methods"]
    assert calls == []
    with pytest.raises(ValueError, match="chunk_epochs"):
        LongFinalConfig(chunk_epochs=0)


def test_distilled_long_final_learns_from_one_stored_teacher_and_refuses_a_wrong_one(
        synthetic, fake_training, monkeypatch, tmp_path):
    import jax

    from ac_jax.child.model import init_variables
    from ac_jax.study import lengths, run_study, teacher
    from ac_jax.study.long_final import LongFinalConfig, run_long_final

    study = _study(tmp_path, repeats=2, methods=("random_search",))
    out = tmp_path / "study"
    run_study(study, out, dataset=synthetic, progress=False, log=lambda *a: None)
    summary = json.loads((out / "summary.json").read_text())
    lf = LongFinalConfig(epochs=4, seeds=1, chunk_epochs=3, distill=True)
    original = zoo.get("tinycnn", synthetic.input_shape, synthetic.num_classes)
    picks = [parse_json(r["spec"]) for r in summary["methods"]["random_search"]["repeats"]
             if r["spec"] and r["within_constraint"]]
    calls = []  # (arch, its teacher's arch or None, the teacher's variables, weights kept)

    def initialised(arch, seed):  # real shapes, no training
        v = init_variables(arch, jax.random.key(seed))
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    def outcome(arch, distilled):  # made up; the distilled figure differs from the plain one
        return 0.5 + 0.4 * (zlib.crc32(to_json(arch).encode()) % 1000) / 1000 + 0.01 * distilled

    def train_resumable(self, arch, seeds, checkpoint, chunk_epochs, init=None, log=print,
                        remove_checkpoint=True):
        assert self.data.evaluation == "final" and remove_checkpoint is False
        if kill["at"] is not None and len(calls) == kill["at"]:
            raise Interrupted
        distill = self.options.distill
        calls.append((arch, distill and distill.teacher, self.teacher_variables,
                      self.options.keep_weights))
        kept = tuple(initialised(arch, s) for s in seeds) if self.options.keep_weights \
            else None
        return TrainResult("ok", "", (outcome(arch, distill is not None),) * len(seeds),
                           ((1.0,) * 4,) * len(seeds), 0.0, 2.0, kept)

    monkeypatch.setattr(trainer_lib.ChildTrainer, "train_resumable", train_resumable)
    kill = {"at": 1}  # killed as the first student starts: the teacher is already stored
    with pytest.raises(Interrupted):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    stored = out / "teacher_e4.msgpack"
    assert stored.is_file() and calls[0][0] == original and calls[0][1:] == (None, None, True)
    kill["at"] = None
    result = run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    # The teacher trained once (the rerun read its file); then the picks in order, and the
    # original as its own student last; every student learnt from the stored teacher.
    assert [c[0] for c in calls] == [original, *dict.fromkeys(picks), original]
    kept_teacher = initialised(original, teacher.SEED)
    for arch, teacher_arch, variables, keep in calls[1:]:
        assert teacher_arch == original and not keep
        same = jax.tree_util.tree_map(np.array_equal, variables, kept_teacher)
        assert all(jax.tree_util.tree_leaves(same))
    assert result["pending"] == 0
    assert result["original"]["test_accuracy"] == pytest.approx(outcome(original, False))
    kd = result["distill"]
    assert (kd["temperature"], kd["alpha"], kd["teacher_seed"]) == (4.0, 0.9, 0)
    assert kd["original_distilled"]["test_accuracy"] == pytest.approx(outcome(original, True))
    assert [r["test_accuracy"] for r in result["methods"]["random_search"]["repeats"]] == \
        pytest.approx([outcome(a, True) for a in picks])
    with ArchsetStore(out / "final_e4x1_kd.sqlite", readonly=True) as db:
        assert db.meta["distill"]["alpha"] == 0.9
    text = (out / "long_final_e4x1_kd.md").read_text()
    assert "distilled from the original" in text and "born again" in text
    # The lengths plot is about plain schedules: a distilled report is not on it.
    assert lengths.collect(out, "search", 1)["lengths"] == []
    assert not list(out.glob("lengths_*.png"))

    # A damaged or foreign teacher file stops the stage with a message; nothing is retrained.
    calls.clear()
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable teacher file"):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    info = json.loads(serialization.msgpack_restore(good)["info"])
    teacher.write(stored, kept_teacher, {**info, "train_images": 7})
    with pytest.raises(ValueError, match="other settings .*train_images"):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    teacher.write(stored, initialised(picks[0], 0), info)
    with pytest.raises(ValueError, match="not the original's"):
        run_long_final(study, out, lf, dataset=synthetic, log=lambda *a: None)
    assert calls == []
    with pytest.raises(ValueError, match="temperature"):
        LongFinalConfig(distill=True, temperature=0)
