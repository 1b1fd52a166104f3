"""Swap ``VariationalELBO`` for ``ANNMatchingELBO`` in GPyTorch's SVGP and SV-DKL notebook recipes.

Two recipes, each re-typed from GPyTorch's example notebooks on CPU with scikit-learn data:

* ``svgp``: the SVGP regression notebook (``ApproximateGP`` + ``VariationalStrategy``, learnt
  inducing locations initialised at the first 500 training inputs, ``ScaleKernel(RBFKernel())``,
  ``GaussianLikelihood``, Adam 0.01, batch 1,024) on ``make_friedman1`` (inputs scaled to
  [-1, 1], targets standardised). The network explained is a seeded MLP regressor fitted to the data;
  the GP is fitted to the MLP's outputs.
* ``svdkl``: the SV-DKL classification notebook (a CNN feature extractor, ``ScaleToBounds(-10, 10)``,
  ``GridInterpolationVariationalStrategy`` with 64 grid points per 1-D GP wrapped in
  ``IndependentMultitaskVariationalStrategy``, SGD 0.1 with Nesterov momentum and the notebook's
  per-group learning rates, ``MultiStepLR`` at 50 % and 75 % of the epochs, batch 256) on
  scikit-learn's digits. The network explained is ``DigitsCNN``; the classification swap makes one
  GP per logit (``num_dim = 10``) with a ``MultitaskGaussianLikelihood`` on the logits.

Every objective trains the same model from the same seed on the same batches; only the ``mll`` line
differs. ``control`` is ``VariationalELBO`` fitted to the network's outputs. Reported on held-out
inputs: the mean per-output Pearson correlation of the GP's latent mean with the network, and the
Spearman correlation of the latent variance with the GP's squared error (does the variance say
where the GP misses the network?).

Run::

    python benchmarks/elbo_swap.py --out docs/figures/elbo_swap            # full setting
    python benchmarks/elbo_swap.py --quick --out /tmp/elbo_swap            # a minute-scale smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import gpytorch
import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn
from tqdm.auto import tqdm

from gpex_gpytorch.mlls import ANNMatchingELBO

WARMUP_STEPS = 30
ObjectiveFactory = Callable[[gpytorch.likelihoods.Likelihood, gpytorch.models.ApproximateGP, int], object]

OBJECTIVES: dict[str, ObjectiveFactory] = {
    "control": lambda lik, gp, n: gpytorch.mlls.VariationalELBO(lik, gp, num_data=n),
    "eq5": lambda lik, gp, n: ANNMatchingELBO(lik, gp, num_data=n, detach_variance=False),
    "detached": lambda lik, gp, n: ANNMatchingELBO(lik, gp, num_data=n, detach_variance=True),
    # VariationalELBO's data term for the first 30 steps, moving linearly to Eq. 5's (``variational_weight``
    # annealed from 1 to 0 by warm_up below)
    "detached_warmup": lambda lik, gp, n: ANNMatchingELBO(
        lik, gp, num_data=n, detach_variance=True, variational_weight=1.0
    ),
    "eq5_warmup": lambda lik, gp, n: ANNMatchingELBO(
        lik, gp, num_data=n, detach_variance=False, variational_weight=1.0
    ),
}
WARMUP_OBJECTIVES = frozenset({"detached_warmup", "eq5_warmup"})


def _mix(detach_variance: bool, weight: float) -> ObjectiveFactory:
    return lambda lik, gp, n: ANNMatchingELBO(
        lik, gp, num_data=n, detach_variance=detach_variance, variational_weight=weight
    )


# A constant share w of VariationalELBO's data term throughout training (not annealed): ``eq5_mix25`` is
# 0.25 x VariationalELBO's + 0.75 x Eq. 5's data term, ``detached_mix25`` the same with the variance detached.
for _percent in (10, 25, 50):
    OBJECTIVES[f"eq5_mix{_percent}"] = _mix(False, _percent / 100)
    OBJECTIVES[f"detached_mix{_percent}"] = _mix(True, _percent / 100)

# Eq. 5 on the latent GP alone (likelihood=None: s^2 = c, the notebook's likelihood left out of the objective and
# its noise unused), with a share rho of the residual's gradient weighted uniformly over the batch (``uniform_weight``).
OBJECTIVES["latent"] = lambda lik, gp, n: ANNMatchingELBO(None, gp, num_data=n)
for _percent in (25, 50, 100):
    OBJECTIVES[f"latent_uniform{_percent}"] = (
        lambda rho: lambda lik, gp, n: ANNMatchingELBO(None, gp, num_data=n, uniform_weight=rho)
    )(_percent / 100)


def warm_up(mll: object, step: int) -> None:
    """Anneal a warm-up objective's ``variational_weight`` from 1 (step 0) to 0 (step ``WARMUP_STEPS``)."""
    if isinstance(mll, ANNMatchingELBO) and mll.variational_weight > 0:
        mll.variational_weight = max(0.0, 1.0 - step / WARMUP_STEPS)


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def _spearman(a: Tensor, b: Tensor) -> float:
    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def _summary(mean: Tensor, variance: Tensor, network: Tensor) -> dict[str, float]:
    """Per-output Pearson (mean over outputs) and Spearman of variance vs squared error (pooled)."""
    mean, variance, network = (t.reshape(t.shape[0], -1) for t in (mean, variance, network))
    pearson = [_pearson(mean[:, j], network[:, j]) for j in range(mean.shape[1])]
    error = (mean - network).square()
    spearman = [_spearman(variance[:, j], error[:, j]) for j in range(mean.shape[1])]
    return {
        "pearson_mean": float(np.mean(pearson)),
        "pearson_min": float(np.min(pearson)),
        "spearman_variance_error": float(np.mean(spearman)),
        "rmse": float(error.mean().sqrt()),
        "latent_variance_mean": float(variance.mean()),
    }


def _noise(likelihood: gpytorch.likelihoods.Likelihood, mll: object) -> float:
    """The likelihood's learnt noise; ``nan`` when the objective does not use the likelihood."""
    if getattr(mll, "likelihood", likelihood) is None:
        return float("nan")
    return float(likelihood.noise.detach().mean())


# ---------------------------------------------------------------------------------------------- SVGP
class SVGPModel(gpytorch.models.ApproximateGP):
    """The SVGP regression notebook's model."""

    def __init__(self, inducing_points: Tensor) -> None:
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing_points.size(0))
        strategy = gpytorch.variational.VariationalStrategy(
            self, inducing_points, distribution, learn_inducing_locations=True
        )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def svgp_data(num_samples: int, seed: int) -> dict[str, Tensor]:
    """make_friedman1, inputs scaled to [-1, 1] and targets standardised as in the notebook; 80/20 split;
    the MLP regressor explained, fitted to the training targets; its outputs on both splits."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=num_samples, noise=1.0, random_state=seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    x = 2 * (x - x.min(0).values) / (x.max(0).values - x.min(0).values) - 1
    y = (y - y.mean()) / y.std()
    n_train = int(0.8 * num_samples)
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x.shape[1], 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    for _ in range(1500):  # full-batch: deterministic, a few seconds
        loss = (mlp(x[:n_train]).squeeze(-1) - y[:n_train]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        network = mlp(x).squeeze(-1)
    return {
        "x_train": x[:n_train],
        "x_test": x[n_train:],
        "net_train": network[:n_train],
        "net_test": network[n_train:],
        "net_r2_test": 1 - float((network[n_train:] - y[n_train:]).square().mean() / y[n_train:].var()),
    }


def run_svgp(objective: str, data: dict[str, Tensor], seed: int, args: argparse.Namespace) -> list[dict[str, float]]:
    """One training run; metrics after every epoch in ``args.epochs`` (Adam has no schedule, so one run
    evaluated at 30, 60, 150 epochs is the same as three runs)."""
    torch.manual_seed(seed)
    x_train, targets = data["x_train"], data["net_train"]
    model = SVGPModel(x_train[: args.num_inducing].clone())
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    mll = OBJECTIVES[objective](likelihood, model, len(x_train))
    optimizer = torch.optim.Adam([{"params": model.parameters()}, {"params": likelihood.parameters()}], lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    results = []
    step = 0
    for epoch in tqdm(range(1, max(args.epochs) + 1), desc=f"svgp {objective}", leave=False, disable=args.jobs > 1):
        model.train()
        likelihood.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(args.svgp_batch_size):
            optimizer.zero_grad()
            if objective in WARMUP_OBJECTIVES:
                warm_up(mll, step)
            step += 1
            loss = -mll(model(x_train[batch]), targets[batch])
            loss.backward()
            optimizer.step()
        if epoch in args.epochs:
            model.eval()
            with torch.no_grad():
                output = model(data["x_test"])
            row = {"epoch": epoch, "likelihood_noise": _noise(likelihood, mll)}
            row.update(_summary(output.mean, output.variance, data["net_test"]))
            results.append(row)
    return results


# ---------------------------------------------------------------------------------------------- SV-DKL
class GaussianProcessLayer(gpytorch.models.ApproximateGP):
    """The SV-DKL notebook's GP layer: one GP on a 1-D grid per feature."""

    def __init__(self, num_dim: int, grid_bounds: tuple[float, float] = (-10.0, 10.0), grid_size: int = 64) -> None:
        distribution = gpytorch.variational.CholeskyVariationalDistribution(
            num_inducing_points=grid_size, batch_shape=torch.Size([num_dim])
        )
        strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
            gpytorch.variational.GridInterpolationVariationalStrategy(
                self, grid_size=grid_size, grid_bounds=[grid_bounds], variational_distribution=distribution
            ),
            num_tasks=num_dim,
        )
        super().__init__(strategy)
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(
                lengthscale_prior=gpytorch.priors.SmoothedBoxPrior(
                    math.exp(-1), math.exp(1), sigma=0.1, transform=torch.exp
                )
            )
        )
        self.mean_module = gpytorch.means.ConstantMean()

    def forward(self, x: Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class DKLModel(gpytorch.Module):
    """The SV-DKL notebook's model: features scaled to the grid, one 1-D GP per feature."""

    def __init__(self, feature_extractor: nn.Module, num_dim: int) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.gp_layer = GaussianProcessLayer(num_dim=num_dim)
        self.scale_to_bounds = gpytorch.utils.grid.ScaleToBounds(-10.0, 10.0)

    def forward(self, x: Tensor) -> gpytorch.distributions.MultitaskMultivariateNormal:
        features = self.scale_to_bounds(self.feature_extractor(x))
        # shape: (num_dim, N, 1): one 1-D input per GP
        return self.gp_layer(features.transpose(-1, -2).unsqueeze(-1))


def small_cnn(num_dim: int) -> nn.Module:
    """The DKL feature extractor: the notebook's DenseNet scaled down to 8x8 digits, batch norm included
    (without it the features collapse to constants within 20 epochs of SGD at 0.1, for every objective)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_dim),
        nn.BatchNorm1d(num_dim),
    )


def svdkl_data(seed: int, cnn_epochs: int, train_fraction: float, standardize: bool = True) -> dict[str, Tensor]:
    from gpex_gpytorch.datasets import load_digits
    from gpex_gpytorch.models import DigitsCNN, fit_classifier, predict_logits

    train, test = load_digits(seed=seed)
    torch.manual_seed(seed)
    cnn = fit_classifier(DigitsCNN(), train, epochs=cnn_epochs, batch_size=32, seed=seed)
    (x_train, _), (x_test, y_test) = train.tensors, test.tensors
    logits_train, logits_test = predict_logits(cnn, train), predict_logits(cnn, test)
    n = max(1, int(train_fraction * len(x_train)))
    if standardize:
        # The GP layer's prior has unit scale (outputscale 0.69, learnt at the notebook's lr 0.001), the logits
        # a standard deviation of about 10: standardise each logit with its training mean and deviation, as
        # the SVGP notebook standardises its targets (Pearson with the network is unchanged by this).
        centre, scale = logits_train.mean(0), logits_train.std(0)
        logits_train, logits_test = (logits_train - centre) / scale, (logits_test - centre) / scale
    return {
        "x_train": x_train[:n],
        "net_train": logits_train[:n],
        "x_test": x_test,
        "net_test": logits_test,
        "cnn_accuracy": float((logits_test.argmax(1) == y_test).double().mean()),
    }


def run_svdkl(
    objective: str, data: dict[str, Tensor], epochs: int, seed: int, args: argparse.Namespace
) -> dict[str, float]:
    """One training run of ``epochs`` epochs (the LR schedule depends on it); metrics at the end."""
    torch.manual_seed(seed)
    x_train, targets = data["x_train"], data["net_train"]
    num_dim = targets.shape[1]  # the classification swap: one GP per logit
    model = DKLModel(small_cnn(num_dim), num_dim)
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=num_dim)
    mll = OBJECTIVES[objective](likelihood, model.gp_layer, len(x_train))
    lr = 0.1
    optimizer = torch.optim.SGD(
        [
            {"params": model.feature_extractor.parameters(), "weight_decay": 1e-4},
            {"params": model.gp_layer.hyperparameters(), "lr": lr * 0.01},
            {"params": model.gp_layer.variational_parameters()},
            {"params": likelihood.parameters()},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=0,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[0.5 * epochs, 0.75 * epochs], gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in tqdm(range(epochs), desc=f"svdkl {objective} {epochs} epochs", leave=False, disable=args.jobs > 1):
        model.train()
        likelihood.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(args.svdkl_batch_size):
            optimizer.zero_grad()
            if objective in WARMUP_OBJECTIVES:
                warm_up(mll, step)
            step += 1
            loss = -mll(model(x_train[batch]), targets[batch])
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        output = model(data["x_test"])
    finite = bool(torch.isfinite(output.mean).all())
    row = {"epoch": epochs, "likelihood_noise": _noise(likelihood, mll), "finite": finite}
    if row["finite"]:
        row.update(_summary(output.mean, output.variance, data["net_test"]))
    else:
        row.update({"pearson_mean": float("nan"), "pearson_min": float("nan"), "spearman_variance_error": float("nan")})
    return row


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = [r for r in ("svgp", "svdkl") if r in results]
    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 3.6), squeeze=False)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        for objective in sorted(results[recipe], key=list(OBJECTIVES).index):
            runs = results[recipe][objective]
            epochs = sorted({row["epoch"] for rows in runs.values() for row in rows})
            rows = [r for seed_rows in runs.values() for r in seed_rows]
            means = [np.nanmean([r["pearson_mean"] for r in rows if r["epoch"] == e]) for e in epochs]
            ax.plot(epochs, means, marker="o", label=objective, color=f"C{list(OBJECTIVES).index(objective)}")
        ax.set_xlabel("epochs")
        ax.set_ylabel("mean Pearson with the network (held out)")
        ax.set_title(recipe)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Filled by main before the worker processes fork: (recipe, seed) -> data.
_DATA: dict[tuple[str, int], dict[str, Tensor]] = {}


def _task(task: tuple[str, int, str, int, argparse.Namespace]) -> tuple[tuple[str, int, str, int], list[dict]]:
    recipe, seed, objective, epochs, args = task
    torch.set_num_threads(1)
    data = _DATA[(recipe, seed)]
    if recipe == "svgp":
        return task[:4], run_svgp(objective, data, seed, args)
    return task[:4], [run_svdkl(objective, data, epochs, seed, args)]


def _summary_table(results: dict) -> dict:
    """Mean and minimum over seeds of each metric, per recipe, objective and epoch count."""
    table: dict = {}
    for recipe, by_objective in results.items():
        for objective, by_seed in by_objective.items():
            rows = [row for seed_rows in by_seed.values() for row in seed_rows]
            for epoch in sorted({row["epoch"] for row in rows}):
                at = [row for row in rows if row["epoch"] == epoch]
                entry = {}
                for key in ("pearson_mean", "spearman_variance_error", "likelihood_noise"):
                    values = [row[key] for row in at]
                    entry[key] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "n": len(values)}
                table.setdefault(recipe, {}).setdefault(objective, {})[str(epoch)] = entry
    return table


def markdown_table(report: dict) -> str:
    """The docs' table: per recipe and objective, Pearson (mean over seeds, min in brackets) at each epoch
    count, and the Spearman correlation of the latent variance with the squared error (mean over seeds)."""
    lines = []
    for recipe, by_objective in report["summary"].items():
        epochs = sorted({int(e) for by_epoch in by_objective.values() for e in by_epoch})
        header = " | ".join(f"Pearson, {e} epochs" for e in epochs)
        spearman = " | ".join(f"Spearman, {e}" for e in epochs)
        lines += [f"**{recipe}**", "", f"| objective | {header} | {spearman} | noise at {epochs[-1]} |"]
        lines.append("|---" * (2 * len(epochs) + 2) + "|")
        for objective in OBJECTIVES:
            if objective not in by_objective:
                continue
            at = by_objective[objective]
            pearson = " | ".join(
                f"{at[str(e)]['pearson_mean']['mean']:.4f} ({at[str(e)]['pearson_mean']['min']:.4f})" for e in epochs
            )
            rank = " | ".join(f"{at[str(e)]['spearman_variance_error']['mean']:.2f}" for e in epochs)
            noise = at[str(epochs[-1])]["likelihood_noise"]["mean"]
            lines.append(f"| {objective} | {pearson} | {rank} | {noise:.3g} |")
        lines.append("")
    return "\n".join(lines)


def _merge(paths: list[Path], out: Path) -> int:
    """One report from several runs (each a recipe and some seeds, on a machine too busy for one run) or earlier
    merged reports; a later file's row replaces an earlier's for the same recipe, objective, seed and epochs."""
    results: dict = {}
    meta: dict = {}
    sources = []
    for path in paths:
        report = json.loads(path.read_text())
        if "sources" in report:  # an earlier merge: keep its sources
            sources.extend(report["sources"])
        else:
            sources.append({"path": str(path), "settings": report["settings"], "seconds": report["seconds"]})
        for key, by_seed in report.get("meta", {}).items():
            meta.setdefault(key, {}).update(by_seed)
        for recipe, by_objective in report["results"].items():
            for objective, by_seed in by_objective.items():
                if objective not in OBJECTIVES:
                    continue
                for seed, rows in by_seed.items():
                    stored = results.setdefault(recipe, {}).setdefault(objective, {}).setdefault(str(seed), [])
                    epochs = {row["epoch"] for row in rows}
                    stored[:] = sorted([r for r in stored if r["epoch"] not in epochs] + rows, key=lambda r: r["epoch"])
    out.mkdir(parents=True, exist_ok=True)
    report = {"sources": sources, "meta": meta, "summary": _summary_table(results), "results": results}
    (out / "elbo_swap.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(results, out / "elbo_swap.png")
    print(markdown_table(report))
    print(f"wrote {out / 'elbo_swap.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("elbo_swap_out"))
    parser.add_argument("--quick", action="store_true", help="reduced data, inducing points and epochs")
    parser.add_argument("--recipes", nargs="+", choices=("svgp", "svdkl"), default=["svgp", "svdkl"])
    parser.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=sorted(OBJECTIVES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 60, 150])
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--svgp-samples", type=int, default=5000, help="make_friedman1 samples (80 %% train)")
    parser.add_argument("--num-inducing", type=int, default=500)
    parser.add_argument("--svgp-batch-size", type=int, default=1024)
    parser.add_argument("--svdkl-batch-size", type=int, default=256)
    parser.add_argument("--svdkl-train-fraction", type=float, default=1.0, help="fraction of the 1,347 training digits")
    parser.add_argument("--cnn-epochs", type=int, default=10, help="epochs of the DigitsCNN explained")
    parser.add_argument(
        "--standardize-logits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SV-DKL: fit the GPs to the logits standardised per logit (training mean and deviation)",
    )
    parser.add_argument("--table-from", type=Path, default=None, help="print the markdown table of a JSON and exit")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge the JSONs of runs into --out")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        print(markdown_table(json.loads(args.table_from.read_text())))
        return 0
    if args.merge is not None:
        return _merge(args.merge, args.out)
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], [5, 10, 25]
        args.svgp_samples, args.num_inducing, args.svdkl_train_fraction, args.cnn_epochs = 1500, 100, 0.5, 3
    if args.jobs < 1:
        parser.error(f"--jobs: expected an integer >= 1, got {args.jobs}")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta: dict = {}
    tasks = []
    for seed in args.seeds:
        if "svgp" in args.recipes:
            _DATA[("svgp", seed)] = data = svgp_data(args.svgp_samples, seed)
            meta.setdefault("svgp_network_r2_test", {})[seed] = data["net_r2_test"]
            tasks += [("svgp", seed, objective, max(args.epochs), args) for objective in args.objectives]
        if "svdkl" in args.recipes:
            _DATA[("svdkl", seed)] = data = svdkl_data(
                seed, args.cnn_epochs, args.svdkl_train_fraction, args.standardize_logits
            )
            meta.setdefault("svdkl_cnn_accuracy", {})[seed] = data["cnn_accuracy"]
            tasks += [("svdkl", seed, o, e, args) for o in args.objectives for e in args.epochs]
    tasks.sort(key=lambda t: -t[3])  # longest first: better packing on the workers
    results: dict = {}
    if args.jobs == 1:
        outcomes = map(_task, tasks)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(args.jobs)
        outcomes = pool.imap_unordered(_task, tasks)
    for (recipe, seed, objective, _), rows in tqdm(outcomes, total=len(tasks), desc="runs"):
        stored = results.setdefault(recipe, {}).setdefault(objective, {}).setdefault(seed, [])
        stored.extend(rows)
        stored.sort(key=lambda row: row["epoch"])
        print(
            f"{recipe} seed {seed} {objective:>9}: "
            + ", ".join(
                f"{r['epoch']} ep Pearson {r['pearson_mean']:.4f} Spearman {r['spearman_variance_error']:.3f} "
                f"noise {r['likelihood_noise']:.3g}"
                for r in rows
            ),
            flush=True,
        )
    if args.jobs > 1:
        pool.close()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "settings": settings,
        "meta": meta,
        "summary": _summary_table(results),
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    (args.out / "elbo_swap.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot(results, args.out / "elbo_swap.png")
    print(markdown_table(json.loads(json.dumps(report))))
    print(f"{report['seconds']:.0f} s; wrote {args.out / 'elbo_swap.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
