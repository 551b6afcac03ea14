"""A higher-fidelity last stage for a finished study (bin/study.py --fidelity-top K).

Every search picks its network on the proxy (on the 2-core CPU: 1 epoch on 4,000 images), and
in the issue-21 study that proxy did not predict the final ranking (random search's repeat 0:
the best proxy record, 81.70%, tested at 90.93%). This stage is the same for every method that
measured its candidates: each search's `top` best distinct proxy records under the constraint
are retrained with a longer schedule (the final recipe shortened to `epochs`, on the whole
training set minus the validation split, `seeds` seeds) and judged on the validation split; the
best of them on that accuracy is the stage's pick, which then gets the study's final schedule
(test, read once, as for the searches' own picks). Its cost is reported beside the budget:
`top` extra trainings per search, and their size in proxy trainings' worth of images.

ac_jax's paper mode is left out: it trains nothing after the archset, so it has no measured
candidates of its own (its surrogate's pick was never trained by the search).

Outputs, beside the study's (the study folder must hold a finished study):

  fidelity_e<E>x<S>.sqlite            every fidelity training, keyed by architecture (a network
                                      in several methods' top lists trains once)
  fidelity_top<K>_e<E>x<S>.json, .md  the stage's picks and their test accuracy
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ac_jax.arch.json_spec import parse_json, to_json
from ac_jax.archset.report import kendall_tau
from ac_jax.archset.store import ArchsetStore, Record
from ac_jax.child.trainer import to_device
from ac_jax.data import protocol
from ac_jax.study import report, runner
from ac_jax.study.config import StudyConfig, final_schedule, refine_trainings

# Methods whose searches trained (and stored) their candidates, and where those records live.
FIDELITY_METHODS = ("ac_jax_rounds", "random_search", "random_search_region", "n2n")


@dataclasses.dataclass(frozen=True)
class FidelityConfig:
    top: int = 3  # candidates retrained per search
    epochs: int = 2  # the final recipe at this length (lr / 10 at 60%)
    seeds: int = 2  # as the final schedule: one seed alone differs by up to 1.7% there

    def __post_init__(self):
        if self.top < 1 or self.epochs < 1 or self.seeds < 1:
            raise ValueError("the fidelity stage needs top, epochs and seeds >= 1")

    @property
    def tag(self) -> str:
        return f"e{self.epochs}x{self.seeds}"

    @property
    def report_name(self) -> str:  # the stem of the .json / .md it writes
        return f"fidelity_top{self.top}_{self.tag}"


def search_records(study: StudyConfig, out: Path, method: str, run: dict,
                   archset_paths: list) -> list[Record]:
    """Every proxy training a finished search spent, as stored by the study."""
    repeat = run["repeat"]
    if method in ("random_search", "random_search_region", "n2n"):
        paths = [out / f"{method}_r{repeat}.sqlite"]
        records = []
    elif method == "ac_jax_rounds":
        from ac_jax.study.methods import archset_subset

        # The archset subset the surrogate was trained on (drawn again with the search's seed:
        # `archset_subset` is deterministic), then the refinement's own trainings.
        size = study.budget - refine_trainings(study.rounds, study.refine_top)
        _, records = archset_subset(archset_paths, size, run["search_seed"],
                                    study.cfg.surrogate.arch.max_len, study.region_share)
        paths = sorted((out / "work" / f"{method}_r{repeat}" / "refine").glob("*/refine.sqlite"))
        if not paths:
            raise ValueError(f"{out}: no refinement store for {method} repeat {repeat}")
    else:
        raise ValueError(f"{method} has no measured candidates; the fidelity stage takes "
                         f"{', '.join(FIDELITY_METHODS)}")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path} is missing: the study's {method} repeat {repeat} is not "
                             "in this folder")
        with ArchsetStore(path, readonly=True) as db:
            records += sorted(db.records(), key=lambda r: r.idx)
    return records


def top_candidates(records: list[Record], max_params: int, original, top: int) -> list[Record]:
    """The `top` best distinct architectures on proxy validation accuracy that trained, meet the
    constraint and are not the original (ties keep training order)."""
    best: dict = {}
    for rec in records:
        if rec.status != "ok" or rec.num_params > max_params or rec.arch == original:
            continue
        if rec.arch not in best or rec.mean_accuracy > best[rec.arch].mean_accuracy:
            best[rec.arch] = rec
    ranked = sorted(best.values(), key=lambda r: -r.mean_accuracy)  # stable: training order
    return ranked[:top]


class FidelityTrainer(runner.StoredTrainings):
    """The stage's trainings: train minus validation (whole), judged on validation, per arch."""

    stage = "fidelity"

    def __init__(self, study: StudyConfig, dataset, out: Path, fid: FidelityConfig):
        schedule = final_schedule(study.cfg, fid.epochs)
        view = protocol.search_view(dataset)
        self.train_size = len(view.train_y)
        data = to_device(view, schedule)
        meta = {"kind": "study_fidelity", "dataset": study.cfg.dataset,
                "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                "schedule": dataclasses.asdict(schedule), "seeds": fid.seeds,
                **protocol.SEARCH_META}
        super().__init__(data, schedule, list(range(fid.seeds)), out / f"fidelity_{fid.tag}.sqlite",
                         meta)

    def _describe(self) -> str:
        return f"{super()._describe()} on {self.train_size:,} images"


def run_fidelity(study: StudyConfig, out: str | Path, fid: FidelityConfig = FidelityConfig(),
                 dataset=None, log=print) -> dict:
    """Runs (or resumes) the fidelity stage on the finished study in `out`; returns the summary
    it writes to fidelity_top<K>_e<E>x<S>.json / .md."""
    from ac_jax.data import load

    out = Path(out)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{out} holds no finished study (summary.json); run the study first")
    runner._check_study_meta(study, out)  # the same settings, or the records mean other things
    study_summary = json.loads(summary_path.read_text(encoding="utf-8"))
    cfg = study.cfg
    if dataset is None:
        dataset = load(cfg.dataset, cfg.data_dir)
    original = runner._network(study.model, dataset)
    max_params = int(original.num_params // study.target_ratio)
    archset_paths = []
    if "ac_jax_rounds" in study.methods:
        archset = runner._archset(study, cfg, runner._shipped(cfg), out, dataset, False, log)
        archset_paths = [archset, *runner._ac_jax_context(study)["extra_archsets"]]
    fidelity = FidelityTrainer(study, dataset, out, fid)
    finals = runner.FinalTrainer(study, dataset, out)
    methods, pairs = {}, []
    for method in [m for m in study.methods if m in FIDELITY_METHODS]:
        rows = []
        runs = (json.loads(p.read_text()) for p in out.glob(f"runs/{method}_r[0-9]*.json"))
        for d in sorted(runs, key=lambda d: d["repeat"]):
            label = f"{method}_r{d['repeat']}"
            tops = top_candidates(search_records(study, out, method, d, archset_paths),
                                  max_params, original, fid.top)
            cands = []
            for rank, rec in enumerate(tops):
                frec = fidelity.train(rec.arch, f"{label}_top{rank}", log)
                val = runner.final_accuracy(frec)
                cands.append({"params": rec.num_params, "proxy_val_accuracy": rec.mean_accuracy,
                              "fidelity_status": frec.status, "fidelity_val_accuracy": val,
                              "arch": rec.arch})
                if val is not None:
                    pairs.append((rec.mean_accuracy, val))
            trained = [c for c in cands if c["fidelity_val_accuracy"] is not None]
            search_pick = parse_json(d["spec"]) if d["spec"] and d["within_constraint"] else None
            if trained:  # max keeps the first of equals: the better proxy record
                pick = max(trained, key=lambda c: c["fidelity_val_accuracy"])["arch"]
            else:  # nothing trained at this fidelity: the search's own pick stands
                pick = search_pick
            final = finals.train(pick, f"{label}_fidelity", log) if pick is not None else None
            for c in cands:
                c["spec_is_pick"] = c.pop("arch") == pick
            rows.append({
                "repeat": d["repeat"], "search_seed": d["search_seed"],
                "search_pick": {"params": d["params"], "val_accuracy": d["val_accuracy"],
                                "test_accuracy": _search_test(study_summary, method,
                                                              d["repeat"])},
                "candidates": cands,
                "pick": None if pick is None else {
                    "params": pick.num_params, "spec": to_json(pick),
                    "test_accuracy": runner.final_accuracy(final),
                    "test_seed_accuracies": list(final.seed_accuracies),
                    "changed": pick != search_pick},
            })
        methods[method] = {"repeats": rows}
    proxy = cfg.archset.schedule
    proxy_images = study.budget * proxy.epochs * cfg.archset.seeds * (
        proxy.train_subset or fidelity.train_size)
    stage_images = fid.top * fid.epochs * fid.seeds * fidelity.train_size
    result = {
        "study": str(out), "model": study.model, "budget": study.budget,
        "constraint": {"max_params": max_params, "target_ratio": study.target_ratio},
        "original": study_summary["original"],
        "fidelity": {**dataclasses.asdict(fid), "schedule": dataclasses.asdict(fidelity.schedule),
                     "train_images": fidelity.train_size,
                     "evaluation": "validation"},
        "final_schedule": study_summary["final_schedule"],
        # The stage's spend per search, in the proxy trainings' currency (images seen).
        "cost": {"extra_trainings": fid.top, "images": stage_images,
                 "budget_images": proxy_images,
                 "fraction_of_budget": stage_images / proxy_images},
        "proxy_vs_fidelity_tau": kendall_tau(*zip(*pairs)) if len(pairs) > 1 else None,
        "proxy_vs_fidelity_pairs": len(pairs),
        "methods": methods,
        "machine": report._machine(),
    }
    name = fid.report_name
    runner._write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(markdown(result, study_summary.get("ac_jax_settings")),
                                    encoding="utf-8")
    return result


def _search_test(study_summary: dict, method: str, repeat: int) -> float | None:
    rows = study_summary["methods"].get(method, {}).get("repeats", [])
    return next((r["test_accuracy"] for r in rows if r["repeat"] == repeat), None)


def markdown(s: dict, settings: dict | None = None) -> str:
    f, c = s["fidelity"], s["cost"]
    titles = report.titles(settings)
    pct = report._pct
    lines = [
        f"# Fidelity stage: each search's top {f['top']} proxy records retrained "
        f"({f['epochs']} epochs x {f['seeds']} seeds on {f['train_images']:,} images, "
        "judged on validation), the best one to the final schedule",
        "",
        f"Study: {s['study']} ({s['model']}, at most {s['constraint']['max_params']:,} "
        f"parameters, budget {s['budget']}). The stage adds {c['extra_trainings']} trainings per "
        f"search, {c['images']:,} images: {100 * c['fraction_of_budget']:.0f}% of the budget's "
        f"{c['budget_images']:,} proxy images, the same for every method. Original: "
        f"{pct(s['original']['test_accuracy'])}% test.",
        "",
        "| method | search's pick: test % | stage's pick: test % | per repeat (search -> stage) "
        "| picks changed | stage pick's params |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for method, m in s["methods"].items():
        rows = m["repeats"]
        before = [r["search_pick"]["test_accuracy"] for r in rows]
        after = [r["pick"]["test_accuracy"] if r["pick"] else None for r in rows]
        per = " / ".join(f"{pct(a)} -> {pct(b)}" for a, b in zip(before, after))
        changed = sum(bool(r["pick"] and r["pick"]["changed"]) for r in rows)
        params = " / ".join(f"{r['pick']['params']:,}" if r["pick"] else "—" for r in rows)
        lines.append(f"| {titles.get(method, method)} | {report._pm(before)} | "
                     f"{report._pm(after)} | {per} | {changed} of {len(rows)} | {params} |")
    tau = s["proxy_vs_fidelity_tau"]
    lines += ["", f"Kendall tau between proxy and fidelity validation accuracy over the "
              f"{s['proxy_vs_fidelity_pairs']} retrained candidates (all methods pooled): "
              + ("—" if tau is None else f"{tau:.2f}") + ".", "",
              "| method | repeat | candidate | params | proxy val % | fidelity val % | picked |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for method, m in s["methods"].items():
        for r in m["repeats"]:
            for i, cand in enumerate(r["candidates"]):
                lines.append(
                    f"| {titles.get(method, method)} | {r['repeat']} | {i + 1} | "
                    f"{cand['params']:,} | {pct(cand['proxy_val_accuracy'])} | "
                    + (pct(cand["fidelity_val_accuracy"]) if cand["fidelity_status"] == "ok"
                       else cand["fidelity_status"])
                    + f" | {'yes' if cand['spec_is_pick'] else ''} |")
    mach = s["machine"]
    lines += ["", f"Machine: {mach['backend']} {mach['device']} ({mach['cpu']}, {mach['cores']} "
              f"cores), jax {mach['jax']}.", ""]
    return "\n".join(lines)
