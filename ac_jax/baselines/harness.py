"""The baselines in one harness (`bin/baselines.py`): a Table-2-like comparison of random
search, N2N, pruning and distillation with the compressor's pick, under one protocol.

Every method gets the same data and the budget's schedules (`budget.py`): the teacher is
trained with the final schedule; random search and N2N search with the proxy schedule and their
winner is retrained with the final schedule; pruning prunes the trained teacher; distillation
trains a thin teacher (or the target architecture) with KD and from scratch. A target
architecture is retrained here too. Choices read the validation split; reported accuracies are
on test (`ac_jax.data.protocol`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import traceback
from pathlib import Path

from ac_jax.baselines.targets import archset_spend, check_target, parse_target, read_report

METHODS = ("random", "n2n", "prune-taylor", "prune-l1", "distill")


@dataclasses.dataclass
class Task:
    """What one harness run compares: resolved and checked by `resolve`."""

    cfg: object  # ac_jax.config.Config
    dataset: object  # ac_jax.data.Dataset
    model_name: str
    teacher: object  # Arch
    target_params: int
    target_arch: object | None
    report: dict | None  # `read_report` of the compressor's report.json
    budget: object  # budget.Budget
    methods: tuple = METHODS
    seed: int = 0
    distill_student: str = "thin"  # "thin" (FitNets-style width scaling) or "target"


def resolve(cfg, dataset, model: str | None, target: str | None, ac_report: str | None,
            budget_name: str | None, random_archs: int | str | None, methods=METHODS,
            seed: int = 0, distill_student: str = "thin") -> Task:
    """The teacher, target and budget a run compares; `ValueError` naming what is wrong."""
    import jax

    from ac_jax.arch.load import load_arch
    from ac_jax.baselines import budget as budget_lib

    if budget_name is None:
        on_cpu = jax.default_backend() == "cpu"
        budget_name = "tiny" if cfg.dataset == "synthetic" else ("cpu" if on_cpu else "gpu")
    budget = budget_lib.get_budget(budget_name, cfg)
    shape, classes = dataset.input_shape, dataset.num_classes
    teacher = load_arch(model or cfg.default_model, shape, classes)
    report = read_report(ac_report, shape, classes) if ac_report else None
    if target:
        target_params, target_arch = parse_target(target, teacher, shape, classes)
    elif report is not None:
        target_arch = report["arch"]
        target_params = check_target(target_arch.num_params, teacher)
    else:
        raise ValueError("give --target (an architecture file or a parameter count) or "
                         "--ac-report")
    if distill_student == "target" and target_arch is None:
        raise ValueError("--distill-student target needs --target to be an architecture")
    if random_archs is not None:
        num = archset_spend(report) if random_archs == "archset" and report else random_archs
        if num == "archset":
            raise ValueError("--random-archs archset needs --ac-report")
        budget = dataclasses.replace(budget, random_search=dataclasses.replace(
            budget.random_search, num_archs=num))
    budget = dataclasses.replace(budget, random_search=dataclasses.replace(
        budget.random_search, max_pooling_reads=cfg.archset.max_pooling_reads))
    return Task(cfg, dataset, model or cfg.default_model, teacher, target_params, target_arch,
                report, budget, tuple(methods), seed, distill_student)


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def _fmt_acc(acc):
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "—"
    return f"{100 * acc:.2f}%"


def _fmt_params(n):
    return "—" if not n else f"{n:,}"


def _fmt_time(seconds):
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def markdown_table(rows: list[dict], header: list[str]) -> str:
    lines = header + [
        "",
        "| Method | Acc. | #Params | Compression | Wall time | Archs evaluated | Notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = f"{r['compression']:.1f}x" if r.get("compression") else "—"
        flag = "" if r.get("within_budget", True) else " (over budget)"
        evaluated = r.get("archs_evaluated")
        lines.append(
            f"| {r['method']} | {_fmt_acc(r['accuracy'])} | {_fmt_params(r['num_params'])}{flag} "
            f"| {ratio} | {_fmt_time(r.get('wall_seconds'))} "
            f"| {'—' if evaluated is None else evaluated} | {r.get('notes', '')} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run(task: Task, out_dir: Path, progress: bool = True, runner=None) -> dict:
    """Runs every method of `task`, writes baselines.md and baselines.json into `out_dir` and
    returns the summary. One failing method is recorded as a failed row (with its traceback on
    stderr); the others still run."""
    from ac_jax.arch.export import to_printout
    from ac_jax.baselines import common
    from ac_jax.baselines.distill import distill
    from ac_jax.baselines.n2n import n2n
    from ac_jax.baselines.pruning import prune
    from ac_jax.baselines.random_search import random_search
    from ac_jax.child.trainer import to_device
    from ac_jax.data import protocol

    cfg, dataset, budget, report = task.cfg, task.dataset, task.budget, task.report
    teacher_arch, target_params, target_arch = task.teacher, task.target_params, task.target_arch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if report is not None and report["original_params"] != teacher_arch.num_params:
        print(f"warning: the report's original network has {report['original_params']:,} "
              f"parameters, the teacher here {teacher_arch.num_params:,}", file=sys.stderr)
    # Validation for choosing, test for reporting (ac_jax.data.protocol): the searches and
    # the pruning repeats choose on the validation split; every reported accuracy is on test.
    full = protocol.final_view(dataset).subset(budget.train_subset, budget.test_subset)
    final_data = to_device(full, budget.final_schedule)
    val = protocol.search_view(dataset)
    choose_data = to_device(val.subset(budget.train_subset, budget.test_subset),
                            budget.final_schedule)
    search_data = to_device(val.subset(budget.search_train_subset or budget.train_subset,
                                       budget.test_subset), budget.search_schedule)
    teacher_params = teacher_arch.num_params
    final, seeds = budget.final_schedule, budget.final_seeds
    rows: list[dict] = []
    failures = 0
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)

    def add(result):
        row = result.to_dict(teacher_params)
        rows.append(row)
        log(f"  {row['method']}: accuracy {_fmt_acc(row['accuracy'])}, "
            f"{row['num_params']:,} params, {_fmt_time(row['wall_seconds'])}")

    def retrained(result, desc):
        """The search winner retrained with the final schedule (accuracy comparable)."""
        start = time.perf_counter()
        mean, accs = common.retrain(result.arch, final_data, final, seeds, progress=progress,
                                    desc=desc)
        result.accuracy = mean
        result.wall_seconds += time.perf_counter() - start
        result.details["final_seed_accuracies"] = accs
        result.notes += f"; retrained {final.epochs} epoch(s)"
        return result

    def attempt(name, fn):
        nonlocal failures
        log(f"[{name}]")
        try:
            fn()
        except Exception as err:  # one failing baseline must not lose the others' rows
            failures += 1
            traceback.print_exc()
            rows.append({"method": name, "accuracy": None, "num_params": None,
                         "compression": None, "wall_seconds": None, "archs_evaluated": None,
                         "notes": f"failed: {type(err).__name__}: {err}"})

    log(f"teacher {task.model_name}: {teacher_params:,} parameters; target "
        f"{target_params:,} ({teacher_params / target_params:.1f}x); budget {budget.name}; "
        f"{len(full.train_y)} train / {len(full.test_y)} test images")
    wall_start = time.perf_counter()
    teacher = None

    def run_teacher():
        nonlocal teacher
        teacher = common.train_network(teacher_arch, final_data, final, seeds[0],
                                       progress=progress, desc="teacher")
        if teacher.diverged:
            raise RuntimeError("the teacher's training loss became non-finite")
        rows.append({"method": "teacher (input network)", "accuracy": teacher.accuracy,
                     "num_params": teacher_params, "compression": 1.0,
                     "wall_seconds": teacher.train_seconds, "archs_evaluated": 1,
                     "notes": f"{final.epochs} epoch(s), seed {seeds[0]}; reused by pruning "
                              "and distillation (not in their wall time)",
                     "spec": None})

    attempt("teacher (input network)", run_teacher)

    if report is not None:
        acc = report["compressed_accuracy"]
        rows.append({
            "method": "ac_jax (its report)", "accuracy": acc,
            "num_params": report["chosen_params"],
            "compression": report["original_params"] / report["chosen_params"],
            "wall_seconds": report["wall_seconds"], "archs_evaluated": report["archs_trained"],
            "notes": (f"accuracy from the report's own verification (its teacher: "
                      f"{_fmt_acc(report['original_accuracy'])}), not this harness's schedule"
                      if acc is not None else "the report has no verification run")
                     + "; wall time as reported (archset and surrogate training not included)",
            "original_accuracy": report["original_accuracy"],
        })
    ac_arch = target_arch if target_arch is not None else (report or {}).get("arch")
    if ac_arch is not None:
        def run_target():
            start = time.perf_counter()
            mean, accs = common.retrain(ac_arch, final_data, final, seeds,
                                        progress=progress, desc="ac_jax arch")
            add(common.BaselineResult(
                "ac_jax architecture, retrained here", mean, ac_arch.num_params,
                ac_arch, time.perf_counter() - start, 1,
                notes=f"{final.epochs} epoch(s) from scratch, like the search winners",
                details={"seed_accuracies": accs}))

        attempt("ac_jax architecture, retrained here", run_target)

    if "random" in task.methods:
        attempt("random search", lambda: add(retrained(random_search(
            search_data, budget.search_schedule, target_params, budget.random_search,
            cfg.archset.sampler, neighbourhood_of=teacher_arch, seed=task.seed + 1,
            store=out_dir / "random_search.sqlite", progress=progress,
            runner=runner),
            "random search winner")))
    if "n2n" in task.methods:
        n2n_cfg = dataclasses.replace(budget.n2n, seed=task.seed)
        attempt("N2N (RL)", lambda: add(retrained(n2n(
            teacher_arch, search_data, budget.search_schedule, target_params, n2n_cfg,
            progress=progress, runner=runner), "N2N winner")))
    for criterion in ("taylor", "l1"):
        if f"prune-{criterion}" in task.methods:
            def run_prune(criterion=criterion):
                if teacher is None:
                    raise RuntimeError("no trained teacher (its training failed)")
                add(prune(teacher, choose_data, final, target_params,
                          dataclasses.replace(budget.pruning, criterion=criterion), task.seed,
                          report_data=final_data, progress=progress))

            attempt(f"pruning ({criterion})", run_prune)
    if "distill" in task.methods:
        def run_distill():
            if teacher is None:
                raise RuntimeError("no trained teacher (its training failed)")
            student = (target_arch if task.distill_student == "target"
                       else common.width_scaled_to(teacher_arch, target_params))
            results = distill(teacher, student, final_data, final,
                              dataclasses.replace(budget.distill, seeds=seeds),
                              progress=progress)
            for result in results.values():
                result.notes = f"{task.distill_student} student; " + result.notes
                add(result)

        attempt("distillation", run_distill)

    header = [
        f"# Baselines: {cfg.name}, teacher {task.model_name}, budget {budget.name}",
        "",
        f"- teacher: {teacher_params:,} parameters; target: at most {target_params:,} "
        f"({teacher_params / target_params:.1f}x)",
        f"- data: {len(full.train_y):,} train / {len(full.test_y):,} test images "
        f"(searches train on {search_data.train_x.shape[0]:,})",
        f"- final schedule: {final.epochs} epoch(s), batch {final.batch_size}, lr {final.lr:g} "
        f"({final.optimizer}), seeds {list(seeds)}; search proxy: "
        f"{budget.search_schedule.epochs} epoch(s)",
        "- Acc.: test accuracy after the final schedule (search winners retrained with it); "
        "every choice (search winners, pruning repeats) read the validation split carved from "
        "the training set; wall time excludes the shared teacher",
        f"- total wall time: {_fmt_time(time.perf_counter() - wall_start)}",
    ]
    table = markdown_table(rows, header)
    (out_dir / "baselines.md").write_text(table, encoding="utf-8")
    summary = {
        "config": cfg.name,
        "model": task.model_name,
        "teacher_params": teacher_params,
        "target_params": target_params,
        "budget": dataclasses.asdict(budget),
        "rows": rows,
        "wall_seconds": time.perf_counter() - wall_start,
        "teacher_printout": to_printout(teacher_arch),
    }
    (out_dir / "baselines.json").write_text(json.dumps(summary, indent=2, default=str) + "\n",
                                            encoding="utf-8")
    summary["failures"] = failures
    summary["table"] = table
    return summary
