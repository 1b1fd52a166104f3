"""The distillation loop (Alg. 2): it learns, it resumes exactly, and it refuses bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from gpex_gpytorch.distillation import (
    Distiller,
    faithfulness,
    load_checkpoint,
    mix_inputs,
    pearson_per_head,
    plot_faithfulness,
    predict_gp_and_ann,
    save_checkpoint,
)
from gpex_gpytorch.explain import StaleCacheWarning, check_cache_fresh
from gpex_gpytorch.utils.checkpoint_files import _host


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset, nn.Module]:
    """Flattened digits and a small MLP trained on them (a few seconds)."""
    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16
    y = torch.tensor(data.target)
    generator = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=generator)
    train, test = perm[:1200], perm[1200:]
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(ann.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(len(train), (128,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(ann(x[train][idx]), y[train][idx]).backward()
        optimizer.step()
    ann.eval()
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), ann


def _distiller(ann: nn.Module, **kwargs: object) -> Distiller:
    settings = dict(embedding_dim=8, batch_size=64, inducing_batch_size=64, lr=2e-3, eval_every=50, progress=False)
    settings.update(kwargs)
    return Distiller(ann, **settings)  # type: ignore[arg-type]


def test_a_short_distillation_raises_faithfulness_well_above_its_start(digits) -> None:
    train, test, ann = digits
    start = faithfulness(_distiller(ann, steps=1).fit(train).model_, ann, test)
    trained = _distiller(ann, steps=300).fit(train)
    report = faithfulness(trained.model_, ann, test)
    # One step leaves a random kernel network; with its cache refreshed (the default) that is a
    # random-feature ridge regression of the logits, already Pearson ≈ 0.83 here.
    assert start.pearson_mean < 0.87
    assert report.pearson_mean > 0.95, report
    assert report.pearson_mean > start.pearson_mean + 0.1
    assert report.gp_accuracy is not None and report.ann_accuracy is not None
    assert report.gp_accuracy > report.ann_accuracy - 0.1
    history = [h for h in trained.history_ if "pearson" in h]
    assert [h["step"] for h in history] == [50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
    assert all(0 <= h["staleness"] < 1 for h in history)


def test_fit_ends_with_a_fresh_cache_unless_told_not_to(digits) -> None:
    train, test, ann = digits
    inducing = train.tensors[0]
    fresh = _distiller(ann, steps=60, refresh_batch_size=8).fit(train)
    # The cache is exactly the trained network's embedding: staleness 0 on every row, G and b exact.
    kernel = fresh.model_.covar_module
    with torch.no_grad():
        embedded = kernel.embed(inducing).to(kernel.embeddings.dtype)
    torch.testing.assert_close(kernel.embeddings, embedded, rtol=1e-6, atol=1e-6)
    assert kernel.gram_drift() < 1e-12
    assert check_cache_fresh(fresh.model_, inducing) < 1e-6
    assert fresh.final_refresh_ is not None and fresh.final_refresh_["seconds"] > 0
    # 60 steps refresh 60·8 of 1,200 rows: most rows were cached before training moved the network.
    assert fresh.final_refresh_["staleness"] > 0.01
    stale = _distiller(ann, steps=60, refresh_batch_size=8, final_refresh=False).fit(train)
    assert stale.final_refresh_ is None
    with pytest.warns(StaleCacheWarning):
        assert check_cache_fresh(stale.model_, inducing) == pytest.approx(fresh.final_refresh_["staleness"], rel=0.3)


def test_resume_reproduces_an_uninterrupted_run(digits, tmp_path: Path) -> None:
    train, test, ann = digits
    x = test.tensors[0][:50]
    straight = _distiller(ann, steps=30, eval_every=10).fit(train)
    checkpoint = tmp_path / "run.pt"
    _distiller(ann, steps=20, eval_every=10, checkpoint_every=10, checkpoint_path=checkpoint).fit(train)
    state = load_checkpoint(checkpoint)
    assert state["step"] == 20
    resumed = _distiller(ann, steps=30, eval_every=10).fit(train, resume=checkpoint)
    torch.testing.assert_close(resumed.model_.predict(x)[0], straight.model_.predict(x)[0], rtol=0, atol=0)
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in straight.history_]
    with pytest.raises(ValueError, match="embedding_dim"):
        _distiller(ann, steps=30, embedding_dim=4).fit(train, resume=checkpoint)


def test_checkpoints_are_atomic_and_corruption_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": "x", "value": torch.arange(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    torch.save({"format": "x", "payload": Evil()}, path)
    with pytest.raises(ValueError, match="checkpoint: .*unpickling stopped: .*GLOBAL print was not an allowed") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)  # never torch's advice to unpickle arbitrary code


def test_mix_inputs_draws_alpha_from_minus_one_to_two() -> None:
    generator = torch.Generator().manual_seed(0)
    alpha = mix_inputs(torch.ones(5000, 2, 2), torch.zeros(5000, 2, 2), generator)
    assert alpha.min() >= -1 and alpha.max() <= 2
    assert alpha.min() < -0.9 and alpha.max() > 1.9
    torch.testing.assert_close(alpha[:, 0, 0], alpha[:, 1, 1])  # one α per sample
    assert abs(float(alpha.mean()) - 0.5) < 0.05


def test_faithfulness_report_matches_a_direct_computation(digits, tmp_path: Path) -> None:
    train, test, ann = digits
    model = _distiller(ann, steps=20).fit(train).model_
    report = faithfulness(model, ann, test)
    mean, variance, ann_out, labels = predict_gp_and_ann(model, ann, test)
    assert labels is not None and torch.equal(labels, test.tensors[1])
    assert bool((variance > 0).all())
    for head in range(10):
        expected = torch.corrcoef(torch.stack([mean[:, head], ann_out[:, head]]).double())[0, 1]
        assert report.pearson_per_head[head] == pytest.approx(float(expected), abs=1e-9)
    assert report.gp_accuracy == pytest.approx(float((mean.argmax(1) == labels).double().mean()))
    assert report.ann_accuracy == pytest.approx(float((ann_out.argmax(1) == labels).double().mean()))
    assert report.constant_heads == []
    parsed = json.loads(report.to_json(tmp_path / "metrics.json"))
    assert parsed["pearson_mean"] == report.pearson_mean
    assert plot_faithfulness(mean, ann_out, tmp_path / "f.png").stat().st_size > 10_000


def test_constant_heads_are_reported_and_excluded_from_the_mean() -> None:
    ann_out = torch.stack([torch.linspace(0, 1, 20), torch.zeros(20)], 1)
    corr = pearson_per_head(ann_out + 0.01 * torch.randn(20, 2), ann_out)
    assert corr[0] > 0.99 and torch.isnan(corr[1])


class _Unlabelled(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_generic_datasets_without_labels_work(digits) -> None:
    train, test, ann = digits
    model = _distiller(ann, steps=5).fit(_Unlabelled(train.tensors[0][:100])).model_
    report = faithfulness(model, ann, _Unlabelled(test.tensors[0][:40]))
    assert report.ann_accuracy is None and report.num_samples == 40


def test_bad_input_is_named(digits) -> None:
    train, _, ann = digits
    with pytest.raises(ValueError, match="ann"):
        _distiller(nn.Sequential(ann, nn.Flatten(0)), steps=1).fit(train)
    with pytest.raises(ValueError, match="train_dataset"):
        _distiller(ann, steps=1).fit(TensorDataset(torch.zeros(0, 64)))
    with pytest.raises(ValueError, match="kernel_network"):
        _distiller(ann, kernel_network=nn.Linear(64, 10 * 8 + 1), steps=1).fit(train)

    class NaNWhere(nn.Module):
        def __init__(self, threshold: float) -> None:
            super().__init__()
            self.threshold = threshold

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x[:, 10:11] > self.threshold, torch.nan, ann(x))

    # Pixels lie in [0, 1]: only extrapolated mixtures pass 1.5, so the run fails at a step.
    with pytest.raises(FloatingPointError, match="step .*ann produced non-finite outputs for training indices"):
        _distiller(NaNWhere(1.5), steps=50).fit(train)
    with pytest.raises(FloatingPointError, match="ann: non-finite outputs on inducing_dataset at indices"):
        _distiller(NaNWhere(0.9), steps=1).fit(train)
    with pytest.raises(ValueError, match="steps"):
        Distiller(ann, steps=0)
    with pytest.raises(ValueError, match="checkpoint_path"):
        Distiller(ann, checkpoint_every=5)
    with pytest.raises(TypeError, match="ann"):
        Distiller(lambda x: x)  # type: ignore[arg-type]


def test_a_save_sweeps_temporaries_left_by_a_killed_writer(tmp_path: Path) -> None:
    # The temporary's name says which writer (host, pid) made it; this one's writer is gone.
    killed = subprocess.Popen(["true"])
    killed.wait()
    path = tmp_path / "c.pt"
    (tmp_path / f".c.pt.{_host()}.{killed.pid}.abc123.tmp").write_bytes(b"torn")
    (tmp_path / f".other.pt.{_host()}.{killed.pid}.abc123.tmp").write_bytes(b"not ours")
    save_checkpoint(path, {"format": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.pt.{_host()}.{killed.pid}.abc123.tmp", "c.pt"]
