"""The benchmark scripts' arithmetic: model FLOPs, archset throughput extrapolation, and the rows
`bin/benchmark.py` derives from a child-training result (no timing is asserted anywhere)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import child_training  # noqa: E402
import common  # noqa: E402


def _load_bin_benchmark():
    spec = importlib.util.spec_from_file_location("bin_benchmark", REPO / "bin" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_flops_counts_forward_backward_and_evaluation():
    # 5 seeds x 1000 MACs x (6 x 64 trained + 2 x 10 evaluated images)
    assert child_training.model_flops(1000, 5, 64, 10) == 5 * 1000 * (6 * 64 + 2 * 10)


def test_archset_throughput_scales_epochs_images_and_seeds():
    # cpu variant: 1 epoch x 4,000 images x 2 seeds; measured: 1 epoch of 2,000 images x 5 seeds
    e = child_training.archset_archs_per_hour(10.0, 4.0, 2000, 5, "cpu")
    train = 10.0 * 1 * (4000 / 2000) * (2 / 5)
    assert (e["epochs"], e["train_images"], e["seeds"]) == (1, 4000, 2)
    assert e["seconds_per_arch"] == pytest.approx(train + 4.0)
    assert e["per_hour_compile_exposed"] == pytest.approx(3600 / (train + 4.0))
    assert e["per_hour_compile_hidden"] == pytest.approx(3600 / max(train, 4.0))
    # The paper proxy (default variant) is 5 epochs over the full 60,000 images x 5 seeds.
    paper = child_training.archset_archs_per_hour(10.0, 0.0, 2000, 5, "default")
    assert paper["seconds_per_arch"] == pytest.approx(10.0 * 5 * 30)


def test_child_metrics_rows_from_a_result():
    bench = _load_bin_benchmark()
    result = {
        "settings": {"seeds": 2, "test_subset": 100, "peak_tflops": 10.0},
        "images_per_seed": 640,
        "rows": [{
            "arch": "sampled-0", "params": 1234, "macs": 2_000_000,
            "jax_result": {"train_seconds": [1.0, 2.0, 3.0], "mean_accuracy": 0.5,
                           "compile_seconds": 4.0},
            "torch_result": {"train_seconds": [4.0], "mean_accuracy": 0.5},
            "jax_archset": child_training.archset_archs_per_hour(2.0, 4.0, 640, 2, "cpu"),
        }],
    }
    rows = {r["metric"].split(":")[0].split(" (")[0]: r for r in bench.child_metrics(result)}
    img = rows["child training img/s"]
    assert img["ac_jax"] == pytest.approx(2 * 640 / 2.0)  # median of the jax runs
    assert img["ratio"] == pytest.approx(2.0)
    flops = rows["child training model TFLOP/s"]
    expected = child_training.model_flops(2_000_000, 2, 640, 100) / 2.0 / 1e12
    assert flops["ac_jax"] == pytest.approx(expected)
    assert "MFU" in flops["metric"]
    hourly = [r for r in bench.child_metrics(result) if r["metric"].startswith("archset")]
    assert len(hourly) == 2 and all(r["ac_jax"] > 0 for r in hourly)


def test_torch_reference_device_is_the_cpu_without_a_gpu():
    torch = pytest.importorskip("torch")
    device = common.torch_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    common.torch_sync(device)  # a no-op on the CPU, must not fail
    assert common.torch_backend(device).startswith(f"torch {torch.__version__}")


def test_batch_compress_stage_table_per_network_and_total():
    import batch_compress

    results = {
        "batched": {"num_networks": 4, "stage_seconds": {"search": 0.04, "legalize": 0.008}},
        "single": {"num_networks": 4, "stage_seconds": {"search": 0.08}},
    }
    table = batch_compress.stage_table(results)
    assert "| search | 10.00 | 20.00 |" in table
    assert "| legalize | 2.00 | - |" in table
    assert "| total | 12.00 | 20.00 |" in table


def _throughput_run(accuracies, wall=100.0, wait=25.0):
    import archset_throughput  # noqa: F401  (benchmarks/ is on sys.path)

    records = [{"idx": i, "status": "ok" if acc else "rejected", "seed_accuracies": acc,
                "compile_seconds": 2.0, "train_seconds": 3.0 if acc else 0.0}
               for i, acc in enumerate(accuracies)]
    rows = [{"idx": r["idx"], "compile_wall": 2.0, "compile_cpu": 3.5} for r in records if r["seed_accuracies"]]
    return {"generate": {"records": records, "wall_seconds": wall, "cpu_seconds": 2 * wall,
                         "compile_wait_seconds": wait, "compile_seconds": 8.0, "train_seconds": 9.0},
            "compile": {"rows": rows}}


def test_archset_throughput_summary_and_accuracy_agreement():
    import archset_throughput

    run = _throughput_run([[0.5, 0.7], [0.8, 0.8], [], [0.2, 0.4]])
    s = archset_throughput.summary(run)
    assert s["archs"] == 4 and s["statuses"] == {"ok": 3, "rejected": 1}
    assert s["archs_per_hour"] == pytest.approx(3600 * 4 / 100.0)
    assert s["train_s_per_arch"] == pytest.approx(3.0)  # rejected records are not trained
    assert s["compile_cpu_s_per_arch"] == pytest.approx(3.5) and s["wait_share"] == 0.25
    other = _throughput_run([[0.6, 0.7], [0.8, 0.8], [0.1, 0.1], []])
    agree = archset_throughput.accuracy_agreement(run, other)
    assert agree["positions"] == 2  # positions 0 and 1 are "ok" in both
    assert agree["mean_abs_diff"] == pytest.approx((0.05 + 0.0) / 2)
    assert agree["max_abs_diff"] == pytest.approx(0.05)
    assert agree["mean_seed_spread"] == pytest.approx((0.2 + 0.1 + 0.0 + 0.0) / 4)
    assert agree["status_mismatches"] == [2, 3]


def test_archset_throughput_exports_a_commit(tmp_path):
    import subprocess

    import archset_throughput

    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("export_tree archives a git revision; this copy of the repository has no .git")
    tree = archset_throughput.export_tree("HEAD", tmp_path / "tree")
    assert (tree / "ac_jax" / "child" / "trainer.py").is_file()
