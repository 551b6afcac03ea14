"""Shared helpers of the benchmark scripts: worker subprocesses, medians, metric rows, tables.

Every benchmark script is a driver that runs each measurement in its own fresh subprocess (the
same script, started with the hidden ``--worker CONFIG.json`` flag), so that the things compared
never share a process, a JIT cache, thread pools or warmed-up allocators, and run one after another
on an otherwise idle machine. The driver collects the workers' JSON results, prints a small
Markdown table and optionally saves everything as JSON (``--json OUT``).

A *metric row* (`metric`) is what `bin/benchmark.py` puts into its combined table: a value for
ac_jax, optionally a value for a reference (PyTorch, or the slower ac_jax mode it is compared
with), and a ratio oriented so that > 1 always means the ac_jax side is better (faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def metric(
    name: str,
    unit: str,
    ac_jax: float | None,
    reference: float | None = None,
    reference_name: str | None = None,
    higher_is_better: bool = True,
    **extra,
) -> dict:
    """One row of the combined table; ``ratio`` > 1 means the ac_jax value is the better one."""
    ratio = None
    if ac_jax is not None and reference is not None and ac_jax > 0 and reference > 0:
        ratio = ac_jax / reference if higher_is_better else reference / ac_jax
    return {
        "metric": name,
        "unit": unit,
        "ac_jax": ac_jax,
        "reference": reference,
        "reference_name": reference_name,
        "higher_is_better": higher_is_better,
        "ratio": ratio,
        **extra,
    }


def fmt(value: float | None, unit: str = "") -> str:
    """Human formatting with 3 significant digits for small numbers, thousands separators above."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def metrics_table(rows: Sequence[dict], with_section: bool = False) -> str:
    head = "| section " if with_section else ""
    sep = "|---" if with_section else ""
    lines = [
        f"{head}| metric | ac_jax | reference | reference is | ratio (>1: ac_jax better) |",
        f"{sep}|---|---:|---:|---|---:|",
    ]
    for r in rows:
        section = f"| {r.get('section', '')} " if with_section else ""
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        lines.append(
            f"{section}| {r['metric']} | {fmt(r['ac_jax'], r['unit'])} | "
            f"{fmt(r['reference'], r['unit'])} | {r.get('reference_name') or '-'} | {ratio} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(with_jax: bool = True, with_torch: bool = True) -> dict:
    """Where the numbers were taken: OS, CPU, core counts, library versions, JAX devices."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
    }
    if with_jax:
        try:
            import jax

            info["jax"] = jax.__version__
            info["jax_backend"] = jax.default_backend()
            info["jax_devices"] = [str(d) for d in jax.devices()]
        except Exception as err:  # pragma: no cover - reported, not fatal
            info["jax"] = f"unavailable ({type(err).__name__}: {err})"
    if with_torch:
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
        except Exception as err:  # pragma: no cover
            info["torch"] = f"unavailable ({type(err).__name__})"
    return info


def machine_line(info: dict) -> str:
    parts = [f"{info['cpu']} ({info['cpu_count']} CPUs)", info["platform"],
             f"Python {info['python']}"]
    if "jax" in info:
        parts.append(f"jax {info['jax']} {info.get('jax_devices', '')}")
    if "torch" in info:
        parts.append(f"torch {info['torch']} ({info.get('torch_threads', '?')} threads)")
    return "; ".join(parts)


def torch_device():
    """The PyTorch reference's device: the GPU when torch sees one, so that on an accelerator the
    reference runs where ac_jax runs (JAX picks the GPU by itself), else the CPU."""
    import torch

    if torch.cuda.is_available():
        # The strongest plain reference: cuDNN may pick its fastest algorithms per shape.
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    return torch.device("cpu")


def torch_sync(device) -> None:
    """Waits for queued GPU work, so that wall-clock timings include it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_backend(device) -> str:
    import torch

    if device.type == "cuda":
        return f"torch {torch.__version__} cuda ({torch.cuda.get_device_name(device)})"
    return f"torch {torch.__version__} cpu ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------------------------------------
# Worker subprocesses
# ------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="timed repetitions; medians are reported")
    parser.add_argument("--json", metavar="OUT", help="also save the results as JSON")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)


def spawn(script: str | Path, mode: str, config: dict, env: dict | None = None,
          timeout: float | None = None) -> dict:
    """Runs ``script --worker CONFIG`` in a fresh process; returns the result it wrote.

    `config` (JSON-serialisable) reaches the worker with ``mode`` and ``result`` added. The
    result gets ``process_seconds`` (wall time of the whole subprocess, start-up included).
    """
    with tempfile.TemporaryDirectory(prefix="ac_jax_bench_") as tmp:
        config_file, result_file = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_file.write_text(json.dumps({**config, "mode": mode, "result": str(result_file)}))
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", str(config_file)]
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        wall = time.perf_counter()
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"{Path(script).name} worker {mode!r} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
        result = json.loads(result_file.read_text())
    result["process_seconds"] = time.perf_counter() - wall
    return result


def run_worker_if_asked(args: argparse.Namespace,
                        workers: dict[str, Callable[[dict], dict]]) -> bool:
    """In a worker process: runs ``workers[mode](config)``, writes its result, returns True."""
    if not args.worker:
        return False
    config = json.loads(Path(args.worker).read_text())
    result = workers[config["mode"]](config)
    Path(config["result"]).write_text(json.dumps(result))
    return True


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def save_json(path: str | Path, payload: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    log(f"saved {out}")
    return out


def finish(title: str, args: argparse.Namespace, metrics: list[dict], payload: dict,
           with_jax: bool = True, with_torch: bool = False) -> int:
    """Prints the script's table (stdout) and saves ``{settings, machine, metrics, ...}``."""
    machine = machine_info(with_jax, with_torch)
    print(f"\n{title}\n\nMachine: {machine_line(machine)}. Medians of {args.repeats} "
          f"repeat(s).\n")
    print(metrics_table(metrics))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "worker")}
        save_json(args.json, {"title": title, "settings": settings, "machine": machine,
                              "metrics": metrics, **payload})
    return 0
