"""A WeightsLab-style training script: a small CNN on a synthetic image set with some labels flipped.

Only the import differs from a WeightsLab quickstart (`import weightslab_shim as wl`). The data is
generated (no download): each class is a coloured bar at its own angle, and `--noise` of the labels
are wrong on purpose, so their per-sample loss stays high — the samples to find and discard live.

    python examples/train_cnn.py --steps 600
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import Dataset

import weightslab_shim as wl


class Bars(Dataset):  # type: ignore[type-arg]
    """3x32x32 images of a bar whose angle encodes the class; `noisy_ids` carry a wrong label."""

    def __init__(self, size: int, classes: int = 10, noise: float = 0.1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (size,), generator=g)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
        angles = self.labels.float() * math.pi / classes
        dist = (xx[None] * torch.sin(angles)[:, None, None] - yy[None] * torch.cos(angles)[:, None, None]).abs()
        bar = (dist < 0.15).float()
        colour = torch.rand(size, 3, 1, 1, generator=g) * 0.5 + 0.5
        self.images = bar[:, None] * colour + 0.1 * torch.randn(size, 3, 32, 32, generator=g)
        flip = torch.rand(size, generator=g) < noise
        self.noisy_ids = flip.nonzero().flatten().tolist()
        self.targets = torch.where(flip, (self.labels + torch.randint(1, classes, (size,), generator=g)) % classes,
                                   self.labels)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    parameters = wl.watch_or_edit({"experiment_name": "bar-angle-cnn-noisy-labels", "learning_rate": 0.01,
                                   "batch_size": 64, "training_steps_to_do": args.steps}, flag="hyperparameters")
    train_set, eval_set = Bars(args.samples, noise=args.noise), Bars(args.samples // 4, noise=0.0, seed=1)
    train_loader = wl.watch_or_edit(train_set, flag="data", loader_name="train", batch_size=64, shuffle=True,
                                    is_training=True)
    eval_loader = wl.watch_or_edit(eval_set, flag="data", loader_name="eval", batch_size=256)
    model = wl.watch_or_edit(SmallCNN(), flag="model")
    optimizer = wl.watch_or_edit(torch.optim.SGD(model.parameters(), lr=parameters["learning_rate"], momentum=0.9),
                                 flag="optimizer")
    train_loss = wl.watch_or_edit(nn.CrossEntropyLoss(reduction="none"), flag="loss", signal_name="train-loss-CE")
    eval_loss = wl.watch_or_edit(nn.CrossEntropyLoss(reduction="none"), flag="loss", signal_name="eval-loss-CE")
    print(f"training {args.steps} steps on {len(train_set)} samples; {len(train_set.noisy_ids)} labels are wrong "
          f"on purpose (e.g. ids {train_set.noisy_ids[:8]})", flush=True)

    while wl.session().step < parameters["training_steps_to_do"]:
        with wl.guard_training_context:
            inputs, ids, targets = next(train_loader)
            outputs = model(inputs)
            losses = train_loss(outputs, targets, batch_ids=ids, preds=outputs.argmax(1))
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
        step = wl.session().step
        if step % args.eval_every == 0:
            with wl.guard_testing_context, torch.no_grad():
                correct = 0
                for inputs, ids, targets in eval_loader:
                    outputs = model(inputs)
                    eval_loss(outputs, targets, batch_ids=ids, preds=outputs.argmax(1))
                    correct += int((outputs.argmax(1) == targets).sum())
                accuracy = correct / len(eval_set)
                wl.save_signals({"eval-accuracy": torch.tensor(accuracy)})
            print(f"step {step}: train loss {losses.mean().item():.3f}, eval accuracy {accuracy:.3f}", flush=True)
    wl.keep_serving()


if __name__ == "__main__":
    main()
