"""The study's outputs: summary.json, a Markdown table (mean +- spread, RI vs random search) and
the anytime plot (best validation accuracy found vs architectures trained)."""

from __future__ import annotations

import dataclasses
import math
import platform
import warnings

import numpy as np

from ac_jax.plotting import figure


def titles(settings: dict | None) -> dict:
    """Row names; ac_jax's say which decoding and refinement ran (None: the issue-20 study's,
    the paper's decoding and Pareto-spread rounds)."""
    legacy = settings is None or settings.get("plain_decoding", True)
    out = dict(TITLES)
    if not legacy:
        out["ac_jax"] = "ac_jax (anchored search, no refinement)"
    if settings is not None and settings.get("acquisition") == "ucb":
        out["ac_jax_rounds"] = "ac_jax (active refinement)"
    return out


TITLES = {"ac_jax": "ac_jax (paper mode)", "ac_jax_rounds": "ac_jax (refinement rounds)",
          "random_search": "random search", "n2n": "N2N (RL)",
          "random_search_region": "random search, region sampler"}


def _machine() -> dict:
    import jax

    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": getattr(device, "device_kind", ""),
            "cpu": platform.processor() or platform.machine(), "cores": _cores(),
            "jax": jax.__version__}


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def summary(study, original, original_rec, max_params: int, runs: dict, references: dict,
            final_schedule) -> dict:
    methods = {}
    for method, method_runs in runs.items():
        rows = []
        for d in method_runs:
            final = d.get("final") or {}
            rows.append({
                "repeat": d["repeat"], "search_seed": d["search_seed"],
                "trained_archs": d["trained_archs"], "params": d["params"],
                "val_accuracy": d["val_accuracy"], "test_accuracy": final.get("test_accuracy"),
                "test_seed_accuracies": final.get("test_seed_accuracies"),
                "seconds": d["seconds"], "within_constraint": d["within_constraint"],
                "spec": d["spec"], "notes": d["notes"],
                **({"surrogate": _surrogate_ranking(d["details"])}
                   if "surrogate_holdout" in d.get("details", {}) else {}),
            })
        methods[method] = {"repeats": rows}
    cfg = study.cfg
    return {
        "dataset": cfg.dataset,
        "config": cfg.name,
        "model": study.model,
        "original": {"params": original.num_params,
                     "test_accuracy": (original_rec.mean_accuracy if original_rec.status == "ok"
                                       else None),
                     "test_seed_accuracies": list(original_rec.seed_accuracies),
                     "status": original_rec.status},
        "constraint": {"max_params": max_params, "target_ratio": study.target_ratio},
        "budget": study.budget,
        "repeats": study.repeats,
        "proxy_schedule": dataclasses.asdict(cfg.archset.schedule),
        "proxy_seeds": cfg.archset.seeds,
        "final_schedule": dataclasses.asdict(final_schedule),
        "final_seeds": study.final_seeds,
        "protocol": "selection on the validation split carved from the training set "
                    "(ac_jax.data.protocol); test read once, for these numbers",
        "machine": _machine(),
        "methods": methods,
        "references": references,
    }


def _surrogate_ranking(details: dict) -> dict:
    """An ac_jax run's surrogate: Kendall tau on its held-out archset records, and on the
    candidates its refinement proposed and trained (`refine.proposal_ranking`)."""
    from ac_jax.compress.pipeline import proposal_ranking

    held = details["surrogate_holdout"]
    proposals = proposal_ranking(details.get("rounds") or [])
    final = (details.get("rounds") or [{}])[-1]
    return {"holdout_tau": held.get("accuracy_kendall_tau"), "holdout_records": held.get("num"),
            "proposal_tau": proposals["kendall_tau"], "proposals": proposals["count"],
            "proposal_ceiling": proposals.get("oracle_tau"),
            # refinement only: how many of those proposals came from the region pool, and
            # where the final pick was proposed (archset, pool or search)
            "from_pool": proposals["from_pool"] if proposals["count"] else None,
            "pick_source": final.get("pick_source")}


def _stats(values) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def _pm(values, scale: float = 100.0, digits: int = 2) -> str:
    s = _stats(values)
    if s is None:
        return "—"
    mean, std, n = s  # std: the sample standard deviation over repeats (ddof 1)
    return f"{scale * mean:,.{digits}f} ± {scale * std:,.{digits}f}" + ("" if n > 1 else " (1)")


def _tau(tau, count, ceiling=None) -> str:
    """'tau (count)', with the labels' estimated ceiling for a perfect predictor when known."""
    text = f"{'—' if tau is None or math.isnan(tau) else f'{tau:.2f}'} ({count or 0}"
    return text + (f"; ceiling {ceiling:.2f})" if ceiling is not None else ")")


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def relative_improvement(method_rows: list, random_rows: list) -> list[float]:
    """RI = 100 (acc_method - acc_random) / acc_random per repeat (paired by repeat index), on
    test accuracy after the final schedule (Yang et al., ICLR 2020)."""
    by_repeat = {r["repeat"]: r["test_accuracy"] for r in random_rows}
    out = []
    for r in method_rows:
        base = by_repeat.get(r["repeat"])
        if base and r["test_accuracy"] is not None:
            out.append(100.0 * (r["test_accuracy"] - base) / base)
    return out


def markdown(s: dict) -> str:
    names = titles(s.get("ac_jax_settings"))
    o = s["original"]
    fs = s["final_schedule"]
    if o["test_accuracy"] is not None:
        seeds = ", ".join(f"{100 * a:.2f}%" for a in o["test_seed_accuracies"])
        original = (f"- original: {o['params']:,} parameters, test accuracy "
                    f"{100 * o['test_accuracy']:.2f}% (seeds: {seeds})")
    else:
        original = f"- original: {o['params']:,} parameters (final training {o['status']})"
    lines = [
        f"# Equal-budget study: {s['config']}, {s['model']}",
        "",
        original,
        f"- constraint: at most {s['constraint']['max_params']:,} parameters "
        f"({s['constraint']['target_ratio']:g}x); budget {s['budget']} trained architectures per "
        f"method and repeat; {s['repeats']} repeat(s) with different search seeds",
        f"- proxy: {s['proxy_schedule']['epochs']} epoch(s) x {s['proxy_seeds']} seeds on "
        f"{s['proxy_schedule']['train_subset'] or 'all'} training images, validation accuracy on "
        f"{s['proxy_schedule']['test_subset'] or 'all'} validation images; final: "
        f"{fs['epochs']} epochs (lr {fs['lr']:g}, /10 at {list(fs['lr_decay_epochs'])}), "
        f"{s['final_seeds']} seeds, training set minus validation, test set",
        f"- {s['protocol']}; machine: {s['machine']['cpu']} ({s['machine']['cores']} cores, "
        f"{s['machine']['backend']})",
        "",
        "| method | trained archs | params | compression | val acc. (proxy) % | test acc. % "
        "| RI vs random % | test >= random | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    random_rows = s["methods"].get("random_search", {}).get("repeats", [])
    for method, m in s["methods"].items():
        rows = m["repeats"]
        params = [r["params"] for r in rows if r["params"]]
        ratio = _stats([o["params"] / p for p in params])
        ri = relative_improvement(rows, random_rows) if method != "random_search" else []
        wins = ""
        if method != "random_search" and random_rows:
            base = {r["repeat"]: r["test_accuracy"] for r in random_rows}
            pairs = [(r["test_accuracy"], base.get(r["repeat"])) for r in rows]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            wins = f"{sum(a >= b for a, b in pairs)}/{len(pairs)}"
        over = sum(not r["within_constraint"] for r in rows)
        failed = f" ({over} of {len(rows)}: no pick within the constraint)" if over else ""
        lines.append(
            f"| {names.get(method, method)}{failed} "
            f"| {_pm([r['trained_archs'] for r in rows], 1, 0)} "
            f"| {_pm(params, 1, 0)} | {'—' if ratio is None else f'{ratio[0]:.1f}x'} "
            f"| {_pm([r['val_accuracy'] for r in rows])} "
            f"| {_pm([r['test_accuracy'] for r in rows])} "
            f"| {_pm(ri, 1) if method != 'random_search' else '0 (reference)'} | {wins or '—'} "
            f"| {_pm([r['seconds'] for r in rows], 1, 0)} |")
    for name, r in (s.get("references") or {}).items():
        val, acc = _pct(r.get("val_accuracy")), _pct(r.get("test_accuracy"))
        runs = (f"{len(r['test_seed_accuracies'])} seeds" if r.get("test_seed_accuracies")
                else "1 run")
        lines.append(
            f"| {r['method']} (reference, {runs}) | — | {r['params']:,} "
            f"| {o['params'] / r['params']:.1f}x | {val} | {acc} | — | — | {r['seconds']:.0f} |")
    ranked = [(method, [r["surrogate"] for r in m["repeats"] if "surrogate" in r])
              for method, m in s["methods"].items()]
    ranked = [(method, rows) for method, rows in ranked if rows]
    if ranked:
        lines += ["", "| surrogate of | held-out tau (records) | tau on its trained proposals "
                  "(count; label ceiling) | trained proposals from the region pool "
                  "| pick proposed by |",
                  "|---|---|---|---|---|"]
        for method, rows in ranked:
            held = "; ".join(_tau(r["holdout_tau"], r["holdout_records"]) for r in rows)
            own = "; ".join(_tau(r["proposal_tau"], r["proposals"], r.get("proposal_ceiling"))
                            for r in rows)
            pooled = "; ".join("—" if r.get("from_pool") is None else str(r["from_pool"])
                               for r in rows)
            source = "; ".join(r.get("pick_source") or "—" for r in rows)
            lines.append(f"| {names.get(method, method)} | {held} | {own} | {pooled} | {source} |")
    lines += ["", "Mean ± sample standard deviation over repeats. Val acc.: the pick's proxy validation "
              "accuracy (what the search chose on). Test acc.: the pick retrained with the final "
              "schedule, mean over its seeds; a repeat whose pick breaks the constraint has none "
              "(params and val acc. still show what it returned). RI: 100 (acc - acc_random) / "
              "acc_random on test accuracy, paired by repeat.", ""]
    return "\n".join(lines)


def progress(runs: dict, budget: int, repeats: int, settings: dict | None = None) -> str:
    """The searches finished so far (before the final schedule): a table written after each."""
    names = titles(settings)
    lines = [f"# Study progress: {sum(map(len, runs.values()))} of "
             f"{len(runs) * repeats} searches done (budget {budget})", "",
             "| method | repeat | trained archs | params | val acc. (proxy) % | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, method_runs in runs.items():
        for d in method_runs:
            val = "—" if d["val_accuracy"] is None else f"{100 * d['val_accuracy']:.2f}"
            params = "—" if not d["params"] else f"{d['params']:,}"
            flag = "" if d["within_constraint"] else " (over the constraint)"
            lines.append(f"| {names.get(method, method)} | {d['repeat']} | {d['trained_archs']} "
                         f"| {params}{flag} | {val} | {d['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def best_so_far(curve: list, budget: int) -> np.ndarray:
    """Best validation accuracy after each of `budget` trainings (NaN before the first valid
    one; the last value carried on when a run trained fewer)."""
    best, out = -np.inf, []
    for v in curve[:budget]:
        if v is not None and not math.isnan(v):
            best = max(best, v)
        out.append(best if np.isfinite(best) else np.nan)
    while len(out) < budget:
        out.append(out[-1] if out else np.nan)
    return np.asarray(out, np.float64)


def plot_anytime(runs: dict, path, budget: int, settings: dict | None = None) -> None:
    x = np.arange(1, budget + 1)
    with figure(path) as (_, ax, _):
        for method, method_runs in runs.items():
            curves = np.stack([best_so_far(d["curve"], budget) for d in method_runs])
            with warnings.catch_warnings():  # all-NaN columns before any valid training
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curves, axis=0)
                lo, hi = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
            label = f"{titles(settings).get(method, method)} ({len(curves)} repeats)"
            (line,) = ax.plot(x, mean, label=label)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("architectures trained")
        ax.set_ylabel("best validation accuracy so far (within the constraint)")
        ax.set_title("anytime performance: mean, min-max over repeats", fontsize=9)


def amortised_summary(study, rows: list) -> dict:
    """Per network: ac_jax's trainings beyond the shared archset vs random search's."""
    nets = []
    shared = None
    for row in rows:
        ac, rs = row["ac_jax_rounds"], row["random_search"]
        archset = ac["details"].get("archset_records", 0)
        shared = archset if shared is None else shared
        nets.append({
            "model": row["model"], "params": row["params"], "max_params": row["max_params"],
            "original_test_accuracy": row["original_test_accuracy"],
            "ac_jax": {"extra_trainings": ac["trained_archs"] - archset, "params": ac["params"],
                       "val_accuracy": ac["val_accuracy"], "test_accuracy": ac.get("test_accuracy"),
                       "within_constraint": ac["within_constraint"]},
            "random_search": {"trainings": rs["trained_archs"], "params": rs["params"],
                              "val_accuracy": rs["val_accuracy"],
                              "test_accuracy": rs.get("test_accuracy"),
                              "within_constraint": rs["within_constraint"]},
        })
    total_ac = (shared or 0) + sum(n["ac_jax"]["extra_trainings"] for n in nets)
    total_rs = sum(n["random_search"]["trainings"] for n in nets)
    return {"config": study.cfg.name, "budget": study.budget, "target_ratio": study.target_ratio,
            "shared_archset_records": shared, "networks": nets,
            "total_trainings": {"ac_jax": total_ac, "random_search": total_rs}}


def amortised_markdown(s: dict) -> str:
    lines = [f"# Amortised case: {len(s['networks'])} networks, one archset ({s['config']})", "",
             f"ac_jax (refinement rounds) shares one archset subset of "
             f"{s['shared_archset_records']} records and one surrogate across the networks; "
             f"random search spends {s['budget']} trainings on each. Constraint: at most 1/"
             f"{s['target_ratio']:g} of each network's parameters. Total trainings: ac_jax "
             f"{s['total_trainings']['ac_jax']}, random search "
             f"{s['total_trainings']['random_search']}.", "",
             "| network | params | original test % | ac_jax extra trainings | ac_jax params | "
             "ac_jax val / test % | random search trainings | random params | random val / "
             "test % |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in s["networks"]:
        ac, rs = n["ac_jax"], n["random_search"]
        lines.append(
            f"| {n['model']} | {n['params']:,} | {_pct(n['original_test_accuracy'])} "
            f"| {ac['extra_trainings']} | {ac['params'] or 0:,}"
            f"{'' if ac['within_constraint'] else ' (over)'} "
            f"| {_pct(ac['val_accuracy'])} / {_pct(ac['test_accuracy'])} "
            f"| {rs['trainings']} | {rs['params'] or 0:,} "
            f"| {_pct(rs['val_accuracy'])} / {_pct(rs['test_accuracy'])} |")
    return "\n".join(lines) + "\n"
