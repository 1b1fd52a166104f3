"""``gpex demo``: train a digits CNN, explain it with GPs, and report how faithful they are."""

from __future__ import annotations

import argparse
import json
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..datasets import load_digits
from ..distillation import (
    Distiller,
    faithfulness,
    load_checkpoint,
    plot_faithfulness,
    predict_gp_and_ann,
    save_explainer,
)
from ..explain import nearest_neighbours
from ..explain.figures import save_neighbour_grid
from ..models import DigitsCNN
from ..models.classifier_training import fit_classifier
from ..models.gpex_model import GPEXModel
from ..utils.torch_load import load_failure_reason
from .arguments import integer_at_least
from .common import add_common_options, apply_common_options

# Settings that reach Pearson >= 0.999 and full GP-CNN agreement on held-out digits in about two
# minutes on 2 cores
# (docs/getting_started.md has the measurements behind them).
DEMO_SETTINGS: dict[str, Any] = {
    "embedding_dim": 20,
    "noise": 1.0,
    "steps": 4000,
    "batch_size": 64,
    "inducing_batch_size": 64,
    "lr": 1e-3,
}


CHECKPOINT_EVERY = 500


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument(
        "--seed", type=integer_at_least(0), default=0, help="seed of the data split, the CNN and the distillation"
    )
    parser.add_argument("--steps", type=integer_at_least(1), default=DEMO_SETTINGS["steps"], help="distillation steps")
    parser.add_argument("--epochs", type=integer_at_least(1), default=10, help="epochs of CNN training (batch 32)")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (reuses ann.pt and checkpoint.pt)"
    )
    add_common_options(parser, device=False)  # --quiet, --threads (1 on <= 4 cores)


def _digits(seed: int) -> tuple[TensorDataset, TensorDataset]:
    return load_digits(seed=seed)


def _cnn(seed: int) -> nn.Module:
    # Seeded inside a forked RNG state: the same initial weights in every process, the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN(num_classes=10, width=1024)


def _distiller(ann: nn.Module, seed: int, steps: int, progress: bool, out: Path | None = None) -> Distiller:
    settings = {**DEMO_SETTINGS, "steps": steps}
    # Periodic checkpoints: an interrupted demo continues with --resume instead of starting over.
    every = min(steps, CHECKPOINT_EVERY)
    checkpointing = {} if out is None else {"checkpoint_every": every, "checkpoint_path": out / "checkpoint.pt"}
    return Distiller(ann, seed=seed, progress=progress, **settings, **checkpointing)


def load_demo(out_dir: str | Path) -> tuple[nn.Module, GPEXModel, TensorDataset, TensorDataset]:
    """Rebuild what ``gpex demo --out out_dir`` trained: ``(ann, gp_model, train, test)``."""
    out = Path(out_dir)
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"checkpoint: {out} has no metrics.json; run `gpex demo --out {out}` first")
    metrics = json.loads(metrics_path.read_text())
    seed, steps = int(metrics["seed"]), int(metrics["steps"])
    train, test = _digits(seed)
    ann = _cnn(seed)
    ann.load_state_dict(load_checkpoint_weights(out / "ann.pt"))
    ann.eval()
    # Resuming at the final step runs no step: it rebuilds the model from the checkpoint.
    distiller = _distiller(ann, seed, steps, progress=False).fit(train, resume=out / "checkpoint.pt")
    return ann, distiller.model_, train, test


def load_checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network's ``state_dict`` saved by ``gpex demo``, loaded without unpickling anything but tensors."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = load_failure_reason(error)
        raise ValueError(
            f"checkpoint: {path} is truncated or corrupted, or not the network's weights ({reason})"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint: {path} does not hold a state_dict of tensors")
    return state


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = apply_common_options(args)
    start = time.perf_counter()
    train, test = _digits(args.seed)
    checkpoint = out / "checkpoint.pt"
    resuming = args.resume and (out / "ann.pt").is_file()
    if resuming:  # the CNN of the interrupted run, not a new one
        ann = _cnn(args.seed)
        ann.load_state_dict(load_checkpoint_weights(out / "ann.pt"))
    else:
        ann = fit_classifier(
            _cnn(args.seed), train, epochs=args.epochs, batch_size=32, seed=args.seed, progress=progress
        )
        torch.save(ann.state_dict(), out / "ann.pt")
    ann.eval()
    cnn_seconds = time.perf_counter() - start

    resume = checkpoint if resuming and checkpoint.is_file() else None
    distiller = _distiller(ann, args.seed, args.steps, progress, out).fit(train, resume=resume)
    model = distiller.model_
    # The explainer alone, for `gpex explain --explainer` and load_explainer (no data, no retraining).
    save_explainer(
        out / "explainer.pt",
        model,
        inducing_inputs=train.tensors[0],
        inducing_labels=train.tensors[1],
        head_names=[f"digit {d}" for d in range(model.num_heads)],
        metadata={"seed": args.seed, "steps": args.steps},
    )
    report = faithfulness(model, ann, test)
    mean, _, ann_out, labels = predict_gp_and_ann(model, ann, test)
    plot_faithfulness(mean, ann_out, out / "faithfulness.png")

    shown = torch.arange(10)
    test_images = test.tensors[0][shown]
    neighbours = nearest_neighbours(model, test_images, k=10)
    train_images, train_labels = train.tensors[0], train.tensors[1]
    save_neighbour_grid(
        out / "neighbours.png",
        test_images,
        train_images[neighbours.indices],
        similarities=neighbours.similarities,
        test_labels=test.tensors[1][shown],
        neighbour_labels=train_labels[neighbours.indices],
        heads=neighbours.heads,
        title="10 test digits and their nearest training digits in the predicted head's kernel space",
    )
    assert load_checkpoint(out / "checkpoint.pt")["step"] == args.steps
    metrics = {
        "pearson_per_head": report.pearson_per_head,
        "pearson_mean": report.pearson_mean,
        "pearson_min": report.pearson_min,
        "ann_test_accuracy": report.ann_accuracy,
        "gp_test_accuracy": report.gp_accuracy,
        "gp_ann_agreement": report.agreement,
        "num_inducing": model.covar_module.num_inducing,
        "num_test": report.num_samples,
        "steps": args.steps,
        "seed": args.seed,
        "settings": {k: v for k, v in DEMO_SETTINGS.items() if k != "steps"},
        "cnn_training_seconds": cnn_seconds,
        "seconds": time.perf_counter() - start,
        "final_staleness": next(h["staleness"] for h in reversed(distiller.history_) if "staleness" in h),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"Pearson per head: mean {report.pearson_mean:.4f}, min {report.pearson_min:.4f}; "
        f"test accuracy ANN {report.ann_accuracy:.4f} / GP {report.gp_accuracy:.4f}; "
        f"{metrics['seconds']:.0f} s; wrote {out}/metrics.json, faithfulness.png, neighbours.png"
    )
    return 0
