"""Use a trained run: ``jaxmeta.load(workdir)`` -> a few-shot classifier.

::

    clf = jaxmeta.load("runs/maml_5w1s")                 # best checkpoint, inductive BatchNorm
    labels = clf.classify(support_x, support_y, query_x)  # int32 [n_query]
    probs = clf.probabilities(support_x, support_y, query_x)  # [n_query, N]
    adapted = clf.adapt(support_x, support_y)             # bound to this support set
    adapted(query_x)                                      # logits [n_query, N]

Images are given as the dataset cache holds them (:func:`jaxmeta.data.omniglot.preprocess`
makes that form from image files): ``[n, S, S]`` or ``[n, S, S, 1]``, NumPy or JAX, either
uint8 with strokes 255 (mapped to the model input exactly as in training,
``float32(u8) * (1 / 255)``, :func:`jaxmeta.data.episodes.to_float`) or float in [0, 1]
with strokes 1.0 (used as is). Runs on feature vectors (LEO) take float ``[n, d]`` as they
are. Labels are ints ``0..N-1``, every class present.

**BatchNorm.** The Conv-4 normalises with batch statistics. Training and the published
evaluation protocol are transductive: the queries of a task are normalised together, so a
query's prediction depends on the other queries, and one query alone collapses to chance.
``load()`` therefore defaults to ``bn_mode="inductive"``: every query is normalised with the
support set's statistics (:func:`jaxmeta.algorithms.base.apply_support_query`), so a
prediction does not depend on what else is in the query batch (one image at a time gives
the same answer as a batch). ``bn_mode="transductive"`` reproduces the evaluation protocol.

Every distinct input shape compiles once (``jax.jit``); later calls with the same shapes
reuse the program.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.algorithms.base import BN_MODES, MetaLearner, check_bn_mode, state_kwargs
from jaxmeta.types import Array

__all__ = ["AdaptedClassifier", "FewShotClassifier", "load"]


def __getattr__(name: str):
    if name == "resolve_checkpoint":  # its home is now jaxmeta.train.run
        from jaxmeta.train.run import resolve_checkpoint

        return resolve_checkpoint
    raise AttributeError(name)


def _fixed_ways(model_kw: dict[str, Any], alg_kw: dict[str, Any]) -> int | None:
    """N-way the network's shapes fix (a linear head, SNAIL's label width), else None."""
    for value in (model_kw.get("num_classes"), alg_kw.get("ways")):
        if value is not None:
            return int(value)
    return None


class FewShotClassifier:
    """A trained meta-learner ready to classify new classes from a few labelled examples.

    Made by :func:`load`. Attributes: ``config`` (the run's
    :class:`~jaxmeta.train.config.ExperimentConfig`), ``model`` (the Flax module),
    ``learner`` (its :class:`~jaxmeta.algorithms.base.MetaLearner`), ``params`` (the
    restored meta-parameters), ``step`` and ``checkpoint`` (which one was restored),
    ``bn_mode``, ``inner_steps`` (adaptation steps used, ``None`` for learners that do not
    adapt by gradient steps), ``ways`` (the N-way the network is built for, ``None`` when any
    N works: ProtoNets, Matching Nets), ``input_shape`` (one example, e.g. ``(28, 28, 1)``).
    """

    def __init__(
        self,
        *,
        config,
        model,
        learner: MetaLearner,
        params,
        step: int,
        checkpoint: str,
        bn_mode: str,
        learner_state: Any = None,
        inner_steps: int | None,
        ways: int | None,
        input_shape: tuple[int, ...],
        classification: bool,
        uses_batch_statistics: bool,
    ):
        self.config = config
        self.model = model
        self.learner = learner
        self.params = params
        self.learner_state = learner_state
        self.step = step
        self.checkpoint = checkpoint
        self.bn_mode = check_bn_mode(bn_mode)
        self.inner_steps = inner_steps
        self.ways = ways
        self.input_shape = tuple(input_shape)
        self.classification = classification
        self.uses_batch_statistics = uses_batch_statistics
        self._compiled: dict[str, Any] = {}
        self._traces = 0  # times a predict program was traced (tests: once per shape)

    def __repr__(self) -> str:
        return (
            f"FewShotClassifier({self.learner.name}, step {self.step} ({self.checkpoint}), "
            f"{'any' if self.ways is None else self.ways}-way, bn_mode={self.bn_mode!r}, "
            f"inner_steps={self.inner_steps})"
        )

    # ---------------------------------------------------------------- inputs

    def _images(self, x, name: str) -> Array:
        """``[n, *input_shape]`` float32 model input from cached-form images."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        shape = tuple(x.shape)
        want = self.input_shape
        if shape[1:] == want[:-1] and want[-1] == 1:
            x = x[..., None]  # images without the channel axis
        elif shape[1:] != want:
            forms = f"[n, {', '.join(map(str, want))}]"
            if want[-1] == 1:
                forms = f"[n, {', '.join(map(str, want[:-1]))}] or " + forms
            hint = ""
            if shape in (want, want[:-1]):
                hint = f"; one image needs a leading axis ({name}[None])"
            elif self.classification and len(shape) in (3, 4):
                hint = (
                    "; jaxmeta.data.omniglot.preprocess(images) turns image files of any size "
                    "into this form"
                )
            raise ValueError(f"{name} must have shape {forms}, got {shape}{hint}")
        if shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {shape})")
        if not self.classification:
            return jnp.asarray(x, jnp.float32)
        dtype = np.dtype(x.dtype)
        if len(self.input_shape) == 1 and np.issubdtype(dtype, np.floating):
            return jnp.asarray(x, jnp.float32)  # feature vectors (LEO), used as they are
        if dtype == np.uint8:
            from jaxmeta.data.episodes import to_float

            out = to_float(x)
        elif np.issubdtype(dtype, np.floating):
            out = jnp.asarray(x, jnp.float32)
            lo, hi = float(jnp.min(out)), float(jnp.max(out))
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(
                    f"{name}: float images must lie in [0, 1] (strokes 1.0), got values in "
                    f"[{lo:g}, {hi:g}]; uint8 images are 0-255 (strokes 255)"
                )
        else:
            raise ValueError(
                f"{name}: dtype {dtype} not supported; give uint8 (0-255, strokes 255) or "
                "float (0-1, strokes 1) images as the dataset cache holds them"
            )
        if float(jnp.mean(out)) > 0.5:
            warnings.warn(
                f"{name}: more than half of the pixels are ink; the model expects strokes high "
                "on a dark background (inverted PNGs): jaxmeta.data.omniglot.preprocess does "
                "that for decoded image files",
                stacklevel=3,
            )
        return out

    def _labels(self, y, n: int) -> tuple[Array, int]:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(
                f"support_y must have shape [{n}] (one label per support image), got {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"support_y must hold integer labels, got dtype {y.dtype}")
        if y.min() < 0:
            raise ValueError(f"support_y has a negative label ({y.min()}): labels are 0..N-1")
        classes = int(y.max()) + 1
        if self.ways is not None and classes > self.ways:
            raise ValueError(
                f"support_y has labels up to {classes - 1} but this {self.learner.name} model "
                f"was built for {self.ways}-way tasks: labels must lie in [0, {self.ways})"
            )
        missing = sorted(set(range(classes)) - set(y.tolist()))
        if missing:
            raise ValueError(
                f"support_y has labels up to {classes - 1} but no example of class(es) "
                f"{missing}: labels must be 0..N-1 with every class present"
            )
        if self.ways is not None and classes != self.ways:
            raise ValueError(
                f"the support set has {classes} classes but this {self.learner.name} model was "
                f"trained {self.ways}-way and its output layer has {self.ways} classes: give "
                f"exactly {self.ways} classes (labels 0..{self.ways - 1})"
            )
        return jnp.asarray(y, jnp.int32), classes

    # ---------------------------------------------------------------- prediction

    def _program(self, bn_mode: str):
        if bn_mode not in self._compiled:
            kwargs: dict[str, Any] = {}
            if self.inner_steps is not None:
                kwargs["steps"] = self.inner_steps
            if self.uses_batch_statistics:
                kwargs["bn_mode"] = bn_mode

            def run(params, state, sx, sy, qx):
                self._traces += 1
                extra = state_kwargs(self.learner, state)
                return self.learner.predict(params, sx, sy, qx, None, **kwargs, **extra)

            program = jax.jit(run)
            self._compiled[bn_mode] = lambda *a: program(self.params, self.learner_state, *a)
        return self._compiled[bn_mode]

    def predict(self, support_x, support_y, query_x, *, bn_mode: str | None = None) -> Array:
        """Logits of the queries after adapting to the support set.

        Args:
          support_x: ``[n_s, S, S]`` or ``[n_s, S, S, 1]`` images (uint8 0-255 or float 0-1,
            strokes high, as the dataset cache holds them).
          support_y: int ``[n_s]`` labels ``0..N-1``, every class present (``N`` = the
            trained N-way for models with a fixed head).
          query_x: ``[n_q, S, S]`` or ``[n_q, S, S, 1]``.
          bn_mode: override this classifier's BatchNorm mode for this call.

        Returns:
          float32 ``[n_q, N]`` logits (a JAX array).

        Raises:
          ValueError: wrong shapes or dtypes, labels outside ``[0, N)``, a class without an
            example, a different N-way than a fixed-head model was trained for.
        """
        sx = self._images(support_x, "support_x")
        qx = self._images(query_x, "query_x")
        if not self.classification:
            sy = jnp.asarray(support_y, jnp.float32)
            if sy.shape[0] != sx.shape[0]:
                raise ValueError(f"support_y has {sy.shape[0]} targets for {sx.shape[0]} inputs")
            return self._program(check_bn_mode(bn_mode or self.bn_mode))(sx, sy, qx)
        sy, n = self._labels(support_y, sx.shape[0])
        mode = check_bn_mode(bn_mode or self.bn_mode)
        if mode == "transductive" and qx.shape[0] == 1 and self.uses_batch_statistics:
            warnings.warn(
                "bn_mode='transductive' with a single query: BatchNorm normalises it with its "
                "own statistics alone, which can leave predictions at chance; use "
                "bn_mode='inductive' (the support set's statistics) or give several queries",
                stacklevel=2,
            )
        out = self._program(mode)(sx, sy, qx)
        return out[:, :n]  # metric learners without a fixed N give n_support columns

    def probabilities(self, support_x, support_y, query_x, **kwargs) -> Array:
        """``softmax`` of :meth:`predict`: float32 ``[n_q, N]``, rows sum to 1."""
        self._needs_classes()
        return jax.nn.softmax(self.predict(support_x, support_y, query_x, **kwargs), axis=-1)

    def classify(self, support_x, support_y, query_x, **kwargs) -> np.ndarray:
        """Predicted labels: int32 ``[n_q]`` in ``0..N-1`` (argmax of :meth:`predict`)."""
        self._needs_classes()
        logits = self.predict(support_x, support_y, query_x, **kwargs)
        return np.asarray(jnp.argmax(logits, axis=-1), np.int32)

    def adapt(self, support_x, support_y, **kwargs) -> AdaptedClassifier:
        """A predictor bound to this support set: ``adapted(query_x) -> logits``.

        The support set is checked and converted once; each call then runs the compiled
        adaptation + prediction program (adaptation is a few inner steps on the support set,
        or an embedding of it), so ``adapted(q)`` equals ``predict(support_x, support_y, q)``.
        """
        sx = self._images(support_x, "support_x")
        if self.classification:
            sy, n = self._labels(support_y, sx.shape[0])
        else:
            sy, n = jnp.asarray(support_y, jnp.float32), None
        return AdaptedClassifier(self, sx, sy, n, **kwargs)

    def _needs_classes(self) -> None:
        if not self.classification:
            raise ValueError(
                f"{self.config.data.name} is a regression task: use predict(), not classes"
            )


class AdaptedClassifier:
    """A :class:`FewShotClassifier` bound to one support set (from ``clf.adapt(...)``)."""

    def __init__(self, clf: FewShotClassifier, sx, sy, n: int | None, *, bn_mode=None):
        self.classifier = clf
        self.support_x, self.support_y, self.ways = sx, sy, n
        self.bn_mode = check_bn_mode(bn_mode or clf.bn_mode)

    def __call__(self, query_x) -> Array:
        """Logits ``[n_q, N]`` of ``query_x`` (``[n_q, S, S]`` or ``[n_q, S, S, 1]``)."""
        clf = self.classifier
        qx = clf._images(query_x, "query_x")
        out = clf._program(self.bn_mode)(self.support_x, self.support_y, qx)
        return out if self.ways is None else out[:, : self.ways]

    def probabilities(self, query_x) -> Array:
        """Softmax of the logits: ``[n_q, N]``."""
        return jax.nn.softmax(self(query_x), axis=-1)

    def classify(self, query_x) -> np.ndarray:
        """Predicted labels int32 ``[n_q]``."""
        return np.asarray(jnp.argmax(self(query_x), axis=-1), np.int32)


def load(
    workdir: str | os.PathLike,
    checkpoint: str | int = "best",
    *,
    bn_mode: str | None = None,
    inner_steps: int | None = None,
    run: int | None = None,
    trust_plugins: bool | tuple[str, ...] | list[str] = False,
) -> FewShotClassifier:
    """Load a ``jaxmeta train`` workdir as a few-shot classifier (no dataset needed).

    Args:
      workdir: a directory written by ``jaxmeta train`` (``config.yaml`` + checkpoints).
      checkpoint: ``"best"`` (highest validation accuracy; the latest when the run has no
        validation), ``"latest"``, or a step number.
      bn_mode: ``"inductive"`` (the default: queries normalised with the support set's batch
        statistics, so each prediction is independent of the other queries),
        ``"transductive"`` (the published evaluation protocol: the queries normalised
        together) or ``"running"`` (the running statistics of a learner that keeps them:
        the default for ProtoNets with ``running_stats``). Irrelevant for models without
        BatchNorm.
      inner_steps: adaptation steps of gradient-based learners (default: the algorithm's
        evaluation steps, e.g. MAML's ``eval_inner_steps``).
      run: which member of a population workdir (``train.seeds`` / ``sweep``; required
        there): its best checkpoint is the member's own best validation step.
      trust_plugins: the plug-ins of the run's config that may be imported: ``True`` all,
        a list those, ``False`` (default) only jaxmeta's own and those already imported. A
        plug-in is code; a run folder is data (docs/security.md).

    Returns:
      A :class:`FewShotClassifier`.

    Raises:
      FileNotFoundError: not a workdir, or no such checkpoint.
      ValueError: a bad ``checkpoint``/``bn_mode``/``inner_steps``, or ``inner_steps`` for a
        learner that does not adapt by gradient steps.
    """
    from jaxmeta.train.build import algorithm_kwargs, model_kwargs
    from jaxmeta.train.evaluate import accepts_steps
    from jaxmeta.train.run import restore_run

    if bn_mode is not None and bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    # Optional shape arguments (ProtoNets' / Matching Nets' ways) are left to the episode:
    # the same parameters then classify any N-way support set.
    run = restore_run(workdir, checkpoint, any_ways=True, run=run, trust_plugins=trust_plugins)
    cfg, exp, learner = run.config, run.experiment, run.experiment.learner
    if inner_steps is not None:
        if not accepts_steps(learner.predict) or learner.eval_inner_steps is None:
            raise ValueError(
                f"algorithm {learner.name!r} does not adapt by inner steps; leave inner_steps unset"
            )
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
    keeps_stats = learner.bn_mode == "running"
    if bn_mode is None:
        bn_mode = "running" if keeps_stats else "inductive"
    elif bn_mode == "running" and not keeps_stats:
        raise ValueError(
            f"bn_mode='running' needs running statistics, which this {learner.name} run does "
            "not keep (ProtoNets with running_stats: true does); use 'inductive' or 'transductive'"
        )
    steps = learner.eval_inner_steps if inner_steps is None else inner_steps
    alg_kw = algorithm_kwargs(cfg, exp.source, any_ways=True)
    classification = exp.source.classification
    return FewShotClassifier(
        config=cfg,
        model=exp.model,
        learner=learner,
        params=jax.device_put(run.state.params),
        step=run.step,
        checkpoint=run.checkpoint,
        bn_mode=bn_mode,
        learner_state=jax.device_put(run.state.learner_state),
        inner_steps=steps,
        ways=_fixed_ways(model_kwargs(cfg), alg_kw) if classification else None,
        input_shape=tuple(exp.source.input_shape),
        classification=exp.source.classification,
        uses_batch_statistics=bool(getattr(exp.model, "uses_batch_statistics", False)),
    )
