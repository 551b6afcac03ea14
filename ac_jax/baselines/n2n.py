"""N2N learning (Ashok et al. 2017, arXiv 1709.06030): two-stage policy-gradient compression.

Stage 1, layer removal: a bidirectional LSTM reads the teacher's layers (each encoded from its
``[t, k, o, s, p]`` row) and outputs, per layer, the probability of keeping it. Stage 2, layer
shrinkage: an LSTM walks the layers of the best stage-1 student, receiving its own previous
action as input (autoregressive, as in N2N), and picks a width factor for every Conv and hidden
Linear from a discrete set (0.1 .. 1.0). The final classifier is never removed or shrunk.
Students are made valid with `legalize` (which refills channel fields and the classifier).

Reward (N2N eq. 4): ``R = C (2 - C) * A_student / A_teacher`` with relative compression
``C = 1 - params_student / params_teacher``; C(2-C) rewards compression with diminishing returns.
Both policies are trained with REINFORCE, `rollouts` students per episode and an exponential
moving-average reward baseline.

Differences from N2N, for this harness: students are trained from scratch with the archset's
proxy schedule by `ChildTrainer` (N2N distils them from the teacher) and A_teacher is the
teacher under that same proxy. A student is *invalid* (reward `invalid_reward`) when `legalize`
had to drop a kept layer, or when it needs more MACs than `max_macs_ratio` x the teacher's (the
run time of a proxy training grows with MACs, and removing pooling layers can multiply them).
Students with at least the teacher's parameter count have C <= 0, so their reward is <= 0 for
any accuracy; they are scored with A_student = A_teacher without being trained.
N2N has no parameter budget: the returned student is the most accurate trained one with at most
`target_params` parameters (the paper picked "the output student model that was most similar to
the model produced by our approach"), or, if none is that small, the one with the best reward.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ac_jax.arch.spec import Arch
from ac_jax.archset.store import record_of
from ac_jax.baselines.common import BaselineResult, prng_key
from ac_jax.baselines.n2n_policies import (  # noqa: F401 (remove/shrink_layers: re-exported)
    RemovalPolicy,
    ShrinkPolicy,
    encode_layers,
    remove_layers,
    removal_fns,
    shrink_layers,
    shrink_scan,
    shrinkable_mask,
)
from ac_jax.child.trainer import ChildTrainer, DeviceData, TrainSchedule

DEFAULT_FACTORS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclasses.dataclass(frozen=True)
class N2NConfig:
    stage1_episodes: int = 10
    stage2_episodes: int = 10
    rollouts: int = 5  # students per episode (N2N: 5)
    hidden: int = 32  # LSTM units per direction
    lr: float = 0.003  # Adam on the policy parameters
    baseline_decay: float = 0.9  # b <- decay * b + (1 - decay) * mean episode reward
    shrink_factors: tuple[float, ...] = DEFAULT_FACTORS
    invalid_reward: float = -1.0
    max_macs_ratio: float | None = 1.0  # None: no MAC cap
    num_seeds: int = 1  # proxy-training seeds per student
    seed: int = 0
    # A budget of trained networks (the teacher's proxy run included), for equal-budget
    # comparisons: stage 1 may spend `stage1_share` of it, stage 2 the rest; the episode counts
    # above become caps. None: run exactly the episodes above.
    max_trained: int | None = None
    stage1_share: float = 0.5
    # With a budget, a stage also ends after this many episodes in a row that trained nothing
    # new (the policy keeps proposing students it has already seen).
    max_idle_episodes: int = 25


def n2n_reward(student_params: int, teacher_params: int, student_accuracy: float,
               teacher_accuracy: float) -> float:
    """``C (2 - C) * A_student / A_teacher`` with ``C = 1 - params_student / params_teacher``."""
    c = 1.0 - student_params / teacher_params
    return c * (2.0 - c) * student_accuracy / teacher_accuracy


@dataclasses.dataclass
class _Evaluation:
    arch: Arch | None
    reward: float
    accuracy: float | None  # None: not trained
    status: str


class BudgetSpent(Exception):
    """The judge was asked for a student once the stage's limit (`_StudentJudge.limit`) was
    reached, or to train one beyond `N2NConfig.max_trained`."""


class _StudentJudge:
    """Rewards students, training each distinct architecture once (cached).

    With a `store` (an archset-format file), every training is recorded as it finishes and a
    restarted run reads it back instead of training again: the policies see the same rewards,
    so they make the same moves (JAX's random streams are deterministic on one machine).
    """

    def __init__(self, teacher: Arch, data: DeviceData, schedule: TrainSchedule,
                 cfg: N2NConfig, store=None, runner=None):
        self.teacher = teacher
        self.teacher_params = teacher.num_params
        self.teacher_accuracy: float | None = None
        self.max_macs = None if cfg.max_macs_ratio is None else cfg.max_macs_ratio * teacher.macs
        self.cfg = cfg
        self.data, self.schedule = data, schedule
        self.runner = runner
        self._trainer: ChildTrainer | None = None
        self.trained: dict[Arch, _Evaluation] = {}
        self.store = store
        self.stored = {rec.arch: rec for rec in store.records()} if store is not None else {}
        self.spent = 0  # networks trained (or read back from the store), teacher included
        self.resumed = 0
        self.prefetched: set[int] = set()  # store positions trained by `prefetch`, not yet judged
        self.limit: int | None = None  # the current stage's budget (`_reinforce`)

    def train(self, arch: Arch, source: str):
        """`(status, mean accuracy or None)` of `arch` under the proxy, counted in the budget."""
        cfg = self.cfg
        rec = self.stored.get(arch)
        if rec is None:
            if cfg.max_trained is not None and self.spent >= cfg.max_trained:
                raise BudgetSpent
            if self._trainer is None:
                self._trainer = ChildTrainer(self.data, self.schedule, cfg.num_seeds)
            self._keep(record_of(self.spent, arch, source,
                                 self._trainer.train(arch, list(range(cfg.num_seeds)))))
            rec = self.stored[arch]
        else:
            if rec.idx != self.spent:  # the stored run trained its networks in another order
                raise RuntimeError(f"replaying {self.store.path}: position {self.spent} trained "
                                   f"the network stored at {rec.idx}; this run diverged from the "
                                   "stored one (another JAX version or backend?); use a fresh "
                                   "store")
            if rec.idx in self.prefetched:  # trained by this run, on the runner
                self.prefetched.discard(rec.idx)
            else:
                self.resumed += 1
        self.spent += 1
        return rec.status, (rec.mean_accuracy if rec.status == "ok" else None)

    def _keep(self, rec) -> None:
        if self.store is not None and not self.store.add(rec):
            raise RuntimeError(f"{self.store.path} already holds a record at position "
                               f"{rec.idx}: the replay of this run diverged from the stored "
                               "one (another JAX version or backend?); use a fresh store")
        self.stored[rec.arch] = rec

    def _untrained_verdict(self, student: Arch | None) -> _Evaluation | None:
        """The evaluation of `student` that needs no training (None: it must be trained)."""
        cfg = self.cfg
        if student is None:
            return _Evaluation(None, cfg.invalid_reward, None, "invalid")
        if student in self.trained:
            return self.trained[student]
        params = student.num_params
        if params >= self.teacher_params:
            reward = n2n_reward(params, self.teacher_params, 1.0, 1.0)
            return _Evaluation(student, reward, None, "not smaller than the teacher")
        if self.max_macs is not None and student.macs > self.max_macs:
            return _Evaluation(student, cfg.invalid_reward, None, "over the MAC cap")
        return None

    def prefetch(self, students: list) -> None:
        """Trains, as one batch on the runner, the students that judging `students` in order
        would train, each under the store position the in-order judging gives it; judging them
        afterwards then reads these records, so a run with a runner makes the moves an
        in-process run makes (and a driver killed mid-batch resumes from what was stored)."""
        if self.runner is None:
            return
        cfg, spent, seen, todo = self.cfg, self.spent, set(), []
        for student in students:
            if self.limit is not None and spent >= self.limit:
                break
            if self._untrained_verdict(student) is not None or student in seen:
                continue
            seen.add(student)
            if student not in self.stored:
                if cfg.max_trained is not None and spent >= cfg.max_trained:
                    break
                todo.append((spent, student, list(range(cfg.num_seeds))))
            spent += 1
        if not todo:
            return

        def on_result(idx, arch, result):
            self._keep(record_of(idx, arch, "n2n", result))
            self.prefetched.add(idx)

        self.runner.run(self.data, self.schedule, cfg.num_seeds, todo, on_result)

    def __call__(self, student: Arch | None) -> _Evaluation:
        if self.limit is not None and self.spent >= self.limit:
            raise BudgetSpent
        verdict = self._untrained_verdict(student)
        if verdict is not None:
            return verdict
        status, acc = self.train(student, "n2n")
        if acc is not None:
            ev = _Evaluation(student, n2n_reward(student.num_params, self.teacher_params, acc,
                                                 self.teacher_accuracy), acc, "ok")
        else:
            ev = _Evaluation(student, self.cfg.invalid_reward, None, status)
        self.trained[student] = ev
        return ev


def _reinforce(name: str, params, sample: Callable, logp: Callable, build: Callable,
               judge: _StudentJudge, cfg: N2NConfig, episodes: int, key, progress: bool,
               log: list, spend_until: int | None = None):
    """REINFORCE with a moving-average baseline; returns the best (reward, student) seen.

    With `spend_until`, the stage ends once the judge has trained that many networks (an
    episode cut short by the budget is not used for an update) or after
    `cfg.max_idle_episodes` episodes in a row that trained nothing new.
    """
    tx = optax.adam(cfg.lr)
    opt_state = tx.init(params)

    @jax.jit
    def update(params, opt_state, actions, advantages):
        def loss(p):
            return -(advantages * logp(p, actions)).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    baseline = None
    best = (-np.inf, None)
    bar = tqdm(range(episodes), desc=f"N2N {name}", leave=False, disable=not progress)
    idle = 0
    judge.limit = spend_until
    for episode in bar:
        if spend_until is not None and (judge.spent >= spend_until
                                        or idle >= cfg.max_idle_episodes):
            break
        spent_before = judge.spent
        key, sub = jax.random.split(key)
        actions = np.asarray(sample(params, jax.random.split(sub, cfg.rollouts)))
        rewards = []
        try:
            students = [build(row) for row in actions]
            judge.prefetch(students)
            evaluations = [judge(student) for student in students]
        except BudgetSpent:
            break  # the budget ran out inside this episode
        idle = idle + 1 if judge.spent == spent_before else 0
        for ev in evaluations:
            rewards.append(ev.reward)
            log.append({"stage": name, "episode": episode, "reward": ev.reward,
                        "accuracy": ev.accuracy, "status": ev.status,
                        "num_params": ev.arch.num_params if ev.arch is not None else None})
            if ev.arch is not None and ev.reward > best[0]:
                best = (ev.reward, ev.arch)
        rewards = np.asarray(rewards, np.float32)
        # Initialised to the first episode's mean, so the first update is already centred.
        baseline = rewards.mean() if baseline is None else baseline
        params, opt_state = update(params, opt_state, jnp.asarray(actions),
                                   jnp.asarray(rewards - baseline))
        baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * rewards.mean()
        bar.set_postfix(reward=f"{rewards.mean():.3f}", best=f"{best[0]:.3f}")
    return best


def n2n(teacher: Arch, data: DeviceData, schedule: TrainSchedule, target_params: int,
        cfg: N2NConfig = N2NConfig(), *, teacher_accuracy: float | None = None,
        store=None, progress: bool = False, runner=None) -> BaselineResult:
    """Runs both N2N stages; see the module docstring for the reward and what is returned.

    `teacher_accuracy` is A_teacher under the same proxy (`schedule`, `cfg.num_seeds` seeds);
    it is measured if not given (one training, counted in `cfg.max_trained`). `store`: an open
    `ArchsetStore` recording every training, from which a restarted run resumes
    (`_StudentJudge`). `runner` (`ac_jax.distributed.RayRunner`) trains each episode's new
    students as one batch on a cluster; the policies then make the moves they make in-process. `details["order"]` lists the trained students' accuracies in training
    order (None: failed), for anytime curves.
    """
    if cfg.rollouts < 1 or cfg.stage1_episodes < 0 or cfg.stage2_episodes < 0:
        raise ValueError("N2N needs rollouts >= 1 and non-negative episode counts")
    if not cfg.shrink_factors or not all(0 < f <= 1 for f in cfg.shrink_factors):
        raise ValueError("shrink factors must be in (0, 1]")
    if cfg.max_trained is not None and cfg.max_trained < 2:
        raise ValueError("an N2N budget needs at least 2 trainings (the teacher and a student)")
    start = time.perf_counter()
    key = prng_key(cfg.seed)
    judge = _StudentJudge(teacher, data, schedule, cfg, store, runner)
    teacher_evaluated = 0
    if teacher_accuracy is None:
        status, teacher_accuracy = judge.train(teacher, "teacher")
        if teacher_accuracy is None:
            raise RuntimeError(f"the teacher failed to train with the proxy ({status})")
        teacher_evaluated = 1
    judge.teacher_accuracy = teacher_accuracy
    budget = cfg.max_trained
    stage1_until = None if budget is None else max(
        judge.spent + 1, int(round(budget * cfg.stage1_share)))
    log: list[dict] = []

    # Stage 1: layer removal on the teacher.
    removal = RemovalPolicy(cfg.hidden)
    enc1 = jnp.asarray(encode_layers(teacher))
    free = np.ones(len(teacher.layers), bool)
    free[-1] = False  # the classifier stays
    key, init_key, run_key = jax.random.split(key, 3)
    params1 = jax.jit(removal.init)(init_key, enc1)  # op-by-op init is slow
    sample1, logp1 = removal_fns(removal, enc1, free)
    best1 = _reinforce("removal", params1, sample1, logp1,
                       lambda keep: remove_layers(teacher, keep), judge, cfg,
                       cfg.stage1_episodes, run_key, progress, log, stage1_until)
    stage2_input = best1[1] if best1[1] is not None and best1[0] > 0 else teacher

    # Stage 2: layer shrinkage on the best stage-1 student.
    factors = tuple(cfg.shrink_factors)
    shrink = ShrinkPolicy(cfg.hidden, len(factors))
    enc2 = jnp.asarray(encode_layers(stage2_input))
    shrinkable = jnp.asarray(shrinkable_mask(stage2_input))
    key, init_key, run_key = jax.random.split(key, 3)
    carry0 = (jnp.zeros(cfg.hidden), jnp.zeros(cfg.hidden))
    params2 = jax.jit(shrink.init)(init_key, carry0, jnp.zeros(enc2.shape[1] + len(factors)))

    @jax.jit
    def sample2(params, keys):
        return jax.vmap(lambda k: shrink_scan(shrink, params, enc2, shrinkable, k)[0])(keys)

    def logp2(params, actions):
        return jax.vmap(
            lambda a: shrink_scan(shrink, params, enc2, shrinkable, None, given=a)[1]
        )(actions)

    _reinforce("shrinkage", params2, sample2, logp2,
               lambda actions: shrink_layers(stage2_input, actions, factors), judge, cfg,
               cfg.stage2_episodes, run_key, progress, log, budget)

    trained = [ev for ev in judge.trained.values() if ev.accuracy is not None]
    if not trained:
        raise RuntimeError("N2N trained no valid student; raise the episodes or rollouts")
    small = [ev for ev in trained if ev.arch.num_params <= target_params]
    if small:
        chosen = max(small, key=lambda ev: (ev.accuracy, -ev.arch.num_params))
        how = f"most accurate of {len(small)} students within the budget"
    else:
        chosen = max(trained, key=lambda ev: ev.reward)
        how = "no student within the budget; best reward"
    return BaselineResult(
        method="N2N (RL)",
        accuracy=chosen.accuracy,
        num_params=chosen.arch.num_params,
        arch=chosen.arch,
        wall_seconds=time.perf_counter() - start,
        archs_evaluated=judge.spent,
        search_accuracy=chosen.accuracy,
        within_budget=chosen.arch.num_params <= target_params,
        notes=f"{how}; {cfg.stage1_episodes}+{cfg.stage2_episodes} episodes x {cfg.rollouts} "
              f"rollouts, reward {chosen.reward:.3f}",
        details={"teacher_proxy_accuracy": teacher_accuracy, "rollouts": log,
                 "stage1_best_params": stage2_input.num_params,
                 "teacher_trained": teacher_evaluated, "resumed": judge.resumed,
                 "order": [{"num_params": r.num_params, "source": r.source,
                            "accuracy": r.mean_accuracy if r.status == "ok" else None}
                           for r in sorted(judge.stored.values(), key=lambda r: r.idx)]},
    )
