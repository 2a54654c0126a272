"""The training session of a population (:mod:`jaxmeta.train.population`): the single run's
named steps (:class:`jaxmeta.train.session.Training`) over a state with a leading run axis.

What a population's workdir holds, next to a single run's::

    metrics.jsonl        one train row and one val row per run and step, with "run"
    checkpoints/<step>/  {"state": the population, "best": each run's best state}: one
                         orbax checkpoint (atomic, sha256-checked) holds every member, and
                         its best so far, so a kill -9 resumes exactly
    best/<step>/         each run's state at its own best validation step (meta: best_steps)
    eval_test.json       each run's test result (± CI over episodes) and, per sweep point,
                         the mean, std and 95% interval (Student t) across seeds
    learning_curves.png  one line per run and the band (mean ± std) across runs
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxmeta import sharding
from jaxmeta.step import make_population_chunk
from jaxmeta.train.build import eval_episode_shape
from jaxmeta.train.config import ConfigError
from jaxmeta.train.evaluate import summarize
from jaxmeta.train.metrics import METRICS_FILE, MetricsWriter
from jaxmeta.train.population import (
    check_memory,
    members,
    population_builder,
    population_hparams,
    population_state,
)

# The results across runs have their own module (commands use them without the session).
from jaxmeta.train.population_results import (  # noqa: F401 -- their former home
    across_runs,
    evaluate_population,
    format_population,
    make_population_evaluator,
    plot_population_curves,
    population_report,
)
from jaxmeta.train.run import check_resumable, write_eval_json
from jaxmeta.train.session import Training, TrainingDiverged

__all__ = [
    "PopulationTraining",
    "across_runs",
    "make_population_evaluator",
    "plot_population_curves",
]


def _where_runs(mask: np.ndarray, new, old):
    m = jnp.asarray(mask)
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(m.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


class PopulationMetricsWriter(MetricsWriter):
    """The metrics log of a population: JSONL rows as they come (with ``run``); TensorBoard
    tags ``<split>/run<r>/<metric>`` so that the runs' curves do not collide."""

    def write(self, row: dict[str, Any]) -> None:
        if "run" not in row or self._tb is None:
            return super().write(row)
        tb, self._tb = self._tb, None
        try:
            super().write(row)
        finally:
            self._tb = tb
        for k, v in row.items():
            if k not in ("split", "step", "run") and isinstance(v, int | float):
                tb.add_scalar(f"{row['split']}/run{row['run']}/{k}", v, int(row["step"]))


class PopulationTraining(Training):
    """:class:`~jaxmeta.train.loop.Training` of ``R`` runs in one program."""

    writer_cls = PopulationMetricsWriter

    def __init__(self, cfg, exp, workdir, ckpt, guard, where, *, progress, log):
        super().__init__(cfg, exp, workdir, ckpt, guard, where, progress=progress, log=log)
        self.members = members(cfg)
        self.runs = len(self.members)
        self.hparams = population_hparams(cfg)
        self.build = population_builder(cfg, exp)
        if self.mesh is not None:  # runs x tasks: the run axis first, the rest on tasks
            if jax.process_count() > 1:
                raise ConfigError(
                    cfg.where("distributed"),
                    "distributed",
                    "a population (train.seeds / sweep) runs in one process in this version",
                )
            self.mesh = sharding.make_population_mesh(
                self.mesh.size, self.runs, cfg.train.meta_batch_size
            )
            self.hparams = jax.device_put(self.hparams, self._by_run())

    def _by_run(self):
        return NamedSharding(self.mesh, PartitionSpec(sharding.RUN_AXIS))

    def run(self) -> dict[str, Any]:
        self.resume()
        self.setup_evaluation()
        self.compile()
        self.train()
        result: dict[str, Any] = {
            "runs": self.runs,
            "start_step": self.start,
            "steps": self.step,
            "best_step": self.best_steps,
            "best_val": self.best_scores,
        }
        if self.cfg.train.plot and self.primary:
            png = self.workdir / "learning_curves.png"
            groups = None
            if self.cfg.sweep:
                groups = {
                    m["run"]: ", ".join(f"{k}={v}" for k, v in m.items() if "." in k)
                    for m in self.members
                }
            if plot_population_curves(
                self.workdir / METRICS_FILE, png, title=self.cfg.name, groups=groups
            ):
                result["plot"] = str(png)
        if "test" in self.exp.source.splits:
            result["test"] = self.test()
        return result

    # ------------------------------------------------------------------ resume

    def resume(self) -> None:
        cfg, ckpt = self.cfg, self.ckpt
        resuming = ckpt.latest_step() is not None
        if resuming:
            check_resumable(self.workdir, cfg, ckpt.saved_meta())
        self.data = self.exp.source.train_data()
        state = population_state(cfg, self.exp)
        if self.mesh is not None:  # each device holds its runs; the data everywhere
            self.data = sharding.replicate(self.data, self.mesh)
            state = jax.device_put(state, self._by_run())
        best = jax.tree_util.tree_map(jnp.copy, state)  # the chunk donates the state
        self.best_scores: list[float | None] = [None] * self.runs
        self.best_steps: list[int | None] = [None] * self.runs
        latest = None
        if resuming:
            both, meta, skipped = ckpt.restore_newest({"state": state, "best": best})
            for msg in skipped:
                self.say(f"warning: {msg}; skipped it")
            state, best = both["state"], both["best"]
            latest = int(meta["step"])
            self.best_scores, self.best_steps = meta["best_scores"], meta["best_steps"]
            stale = ckpt.best_step()
            if stale is not None and stale > latest:
                ckpt.delete_best(stale)  # the replay rewrites it, bit-identically
            self.say(f"resuming from step {latest} in {self.workdir / 'checkpoints'}")
        self.state, self.best_state, self.last_good = state, best, latest
        self.start = self.step = int(latest or 0)
        self.where.update(step=self.start, checkpoint=latest)
        mesh = None
        if self.mesh is not None:
            mesh = {**sharding.describe(self.mesh), "shape": dict(self.mesh.shape)}
        self.open_records(latest, {"mesh": mesh, "population": self.members})

    def setup_evaluation(self) -> None:
        cfg, ev, source = self.cfg, self.cfg.eval, self.exp.source
        self.has_val = bool(cfg.train.eval_every) and "val" in source.splits
        self.evaluator = make_population_evaluator(
            self.build,
            classification=self.classification,
            batch_size=ev.batch_size,
            inner_steps=ev.inner_steps,
        )
        self.val_eps = None
        if self.has_val:
            self.val_eps = jax.device_put(
                source.eval_episodes(
                    "val",
                    episodes=ev.val_episodes or ev.episodes,
                    seed=ev.seed,
                    **eval_episode_shape(cfg, source),
                )
            )
        self.eval_key = jax.random.key(ev.seed)

    def compile(self) -> None:
        """The vmapped chunk, compiled and checked against the device's memory before a
        step runs."""
        cfg, t = self.cfg, self.cfg.train
        sample = lambda k, d: self.exp.source.sample(k, d, tasks=t.meta_batch_size)
        if self.mesh is not None:  # each run's tasks split over the task axis
            draw = sample
            sample = lambda k, d: sharding.shard_tasks(draw(k, d), self.mesh)
        self.chunk_fn = make_population_chunk(
            self.build,
            sample,
            length=t.steps_per_call,
            task_chunk=cfg.execution.task_chunk,
            spmd_axis_name=None if self.mesh is None else sharding.RUN_AXIS,
        )
        if self.step < t.steps:
            t0 = time.perf_counter()
            one = jnp.asarray(1, jnp.int32)
            compiled = self.chunk_fn.lower(self.state, self.hparams, self.data, one).compile()
            first = lambda tree: jax.tree_util.tree_map(lambda x: x[:1], tree)
            one_run = lambda: self.chunk_fn.lower(
                first(self.state), first(self.hparams), self.data, one
            ).compile()
            check_memory(compiled, self.runs, one_run=one_run)
            self.chunk_fn = compiled
            self.say(
                f"compiled the fused step of {self.runs} runs ({t.steps_per_call} meta-steps "
                f"per call) in {time.perf_counter() - t0:.1f} s"
            )

    # ------------------------------------------------------------------ the loop

    def run_chunk(self, n: int) -> None:
        self.state, metrics = self.chunk_fn(
            self.state, self.hparams, self.data, jnp.asarray(n, jnp.int32)
        )
        metrics = {k: np.asarray(v)[:, :n] for k, v in jax.device_get(metrics).items()}
        for name in sorted(metrics, key=lambda k: (k != "loss", k)):
            bad = np.argwhere(~np.isfinite(metrics[name]))
            if bad.size:
                r, i = (int(v) for v in bad[np.argmin(bad[:, 1])])
                last = self.last_good_text()
                who = ", ".join(f"{k}={v}" for k, v in self.members[r].items())
                raise TrainingDiverged(
                    f"training diverged at step {self.step + i + 1} in run {r} ({who}): "
                    f"metric {name!r} is {metrics[name][r, i]} (non-finite). The population "
                    f"stopped without saving this state; the last good checkpoint is {last}. "
                    "Lower that run's learning rates or set optimizer.grad_clip_norm."
                )
        warning = self.divergence.update(metrics["loss"].max(axis=0), first_step=self.step + 1)
        if warning is not None:
            self.writer.write(warning)
            self.say(f"warning: {warning['message']} (the worst run of the population)")
        self.step += n
        self.where["step"] = self.step
        self.window.append(metrics)
        self.steps_in_row += n
        self.bar.update(n)
        post = {}
        shown = (("loss", "loss"), ("accuracy", self.acc_label), ("mse", "mse"))
        if self.exp.learner.eval_metric is not None:  # e.g. meta-RL's return
            shown += ((self.exp.learner.eval_metric, self.main_metric),)
        for key, label in shown:
            if key in metrics:
                per_run = metrics[key].mean(axis=1)
                post[label] = f"{per_run.mean():.4f}±{per_run.std():.4f}"
        post["runs"] = self.runs
        self.bar.set_postfix(post, refresh=False)

    def log_row(self) -> None:
        """One train row per run (``run`` field): means over the steps since the last."""
        now = time.perf_counter()
        speed = self.steps_in_row / max(now - self.t_row, 1e-9)
        for r in range(self.runs):
            row: dict[str, Any] = {"split": "train", "step": self.step, "run": r}
            for name in self.window[0]:
                row[name] = float(np.concatenate([w[name][r] for w in self.window]).mean())
            row["steps_per_sec"] = speed
            row["wall_time"] = self.time_before + (now - self.t_start)
            row["session_time"] = now - self.t_start
            self.writer.write(row)
        self.window, self.t_row, self.steps_in_row = [], now, 0

    def validate(self) -> None:
        """One val row per run; the runs that improved take their current state into the
        best population state, which is checkpointed to ``best/``."""
        per = jax.device_get(
            self.evaluator(
                self.state.params,
                self.hparams,
                self.val_eps,
                self.eval_key,
                self.state.learner_state,
            )
        )
        improved = np.zeros(self.runs, bool)
        scores, vals = [], []
        for r in range(self.runs):
            res = self.summarize_run(per, r)
            res.pop("per_episode")
            self.writer.write({"split": "val", "step": self.step, "run": r, **res})
            score, best = res[self.main_metric], self.best_scores[r]
            improved[r] = best is None or (score > best if self.maximise else score < best)
            if improved[r]:
                self.best_scores[r], self.best_steps[r] = score, self.step
            scores.append(score)
            vals.append(res)
        msg = (
            f"step {self.step}: val {self.main_metric} {np.mean(scores):.4f} ± "
            f"{np.std(scores):.4f} across {self.runs} runs"
        )
        if improved.any():
            self.best_state = _where_runs(improved, self.state, self.best_state)
            self._save(best=True, val=vals)
            msg += f" ({int(improved.sum())} runs improved, saved)"
        self.say(msg)

    def summarize_run(self, per: dict[str, Any], r: int) -> dict[str, Any]:
        """Run ``r``'s summary of population-wide per-episode metrics ``[runs, episodes]``."""
        return summarize(
            {k: v[r] for k, v in per.items()},
            classification=self.classification,
            metric=self.exp.learner.eval_metric,
        )

    def _save(self, *, best: bool, val) -> None:
        meta = {
            "step": self.step,
            "runs": self.runs,
            "best_scores": self.best_scores,
            "best_steps": self.best_steps,
            "val": val,
            "config": self.saved_config,
        }
        tree = self.best_state if best else {"state": self.state, "best": self.best_state}
        with self.guard.critical():
            self.writer.flush()
            self.ckpt.save(self.step, tree, meta=meta, best=best)

    # ------------------------------------------------------------------ test

    def test(self) -> dict[str, Any]:
        """Each run's test result from its best state (else the final one), and the
        statistics across seeds: eval_test.json."""
        cfg, ev, source = self.cfg, self.cfg.eval, self.exp.source
        which = "best" if any(s is not None for s in self.best_steps) else "final"
        state = self.best_state if which == "best" else self.state
        eps = source.eval_episodes(
            "test", episodes=ev.episodes, seed=ev.seed, **eval_episode_shape(cfg, source)
        )
        per = jax.device_get(
            self.evaluator(
                state.params, self.hparams, jax.device_put(eps), self.eval_key, state.learner_state
            )
        )
        runs = []
        steps = np.asarray(state.step)
        for r, m in enumerate(self.members):
            res = self.summarize_run(per, r)
            res.pop("per_episode")
            runs.append({**m, **res, "step": int(steps[r])})
        test = {
            "split": "test",
            "algorithm": cfg.algorithm.name,
            "dataset": cfg.data.name,
            "checkpoint": which,
            "metric": self.main_metric,
            "runs": runs,
            "across_seeds": across_runs(runs, self.main_metric),
            **source.describe(),
        }
        if self.primary:
            write_eval_json(self.workdir, test)
            for g in test["across_seeds"]:
                self.say(format_population(g, self.main_metric, ev.episodes))
        return test
