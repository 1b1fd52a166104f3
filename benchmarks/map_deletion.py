"""Deletion test of the similarity maps on digits, against random-ink and gradient×input at the same fractions.

The demo's kernel network pools with a dense layer, so it has no maps. This benchmark distils the
demo's CNN (same seed, data and training) with a *spatial* kernel network instead: coordinates
appended as two input channels, two 3×3 convolutions at full 8×8 resolution, a per-position linear
head, then the mean over the 64 positions (a :class:`PooledSpatialKernelNetwork`), so the maps are
per pixel. After fitting, the cache is refreshed in full, so every similarity shown is the kernel
value of the current network (checked: the maps sum to the neighbours' kernel values).

For the first ``--num-test`` test digits and their ``--k`` nearest training digits (the predicted
class's head, ``nearest_neighbours``' default metric), the top-q pixels are set to 0 (the digits'
background) and the kernel similarity to the other side is recomputed:

* input side: delete from the test digit, ranked by its input map (plain, and relative to a blank
  image: ``similarity_maps(..., baseline=blank)``), by gradient×input of the
  similarity w.r.t. the test digit, or randomly among its ink pixels (``--random-draws`` seeded
  draws, averaged);
* neighbour side: the same on the neighbour, with its neighbour map;
* each map also restricted to the ink first (``ink_first``: its own order among the ink pixels,
  then the background), the fair comparison with random-ink, which knows where the ink is too.

Reported: mean relative similarity s(q)/s(0) per fraction, the area under it (lower = the ranking
finds what the similarity rests on), and paired bootstrap 95 % intervals (over test digits) for
the area of the map minus each baseline.

    python benchmarks/map_deletion.py --out docs/figures/maps

writes ``map_deletion.json``, ``map_deletion.png`` (curves), ``map_examples.png`` (maps beside
gradient×input) and ``maps_grid.png`` / ``maps_grid_vs_blank.png`` (the neighbour grid with map
overlays, as ``gpex explain`` draws it for a spatial kernel network; plain maps, and maps relative
to a blank image, ``baseline=torch.zeros_like(x[0])``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from gpex_gpytorch.commands.demo import DEMO_SETTINGS, _cnn
from gpex_gpytorch.datasets import load_digits
from gpex_gpytorch.distillation import Distiller, faithfulness
from gpex_gpytorch.explain import PooledSpatialKernelNetwork, nearest_neighbours, neighbour_similarity_maps
from gpex_gpytorch.explain.figures import save_neighbour_grid
from gpex_gpytorch.explain.map_deletion import (
    DeletionCurves,
    deletion_curves,
    gradient_input_scores,
    ink_first,
    map_pixel_scores,
    random_ink_scores,
)
from gpex_gpytorch.models.classifier_training import fit_classifier

FRACTIONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# Plain maps, maps relative to a blank (all-zero) image, and each restricted to the ink first.
MAPS = ("map", "map_vs_blank", "map_ink_first", "map_vs_blank_ink_first")


class AddCoordinates(nn.Module):
    """Append the row and column coordinates (in [-1, 1]) as two channels, so positions can differ."""

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        cols = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([x, rows, cols], 1)


def spatial_kernel_network(num_heads: int, embedding_dim: int, seed: int) -> PooledSpatialKernelNetwork:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = nn.Sequential(
            AddCoordinates(), nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()
        )
        return PooledSpatialKernelNetwork(backbone, 64, num_heads, embedding_dim)


def _bootstrap_difference(a: Tensor, b: Tensor, groups: Tensor, resamples: int, seed: int) -> list[float]:
    """Paired 95 % interval of mean(a - b), resampling whole groups (test digits) with replacement."""
    generator = torch.Generator().manual_seed(seed)
    diff = (a - b).double()
    unique = groups.unique()
    per_group = torch.stack([diff[groups == g].sum() for g in unique])
    sizes = torch.stack([(groups == g).sum() for g in unique]).double()
    draws = torch.randint(unique.numel(), (resamples, unique.numel()), generator=generator)
    means = per_group[draws].sum(1) / sizes[draws].sum(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [low, high]


def _side(
    model: nn.Module,
    deleted: Tensor,
    kept: Tensor,
    heads: Tensor,
    maps: dict[str, Tensor],
    draws: int,
    seed: int,
) -> dict[str, DeletionCurves | list[DeletionCurves]]:
    spatial = tuple(deleted.shape[2:])
    rankings = {name: map_pixel_scores(m, spatial) for name, m in maps.items()}
    rankings.update({f"{name}_ink_first": ink_first(r, deleted) for name, r in list(rankings.items())})
    rankings["gradient_x_input"] = gradient_input_scores(model, deleted, kept, heads)
    out: dict[str, DeletionCurves | list[DeletionCurves]] = {
        name: deletion_curves(model, deleted, kept, heads, scores, fractions=FRACTIONS)
        for name, scores in rankings.items()
    }
    generator = torch.Generator().manual_seed(seed)
    out["random_ink"] = [
        deletion_curves(model, deleted, kept, heads, random_ink_scores(deleted, generator), fractions=FRACTIONS)
        for _ in range(draws)
    ]
    return out


def _summaries(curves: dict[str, object], groups: Tensor, resamples: int, seed: int) -> dict[str, object]:
    areas = {
        name: (torch.stack([c.area for c in value]).mean(0) if isinstance(value, list) else value.area)
        for name, value in curves.items()
    }
    relative = {
        name: (torch.stack([c.relative for c in value]).mean(0) if isinstance(value, list) else value.relative)
        for name, value in curves.items()
    }
    return {
        "mean_relative_similarity": {name: rel.mean(0).tolist() for name, rel in relative.items()},
        "mean_area": {name: float(a.mean()) for name, a in areas.items()},
        "map_minus_baseline_area": {
            f"{m} - {name}": {
                "mean": float((areas[m] - areas[name]).mean()),
                "ci95": _bootstrap_difference(areas[m], areas[name], groups, resamples, seed),
            }
            for m in MAPS
            for name in ("gradient_x_input", "random_ink")
        },
        "_relative": relative,
    }


def plot_curves(sides: dict[str, dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {
        "map": "-o",
        "map_vs_blank": "-D",
        "map_ink_first": ":o",
        "map_vs_blank_ink_first": ":D",
        "gradient_x_input": "-s",
        "random_ink": "--^",
    }
    for ax, (side, summary) in zip(axes, sides.items(), strict=True):
        for name, rel in summary["_relative"].items():  # type: ignore[union-attr]
            mean = rel.mean(0)
            ax.plot(FRACTIONS, mean.tolist(), styles[name], label=f"{name} (area {summary['mean_area'][name]:.3f})")  # type: ignore[index]
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("fraction of the 64 pixels deleted (set to 0)")
        ax.set_title(f"deleting from the {side}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("kernel similarity / similarity before deletion (mean)")
    fig.suptitle("Deletion test of the similarity maps (digits, spatial kernel network)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(x: Tensor, refs: Tensor, rankings: list[Tensor], neighbour_map: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = x.shape[0]
    titles = [
        "test digit",
        "input map",
        "input map\nvs blank",
        "gradient×input",
        "neighbour",
        "neighbour map\nvs blank",
    ]
    fig, axes = plt.subplots(rows, len(titles), figsize=(9, 1.6 * rows))
    for r in range(rows):
        panels = [(x[r, 0], "gray_r")] + [(m[r], "bwr") for m in rankings]
        panels += [(refs[r, 0], "gray_r"), (neighbour_map[r], "bwr")]
        for c, (image, cmap) in enumerate(panels):
            ax = axes[r, c]
            limit = float(image.abs().max()) or 1.0
            kwargs = {"vmin": -limit, "vmax": limit} if cmap == "bwr" else {}
            ax.imshow(image.numpy(), cmap=cmap, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/maps"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEMO_SETTINGS["steps"])
    parser.add_argument("--num-test", type=int, default=150)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = load_digits(seed=args.seed)
    ann = fit_classifier(_cnn(args.seed), train, epochs=10, batch_size=32, seed=args.seed).eval()
    network = spatial_kernel_network(10, DEMO_SETTINGS["embedding_dim"], args.seed)
    settings = {**DEMO_SETTINGS, "steps": args.steps}
    model = Distiller(ann, network, seed=args.seed, progress=not args.quiet, **settings).fit(train).model_
    train_images = train.tensors[0]
    model.covar_module.fill(train_images, progress=False)  # the maps' kernel value = the current network's
    fit_seconds = time.perf_counter() - start
    report = faithfulness(model, ann, test)

    x = test.tensors[0][: args.num_test]
    neighbours = nearest_neighbours(model, x, k=args.k)
    maps = neighbour_similarity_maps(model, x, train_images, neighbours)
    blank = torch.zeros_like(x[0])
    blank_maps = neighbour_similarity_maps(model, x, train_images, neighbours, baseline=blank)
    gap = float((maps.input_maps.sum((-2, -1)) - neighbours.kernel_values.double()).abs().max())
    scale = float(neighbours.kernel_values.abs().max())
    n, k = neighbours.indices.shape
    inputs = x.repeat_interleave(k, 0)
    refs = train_images[neighbours.indices.flatten()]
    heads = neighbours.heads.repeat_interleave(k)
    groups = torch.arange(n).repeat_interleave(k)
    input_maps = {"map": maps.input_maps.flatten(0, 1), "map_vs_blank": blank_maps.input_maps.flatten(0, 1)}
    neighbour_maps = {
        "map": maps.neighbour_maps.flatten(0, 1),
        "map_vs_blank": blank_maps.neighbour_maps.flatten(0, 1),
    }
    positive = maps.similarities.flatten() > 0  # a drop is only defined from a positive similarity
    keep = positive.nonzero().flatten()
    sides = {
        "test digit": _summaries(
            _side(
                model,
                inputs[keep],
                refs[keep],
                heads[keep],
                {name: m[keep] for name, m in input_maps.items()},
                args.random_draws,
                args.seed,
            ),
            groups[keep],
            args.resamples,
            args.seed,
        ),
        "neighbour": _summaries(
            _side(
                model,
                refs[keep],
                inputs[keep],
                heads[keep],
                {name: m[keep] for name, m in neighbour_maps.items()},
                args.random_draws,
                args.seed + 1,
            ),
            groups[keep],
            args.resamples,
            args.seed,
        ),
    }
    plot_curves(sides, args.out / "map_deletion.png")
    shown = torch.arange(0, 6 * k, k)  # the top neighbour of the first six test digits
    grads = gradient_input_scores(model, inputs[shown], refs[shown], heads[shown])
    plot_examples(
        inputs[shown],
        refs[shown],
        [input_maps["map"][shown], input_maps["map_vs_blank"][shown], grads],
        neighbour_maps["map_vs_blank"][shown],
        args.out / "map_examples.png",
    )
    rows = torch.arange(8)
    for filename, chosen, what in (
        ("maps_grid.png", maps, "maps"),
        ("maps_grid_vs_blank.png", blank_maps, "maps vs blank"),
    ):
        save_neighbour_grid(
            args.out / filename,
            x[rows],
            train_images[neighbours.indices[rows]],
            similarities=neighbours.kernel_values[rows],
            test_labels=test.tensors[1][: args.num_test][rows],
            neighbour_labels=train.tensors[1][neighbours.indices[rows]],
            heads=neighbours.heads[rows],
            test_maps=chosen.input_maps[rows],
            neighbour_maps=chosen.neighbour_maps[rows],
            title=f"nearest training digits, similarity {what}",
        )
    summary = {
        "command": f"python benchmarks/map_deletion.py --out {args.out} --seed {args.seed} --steps {args.steps} "
        f"--num-test {args.num_test} --k {args.k} --random-draws {args.random_draws} --resamples {args.resamples}",
        "kernel_network": "AddCoordinates + conv3x3(3->32) ReLU + conv3x3(32->64) ReLU at 8x8, per-position "
        "linear head 64 -> 10x20, mean over the 64 positions",
        "faithfulness": {
            "pearson_mean": report.pearson_mean,
            "pearson_min": report.pearson_min,
            "ann_accuracy": report.ann_accuracy,
            "gp_accuracy": report.gp_accuracy,
            "agreement": report.agreement,
        },
        "fit_seconds": fit_seconds,
        "maps_minus_neighbour_similarity_max_abs": gap,
        "neighbour_similarity_max_abs": scale,
        "num_pairs": int(n * k),
        "num_pairs_with_positive_similarity": int(keep.numel()),
        "fractions": list(FRACTIONS),
        "sides": {side: {key: v for key, v in s.items() if not key.startswith("_")} for side, s in sides.items()},
        "seconds": time.perf_counter() - start,
    }
    (args.out / "map_deletion.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "sides"}, indent=1))
    for side, s in summary["sides"].items():
        print(side, json.dumps(s["mean_area"]), json.dumps(s["map_minus_baseline_area"]))


if __name__ == "__main__":
    main()
