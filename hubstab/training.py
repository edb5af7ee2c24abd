"""R_f during training (Petrini et al. 2021 track it over training and training-set size).

* :class:`StabilityMonitor` for a plain PyTorch loop: ``monitor.step(model, step)`` measures R_f, D_f, G_f on a
  fixed probe set every ``every`` steps, keeps them in ``monitor.history`` and sends them to a TensorBoard
  ``SummaryWriter`` (or anything with ``add_scalar``) and/or a function of your own.
* :class:`StabilityCallback` for the transformers ``Trainer``: the same measurement every ``every`` global steps,
  logged through ``Trainer.log`` so every logger the Trainer reports to (TensorBoard, W&B, ...) receives it.

The model's train/eval flags are restored after each measurement and no gradients are computed; BatchNorm
uses running statistics unless ``batchnorm="batch"`` is passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hubstab.errors import HubstabError
from hubstab.metrics.result import StabilityResult
from hubstab.metrics.stability import relative_stability

LogFunction = Callable[[dict[str, float], int], Any]
"""Called as ``log(scalars, step)`` with the prefixed scalars of one measurement."""


def result_scalars(result: StabilityResult, prefix: str = "stability") -> dict[str, float]:
    """The finite scalars of a result, keyed ``"{prefix}/relative_stability"`` etc.

    Includes the bounds of the interval of R_f, the test error when known, and R_k of measured layers under
    ``"{prefix}/layers/{name}/relative_stability"``.
    """
    values: dict[str, float | None] = {
        "relative_stability": result.relative_stability,
        "relative_stability_ci_low": result.relative_stability_ci[0],
        "relative_stability_ci_high": result.relative_stability_ci[1],
        "diffeo_stability": result.diffeo_stability,
        "noise_stability": result.noise_stability,
        "test_error": result.test_error,
    }
    head = result.settings.get("temperature")
    for name, layer in result.layers.items():
        temps = layer["temperatures"]
        t = min(range(len(temps)), key=lambda i: abs(temps[i] - head)) if head is not None else 0
        values[f"layers/{name}/relative_stability"] = layer["relative_stability"][t]
    sep = "/" if prefix else ""
    return {
        f"{prefix}{sep}{k}": float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))
    }


class StabilityMonitor:
    """Measures R_f on a fixed probe set every ``every`` steps of a training loop.

    Args:
        images: (P, C, H, W) probe images in [0, 1] (P >= 2), kept for the whole run.
        labels: optional (P,) labels, to log the probe-set test error too.
        every: measure when ``step % every == 0`` (step 0 included: R_f at initialisation).
        writer: a TensorBoard ``SummaryWriter`` or any object with ``add_scalar(tag, value, step)``.
        log_dir: create a ``torch.utils.tensorboard.SummaryWriter`` there (needs ``pip install tensorboard``).
        log: a function called as ``log(scalars, step)`` after each measurement.
        prefix: prefix of the scalar names (``"stability/relative_stability"`` ...).
        bootstrap: bootstrap resamples for the interval of R_f (fewer than a final evaluation, for speed).
        **measure_kwargs: further arguments of :func:`~hubstab.metrics.stability.relative_stability`
            (``delta``, ``cut``, ``mean``/``std``, ``layers``, ``batchnorm``, ``batch_size``, ...).

    Attributes:
        history: one dict per measurement: ``step`` and the unprefixed scalars.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int] | None = None,
        *,
        every: int = 100,
        writer: Any | None = None,
        log_dir: str | None = None,
        log: LogFunction | None = None,
        prefix: str = "stability",
        bootstrap: int = 200,
        **measure_kwargs: Any,
    ) -> None:
        if every < 1:
            raise HubstabError(f"every must be >= 1 step, got {every}")
        if images.ndim != 4 or images.shape[0] < 2:
            raise HubstabError("images must be a (P, C, H, W) tensor of at least 2 probe images")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise HubstabError(
                "writer must have an add_scalar(tag, value, step) method (e.g. a SummaryWriter)"
            )
        if log_dir is not None:
            if writer is not None:
                raise HubstabError("give either writer or log_dir, not both")
            writer = _summary_writer(log_dir)
        self.images = images
        self.labels = labels
        self.every = int(every)
        self.writer = writer
        self.log = log
        self.prefix = prefix
        self.measure_kwargs = {"bootstrap": bootstrap, **measure_kwargs}
        self.history: list[dict[str, float]] = []

    def due(self, step: int) -> bool:
        """Whether ``step`` is a measuring step."""
        return step % self.every == 0

    def step(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Measure if ``step`` is due; returns the prefixed scalars, or None when not measuring."""
        return self.measure(model, step) if self.due(step) else None

    def measure(self, model: nn.Module, step: int) -> dict[str, float]:
        """Measure now, record in ``history``, send to the writer and ``log``; returns the prefixed scalars."""
        result = relative_stability(model, self.images, self.labels, **self.measure_kwargs)
        scalars = result_scalars(result, self.prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        self.history.append({"step": int(step), **{k[cut:]: v for k, v in scalars.items()}})
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        if self.log is not None:
            self.log(dict(scalars), int(step))
        return scalars


def _summary_writer(log_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is optional
        raise HubstabError("log_dir needs TensorBoard: pip install tensorboard (or pass writer=)") from err
    return SummaryWriter(log_dir=log_dir)


def _callback_class() -> type:
    from transformers import TrainerCallback

    class StabilityCallback(TrainerCallback):
        """A transformers ``TrainerCallback`` measuring R_f on a fixed probe set every ``every`` global steps.

        With :meth:`attach` (``StabilityCallback(...).attach(trainer)``) values go through ``Trainer.log``:
        into ``trainer.state.log_history`` and to every logger the Trainer reports to. Given only in
        ``Trainer(callbacks=[...])``, the values join the Trainer's next log entry (``state.log_history``
        and the callbacks after this one). Measures on the main process only.

        Args:
            images, labels, every, prefix, bootstrap, **measure_kwargs: as for :class:`StabilityMonitor`.
            at_start: also measure at the start of training (R_f at initialisation, step 0).
        """

        def __init__(
            self,
            images: torch.Tensor,
            labels: torch.Tensor | Sequence[int] | None = None,
            *,
            every: int = 100,
            prefix: str = "stability",
            at_start: bool = True,
            bootstrap: int = 200,
            **measure_kwargs: Any,
        ) -> None:
            self.monitor = StabilityMonitor(
                images, labels, every=every, prefix=prefix, bootstrap=bootstrap, **measure_kwargs
            )
            self.at_start = at_start
            self._trainer: Any | None = None
            self._pending: dict[str, float] = {}

        @property
        def history(self) -> list[dict[str, float]]:
            """One dict per measurement (``step`` and the unprefixed scalars)."""
            return self.monitor.history

        def attach(self, trainer: Any) -> StabilityCallback:
            """Add this callback to ``trainer`` and log through ``trainer.log``; returns self."""
            self._trainer = trainer
            trainer.add_callback(self)
            return self

        def _measure(self, state: Any, control: Any, model: nn.Module | None) -> None:
            if model is None or not state.is_world_process_zero:
                return
            if self.history and self.history[-1]["step"] == state.global_step:
                return
            scalars = self.monitor.measure(model, state.global_step)
            if self._trainer is not None:
                self._trainer.log(dict(scalars))
            else:
                self._pending.update(scalars)
                control.should_log = True

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if self.at_start:
                self._measure(state, control, model)
            return control

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if self.monitor.due(state.global_step):
                self._measure(state, control, model)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self._pending and logs is not None:
                logs.update(self._pending)
                if state.log_history:
                    state.log_history[-1].update(self._pending)
                self._pending = {}
            return control

    StabilityCallback.__module__ = __name__
    StabilityCallback.__qualname__ = "StabilityCallback"
    return StabilityCallback


def __getattr__(name: str) -> Any:
    # StabilityCallback subclasses transformers.TrainerCallback: built on first use, so importing this
    # module does not import transformers.
    if name == "StabilityCallback":
        cls = _callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
