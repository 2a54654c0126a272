"""One session of a single run as named steps (:class:`Training`): resume, compile, then
chunks of fused meta-steps, each followed by its log row, validation and checkpoint when due,
and at the end the plot and the test. :func:`jaxmeta.train.loop.train_and_evaluate` opens the
workdir and picks the session (this one, or
:class:`jaxmeta.train.population_loop.PopulationTraining` for a population).

Exact resume, reliability: see :mod:`jaxmeta.train.loop`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta import sharding
from jaxmeta.algorithms import ALGORITHMS
from jaxmeta.step import make_train_chunk
from jaxmeta.train.build import (
    Experiment,
    algorithm_parameters,
    eval_episode_shape,
    initial_state,
)
from jaxmeta.train.checkpoint import CheckpointError, Checkpoints
from jaxmeta.train.config import ExperimentConfig
from jaxmeta.train.evaluate import main_metric, make_evaluator, summarize
from jaxmeta.train.interrupt import InterruptGuard
from jaxmeta.train.metrics import (
    METRICS_FILE,
    DivergenceMonitor,
    MetricsWriter,
    logged_wall_time,
    plot_learning_curves,
    record_run_start,
    truncate_metrics,
)
from jaxmeta.train.population import check_program
from jaxmeta.train.run import (
    check_resumable,
    environment,
    format_result,
    run_evaluation,
    saved_config,
    task_mesh,
    write_eval_json,
)

__all__ = ["Training", "TrainingDiverged", "committed_state", "train_accuracy_label"]


class TrainingDiverged(RuntimeError):
    """A non-finite training metric; the run stopped without saving the bad state."""


class _NoMetrics:
    """The metrics writer of processes other than 0 (only process 0 writes files)."""

    def write(self, row) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _next_boundary(step: int, every: int) -> int:
    return (step // every + 1) * every


def committed_state(state):
    """``state`` committed to the default device, as a restored checkpoint's arrays are.

    A fresh state's arrays are uncommitted and a restored one's committed; jit lowers the
    two with different argument shardings, so the persistent compilation cache keyed a
    resumed run's step differently and compiled it again. Committing both makes one key.
    """
    return jax.device_put(state, jax.devices()[0])


def train_accuracy_label(cfg: ExperimentConfig) -> str:
    """The progress bar's name for the training accuracy, e.g. ``train_acc(q,1 step)``.

    It is the accuracy on the training tasks' queries after the training inner steps
    (gradient learners; not K, which means shots), not the validation accuracy, which the
    status lines print.
    """
    param = algorithm_parameters(ALGORITHMS[cfg.algorithm.name].make).get("inner_steps")
    if param is None:
        return "train_acc(q)"
    steps = cfg.algorithm.kwargs.get("inner_steps", param.default)
    return f"train_acc(q,{steps} step{'' if steps == 1 else 's'})"


class Training:
    """One session of a run, as named steps; :meth:`run` calls them in order.

    ``where`` (shared with the caller) always holds the last step done and the last
    checkpoint written, for the message of an interruption.
    """

    writer_cls = MetricsWriter  # the metrics log (a population's tags TensorBoard by run)

    def __init__(
        self,
        cfg: ExperimentConfig,
        exp: Experiment,
        workdir: Path,
        ckpt: Checkpoints,
        guard: InterruptGuard,
        where: dict[str, int | None],
        *,
        progress: bool,
        log,
    ):
        self.cfg, self.exp, self.workdir, self.ckpt = cfg, exp, workdir, ckpt
        self.guard, self.where, self._log = guard, where, log
        self.primary = sharding.is_primary()
        self.progress = progress and self.primary
        self.classification = exp.source.classification
        self.main_metric, self.maximise = main_metric(
            exp.learner, classification=self.classification
        )
        self.mesh = task_mesh(cfg)
        self.saved_config = saved_config(cfg).to_dict()
        self.bar = None
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.last_good: int | None = None

    def say(self, msg: str) -> None:
        """A status line: above the progress bar, or on stderr (process 0 only)."""
        if jax.process_index() != 0:  # one voice in a multi-process run
            return
        if self._log is not None:
            self._log(msg)
        elif self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        self.resume()
        done = self.finished_result()
        if done is not None:
            return done
        self.setup_evaluation()
        self.compile()
        self.train()
        result = {
            "start_step": self.start,
            "steps": self.step,
            "best_step": self.best_step,
            "best_val": self.best_score,
        }
        if self.cfg.train.plot and self.primary:
            png = self.workdir / "learning_curves.png"
            if plot_learning_curves(self.workdir / METRICS_FILE, png, title=self.cfg.name):
                result["plot"] = str(png)
        if "test" in self.exp.source.splits:
            result["test"] = self.test()
        return result

    def finished_result(self) -> dict[str, Any] | None:
        """The stored result of a run that is already complete (every step trained and its
        test written with the configured episodes), said as such; None otherwise."""
        cfg = self.cfg
        path = self.workdir / "eval_test.json"
        if self.start < cfg.train.steps or not path.is_file() or not self.primary:
            return None
        try:
            test = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: test again
            return None
        if test.get("episodes") != cfg.eval.episodes:
            return None
        self.say(
            f"run complete: all {cfg.train.steps} steps trained; nothing to do. Results in "
            f"{self.workdir}: eval_test.json ({format_result(test)}, {test.get('checkpoint')} "
            f"checkpoint, step {test.get('step')}), metrics.jsonl, learning_curves.png. "
            "More steps: --set train.steps=N; another test: jaxmeta evaluate --workdir "
            f"{self.workdir}"
        )
        return {
            "start_step": self.start,
            "steps": self.step,
            "best_step": self.best_step,
            "best_val": self.best_score,
            "test": test,
            "complete": True,
        }

    # ------------------------------------------------------------------ resume

    def resume(self) -> None:
        """The state to start from (fresh, or the newest intact checkpoint), the device
        placement, the metrics log cut back to it and the run's records written."""
        cfg, ckpt = self.cfg, self.ckpt
        if self.mesh is not None and cfg.execution.task_chunk not in (None, "auto"):
            # lax.map's loop over task chunks is not split across devices by XLA: exact, but
            # every device then runs the whole meta-batch (see docs/scaling.md).
            self.say(
                "warning: execution.task_chunk is set, so tasks run in a sequential lax.map "
                "that is not parallelised over the mesh; use --set execution.task_chunk=auto "
                "when training on several devices"
            )
        resuming = ckpt.latest_step() is not None
        if resuming:
            check_resumable(self.workdir, cfg, ckpt.saved_meta())
        self.data = self.exp.source.train_data()
        state = initial_state(cfg, self.exp)
        if self.mesh is not None:  # replicated state and data; the restore keeps these
            self.data = sharding.replicate(self.data, self.mesh)
            state = sharding.place_state(state, self.mesh, shard_params=cfg.mesh.shard_params)
        else:
            state = committed_state(state)
        latest = None
        if resuming:
            # A damaged newest step (truncated or deleted file, torn JSON, checksum mismatch)
            # is skipped for the newest one that verifies; the metrics log is cut back to it.
            state, meta, skipped = ckpt.restore_newest(state)
            for msg in skipped:
                self.say(f"warning: {msg}; skipped it")
            latest = int(state.step)
            self.best_score, self.best_step = meta.get("best_score"), meta.get("best_step")
            stale = ckpt.best_step()
            if stale is not None and stale > latest:
                # Saved after the latest checkpoint by the interrupted run: the replay
                # recomputes (bit-identically) whether it is the best.
                ckpt.delete_best(stale)
            self.say(f"resuming from step {latest} in {self.workdir / 'checkpoints'}")
        self.state, self.last_good = state, latest
        self.start = self.step = int(state.step)
        self.where.update(step=self.start, checkpoint=latest)
        self.open_records(latest, {"mesh": sharding.describe(self.mesh)})

    def open_records(self, latest: int | None, env: dict[str, Any]) -> None:
        """The session's records (config, environment with ``env`` added), the metrics
        log cut back to ``self.start``, the earlier sessions' training time, the writer."""
        self.time_before = 0.0  # training time of earlier sessions: wall_time continues
        if self.primary:
            record_run_start(
                self.workdir,
                config_yaml=saved_config(self.cfg).to_yaml(),
                env={**environment(), **env},
                resume_step=latest,
            )
            truncate_metrics(self.workdir / METRICS_FILE, max_step=self.start)
            self.time_before = logged_wall_time(self.workdir / METRICS_FILE, max_step=self.start)
        self.writer = (
            self.writer_cls(self.workdir, tensorboard=self.cfg.train.tensorboard)
            if self.primary
            else _NoMetrics()
        )

    def setup_evaluation(self) -> None:
        """One jitted evaluator for validation and test, and the fixed validation episodes."""
        cfg, ev, source = self.cfg, self.cfg.eval, self.exp.source
        self.has_val = bool(cfg.train.eval_every) and "val" in source.splits
        if cfg.train.eval_every and not self.has_val:
            desc = ", ".join(f"{k}={v}" for k, v in source.describe().items())
            self.say(
                f"no validation split in {cfg.data.name}{f' ({desc})' if desc else ''}: "
                "no best-checkpoint selection; the final checkpoint is tested"
            )
        self.evaluator = make_evaluator(
            self.exp.learner,
            classification=self.classification,
            batch_size=ev.batch_size,
            inner_steps=ev.inner_steps,
        )
        self.val_eps = None
        if self.has_val:
            eps = source.eval_episodes(
                "val",
                episodes=ev.val_episodes or ev.episodes,
                seed=ev.seed,
                **eval_episode_shape(cfg, source),
            )
            mesh = self.mesh
            self.val_eps = (
                jax.device_put(eps) if mesh is None else sharding.shard_eval_episodes(eps, mesh)
            )
        self.eval_key = jax.random.key(ev.seed)

    # ------------------------------------------------------------------ compile

    def compile(self) -> None:
        """The fused chunk of ``train.steps_per_call`` meta-steps, compiled before the clock
        starts (so steps/s and the ETA measure training only)."""
        cfg, exp, t = self.cfg, self.exp, self.cfg.train
        sample = lambda k, d: exp.source.sample(k, d, tasks=t.meta_batch_size)
        if self.mesh is not None:  # each device draws and differentiates its own tasks
            sample = sharding.sharded_sampler(
                lambda k, d, n: exp.source.sample(k, d, tasks=n),
                self.mesh,
                tasks=t.meta_batch_size,
                sampler=cfg.mesh.sampler,
            )
        self.chunk_fn = make_train_chunk(
            exp.learner,
            exp.optimizer,
            sample,
            length=t.steps_per_call,
            task_chunk=cfg.execution.task_chunk,
        )
        if self.step < t.steps:
            t0 = time.perf_counter()
            one = jnp.asarray(1, jnp.int32)
            self.chunk_fn = self.chunk_fn.lower(self.state, self.data, one).compile()
            check_program(self.chunk_fn, "train step")  # before it runs
            self.say(
                f"compiled the fused step ({t.steps_per_call} meta-steps per call) in "
                f"{time.perf_counter() - t0:.1f} s"
            )

    # ------------------------------------------------------------------ the loop

    def train(self) -> None:
        """Chunks until ``train.steps``, each followed by what falls due: log, validate,
        checkpoint."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        self.window: list[dict[str, np.ndarray]] = []
        self.divergence = DivergenceMonitor(self.cfg.data.ways if self.classification else None)
        self.acc_label = train_accuracy_label(self.cfg)
        self.bar = tqdm(
            total=t.steps,
            initial=self.start,
            unit="step",
            dynamic_ncols=True,
            disable=not self.progress,
            desc=self.cfg.name,
            smoothing=0.1,
        )
        self.t_start = self.t_row = time.perf_counter()
        self.steps_in_row = 0
        try:
            while self.step < t.steps:
                stops = [
                    t.steps,
                    self.step + t.steps_per_call,
                    _next_boundary(self.step, t.log_every),
                    _next_boundary(self.step, t.checkpoint_every),
                ]
                if self.has_val:
                    stops.append(_next_boundary(self.step, t.eval_every))
                self.run_chunk(min(stops) - self.step)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    self.log_row()
                if self.has_val and (self.step % t.eval_every == 0 or self.step == t.steps):
                    self.validate()
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.checkpoint()
        finally:
            self.bar.close()
            self.writer.close()

    def run_chunk(self, n: int) -> None:
        """``n`` meta-steps in one call; the NaN guard and the divergence warning."""
        self.state, metrics = self.chunk_fn(self.state, self.data, jnp.asarray(n, jnp.int32))
        metrics = {k: np.asarray(v)[:n] for k, v in jax.device_get(metrics).items()}
        # Report the loss first when several metrics go bad in the same step.
        for name in sorted(metrics, key=lambda k: (k != "loss", k)):
            values = metrics[name]
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                i = int(bad[0])
                last = self.last_good_text()
                raise TrainingDiverged(
                    f"training diverged at step {self.step + i + 1}: metric {name!r} is "
                    f"{values[i]} (non-finite). The run stopped without saving this state; "
                    f"the last good checkpoint is {last}. Lower the learning rates "
                    "(optimizer.learning_rate, algorithm.inner_lr) or set "
                    "optimizer.grad_clip_norm."
                )
        warning = self.divergence.update(metrics["loss"], first_step=self.step + 1)
        if warning is not None:
            self.writer.write(warning)
            self.say(f"warning: {warning['message']}")
        self.step += n
        self.where["step"] = self.step
        self.window.append(metrics)
        self.steps_in_row += n
        self.bar.update(n)
        post = {"loss": f"{metrics['loss'].mean():.4f}"}
        if "accuracy" in metrics:
            post[self.acc_label] = f"{metrics['accuracy'].mean():.3f}"
        elif self.exp.learner.eval_metric in metrics:  # e.g. meta-RL's return
            post[self.main_metric] = f"{metrics[self.main_metric].mean():.4g}"
        self.bar.set_postfix(post, refresh=False)

    def last_good_text(self) -> str:
        """The last good checkpoint, for a divergence message."""
        if self.last_good is None:
            return "none (no checkpoint was written yet)"
        return f"step {self.last_good} in {self.ckpt.latest_dir}"

    def log_row(self) -> None:
        """A train row: the means over the steps since the last row, speed, wall time."""
        now = time.perf_counter()
        row: dict[str, Any] = {"split": "train", "step": self.step}
        for name in self.window[0]:
            row[name] = float(np.concatenate([w[name] for w in self.window]).mean())
        row["steps_per_sec"] = self.steps_in_row / max(now - self.t_row, 1e-9)
        row["wall_time"] = self.time_before + (now - self.t_start)
        row["session_time"] = now - self.t_start
        self.writer.write(row)
        self.window, self.t_row, self.steps_in_row = [], now, 0

    def validate(self) -> None:
        """A val row on the fixed episodes; a new best is checkpointed to ``best/``."""
        per = self.evaluator(
            self.state.params, self.val_eps, self.eval_key, self.state.learner_state
        )
        per = jax.device_get(per) if self.mesh is None else sharding.gather(per, self.mesh)
        res = summarize(
            per, classification=self.classification, metric=self.exp.learner.eval_metric
        )
        res.pop("per_episode")
        self.writer.write({"split": "val", "step": self.step, **res})
        score, best = res[self.main_metric], self.best_score
        improved = best is None or (score > best if self.maximise else score < best)
        msg = f"step {self.step}: val {self.main_metric} {score:.4f} ± {res['ci95']:.4f}"
        if improved:
            self.best_score, self.best_step = score, self.step
            self._save(best=True, val=res)
            msg += " (best so far, saved)"
        self.say(msg)

    def checkpoint(self) -> None:
        """The latest checkpoint (after the metrics rows up to it are on disk)."""
        self._save(best=False, val=None)
        self.last_good = self.step
        self.where["checkpoint"] = self.step

    def _save(self, *, best: bool, val: dict[str, Any] | None) -> None:
        meta = {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "val": val,
            "config": self.saved_config,  # the resume check's reference
        }
        with self.guard.critical():
            self.writer.flush()
            self.ckpt.save(self.step, self.state, meta=meta, best=best)

    # ------------------------------------------------------------------ test

    def test(self) -> dict[str, Any]:
        """The test result of the best checkpoint (else the final state): eval_test.json."""
        state, which = self.state, "best" if self.ckpt.best_step() is not None else "final"
        if which == "best":
            try:
                state, _ = self.ckpt.restore(state, best=True)
            except CheckpointError as err:
                self.say(f"warning: {err}; testing the final state instead")
                which = "final"
        ev = self.cfg.eval
        test = run_evaluation(
            self.cfg,
            self.exp,
            state.params,
            split="test",
            episodes=ev.episodes,
            inner_steps=ev.inner_steps,
            mesh=self.mesh,
            evaluator=self.evaluator,
            learner_state=state.learner_state,
        )
        test.update(step=int(state.step), checkpoint=which)
        if self.primary:
            write_eval_json(self.workdir, test)
            self.say(format_result(test) + f" [checkpoint: {which}, step {int(state.step)}]")
        return test
