"""R_f during training: a plain PyTorch loop and the transformers Trainer."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from hubstab.errors import HubstabError
from hubstab.tasks import ScaleDetection
from hubstab.training import StabilityMonitor

KEYS = {"relative_stability", "diffeo_stability", "noise_stability", "test_error"}


class RecordingWriter:
    """Stands in for a TensorBoard SummaryWriter: records add_scalar calls."""

    def __init__(self):
        self.calls: list[tuple[str, float, int]] = []

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, value, step))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(16, 2),
    )  # fmt: skip


def test_monitor_in_a_plain_loop():
    train = ScaleDetection(256, seed=0)
    probe = ScaleDetection(32, seed=1)
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    writer, logged = RecordingWriter(), []
    monitor = StabilityMonitor(
        probe.images, probe.labels, every=5, writer=writer, log=lambda s, step: logged.append((step, s)),
        layers=["3"], bootstrap=20,
    )  # fmt: skip
    model.train()
    for step in range(11):
        idx = torch.arange(step * 16, step * 16 + 16) % len(train)
        loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        out = monitor.step(model, step)
        assert (out is not None) == (step % 5 == 0)
        # measuring leaves the model in training mode and its gradients untouched
        assert model.training and all(m.training for m in model.modules())
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
        opt.step()
    assert [h["step"] for h in monitor.history] == [0, 5, 10]
    for entry in monitor.history:
        assert set(entry) >= KEYS
        assert entry["relative_stability"] > 0 and 0 <= entry["test_error"] <= 1
        assert entry["relative_stability_ci_low"] <= entry["relative_stability"]
        assert math.isfinite(entry["layers/3/relative_stability"])
    # training changed the network, so R_f moved
    assert monitor.history[0]["relative_stability"] != monitor.history[-1]["relative_stability"]
    assert [step for step, _ in logged] == [0, 5, 10]
    assert logged[1][1]["stability/relative_stability"] == monitor.history[1]["relative_stability"]
    tags = {tag for tag, _, _ in writer.calls}
    assert {"stability/relative_stability", "stability/diffeo_stability"} <= tags
    assert {step for _, _, step in writer.calls} == {0, 5, 10}


def test_monitor_argument_errors():
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(HubstabError, match="every"):
        StabilityMonitor(x, every=0)
    with pytest.raises(HubstabError, match="add_scalar"):
        StabilityMonitor(x, writer=object())
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(HubstabError, match="pip install tensorboard"):
            StabilityMonitor(x, log_dir="runs")


class TinyClassifier(nn.Module):
    """A Trainer-compatible model: forward(pixel_values, labels) -> {"loss", "logits"}."""

    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Pairs(torch.utils.data.Dataset):
    def __init__(self, data: ScaleDetection):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, label = self.data[i]
        return {"pixel_values": image, "labels": label}


@pytest.mark.parametrize("attach", [True, False])
def test_trainer_callback_logs_to_the_trainer(tmp_path, attach):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hubstab.training import StabilityCallback

    class Recorder(TrainerCallback):
        """Stands in for a reporting integration (TensorBoard, W&B): records what on_log receives."""

        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    probe = ScaleDetection(32, seed=1)
    stability = StabilityCallback(probe.images, probe.labels, every=3, bootstrap=20)
    recorder = Recorder()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=16, learning_rate=1e-2,
        logging_steps=100, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    callbacks = [recorder] if attach else [stability, recorder]
    trainer = Trainer(
        model=TinyClassifier(),
        args=args,
        train_dataset=Pairs(ScaleDetection(128, seed=0)),
        callbacks=callbacks,
    )
    if attach:
        stability.attach(trainer)
    trainer.train()
    assert [h["step"] for h in stability.history] == [0, 3, 6]
    history = [e for e in trainer.state.log_history if "stability/relative_stability" in e]
    seen = [e for e in recorder.logs if "stability/relative_stability" in e]
    values = [h["relative_stability"] for h in stability.history]
    if attach:
        # through Trainer.log: one entry per measurement, at its step, seen by the other callbacks
        assert [e["step"] for e in history] == [0, 3, 6]
        assert [e["stability/relative_stability"] for e in history] == values
        assert [e["stability/relative_stability"] for e in seen] == values
    else:
        # merged into the Trainer's next log entries (the step-0 value joins step 3's entry)
        assert len(history) >= 2 and len(seen) >= 2
        assert history[-1]["stability/relative_stability"] == values[-1]
        assert seen[-1]["stability/relative_stability"] == values[-1]
