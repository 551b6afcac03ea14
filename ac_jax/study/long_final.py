"""The long final schedule (`bin/study.py ... --long-final-epochs 50`): a finished study's
final picks and the original retrained with the same recipe at another length, test read once.

The study's final schedule (6 epochs, lr /10 after 4) is the paper's Fashion-MNIST recipe
(50 epochs, lr /10 at 30: Section 5.2.1) cut to what a 2-core CPU affords. Who wins can depend
on the length: a large network fits fast and may overfit later, a small one may still be
learning after 6 epochs (the paper's CONV-7 reaches 91.46% under its recipe; ours 92.92% at 6
epochs). This stage answers that question for the networks the study already chose, so it
selects nothing: the picks are fixed (the search's, or the fidelity stage's), every one gets the
same longer schedule and seeds, and the test set is read once per network, for the report.

Order: the original first, then the methods' picks repeat by repeat (ac_jax first), so a
partial run already holds the comparison the issue asks about. Every training is stored in
``final_e<E>x<S>.sqlite`` as it finishes and checkpoints its state every `chunk_epochs` epochs
(`StoredTrainings`), so the stage can span sessions; the report (``long_final_e<E>x<S>.json /
.md``) is rewritten after every training and says how many are still pending, and the plot of
accuracy against length over every such report (`lengths`) is redrawn after every training.

With ``distill`` every pick (and, last, the original itself) is trained with knowledge
distillation from the original: Hinton et al.'s loss with the KD reference's T = 4, alpha = 0.9
(`ac_jax.baselines.distill`; not tuned here). The teacher is the original trained plainly with
this same schedule and seed 0 (`teacher`), and it is the report's "original": the network a
user hands in, trained the usual way. The original distilled from itself ("born again") is the
like-for-like row for a reader who holds both sides to the same recipe. Those stores and reports
carry ``_kd`` in their names, and the lengths plot (plain schedules) leaves them out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ac_jax.arch.json_spec import parse_json
from ac_jax.child import resume
from ac_jax.child.trainer import Distillation, TrainOptions
from ac_jax.study import lengths, report, runner, teacher
from ac_jax.study.config import StudyConfig, final_schedule

# The order picks are trained in: ac_jax's first (the question is about it), then the
# baselines the README compares it with.
ORDER = ("ac_jax_rounds", "random_search_region", "random_search", "n2n", "ac_jax")


@dataclasses.dataclass(frozen=True)
class LongFinalConfig:
    epochs: int = 50  # the paper's Fashion-MNIST length (its lr decay at 60%: epoch 30)
    seeds: int = 2
    chunk_epochs: int = 5  # checkpoint interval of each training
    # Whose picks: "search" (summary.json) or a fidelity report's name (its stage's picks).
    picks: str = "search"
    methods: tuple[str, ...] = ()  # () : every method of the study
    distill: bool = False  # KD from the original (trained plainly, seed 0) for every training
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) term

    def __post_init__(self):
        if self.epochs < 1 or self.seeds < 1 or self.chunk_epochs < 1:
            raise ValueError("the long final schedule needs epochs, seeds and chunk_epochs >= 1")
        if not self.picks:
            raise ValueError("picks must be 'search' or a fidelity report's name")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("distillation needs a temperature > 0 and 0 <= alpha <= 1")

    @property
    def tag(self) -> str:
        return f"e{self.epochs}x{self.seeds}" + ("_kd" if self.distill else "")

    @property
    def report_name(self) -> str:
        return f"long_final_{self.tag}"


class LongFinalTrainer(runner.FinalTrainer):
    """The stage's trainings: train minus validation, read on test, per arch, resumable."""

    stage = "long final schedule"

    def __init__(self, study: StudyConfig, dataset, out: Path, lf: LongFinalConfig):
        super().__init__(study, dataset, out, final_schedule(study.cfg, lf.epochs), lf.seeds,
                         f"final_{lf.tag}.sqlite", chunk_epochs=lf.chunk_epochs)
        self.lf = lf
        if lf.distill:  # a distilled record is never mixed with a plain one
            self.meta = {**self.meta, "distill": {
                "teacher": f"the original, trained plainly with this schedule, seed "
                           f"{teacher.SEED}", "temperature": lf.temperature, "alpha": lf.alpha}}

    def distil_from(self, original, variables) -> None:
        """Every training from now on learns from `original` with these trained variables."""
        self.options = TrainOptions(distill=Distillation(original, self.lf.temperature,
                                                         self.lf.alpha))
        self.teacher_variables = variables
        self._trainer = None


def picks(study: StudyConfig, out: Path, lf: LongFinalConfig) -> dict[str, list[dict]]:
    """Per method, per repeat: the network the study reports for it (spec, params, its test
    accuracy under the study's final schedule); None where the repeat failed."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    if lf.picks == "search":
        return {m: [{"repeat": r["repeat"], "params": r["params"], "spec": r["spec"],
                     "study_test_accuracy": r["test_accuracy"],
                     "study_test_seed_accuracies": r.get("test_seed_accuracies")}
                    if r["spec"] and r["within_constraint"] else {"repeat": r["repeat"]}
                    for r in summary["methods"][m]["repeats"]]
                for m in summary["methods"]}
    path = out / f"{lf.picks}.json"
    if not path.is_file():
        raise ValueError(f"{out} holds no {path.name}: run that fidelity stage first, or take "
                         "the search's picks (picks='search')")
    stage = json.loads(path.read_text(encoding="utf-8"))
    return {m: [{"repeat": r["repeat"], "params": r["pick"]["params"], "spec": r["pick"]["spec"],
                 "study_test_accuracy": r["pick"]["test_accuracy"],
                 "study_test_seed_accuracies": r["pick"].get("test_seed_accuracies")}
                if r["pick"] else {"repeat": r["repeat"]} for r in v["repeats"]]
            for m, v in stage["methods"].items()}


def run_long_final(study: StudyConfig, out: str | Path, lf: LongFinalConfig = LongFinalConfig(),
                   dataset=None, log=print) -> dict:
    """Runs (or resumes) the stage on the finished study in `out`; returns the summary it
    writes (and rewrites after every training) to long_final_e<E>x<S>.json / .md."""
    from ac_jax.data import load

    out = Path(out)
    if not (out / "summary.json").is_file():
        raise ValueError(f"{out} holds no finished study (summary.json); run the study first")
    runner._check_study_meta(study, out)
    study_summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    chosen = picks(study, out, lf)
    unknown = set(lf.methods) - set(chosen)
    if unknown:
        raise ValueError(f"no picks of {sorted(unknown)} in {lf.picks}: {', '.join(chosen)}")
    methods = [m for m in ORDER + tuple(chosen) if m in chosen
               and (not lf.methods or m in lf.methods)]
    methods = list(dict.fromkeys(methods))
    if dataset is None:
        dataset = load(study.cfg.dataset, study.cfg.data_dir)
    original = runner._network(study.model, dataset)
    trainer = LongFinalTrainer(study, dataset, out, lf)
    todo = [(parse_json(p["spec"]), f"{m}_r{p['repeat']}") for m in methods for p in chosen[m]
            if p.get("spec")]
    teacher_info = None
    if lf.distill:
        # The teacher first (every student needs it); the original as its own student last:
        # the picks are the question, the born-again original a reference.
        variables, teacher_info = teacher.load_or_train(
            original, trainer.data, trainer.schedule, out, lf.chunk_epochs, log)
        trainer.distil_from(original, variables)
        todo.append((original, "original_distilled"))
    else:
        todo.insert(0, (original, "original"))

    def write(plot: bool = True) -> dict:
        result = summarise(study, study_summary, lf, trainer, original, chosen, methods,
                           teacher_info)
        runner._write_json(out / f"{lf.report_name}.json", result)
        settings = study_summary.get("ac_jax_settings")
        (out / f"{lf.report_name}.md").write_text(markdown(result, settings), encoding="utf-8")
        if plot and not lf.distill:  # the plot compares plain schedules' lengths
            lengths.write(out, lf.picks, lf.seeds, report.titles(settings))
        return result

    # Pending counts and checkpointed progress before anything else trains; the plot shows
    # finished trainings only, so it was already drawn after the last one.
    write(plot=False)
    for arch, label in todo:
        if trainer.record(arch) is None:
            trainer.train(arch, label, log)
            write()
    return write()


def summarise(study, study_summary, lf, trainer, original, chosen, methods,
              teacher_info: dict | None = None) -> dict:
    def trained(spec_or_arch):
        arch = parse_json(spec_or_arch) if isinstance(spec_or_arch, str) else spec_or_arch
        rec = trainer.record(arch)
        if rec is None:  # how far a training killed midway got (it spans sessions)
            got = resume.peek(trainer.checkpoint_path(arch))
            return {"status": "pending", **({} if got is None else {
                "checkpointed_epochs": got["epochs_done"],
                "checkpoint_train_seconds": got["train_seconds"]})}
        return {"status": rec.status, "test_accuracy": runner.final_accuracy(rec),
                "test_seed_accuracies": list(rec.seed_accuracies),
                "train_seconds": rec.train_seconds}

    def same_seeds(seed_accuracies):
        # Seeds are 0..n-1 at every length: with fewer seeds here than the study's, the study's
        # mean over these same seeds is the like-for-like figure (init and data order alike).
        if not seed_accuracies or len(seed_accuracies) < lf.seeds:
            return None
        return sum(seed_accuracies[:lf.seeds]) / lf.seeds

    rows = {m: [{**{k: v for k, v in p.items() if k != "spec"},
                 "study_same_seeds_accuracy": same_seeds(p.get("study_test_seed_accuracies")),
                 **(trained(p["spec"]) if p.get("spec") else {"status": "failed search"})}
                for p in chosen[m]] for m in methods}
    orig = trained(original)
    pending = sum(r["status"] == "pending" for m in rows.values() for r in m) + (
        orig["status"] == "pending")
    distillation = None
    if lf.distill:  # the report's original is the teacher; the store's, its born-again self
        distillation = {"temperature": lf.temperature, "alpha": lf.alpha,
                        "teacher_seed": teacher.SEED, "original_distilled": orig}
        orig = {"status": "ok", "test_accuracy": teacher_info["test_accuracy"],
                "test_seed_accuracies": [teacher_info["test_accuracy"]],
                "train_seconds": teacher_info["train_seconds"]}
    study_original = study_summary["original"]
    return {
        "study": str(trainer.path.parent), "model": study.model,
        "constraint": study_summary["constraint"],
        "picks": lf.picks,
        "schedule": dataclasses.asdict(trainer.schedule), "seeds": lf.seeds,
        "train_images": int(trainer.data.train_x.shape[0]), "evaluation": "test",
        "study_final_schedule": study_summary["final_schedule"],
        "original": {"params": original.num_params, **orig,
                     "study_test_accuracy": study_original["test_accuracy"],
                     "study_same_seeds_accuracy": same_seeds(
                         study_original.get("test_seed_accuracies"))},
        "methods": {m: {"repeats": r} for m, r in rows.items()},
        "pending": pending,
        "distill": distillation,
        "machine": report._machine(),
    }


def status(row: dict) -> str:
    """A training without a test figure: its status, and for a pending one its checkpoint."""
    if "checkpointed_epochs" not in row:
        return row["status"]
    return f"{row['status']} ({row['checkpointed_epochs']} epochs checkpointed)"


def in_progress(s: dict) -> str:
    """' (in progress: original 30 of 50 epochs, ...)' for the pending trainings that have a
    checkpoint; '' when none has."""
    epochs = s["schedule"]["epochs"]
    rows = [("original", s["original"])] + [
        (f"{m}_r{r['repeat']}", r) for m, v in s["methods"].items() for r in v["repeats"]]
    if s.get("distill"):
        rows.append(("original_distilled", s["distill"]["original_distilled"]))
    started = [f"{label} {r['checkpointed_epochs']} of {epochs} epochs" for label, r in rows
               if "checkpointed_epochs" in r]
    return f" (in progress: {', '.join(started)})" if started else ""


def markdown(s: dict, settings: dict | None = None) -> str:
    titles = report.titles(settings)
    sched, study_sched = s["schedule"], s["study_final_schedule"]
    pct = report._pct
    orig = s["original"]

    def length(d):
        decay = ", ".join(map(str, d["lr_decay_epochs"]))
        factor = f"{d['lr_decay_factor']:g}"
        return f"{d['epochs']} epochs ({f'lr /{factor} after {decay}' if decay else 'constant lr'})"

    kd = s.get("distill")
    teacher_note = f"the teacher, trained plainly, seed {kd['teacher_seed']}; " if kd else ""
    lines = [
        f"# Long final schedule: the study's picks and the original at {length(sched)} x "
        f"{s['seeds']} seeds" + (", distilled from the original" if kd else ""),
        "",
        f"Study: {s['study']} ({s['model']}, at most {s['constraint']['max_params']:,} "
        f"parameters). Picks: {'the searches' if s['picks'] == 'search' else s['picks']}, "
        f"fixed before this stage; each trained on {s['train_images']:,} images, test read once. "
        f"The study's final schedule: {length(study_sched)}."
        + (f" **{s['pending']} training(s) still pending**{in_progress(s)}: rerun the same "
           "command to continue." if s["pending"] else ""),
        "",
        f"Original ({teacher_note}{orig['params']:,} parameters): "
        f"{pct(orig['test_accuracy']) + '%' if 'test_accuracy' in orig else status(orig)} "
        f"(study schedule {pct(orig['study_test_accuracy'])}%; over the same "
        f"{s['seeds']} seed(s): {pct(orig.get('study_same_seeds_accuracy'))}%).",
        "",
    ]
    if kd:
        self_kd = kd["original_distilled"]
        lines += [
            f"Every pick learns from the teacher by knowledge distillation (Hinton et al.: "
            f"T = {kd['temperature']:g}, alpha = {kd['alpha']:g} on the soft term), same "
            "schedule and seeds; the study-schedule columns are the same picks trained plainly. "
            "The original distilled from itself (born again), the like-for-like row: "
            + (f"{pct(self_kd['test_accuracy'])}%." if "test_accuracy" in self_kd
               else f"{status(self_kd)}."),
            "",
        ]
    lines += [
        "| method | repeats done | test % at this length | per repeat | study schedule % "
        "| study schedule, same seeds % | >= original | params |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    base = orig.get("test_accuracy")
    for method, m in s["methods"].items():
        reps = m["repeats"]
        done = [r["test_accuracy"] for r in reps if r.get("test_accuracy") is not None]

        def beside(study_key):  # the study's figure vs this length's, over the same repeats
            pairs = [(r[study_key], r["test_accuracy"]) for r in reps
                     if r.get("test_accuracy") is not None and r.get(study_key) is not None]
            if not pairs:
                return "—"
            return (f"{report._pm([b for b, _ in pairs])} "
                    f"(vs {report._pm([a for _, a in pairs])})")
        per = " / ".join(pct(r["test_accuracy"]) if r.get("test_accuracy") is not None
                         else status(r) for r in reps)
        at_least = (f"{sum(a >= base for a in done)}/{len(done)}"
                    if base is not None and done else "—")
        params = " / ".join(f"{r['params']:,}" if r.get("params") else "—" for r in reps)
        lines.append(
            f"| {titles.get(method, method)} | {len(done)} of {len(reps)} | {report._pm(done)} | "
            f"{per} | {beside('study_test_accuracy')} | {beside('study_same_seeds_accuracy')} | "
            f"{at_least} | {params} |")
    lines += ["", "Mean ± sample std over the finished repeats; the study-schedule columns are the "
              "same picks' test accuracy under the study's final schedule (over all its seeds, "
              "then over this stage's seeds only), beside this length's over the same repeats.",
              "", f"Machine: {s['machine']['backend']} {s['machine']['cpu']} "
              f"({s['machine']['cores']} cores), jax {s['machine']['jax']}."]
    return "\n".join(lines) + "\n"
