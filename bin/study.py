#!/usr/bin/env python3
"""The equal-budget study: ac_jax vs random search vs N2N at the same number of trained
architectures, the same proxy and final schedules, several repeats (README, "The study").

  python bin/study.py --dataset fashion_mnist --model conv7 --target-ratio 8 --budget 200 --repeats 3
  python bin/study.py --dataset tiny --model tinycnn --budget 10 --repeats 2 --rounds 1 \\
      --refine-top 2 --final-epochs 1 --surrogate-steps 40 --out /tmp/study   # a few minutes

Every method gets the constraint "at most 1/ratio of the original's parameters" and spends
--budget trained architectures per repeat (ac_jax's archset records counted in it); each repeat
uses another search seed. Selection reads the validation split carved from the training set; the
picks and the original are then retrained with the final schedule (--final-epochs, --final-seeds)
and read the test set once. Resumable: rerun the same command after a kill; every training is in
a store under --out. Writes summary.json, summary.md and anytime.png to --out (default
results/study/<dataset>_<model>); with --amortised, also amortised.json / amortised.md:

  python bin/study.py --dataset fashion_mnist --model conv7 --budget 100 --amortised lenet5,conv4

With --fidelity-top K, a finished study gets a last stage, alike for every method that measured
its candidates: each search's K best proxy records are retrained with the final recipe at
--fidelity-epochs on the whole training split, judged on validation, and the best is final-
trained (fidelity_top<K>_e<E>x<S>.json / .md; README, "The fidelity stage").

With --long-final-epochs E, the original and the study's picks (the fidelity stage's with
--fidelity-top) are retrained with the final recipe at E epochs (the paper's 50), test read
once, to see whether the comparison holds at the paper's length; each training checkpoints every
--long-final-chunk epochs, so a run of hours resumes (long_final_e<E>x<S>.json / .md). With
--long-final-distill as well, every pick learns from the original by knowledge distillation
(long_final_e<E>x<S>_kd.json / .md; the teacher's weights in teacher_e<E>.msgpack).

On a CPU backend the variant defaults to "cpu" where the config has one (the shipped archset's
proxy: 1 epoch x 2 seeds on 4,000 images).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ac_jax import cli  # noqa: E402


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")


def parse_args(argv):
    from ac_jax.compress.refine import DEFAULT_POOL
    from ac_jax.study.config import METHODS, OPTIONAL_METHODS, OPTIONAL_REFERENCES, REFERENCES

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_args(p)
    p.add_argument("--model", help="zoo name or printout/JSON file (default: the config's)")
    p.add_argument("--target-ratio", type=float, default=8.0,
                   help="constraint: at most original params / ratio (default 8, the paper's "
                        "7.61x regime)")
    p.add_argument("--budget", type=int, default=200,
                   help="trained architectures per method and repeat (default 200)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", type=_names, default=METHODS,
                   help=f"comma-separated, of {','.join(METHODS + OPTIONAL_METHODS)} "
                        f"(default: {','.join(METHODS)})")
    p.add_argument("--references", type=_names, default=REFERENCES,
                   help=f"reference rows: of {','.join(REFERENCES + OPTIONAL_REFERENCES)}, or "
                        f"none (default: {','.join(REFERENCES)}; thin: the original uniformly "
                        "thinned to the constraint, trained from scratch like the picks)")
    p.add_argument("--final-epochs", type=int, help="final schedule length (default 6; the "
                   "config's recipe with the learning rate /10 at 60%%)")
    p.add_argument("--final-seeds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="ac_jax_rounds: refinement rounds")
    p.add_argument("--refine-top", type=int, default=6, help="candidates trained per round")
    p.add_argument("--surrogate-steps", type=int, help="surrogate training steps (default: "
                   "the config's)")
    p.add_argument("--seed", type=int, default=0, help="repeat r uses search seed SEED + r")
    cli.add_ray_args(p)
    a = p.add_argument_group("ac_jax's settings (issue 21)")
    a.add_argument("--plain-decoding", action="store_true",
                   help="the paper's decoding (the issue-20 study's; default: anchored search)")
    a.add_argument("--acquisition", choices=("ucb", "pareto"), default="ucb",
                   help="ac_jax_rounds' refinement: ucb (active learning, default) or pareto "
                        "(the issue-20 study's)")
    a.add_argument("--pool", type=int, default=DEFAULT_POOL, metavar="N",
                   help="ucb: region samples per round the acquisition ranks besides the "
                        "search's candidates (default %(default)s; 0: the search's only)")
    a.add_argument("--extra-archsets", nargs="+", default=(), metavar="FILE",
                   help="archset files ac_jax draws from besides the config's (e.g. "
                        "archsets/fashion_mnist_cpu_region.sqlite)")
    a.add_argument("--region-share", type=float,
                   help="share of ac_jax's archset subset drawn from region records")
    p.add_argument("--amortised", type=_names, default=(), metavar="M1,M2",
                   help="after the study, the amortised case: these networks (zoo names or "
                        "files) compressed with repeat 0's archset subset and surrogate, each "
                        "with its own refinement rounds, vs random search's full budget each")
    f = p.add_argument_group("the fidelity stage (after the study; README, \"The fidelity stage\")")
    f.add_argument("--fidelity-top", type=int, default=0, metavar="K",
                   help="retrain each search's K best proxy records with a longer schedule, "
                        "judged on validation, and final-train the best (default 0: off)")
    f.add_argument("--fidelity-epochs", type=int, default=2,
                   help="its schedule: the final recipe at this length (default 2)")
    f.add_argument("--fidelity-seeds", type=int, default=2)
    lf = p.add_argument_group("the long final schedule (after the study; README, \"The long "
                              "final schedule\")")
    lf.add_argument("--long-final-epochs", type=int, default=0, metavar="E",
                    help="retrain the original and the study's picks with the final recipe at E "
                         "epochs (the paper's: 50), test read once (default 0: off)")
    lf.add_argument("--long-final-seeds", type=int, default=2)
    lf.add_argument("--long-final-chunk", type=int, default=5, metavar="K",
                    help="checkpoint each of its trainings every K epochs (default 5): a "
                         "killed run continues from the last checkpoint")
    lf.add_argument("--long-final-picks", choices=("search", "fidelity"),
                    help="whose picks: the searches' or the fidelity stage's (default: the "
                         "fidelity stage's when --fidelity-top is given)")
    lf.add_argument("--long-final-methods", type=_names, default=(), metavar="M1,M2",
                    help="only these methods' picks (default: all; the original always)")
    lf.add_argument("--long-final-distill", action="store_true",
                    help="train every pick (and, last, the original itself) by knowledge "
                         "distillation from the original, trained plainly with the same "
                         "schedule, seed 0 (T=4, alpha=0.9; long_final_e<E>x<S>_kd.*)")
    p.add_argument("--out", help="output folder (default results/study/<dataset>_<model>)")
    p.add_argument("--no-compile-cache", action="store_true")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (the log lines, one per stage, stay)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from configs import get_config
    from ac_jax.study import StudyConfig, final_schedule, run_study

    if args.variant is None and jax.default_backend() == "cpu":
        try:
            get_config(args.config, "cpu")
            args.variant = "cpu"
        except (ValueError, TypeError):
            pass
    cfg = cli.config_from_args(args)
    model = args.model or cfg.default_model
    try:
        study = StudyConfig(
            cfg=cfg, model=model, target_ratio=args.target_ratio, budget=args.budget,
            repeats=args.repeats, methods=args.methods, references=args.references,
            final_schedule=final_schedule(cfg, args.final_epochs or (6 if cfg.dataset !=
                                                                      "synthetic" else None)),
            final_seeds=args.final_seeds, rounds=args.rounds, refine_top=args.refine_top,
            surrogate_steps=args.surrogate_steps, seed=args.seed,
            plain_decoding=args.plain_decoding, acquisition=args.acquisition,
            acquisition_pool=args.pool, extra_archsets=tuple(args.extra_archsets),
            region_share=args.region_share)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.fidelity_top:
        from ac_jax.study.fidelity import FidelityConfig

        try:
            fidelity = FidelityConfig(args.fidelity_top, args.fidelity_epochs, args.fidelity_seeds)
        except ValueError as err:
            sys.exit(f"error: {err}")
    if args.long_final_epochs:
        from ac_jax.study.long_final import LongFinalConfig

        use_fidelity = (args.long_final_picks or ("fidelity" if args.fidelity_top else
                                                  "search")) == "fidelity"
        if use_fidelity and not args.fidelity_top:
            sys.exit("error: --long-final-picks fidelity needs the fidelity stage's settings "
                     "(--fidelity-top K ...)")
        from ac_jax.study.fidelity import FIDELITY_METHODS

        have = [m for m in study.methods if not use_fidelity or m in FIDELITY_METHODS]
        unknown = set(args.long_final_methods) - set(have)
        if unknown:
            sys.exit(f"error: --long-final-methods {','.join(sorted(unknown))}: no such picks "
                     f"({'fidelity stage' if use_fidelity else 'study'}: {','.join(have)})")
        try:
            long_final = LongFinalConfig(
                args.long_final_epochs, args.long_final_seeds, args.long_final_chunk,
                fidelity.report_name if use_fidelity else "search", args.long_final_methods,
                distill=args.long_final_distill)
        except ValueError as err:
            sys.exit(f"error: {err}")
    if not args.no_compile_cache:
        cli.enable_compilation_cache()
    out = Path(args.out) if args.out else cli.repo_path(
        f"results/study/{cfg.dataset}_{Path(model).stem}")
    dataset = cli.load_dataset(cfg)
    def log(*parts):
        print(time.strftime("%H:%M:%S"), *parts, flush=True)

    runner = cli.ray_runner(args)
    run_study(study, out, dataset=dataset, progress=not args.quiet, log=log, runner=runner)
    print((out / "summary.md").read_text(encoding="utf-8"))
    if args.amortised:
        from ac_jax.study import run_amortised

        run_amortised(study, list(args.amortised), out, dataset=dataset,
                      progress=not args.quiet, log=log, runner=runner)
        print((out / "amortised.md").read_text(encoding="utf-8"))
    if args.fidelity_top:
        from ac_jax.study.fidelity import run_fidelity

        result = run_fidelity(study, out, fidelity, dataset=dataset, log=log)
        name = fidelity.report_name
        print((out / f"{name}.md").read_text(encoding="utf-8"))
        print(f"wrote {out}/{name}.json, {name}.md "
              f"({result['cost']['extra_trainings']} extra trainings per search)")
    if args.long_final_epochs:
        from ac_jax.study.long_final import run_long_final

        run_long_final(study, out, long_final, dataset=dataset, log=log)
        name = long_final.report_name
        print((out / f"{name}.md").read_text(encoding="utf-8"))
        print(f"wrote {out}/{name}.json, {name}.md")
    print(f"wrote {out}/summary.json, summary.md, anytime.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
