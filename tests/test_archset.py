"""The archset: kill -9 and resume, shards and merging, meta checks, arrays, plan, summary, plots.

Only the kill/resume test trains for real (3 tiny architectures in two `bin/make_archset.py`
subprocesses); everything else uses hand-built `Record`s or a fake trainer patched into
`generate`, so the bookkeeping is tested without XLA compiles.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau
import pytest

from ac_jax import cli
from ac_jax.arch import shapes
from ac_jax.arch.spec import Arch
from ac_jax.archset import generate, report
from ac_jax.archset.store import (
    ArchsetMismatchError,
    ArchsetStore,
    Record,
    arch_key,
    load_arrays,
)
from ac_jax.child.trainer import TrainResult
from configs import get_config
from ac_jax.data import load

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bin" / "make_archset.py"
TINY_SHAPE, TINY_CLASSES = (12, 12, 1), 4
KILL_NUM = 3


@pytest.fixture(scope="module")
def cfg():
    return get_config("tiny")


@pytest.fixture(scope="module")
def meta(cfg):
    return generate.archset_meta(cfg, TINY_SHAPE, TINY_CLASSES)


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic")


def tiny_plan(cfg, num):
    return generate.plan(cfg.archset, TINY_SHAPE, TINY_CLASSES, num)


def fake_accuracies(arch: Arch, num_seeds: int) -> tuple[float, ...]:
    base = 0.3 + (sum(layer.o for layer in arch.layers) % 50) / 100
    return tuple(round(base + 0.01 * s, 4) for s in range(num_seeds))


def make_record(planned, status="ok", worker="hand") -> Record:
    info = shapes.analyze(planned.arch)
    accs = fake_accuracies(planned.arch, 2) if status == "ok" else ()
    return Record(
        idx=planned.idx,
        arch=planned.arch,
        source=planned.source,
        num_params=info.num_params,
        macs=info.macs,
        status=status,
        reason="" if status == "ok" else "out of memory: test",
        seed_accuracies=accs,
        mean_accuracy=float(np.mean(accs)) if accs else None,
        epoch_losses=tuple((1.5, 1.0) for _ in accs),
        compile_seconds=1.0,
        train_seconds=0.5,
        worker=worker,
        finished_at=1000.0 + planned.idx,
    )


def fill(path, meta, planned_archs, **kwargs) -> None:
    with ArchsetStore(path, meta) as store:
        for planned in planned_archs:
            assert store.add(make_record(planned, **kwargs))


class FakeTrainer:
    """Stands in for `ChildTrainer` in `generate`: instant, deterministic, no XLA."""

    fail: set = set()  # architectures reported as out of memory
    broken: set = set()  # architectures whose training hits a bug (raises)
    trained: list = []

    def __init__(self, data, schedule, num_seeds):
        self.num_seeds = num_seeds

    def compile(self, arch):
        return None, 0.001

    def train(self, arch, seeds):
        FakeTrainer.trained.append(arch)
        if arch in FakeTrainer.broken:
            raise TypeError("a bug in the training code")
        if arch in FakeTrainer.fail:
            return TrainResult("oom", "out of memory: fake", (), (), 0.0, 0.0)
        accs = fake_accuracies(arch, len(seeds))
        return TrainResult("ok", "", accs, tuple((1.2,) for _ in seeds), 0.001, 0.002)


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(generate, "to_device", lambda dataset, schedule, seed=0: None)
    monkeypatch.setattr(generate, "ChildTrainer", FakeTrainer)
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda path=None: None)
    monkeypatch.setattr(FakeTrainer, "fail", set())
    monkeypatch.setattr(FakeTrainer, "broken", set())
    monkeypatch.setattr(FakeTrainer, "trained", [])
    return FakeTrainer


@pytest.fixture(scope="module")
def make_archset_main():
    spec = importlib.util.spec_from_file_location("make_archset_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# ------------------------------------------------------------------------------------------
# 1. kill -9 in the middle of a real run, then resume
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Runs make_archset, SIGKILLs it while it trains its second architecture (one record
    stored), reruns it to completion.

    The first run imports `_hang_in_second_training`, which makes the second training hang
    after saying so in a marker file: the kill lands mid-run by construction, whatever the
    speed of the machine (a kill timed by polling could miss a fast run's end).
    """
    tmp = tmp_path_factory.mktemp("kill")
    out = tmp / "a.sqlite"
    marker = tmp / "hanging"
    env = dict(os.environ, AC_JAX_COMPILE_CACHE=str(tmp / "xla"),
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    args = ["--dataset", "tiny", "--num", str(KILL_NUM), "--out", str(out), "--quiet",
            "--no-plots"]
    hanging = ("import runpy, sys, _hang_in_second_training; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    with open(tmp / "first.log", "wb") as log:
        first = subprocess.Popen([sys.executable, "-c", hanging, str(SCRIPT), *args],
                                 stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(env, AC_JAX_TEST_HANG_MARKER=str(marker)), cwd=tmp)
        deadline = time.monotonic() + 300
        try:
            while not marker.exists():
                if first.poll() is not None:
                    pytest.fail(f"first run exited ({first.returncode}) before its second "
                                "training:\n" + (tmp / "first.log").read_text())
                if time.monotonic() > deadline:
                    pytest.fail("the first run did not reach its second training in 300 s")
                time.sleep(0.05)
            os.kill(first.pid, signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    with ArchsetStore(out, readonly=True) as store:
        before = {r.idx: r for r in store.records()}
    second = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                            env=env, cwd=tmp, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    return out, before, second.stdout


def test_kill_minus_9_then_resume_loses_and_duplicates_nothing(killed_and_resumed, cfg):
    out, before, stdout = killed_and_resumed
    assert sorted(before) == [0]  # killed while training the second architecture
    assert f"already there {len(before)}" in stdout
    with ArchsetStore(out, readonly=True) as store:
        after = {r.idx: r for r in store.records()}
        db = store._db
        total, distinct_idx, distinct_arch = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT idx), COUNT(DISTINCT arch_key) FROM records"
        ).fetchone()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert total == distinct_idx == distinct_arch == KILL_NUM
    assert sorted(after) == list(range(KILL_NUM))
    # Records written before the kill are untouched (same time stamps, accuracies, worker).
    for idx, record in before.items():
        assert after[idx] == record
    resumed_workers = {after[i].worker for i in after if i not in before}
    assert resumed_workers and not resumed_workers & {r.worker for r in before.values()}
    # They are the plan's architectures, trained for real. The tiny plan's first three (fixed by
    # the config's sample seed) are a strided conv-sigmoid-dropout net, a two-block
    # conv-BN-ReLU-pool net and a ReLU-conv-ReLU net, 2.9K-26K parameters, at lr 0.01 on the
    # synthetic task: a failure (divergence, out of memory) would be a finding, not noise.
    for planned in tiny_plan(cfg, KILL_NUM):
        record = after[planned.idx]
        assert record.arch == planned.arch and record.source == planned.source
        assert record.num_params == planned.arch.num_params
        assert record.status == "ok", record.reason
        assert len(record.seed_accuracies) == cfg.archset.seeds
        assert record.mean_accuracy == pytest.approx(np.mean(record.seed_accuracies))
        assert all(0.0 <= a <= 1.0 for a in record.seed_accuracies)
        assert [len(losses) for losses in record.epoch_losses] == [
            cfg.archset.schedule.epochs] * cfg.archset.seeds
        assert record.compile_seconds > 0 and record.train_seconds > 0


# ------------------------------------------------------------------------------------------
# 2. shards and merging
# ------------------------------------------------------------------------------------------


def test_shard_runs_merge_into_the_whole_plan(tmp_path, cfg, synthetic, fake_training,
                                               make_archset_main, capsys):
    num = 7
    planned = tiny_plan(cfg, num)
    fake_training.fail = {planned[3].arch}
    seen = []
    for k in (0, 1):
        stats = generate.generate(cfg, num, tmp_path / f"shard{k}.sqlite", shard=(k, 2),
                                  dataset=synthetic, progress=False, on_record=seen.append)
        assert stats.trained == len(range(k, num, 2)) and stats.skipped == 0
    assert sorted(r.idx for r in seen) == list(range(num))
    assert stats.failed == 1  # idx 3 is in shard 1
    shard_records = {}
    for k in (0, 1):
        with ArchsetStore(tmp_path / f"shard{k}.sqlite", readonly=True) as store:
            assert {r.idx % 2 for r in store.records()} == {k}
            shard_records.update({r.idx: r for r in store.records()})

    # ArchsetStore.merge_from: union, idempotent.
    merged = tmp_path / "merged.sqlite"
    with ArchsetStore(merged) as dest:  # a new file takes the sources' meta
        for k in (0, 1):
            with ArchsetStore(tmp_path / f"shard{k}.sqlite", readonly=True) as src:
                assert dest.merge_from(src) == len(range(k, num, 2))
        with ArchsetStore(tmp_path / "shard0.sqlite", readonly=True) as src:
            assert dest.merge_from(src) == 0
        assert len(dest) == num
        assert {r.idx: r for r in dest.records()} == shard_records
        with ArchsetStore(tmp_path / "shard0.sqlite", readonly=True) as src:
            assert dest.meta == src.meta
    oom = shard_records[3]
    assert oom.status == "oom" and oom.mean_accuracy is None and oom.seed_accuracies == ()
    assert [shard_records[p.idx].arch for p in planned] == [p.arch for p in planned]

    # bin/make_archset.py --merge, run twice: the second adds nothing.
    cli_out = tmp_path / "cli.sqlite"
    args = ["--merge", str(tmp_path / "shard0.sqlite"), str(tmp_path / "shard1.sqlite"),
            "--out", str(cli_out)]
    assert make_archset_main(args) == 0
    assert make_archset_main(args) == 0
    text = capsys.readouterr().out
    assert f"{cli_out}: {num} records" in text and "shard1.sqlite: 0 new records" in text
    with ArchsetStore(cli_out, readonly=True) as store:
        assert {r.idx: r for r in store.records()} == shard_records

    # Resuming the merged file trains nothing; growing it trains only the new positions.
    fake_training.trained.clear()
    stats = generate.generate(cfg, num, merged, dataset=synthetic, progress=False)
    assert (stats.trained, stats.skipped) == (0, num) and not fake_training.trained
    stats = generate.generate(cfg, num + 2, merged, dataset=synthetic, progress=False)
    assert stats.trained == 2
    assert fake_training.trained == [p.arch for p in tiny_plan(cfg, num + 2)[num:]]
    with ArchsetStore(merged, readonly=True) as store:
        grown = {r.idx: r for r in store.records()}
    assert sorted(grown) == list(range(num + 2))
    assert all(grown[i] == shard_records[i] for i in range(num))


def test_a_bug_stops_the_run_and_is_not_recorded(tmp_path, cfg, synthetic, fake_training):
    planned = tiny_plan(cfg, 5)
    fake_training.broken = {planned[2].arch}
    out = tmp_path / "a.sqlite"
    with pytest.raises(TypeError, match="a bug in the training code"):
        generate.generate(cfg, 5, out, dataset=synthetic, progress=False)
    with ArchsetStore(out, readonly=True) as store:  # closed cleanly, the work before it kept
        assert sorted(store.done_indices()) == [0, 1]
        assert {r.status for r in store.records()} == {"ok"}
    fake_training.broken = set()  # fixed: a rerun resumes at the failed position
    fake_training.trained.clear()
    stats = generate.generate(cfg, 5, out, dataset=synthetic, progress=False)
    assert (stats.trained, stats.skipped) == (3, 2)
    assert fake_training.trained == [p.arch for p in planned[2:]]


def test_hand_built_stores_merge_without_duplicates(tmp_path, cfg, meta):
    planned = tiny_plan(cfg, 6)
    fill(tmp_path / "a.sqlite", meta, planned[:4])
    fill(tmp_path / "b.sqlite", meta, planned[2:], worker="other")  # overlaps idx 2, 3
    with ArchsetStore(tmp_path / "a.sqlite", meta) as a, \
            ArchsetStore(tmp_path / "b.sqlite", readonly=True) as b:
        assert a.merge_from(b) == 2
        records = a.records()
    assert [r.idx for r in records] == list(range(6))
    assert [r.worker for r in records] == ["hand"] * 4 + ["other"] * 2  # first copy wins
    # The same idx or the same architecture is never stored twice.
    with ArchsetStore(tmp_path / "a.sqlite", meta) as a:
        assert not a.add(make_record(planned[0]))
        assert not a.add(dataclasses.replace(make_record(planned[1]), idx=99))
        assert len(a) == 6 and a.done_indices() == set(range(6))


def test_cli_shard_flag_and_plots(tmp_path, fake_training, make_archset_main, capsys, cfg):
    out = tmp_path / "runs" / "s.sqlite"
    argv = ["--dataset", "tiny", "--num", "5", "--shard", "1/2", "--out", str(out), "--quiet"]
    assert make_archset_main(argv) == 0
    text = capsys.readouterr().out
    assert "trained 2 (failed 0, already there 0)" in text
    with ArchsetStore(out, readonly=True) as store:
        assert sorted(store.done_indices()) == [1, 3]
    pngs = sorted((out.parent / "plots").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    with pytest.raises(SystemExit):  # argparse rejects it
        make_archset_main(["--dataset", "tiny", "--shard", "2/2", "--out", str(out)])
    with pytest.raises(ValueError, match="shard"):
        generate.generate(cfg, 5, out, shard=(2, 2), dataset=load("synthetic"), progress=False)


# ------------------------------------------------------------------------------------------
# 3. settings that do not match the file
# ------------------------------------------------------------------------------------------


def test_meta_mismatch_is_refused_with_a_helpful_message(tmp_path, cfg, meta):
    path = tmp_path / "a.sqlite"
    fill(path, meta, tiny_plan(cfg, 2))
    longer = dataclasses.replace(cfg.archset.schedule, epochs=3)
    other_cfg = cfg.replace(archset=dataclasses.replace(cfg.archset, schedule=longer, seeds=5))
    other_meta = generate.archset_meta(other_cfg, TINY_SHAPE, TINY_CLASSES)
    with pytest.raises(ArchsetMismatchError) as err:
        ArchsetStore(path, other_meta)
    message = str(err.value)
    assert str(path) in message and "schedule" in message and "seeds: stored 2, asked 5" in message
    assert "Use another output path" in message
    assert "dataset" not in message  # only the differing settings are listed
    # The same settings (tuples or lists alike) reopen it.
    with ArchsetStore(path, json.loads(json.dumps(meta))) as store:
        assert len(store) == 2
    # Merging an archset made with other settings is refused too.
    other = tmp_path / "other.sqlite"
    fill(other, other_meta, [])
    with ArchsetStore(path) as dest, ArchsetStore(other, readonly=True) as src:
        with pytest.raises(ArchsetMismatchError, match="seeds"):
            dest.merge_from(src)
        assert len(dest) == 2


def test_cli_reports_mismatch_without_traceback(tmp_path, cfg, meta, fake_training,
                                                make_archset_main):
    path = tmp_path / "a.sqlite"
    fill(path, meta, tiny_plan(cfg, 1))
    with pytest.raises(SystemExit) as err:
        make_archset_main(["--dataset", "tiny", "--seeds", "3", "--num", "2", "--out", str(path),
                           "--quiet", "--no-plots"])
    assert str(err.value.code).startswith("error: ") and "seeds: stored 2, asked 3" in str(
        err.value.code)
    other = tmp_path / "other.sqlite"
    fill(other, dict(meta, sample_seed=7), [])
    with pytest.raises(SystemExit) as err:
        make_archset_main(["--merge", str(other), "--out", str(path)])
    assert str(err.value.code).startswith("error: ") and "sample_seed" in str(err.value.code)
    with pytest.raises(SystemExit) as err:
        make_archset_main(["--merge", str(tmp_path / "missing.sqlite"), "--out", str(path)])
    assert "no archset at" in str(err.value.code)
    with ArchsetStore(path, readonly=True) as store:
        assert len(store) == 1


def test_readonly_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no archset"):
        ArchsetStore(tmp_path / "missing.sqlite", readonly=True)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a readable archset"):
        ArchsetStore(junk)


# ------------------------------------------------------------------------------------------
# 4. arrays for the surrogate
# ------------------------------------------------------------------------------------------


def test_load_arrays_shapes_and_dtypes(tmp_path, cfg, meta):
    planned = tiny_plan(cfg, 8)
    fill(tmp_path / "a.sqlite", meta, planned[:5])
    fill(tmp_path / "b.sqlite", meta, planned[5:7])
    with ArchsetStore(tmp_path / "b.sqlite", meta) as store:
        store.add(make_record(planned[7], status="oom"))
    arrays = load_arrays([tmp_path / "a.sqlite", tmp_path / "b.sqlite"])
    n = 7  # the oom record is left out
    assert arrays.matrices.shape == (n, 64, 5) and arrays.matrices.dtype == np.int64
    assert arrays.lengths.shape == (n,) and arrays.lengths.dtype.kind == "i"
    assert arrays.accuracy.shape == (n,) and arrays.accuracy.dtype == np.float64
    assert arrays.num_params.dtype == arrays.macs.dtype == arrays.idx.dtype == np.int64
    assert arrays.input_shape == TINY_SHAPE and arrays.num_classes == TINY_CLASSES
    assert arrays.idx.tolist() == list(range(n))
    for i, p in enumerate(planned[:n]):
        assert arrays.lengths[i] == len(p.arch)
        assert not arrays.matrices[i, len(p.arch):].any()  # zero padding (end marker t = 0)
        assert Arch.from_matrix(arrays.matrices[i], TINY_SHAPE, TINY_CLASSES) == p.arch
        assert arrays.accuracy[i] == pytest.approx(np.mean(fake_accuracies(p.arch, 2)))
        assert arrays.num_params[i] == p.arch.num_params and arrays.macs[i] == p.arch.macs
    everything = load_arrays(tmp_path / "b.sqlite", max_len=16, statuses=("ok", "oom"))
    assert everything.matrices.shape == (3, 16, 5) and np.isnan(everything.accuracy[-1])

    from ac_jax.surrogate import encoding
    feats = encoding.encode_matrices(arrays.matrices)
    assert feats.shape == (n, 64, encoding.NUM_INPUT_FEATURES) and feats.dtype == np.float32
    assert (feats[..., 5].sum(axis=1) == arrays.lengths).all()


def test_load_arrays_errors(tmp_path, cfg, meta):
    fill(tmp_path / "a.sqlite", meta, tiny_plan(cfg, 3))
    with pytest.raises(ValueError, match="max_len=2"):
        load_arrays(tmp_path / "a.sqlite", max_len=2)
    with pytest.raises(ValueError, match="no records"):
        load_arrays(tmp_path / "a.sqlite", statuses=("diverged",))
    fm = get_config("fashion_mnist", "cpu")
    fm_plan = generate.plan(fm.archset, (28, 28, 1), 10, 1)
    fill(tmp_path / "fm.sqlite", generate.archset_meta(fm, (28, 28, 1), 10), fm_plan)
    with pytest.raises(ValueError, match="is for input"):
        load_arrays([tmp_path / "a.sqlite", tmp_path / "fm.sqlite"])


def test_load_arrays_of_a_really_trained_archset(killed_and_resumed):
    out, _, _ = killed_and_resumed
    with ArchsetStore(out, readonly=True) as store:
        records = store.records()
    assert [r.status for r in records] == ["ok"] * KILL_NUM  # asserted with reasons above
    arrays = load_arrays(out)
    assert arrays.matrices.shape == (KILL_NUM, 64, 5)
    assert arrays.idx.tolist() == [r.idx for r in records]
    np.testing.assert_array_equal(arrays.accuracy, [r.mean_accuracy for r in records])


# ------------------------------------------------------------------------------------------
# 5. the plan
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,variant,shape,classes", [
    ("tiny", None, TINY_SHAPE, TINY_CLASSES),
    ("fashion_mnist", "cpu", (28, 28, 1), 10),
    ("fashion_mnist", "paper", (28, 28, 1), 10),
    ("fashion_mnist", "cpu_region", (28, 28, 1), 10),
])
def test_plan_is_deterministic_and_prefix_stable(name, variant, shape, classes):
    a = get_config(name, variant).archset
    short, long = generate.plan(a, shape, classes, 10), generate.plan(a, shape, classes, 20)
    assert long[:10] == short
    assert generate.plan(a, shape, classes, 20) == long
    assert [p.idx for p in long] == list(range(a.idx_offset, a.idx_offset + 20))
    assert len({p.arch for p in long}) == 20  # no architecture twice
    assert all(shapes.is_valid(p.arch) for p in long)
    neighbours = sum(p.source != "appendix9" for p in long)
    assert neighbours == round(20 * a.neighbourhood_fraction)
    kind = "region" if a.neighbourhood_kind == "region" else "neighbourhood"
    assert all(p.source in ("appendix9", f"{kind}:{a.neighbourhood_of}") for p in long)
    assert all(len(p.arch) <= a.sampler.max_len for p in long)
    # Another sample seed gives another plan (the region plan's first dozen, the network and
    # its uniformly thinner copies, are the same for every seed).
    other = dataclasses.replace(a, sample_seed=a.sample_seed + 1)
    assert generate.plan(other, shape, classes, 20) != long


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_plan(cfg, n):
    planned = tiny_plan(cfg, 11)
    shards = [[p for p in planned if p.idx % n == k] for k in range(n)]
    assert sorted((p for s in shards for p in s), key=lambda p: p.idx) == planned
    assert sum(map(len, shards)) == len(planned)


# ------------------------------------------------------------------------------------------
# 6. summary and plots
# ------------------------------------------------------------------------------------------


def test_summarize_and_plot(tmp_path, cfg, meta, make_archset_main, capsys):
    planned = tiny_plan(cfg, 6)
    path = tmp_path / "s.sqlite"
    fill(path, meta, planned[:5])
    with ArchsetStore(path, meta) as store:
        store.add(make_record(planned[5], status="oom"))
    summary = report.summarize(path)
    assert summary["records"] == 6 and summary["statuses"] == {"ok": 5, "oom": 1}
    assert summary["dataset"] == "synthetic" and summary["seeds"] == 2
    assert sum(summary["sources"].values()) == 6 and set(summary["sources"]) == {
        "appendix9", "neighbourhood"}
    accs = [np.mean(fake_accuracies(p.arch, 2)) for p in planned[:5]]
    assert summary["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert summary["accuracy_max"] == pytest.approx(max(accs))
    assert summary["train_seconds_total"] == pytest.approx(3.0)
    seeds = np.array([fake_accuracies(p.arch, 2) for p in planned[:5]])
    assert summary["seed_agreement_tau"] == pytest.approx(kendalltau(*seeds.T).statistic)
    assert summary["size_accuracy_tau"] == pytest.approx(
        kendalltau([p.arch.num_params for p in planned[:5]], seeds.mean(1)).statistic)
    assert summary["median_seed_difference"] == pytest.approx(0.01)  # fake seeds differ by 0.01
    json.dumps(summary)  # printable as JSON
    assert make_archset_main(["--summary", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 6

    pngs = report.plot(path, tmp_path / "plots")
    assert len(pngs) == 2
    for png in pngs:
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only one source (no neighbourhood records) still plots.
    only_random = tmp_path / "r.sqlite"
    fill(only_random, meta, [p for p in planned if p.source == "appendix9"])
    assert all(p.exists() for p in report.plot(only_random, tmp_path / "plots"))


def test_compare_proxies_reads_the_records_both_files_trained(tmp_path, cfg, meta, capsys,
                                                             make_archset_main):
    planned = tiny_plan(cfg, 8)
    first, second = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    fill(first, meta, planned[:6])
    fill(second, meta, planned[2:8])  # overlaps the first in plan positions 2-5
    out = report.compare_proxies([first, second])
    assert out["records"] == 4
    # Same labels on the shared records (the fake trainer is deterministic): they agree fully.
    a, b = out["files"]
    assert b["tau_with_first"] == pytest.approx(1.0) and a["tau_with_first"] is None
    assert a["median_seed_difference"] == pytest.approx(0.01)  # fake seeds differ by 0.01
    assert a["accuracy_mean"] == pytest.approx(
        np.mean([np.mean(fake_accuracies(p.arch, 2)) for p in planned[2:6]]))
    assert make_archset_main(["--compare", str(first), str(second)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 4
    apart = tmp_path / "c.sqlite"
    fill(apart, meta, planned[6:8])
    with pytest.raises(ValueError, match="share 0 trained records"):
        report.compare_proxies([first, apart])
    with pytest.raises(ValueError, match="at least two"):
        report.compare_proxies([first])
    # Another plan under the same ids is not a second proxy of the same networks.
    shuffled = tmp_path / "d.sqlite"
    with ArchsetStore(shuffled, meta) as store:
        for position, planned_arch in zip(planned[:6], reversed(planned[:6])):
            store.add(dataclasses.replace(make_record(planned_arch), idx=position.idx))
    with pytest.raises(ValueError, match="not the same plan"):
        report.compare_proxies([first, shuffled])


def test_label_agreement_skips_what_has_no_order():
    from types import SimpleNamespace as R

    rows = [R(seed_accuracies=(a, a + 0.01), mean_accuracy=a + 0.005, num_params=n)
            for a, n in ((0.5, 10), (0.6, 20), (0.7, 30), (float("nan"), 40))]
    out = report.label_agreement(rows)
    assert out["seed_agreement_tau"] == pytest.approx(1.0)  # the NaN record is left out
    assert out["size_accuracy_tau"] == pytest.approx(1.0)
    flat = [R(seed_accuracies=(0.5,), mean_accuracy=0.5, num_params=n) for n in (1, 2, 3)]
    assert out["median_seed_difference"] == pytest.approx(0.01)
    assert report.label_agreement(flat) == {"seed_agreement_tau": None, "oracle_tau": None,
                                            "median_seed_difference": None,
                                            "size_accuracy_tau": None}


def test_oracle_tau_estimates_how_a_perfect_predictor_ranks_noisy_labels():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(0)
    expected = rng.normal(0.7, 0.05, 2000)
    two = expected[:, None] + rng.normal(0, 0.02, (2000, 2))  # two seeds' noisy measurements
    realised = kendalltau(expected, two.mean(1)).statistic
    estimate = report.oracle_tau(two)
    # 0.830 realised, 0.821 estimated here; rng seeds 1-7: 0.818-0.829 and 0.815-0.826, never
    # more than 0.006 apart.
    assert abs(estimate - realised) < 0.05
    # Both sides of the seed-vs-seed tau are noisy, so it sits well below the ceiling (0.66).
    assert estimate > kendalltau(two[:, 0], two[:, 1]).statistic + 0.1
    # No noise: the means are the expectations. Noise as large as the spread: nothing to rank.
    assert report.oracle_tau(np.repeat(expected[:50, None], 2, axis=1)) == pytest.approx(1.0)
    assert report.oracle_tau([[0.3, 0.7], [0.7, 0.31], [0.5, 0.5]]) == 0.0
    assert report.oracle_tau([[0.4, 0.6], [0.6, 0.4], [0.5, 0.5]]) is None  # constant means
    assert report.oracle_tau([[0.4, 0.6], [0.6, 0.4]]) is None


def test_summarize_and_plot_a_really_trained_archset(killed_and_resumed, tmp_path):
    out, _, _ = killed_and_resumed
    summary = report.summarize(out)
    assert summary["records"] == KILL_NUM and summary["statuses"] == {"ok": KILL_NUM}
    assert summary["compile_seconds_total"] > 0
    pngs = report.plot(out, tmp_path)
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_arch_key_is_injective_on_the_plan(cfg):
    planned = tiny_plan(cfg, 20)
    assert len({arch_key(p.arch) for p in planned}) == 20
