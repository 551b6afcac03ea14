"""The equal-budget study: every method x repeat, then the final schedule, then the report.

Layout of the output folder (resumable: rerun the same command after a kill):

  runs/<method>_r<k>.json     one finished search (pick, validation accuracy, curve), written
                              once it is done; a rerun skips it
  random_search_r<k>.sqlite,  every proxy training of a search, written as it finishes
  n2n_r<k>.sqlite, pick_proxy.sqlite
  final.sqlite                every final-schedule training (original and picks, keyed by
                              architecture: a pick found twice trains once)
  references.json             pruning / KD rows
  work/                       surrogate runs (checkpoints; not shipped) and refinement folders
  summary.json, summary.md, anytime.png
  amortised.json, amortised.md  the amortised case (`run_amortised`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ac_jax.arch import zoo
from ac_jax.arch.spec import Arch
from ac_jax.arch.json_spec import parse_json, to_json
from ac_jax.archset.store import ArchsetStore, Record, arch_key, record_of
from ac_jax.atomic import write_atomic
from ac_jax.child import resume
from ac_jax.child.trainer import ChildTrainer, TrainOptions, to_device
from ac_jax.data import protocol
from ac_jax.study import methods as methods_lib
from ac_jax.study import report
from ac_jax.study.config import LEGACY_AC_JAX, StudyConfig


def _write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def _run_to_dict(run: methods_lib.MethodRun) -> dict:
    d = dataclasses.asdict(dataclasses.replace(run, arch=None))
    d["spec"] = to_json(run.arch) if run.arch is not None else None
    d["params"] = run.arch.num_params if run.arch is not None else None
    return d


def final_accuracy(rec: Record) -> float | None:
    """A stored training's accuracy (final: test; fidelity stage: validation); None unless it
    trained without diverging (a diverged seed's weights are NaN, and its "accuracy" is that of
    a constant prediction)."""
    return rec.mean_accuracy if rec.status == "ok" else None


class StoredTrainings:
    """Trainings under one schedule and seeds on one data view, stored per architecture as each
    finishes (a network asked for twice trains once; a killed job resumes without retraining).
    With `chunk_epochs`, each training also checkpoints its state every that many epochs under
    `<store>.partial/` (`ChildTrainer.train_resumable`): a training of hours killed midway
    continues from its last checkpoint."""

    stage = "training"  # how the log names these trainings
    # What every training here does besides cross-entropy (e.g. KD: `LongFinalTrainer`).
    options = TrainOptions()
    teacher_variables = None

    def __init__(self, data, schedule, seeds: list, path: Path, meta: dict,
                 chunk_epochs: int | None = None):
        self.data, self.schedule, self.seeds = data, schedule, seeds
        self.path, self.meta = path, meta
        self.chunk_epochs = chunk_epochs
        self._trainer = None

    def _describe(self) -> str:
        return f"{self.schedule.epochs} epochs x {len(self.seeds)} seeds"

    def record(self, arch: Arch) -> Record | None:
        with ArchsetStore(self.path, self.meta) as db:
            return next((r for r in db.records() if r.arch == arch), None)

    def checkpoint_path(self, arch: Arch) -> Path:
        digest = hashlib.sha256(arch_key(arch).encode()).hexdigest()[:20]
        return self.path.with_name(self.path.stem + ".partial") / f"{digest}.npz"

    def train(self, arch: Arch, label: str, log) -> Record:
        rec = self.record(arch)
        if rec is not None:
            if self.chunk_epochs:  # left by a kill between storing and discarding
                resume.discard(self.checkpoint_path(arch))
            return rec
        log(f"{self.stage}: {label} ({arch.num_params:,} parameters, {self._describe()})")
        if self._trainer is None:
            self._trainer = ChildTrainer(self.data, self.schedule, len(self.seeds),
                                         self.options, self.teacher_variables)
        if self.chunk_epochs:
            checkpoint = self.checkpoint_path(arch)
            out = self._trainer.train_resumable(
                arch, self.seeds, checkpoint, self.chunk_epochs,
                log=lambda line: log(f"{self.stage}: {label}: {line}"), remove_checkpoint=False)
        else:
            out = self._trainer.train(arch, self.seeds)
        with ArchsetStore(self.path, self.meta) as db:
            rec = record_of(len(db), arch, label, out)
            db.add(rec)
        if self.chunk_epochs:  # only once the record is stored: a kill before costs one stretch
            resume.discard(checkpoint)
        return rec


class FinalTrainer(StoredTrainings):
    """Final-schedule trainings on train minus validation, evaluated on test, stored per arch
    (the study's schedule and seeds in final.sqlite; another length and seeds in their own
    store, e.g. the long final schedule's)."""

    stage = "final schedule"

    def __init__(self, study: StudyConfig, dataset, out: Path, schedule=None,
                 seeds: int | None = None, name: str = "final.sqlite",
                 chunk_epochs: int | None = None):
        schedule = schedule or study.final_schedule
        seeds = seeds or study.final_seeds
        data = to_device(protocol.final_view(dataset), schedule)
        meta = {"kind": "study_final", "dataset": study.cfg.dataset,
                "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                "schedule": dataclasses.asdict(schedule), "seeds": seeds,
                "evaluation": "test", **{k: v for k, v in protocol.SEARCH_META.items()
                                         if k != "evaluation"}}
        super().__init__(data, schedule, list(range(seeds)), out / name, meta,
                         chunk_epochs=chunk_epochs)

    def prefetch(self, items: list, runner, log) -> None:
        """Trains the `(arch, label)` items not yet stored as one batch on `runner` (a
        `distributed.RayRunner`; None: nothing here, `train` trains them one by one), each
        record written as it arrives. The runner trains with plain cross-entropy, so
        trainings with other options (e.g. distillation) are left to `train`."""
        if runner is None or self.options != TrainOptions():
            return
        with ArchsetStore(self.path, self.meta) as db:  # one store for the whole batch
            done, todo = {r.arch for r in db.records()}, []
            for arch, label in items:
                if arch not in done:  # a pick found twice trains once, under its first label
                    done.add(arch)
                    todo.append((label, arch, self.seeds))
            if not todo:
                return
            log(f"final schedule: {len(todo)} trainings on the cluster "
                f"({self.schedule.epochs} epochs x {len(self.seeds)} seeds)")
            runner.run(self.data, self.schedule, len(self.seeds), todo,
                       lambda label, arch, out: db.add(record_of(len(db), arch, label, out)))


def _references(study: StudyConfig, ctx, finals: FinalTrainer, out: Path, log) -> dict:
    """Pruning and KD at the constraint's size, from the original trained with the final
    schedule (one seed, weights kept), and the uniformly thinned original trained from scratch
    like the picks (`thin`: no teacher); written to references.json as each is done."""
    from ac_jax.baselines import common
    from ac_jax.baselines.distill import DistillConfig, distill
    from ac_jax.baselines.pruning import PruningConfig, prune

    path = out / "references.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    todo = [r for r in study.references if r not in rows]
    if not todo:
        return rows
    thin = common.width_scaled_to(ctx.original, ctx.max_params)  # KD's student; `thin` itself
    teacher = None
    for name in todo:
        start = time.perf_counter()
        if name == "thin":  # stored in final.sqlite like a pick: a rerun reads it back
            rec = finals.train(thin, "thin_reference", log)
            rows[name] = {"method": "uniform thinning, from scratch", "params": thin.num_params,
                          "test_accuracy": final_accuracy(rec), "val_accuracy": None,
                          "test_seed_accuracies": list(rec.seed_accuracies),
                          "notes": f"the original's widths scaled to fit; final schedule, "
                                   f"{len(finals.seeds)} seeds", "seconds": rec.train_seconds,
                          "teacher_test_accuracy": None}
        else:
            if teacher is None:  # pruning and KD start from the trained original
                log("references: training the original with weights kept (seed 0)")
                teacher = common.train_network(ctx.original, finals.data, finals.schedule, 0)
                choose = to_device(protocol.search_view(ctx.dataset), finals.schedule)
            if name == "pruning":
                result = prune(teacher, choose, finals.schedule, ctx.max_params,
                               PruningConfig(iterations=6, finetune_steps=30, final_epochs=1),
                               report_data=finals.data)
            else:
                result = distill(teacher, thin, finals.data, finals.schedule,
                                 DistillConfig(seeds=tuple(finals.seeds)), scratch=False)["kd"]
            rows[name] = {"method": result.method, "params": result.num_params,
                          "test_accuracy": result.accuracy,
                          "val_accuracy": result.search_accuracy, "notes": result.notes,
                          "seconds": time.perf_counter() - start,
                          "teacher_test_accuracy": teacher.accuracy}
        _write_json(path, rows)
    return rows


def run_study(study: StudyConfig, out: str | Path, dataset=None, progress: bool = True,
              log=print, runner=None) -> dict:
    """Runs (or resumes) the whole study in `out`; returns the summary it writes."""
    from ac_jax.data import load

    cfg = study.cfg
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _check_study_meta(study, out)
    if dataset is None:
        dataset = load(cfg.dataset, cfg.data_dir)
    a = cfg.archset
    search_view = protocol.search_view(dataset)
    search = to_device(search_view, a.schedule, seed=a.sample_seed)
    original = _network(study.model, dataset)
    max_params = int(original.num_params // study.target_ratio)
    archset_path = _archset(study, cfg, _shipped(cfg), out, dataset, progress, log)
    ctx = methods_lib.Context(
        cfg=cfg, dataset=dataset, search=search, original=original, max_params=max_params,
        model_name=Path(study.model).stem,
        archset_path=archset_path, work=out, surrogate_steps=study.surrogate_steps,
        rounds=study.rounds, refine_top=study.refine_top,
        refine_finetune_steps=study.refine_finetune_steps, log=log, progress=progress,
        runner=runner, **_ac_jax_context(study))
    log(f"study: {study.model} ({original.num_params:,} parameters) -> at most {max_params:,} "
        f"({study.target_ratio:g}x); {study.budget} trained architectures per method and repeat; "
        f"{study.repeats} repeats; methods {', '.join(study.methods)}")
    runs: dict[str, list[dict]] = {m: [] for m in study.methods}
    for repeat in range(study.repeats):
        seed = study.seed + repeat
        for method in study.methods:
            path = out / "runs" / f"{method}_r{repeat}.json"
            if path.is_file():
                runs[method].append(json.loads(path.read_text()))
                continue
            log(f"[repeat {repeat + 1}/{study.repeats}] {method} (search seed {seed})")
            run = methods_lib.run_method(ctx, method, repeat, seed, study.budget)
            d = _run_to_dict(run)
            _write_json(path, d)
            runs[method].append(d)
            (out / "progress.md").write_text(report.progress(
                runs, study.budget, study.repeats,
                None if study.ac_jax_settings() == LEGACY_AC_JAX else study.ac_jax_settings()),
                                             encoding="utf-8")
    finals = FinalTrainer(study, dataset, out)
    finals.prefetch([(original, "original")] + [
        (parse_json(d["spec"]), f"{method}_r{d['repeat']}") for method, method_runs in runs.items()
        for d in method_runs if d["spec"] is not None and d["within_constraint"]], runner, log)
    original_rec = finals.train(original, "original", log)
    for method, method_runs in runs.items():
        for d in method_runs:
            # A pick outside the constraint is a failed search, not a network to compare.
            if d["spec"] is not None and d["within_constraint"]:
                rec = finals.train(parse_json(d["spec"]), f"{method}_r{d['repeat']}", log)
                d["final"] = {"status": rec.status, "test_accuracy": final_accuracy(rec),
                              "test_seed_accuracies": list(rec.seed_accuracies)}
    references = _references(study, ctx, finals, out, log) if study.references else {}
    summary = report.summary(study, original, original_rec, max_params, runs, references,
                             finals.schedule)
    if study.ac_jax_settings() != LEGACY_AC_JAX:
        summary["ac_jax_settings"] = study.ac_jax_settings()
    _write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(report.markdown(summary), encoding="utf-8")
    report.plot_anytime(runs, out / "anytime.png", study.budget, summary.get("ac_jax_settings"))
    return summary


def study_meta(study: StudyConfig) -> dict:
    """What a finished search depends on: resuming in a folder made with other settings is
    refused (its runs would be relabelled with the new ones)."""
    a = study.cfg.archset
    return json.loads(json.dumps({
        "config": study.cfg.name, "model": study.model, "target_ratio": study.target_ratio,
        "budget": study.budget, "seed": study.seed, "rounds": study.rounds,
        "refine_top": study.refine_top, "refine_finetune_steps": study.refine_finetune_steps,
        "surrogate_steps": study.surrogate_steps, "proxy": dataclasses.asdict(a.schedule),
        "proxy_seeds": a.seeds, "final_schedule": dataclasses.asdict(study.final_schedule),
        "final_seeds": study.final_seeds, **protocol.SEARCH_META,
        # Only when they are not the issue-20 study's, whose folders hold no such key.
        **({"ac_jax": study.ac_jax_settings()}
           if study.ac_jax_settings() != LEGACY_AC_JAX else {}),
        # The issue-20 study's surrogates had one accuracy head; its folders hold no such key.
        **({"surrogate_heads": study.cfg.surrogate.arch.ensemble}
           if study.cfg.surrogate.arch.ensemble != 1 else {}),
        # Likewise the ranking loss and no-op augmentation (the cpu2 configs set them).
        **({"surrogate_losses": {"rank_weight": study.cfg.surrogate.rank_weight,
                                 "noop_augment": study.cfg.surrogate.noop_augment}}
           if study.cfg.surrogate.rank_weight or study.cfg.surrogate.noop_augment else {}),
    }))


def _check_study_meta(study: StudyConfig, out: Path) -> None:
    path, meta = out / "study.json", study_meta(study)
    if not path.is_file():
        _write_json(path, meta)
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    differing = [k for k in meta if stored.get(k) != meta[k]]
    if differing:
        details = "; ".join(f"{k}: stored {stored.get(k)!r}, asked {meta[k]!r}" for k in differing)
        raise ValueError(f"{out} holds a study made with other settings ({details}); use another "
                         "--out, or the same settings to resume it")


def _ac_jax_context(study: StudyConfig) -> dict:
    """ac_jax's own settings as `methods.Context` fields."""
    from ac_jax.runtime import repo_path

    return {"extra_archsets": tuple(repo_path(p) for p in study.extra_archsets),
            "region_share": study.region_share, "plain_decoding": study.plain_decoding,
            "acquisition": study.acquisition, "acquisition_pool": study.acquisition_pool}


def _network(name: str, dataset) -> Arch:
    from ac_jax.arch.load import load_arch

    if name in zoo.ZOO:
        return zoo.get(name, dataset.input_shape, dataset.num_classes)
    return load_arch(name, dataset.input_shape, dataset.num_classes)


def run_amortised(study: StudyConfig, models: list[str], out: str | Path, dataset=None,
                  progress: bool = True, log=print, runner=None) -> dict:
    """The amortised case: one archset subset and one surrogate (repeat 0 of `ac_jax_rounds`)
    compress the study's network and each of `models`, each with its own refinement rounds;
    random search spends the full budget on every network. Needs the study's repeat 0 of both
    methods done (`run_study`); writes amortised.json and amortised.md."""
    from ac_jax.data import load

    out = Path(out)
    cfg = study.cfg
    if dataset is None:
        dataset = load(cfg.dataset, cfg.data_dir)
    runs_dir = out / "runs"
    base = {m: runs_dir / f"{m}_r0.json" for m in ("ac_jax_rounds", "random_search")}
    missing = [str(p) for p in base.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the amortised case reuses the study's repeat 0; missing {missing}")
    a = cfg.archset
    search = to_device(protocol.search_view(dataset), a.schedule, seed=a.sample_seed)
    finals = FinalTrainer(study, dataset, out)
    archset_path = _archset(study, cfg, _shipped(cfg), out, dataset, progress, log)
    rows = []
    for name in [study.model] + list(models):
        original = _network(name, dataset)
        max_params = int(original.num_params // study.target_ratio)
        tag = Path(name).stem
        ctx = methods_lib.Context(
            cfg=cfg, dataset=dataset, search=search, original=original, max_params=max_params,
            model_name=tag, archset_path=archset_path,
            work=out, surrogate_steps=study.surrogate_steps, rounds=study.rounds,
            refine_top=study.refine_top, refine_finetune_steps=study.refine_finetune_steps,
            log=log, progress=progress, runner=runner, **_ac_jax_context(study))
        row = {"model": name, "params": original.num_params, "max_params": max_params}
        for method in ("ac_jax_rounds", "random_search"):
            path = base[method] if name == study.model else \
                runs_dir / f"amortised_{method}_{tag}.json"
            if path.is_file():
                d = json.loads(path.read_text())
            else:
                log(f"[amortised] {method} on {name}")
                if method == "random_search":  # its own store, the study's first search seed
                    run = methods_lib.run_random_search(ctx, 0, study.seed, study.budget,
                                                        store_tag=tag)
                else:
                    run = methods_lib.run_ac_jax(ctx, 0, study.seed, study.budget, rounds=True,
                                                 tag=f"amortised_{tag}")
                d = _run_to_dict(run)
                _write_json(path, d)
            if d["spec"] is not None and d["within_constraint"]:
                rec = finals.train(parse_json(d["spec"]), f"amortised_{method}_{tag}", log)
                d["test_accuracy"] = final_accuracy(rec)
            row[method] = d
        row["original_test_accuracy"] = final_accuracy(
            finals.train(original, f"original_{tag}", log))
        rows.append(row)
    summary = report.amortised_summary(study, rows)
    _write_json(out / "amortised.json", summary)
    (out / "amortised.md").write_text(report.amortised_markdown(summary), encoding="utf-8")
    return summary


def _shipped(cfg) -> Path:
    from ac_jax.runtime import repo_path

    return repo_path(cfg.archset.path)


def _archset(study: StudyConfig, cfg, shipped: Path, out: Path, dataset, progress, log) -> Path:
    """The archset ac_jax draws from: the config's, when it holds enough trained records for
    the budget and is labelled on validation; else one generated into the study folder."""
    needs_ac = any(m.startswith("ac_jax") for m in study.methods)
    if not needs_ac:
        return shipped
    if shipped.is_file():
        with ArchsetStore(shipped, readonly=True) as db:
            labelled_on_val = db.meta.get("evaluation") == "validation"
            trained = sum(r.status != "rejected" for r in db.records())
        if labelled_on_val and trained >= study.budget:
            return shipped
        log(f"{shipped}: {trained} trained records"
            + ("" if labelled_on_val else ", labelled on the test set")
            + "; generating the study's own archset")
    from ac_jax.archset.generate import generate

    path = out / "archset.sqlite"
    num = study.budget
    for _ in range(5):  # a few plan positions may be "rejected" (pooling cap): extend the plan
        generate(cfg, num, path, dataset=dataset, progress=progress)
        with ArchsetStore(path, readonly=True) as db:
            trained = sum(r.status != "rejected" for r in db.records())
        if trained >= study.budget:
            break
        num += study.budget - trained
    return path
