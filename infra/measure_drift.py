"""Offline measurement: how far a day-trained classifier falls at night, in fog and in rain.

    .venv/bin/python infra/measure_drift.py [--quick]

Renders a balanced training set of day frames from several simulated cameras, trains a small
CNN on it (CPU, two threads, fixed seeds), and scores it on held-out day, night, fog and rain
frames rendered from a different seed. Then trains the same architecture from scratch on a
mix of all four conditions and scores it again. This is the drift StreamLoop's feedback loop
exists to recover from, and the numbers the simulator's renderer is tuned against:

- day-only model: >= 95 % on day, <= 60 % on night and on fog;
- mixed model: >= 90 % on every condition.

Prints a markdown table and writes ``var/bench/drift.json`` and a sample grid
``var/bench/sim_grid.png`` (rows: classes, columns: conditions). It is a measurement, not a
test: the exit status is 0 whether or not the targets hold (the JSON records which did).
``--quick`` is a smoke run on fewer frames and epochs; its numbers are not comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import nn

from services.simulator.render import CONDITIONS, DEFAULT_CLASSES, CameraStyle, render_frame

OUT_DIR = Path(__file__).resolve().parent.parent / "var" / "bench"
SIZE = 64

Pixels = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Config:
    """Sizes and seeds of one run. ``eval_frames`` is per condition."""

    train_frames: int
    eval_frames: int
    epochs: int
    cameras: int = 8
    batch: int = 64
    lr: float = 2e-3
    threads: int = 2
    camera_seed: int = 7
    train_seed: int = 1
    eval_seed: int = 2
    torch_seed: int = 0


FULL = Config(train_frames=6000, eval_frames=500, epochs=8)
QUICK = Config(train_frames=1200, eval_frames=150, epochs=4)

TARGETS = {
    "day_only_day_min": 0.95,
    "day_only_night_max": 0.60,
    "day_only_fog_max": 0.60,
    "mixed_min": 0.90,
}


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _RenderClock:
    """Accumulates time spent in ``render_frame`` so the per-frame cost can be reported."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.frames = 0

    def ms_per_frame(self) -> float:
        return 1e3 * self.seconds / max(self.frames, 1)


def make_set(
    n: int,
    conditions: tuple[str, ...],
    cameras: list[CameraStyle],
    seed: int,
    clock: _RenderClock,
) -> tuple[Pixels, Labels]:
    """``n`` frames balanced over classes and, within each class, over ``conditions``."""
    rng = np.random.default_rng(seed)
    k = len(DEFAULT_CLASSES)
    x = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.empty(n, dtype=np.int64)
    start = time.perf_counter()
    for i in range(n):
        label = i % k
        condition = conditions[(i // k) % len(conditions)]
        camera = cameras[int(rng.integers(len(cameras)))]
        x[i] = render_frame(DEFAULT_CLASSES[label], condition, rng, camera, SIZE)
        y[i] = label
    clock.seconds += time.perf_counter() - start
    clock.frames += n
    return x, y


def to_tensor(x: Pixels) -> torch.Tensor:
    """NCHW float32 in [0, 1]."""
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)


def make_model(num_classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 16),
        *block(16, 32),
        *block(32, 64),
        nn.Flatten(),
        nn.Linear(64 * (SIZE // 8) ** 2, num_classes),
    )


def train(x: Pixels, y: Labels, cfg: Config) -> tuple[nn.Module, float]:
    """A fresh model trained on ``(x, y)``; returns it and the training wall time in seconds."""
    torch.manual_seed(cfg.torch_seed)
    model = make_model(len(DEFAULT_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = to_tensor(x), torch.from_numpy(y)
    order = torch.Generator().manual_seed(cfg.torch_seed)
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(yt), generator=order)
        for i in range(0, len(perm), cfg.batch):
            idx = perm[i : i + cfg.batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model, time.perf_counter() - start


def accuracy(model: nn.Module, x: Pixels, y: Labels) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), 256):
            pred = model(to_tensor(x[i : i + 256])).argmax(dim=1).numpy()
            correct += int((pred == y[i : i + 256]).sum())
    return correct / len(y)


def write_grid(path: Path, cameras: list[CameraStyle], seed: int, scale: int = 3) -> None:
    """One frame per (class, condition): rows classes, columns conditions, upscaled."""
    rng = np.random.default_rng(seed)
    gap = 2
    h = len(DEFAULT_CLASSES) * (SIZE + gap) - gap
    w = len(CONDITIONS) * (SIZE + gap) - gap
    grid = np.full((h, w, 3), 255, dtype=np.uint8)
    for r, label in enumerate(DEFAULT_CLASSES):
        for c, condition in enumerate(CONDITIONS):
            camera = cameras[(r + c) % len(cameras)]
            y0, x0 = r * (SIZE + gap), c * (SIZE + gap)
            grid[y0 : y0 + SIZE, x0 : x0 + SIZE] = render_frame(label, condition, rng, camera, SIZE)
    image = Image.fromarray(grid).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    image.save(path)


def check_targets(rows: dict[str, dict[str, float]]) -> dict[str, bool]:
    day_only, mixed = rows["day-only"], rows["mixed"]
    return {
        "day_only_day": day_only["day"] >= TARGETS["day_only_day_min"],
        "day_only_night": day_only["night"] <= TARGETS["day_only_night_max"],
        "day_only_fog": day_only["fog"] <= TARGETS["day_only_fog_max"],
        "mixed_all": all(mixed[c] >= TARGETS["mixed_min"] for c in CONDITIONS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer frames/epochs")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(cfg.threads)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()

    cameras = [CameraStyle.for_camera(i, cfg.camera_seed) for i in range(cfg.cameras)]
    clock = _RenderClock()
    held_out = {
        c: make_set(cfg.eval_frames, (c,), cameras, cfg.eval_seed + 1000 * i, clock)
        for i, c in enumerate(CONDITIONS)
    }
    training_sets = {
        "day-only": ("day",),
        "mixed": CONDITIONS,
    }
    rows: dict[str, dict[str, float]] = {}
    train_seconds: dict[str, float] = {}
    for name, conditions in training_sets.items():
        x, y = make_set(cfg.train_frames, conditions, cameras, cfg.train_seed, clock)
        model, seconds = train(x, y, cfg)
        rows[name] = {c: accuracy(model, *held_out[c]) for c in CONDITIONS}
        train_seconds[name] = seconds

    write_grid(OUT_DIR / "sim_grid.png", cameras, cfg.eval_seed + 99)
    verdict = check_targets(rows)
    total = time.perf_counter() - total_start

    _say("| trained on | " + " | ".join(CONDITIONS) + " | train s |")
    _say("|---|" + "---:|" * (len(CONDITIONS) + 1))
    for name, accs in rows.items():
        cells = " | ".join(f"{100 * accs[c]:.1f} %" for c in CONDITIONS)
        _say(f"| {name} | {cells} | {train_seconds[name]:.1f} |")
    _say()
    _say(
        f"{cfg.train_frames} training frames, {cfg.eval_frames} held-out frames per condition, "
        f"{cfg.epochs} epochs, {cfg.cameras} cameras; render {clock.ms_per_frame():.3f} ms/frame; "
        f"total {total:.1f} s"
    )
    _say("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in verdict.items()))

    report = {
        "command": "infra/measure_drift.py" + (" --quick" if args.quick else ""),
        "config": asdict(cfg),
        "classes": list(DEFAULT_CLASSES),
        "accuracy": rows,
        "train_seconds": train_seconds,
        "render_ms_per_frame": clock.ms_per_frame(),
        "total_seconds": total,
        "targets": TARGETS,
        "targets_met": verdict,
    }
    (OUT_DIR / "drift.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
