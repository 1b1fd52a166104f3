"""Streaming PCA: planted structure is recovered; batches give the full-batch SVD answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from gpex_gpytorch.explain.principal_components import StreamingPCA, fit_layer_pca, variance_completeness
from gpex_gpytorch.explain.principal_components.completeness import k_for_fraction
from gpex_gpytorch.explain.principal_components.streaming_pca import pca_lowrank


def planted(n: int, f: int, variances: list[float], seed: int = 0, offset: float = 3.0) -> tuple[torch.Tensor, ...]:
    """Rows whose sample covariance is exactly Q diag(variances) Qᵀ (Q: F×r orthonormal)."""
    g = torch.Generator().manual_seed(seed)
    r = len(variances)
    q, _ = torch.linalg.qr(torch.randn(f, r, generator=g, dtype=torch.float64))
    z = torch.randn(n, r, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z, _ = torch.linalg.qr(z)  # orthonormal, zero-mean columns
    scale = torch.tensor(variances, dtype=torch.float64).mul(n - 1).sqrt()
    mean = offset + torch.randn(f, generator=g, dtype=torch.float64)
    return (z * scale) @ q.T + mean, q, torch.tensor(variances, dtype=torch.float64), mean


def feed(pca: StreamingPCA, rows: torch.Tensor, sizes: list[int]) -> StreamingPCA:
    start = 0
    for size in sizes:
        pca.update(rows[start : start + size])
        start += size
    pca.update(rows[start:])
    return pca


def test_planted_low_rank_structure_is_recovered() -> None:
    variances = [9.0, 4.0, 1.0, 0.25]
    rows, q, lam, mean = planted(500, 40, variances)
    result = feed(StreamingPCA(), rows, [64, 100, 1, 200]).result()
    torch.testing.assert_close(result.eigenvalues[:4], lam, atol=1e-9, rtol=1e-9)
    assert float(result.eigenvalues[4:].abs().max()) < 1e-9
    # each planted direction is a recovered component (up to sign, fixed by convention)
    alignment = (result.components[:4] @ q).abs()
    torch.testing.assert_close(alignment, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(result.mean, mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(result.explained_variance_ratio[:4], lam / lam.sum(), atol=1e-9, rtol=0)
    assert result.total_variance == pytest.approx(float(lam.sum()), rel=1e-9)
    summary = variance_completeness(result)
    assert summary.k_pc[0.8] == 2  # 9 + 4 = 13 of 14.25 = 91 %
    assert summary.k_pc[0.99] == 4  # (9 + 4 + 1) / 14.25 = 98.2 % < 99 %


def full_batch_reference(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = rows.to(torch.float64)
    _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    return s.square() / (x.shape[0] - 1), vh


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=90), min_size=0, max_size=6),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_streaming_equals_full_batch_svd(sizes: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # float32 activations with a large common offset and decaying spectrum
    mixing = torch.randn(12, 12, generator=g) * torch.logspace(0, -2, 12).unsqueeze(1)
    rows = (torch.randn(300, 12, generator=g) @ mixing + 50.0).float()
    result = feed(StreamingPCA(), rows, sizes).result()
    eigenvalues, vh = full_batch_reference(rows)
    torch.testing.assert_close(result.eigenvalues, eigenvalues, atol=1e-5 * float(eigenvalues[0]), rtol=1e-5)
    # the spectrum is well separated at the top: compare those directions up to sign
    top = 6
    torch.testing.assert_close(
        (result.components[:top] @ vh[:top].T).abs(), torch.eye(top, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(result.neuron_variance, rows.double().var(0), atol=1e-8, rtol=1e-8)


def test_merge_equals_one_stream_and_lowrank_matches_top_components() -> None:
    rows, q, lam, _ = planted(400, 30, [5.0, 3.0, 2.0, 0.5, 0.1], seed=3)
    one = feed(StreamingPCA(), rows, [123]).result()
    left = StreamingPCA().update(rows[:150])
    right = feed(StreamingPCA(), rows[150:], [10, 77])
    merged = left.merge(right).result()
    torch.testing.assert_close(merged.eigenvalues, one.eigenvalues, atol=1e-10, rtol=0)
    torch.testing.assert_close(merged.components[:5], one.components[:5], atol=1e-8, rtol=0)
    fast = pca_lowrank(rows.float(), 5, niter=6)
    torch.testing.assert_close(fast.eigenvalues, lam, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((fast.components @ q).abs(), torch.eye(5, dtype=torch.float64), atol=1e-4, rtol=0)
    assert fast.total_variance == pytest.approx(one.total_variance, rel=1e-5)


def test_bad_inputs_raise_value_errors_naming_the_argument() -> None:
    pca = StreamingPCA(num_features=4)
    with pytest.raises(ValueError, match="batch"):
        pca.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="batch"):
        pca.update(torch.zeros(3))
    with pytest.raises(ValueError, match="dataset"):
        pca.result()
    pca.update(torch.randn(10, 4))
    with pytest.raises(ValueError, match="num_components"):
        pca.result(num_components=5)
    with pytest.raises(ValueError, match="num_components"):
        pca.result(num_components=0)
    with pytest.raises(ValueError, match="batch"):
        pca.update(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="num_components"):
        pca_lowrank(torch.randn(10, 4), 5)
    with pytest.raises(ValueError, match="fraction"):
        k_for_fraction(torch.tensor([0.5, 1.0]), 1.5)
    assert k_for_fraction(torch.tensor([0.5, 0.9]), 0.95) is None


def _aligned(components: torch.Tensor, reference: np.ndarray) -> torch.Tensor:
    """Flip each row of ``components`` to the sign of the matching row of ``reference``."""
    ref = torch.as_tensor(reference, dtype=torch.float64)
    signs = torch.sign((components * ref).sum(1, keepdim=True))
    return components * signs


def test_streaming_and_layer_pca_equal_scikit_learn() -> None:
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(3)
    mixing = torch.randn(12, 12, generator=g, dtype=torch.float64) * torch.logspace(1, -1, 12, dtype=torch.float64)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64) @ mixing + 2.0
    reference = PCA().fit(x.numpy())
    result = feed(StreamingPCA(), x, [7, 100, 1]).result()
    torch.testing.assert_close(
        result.eigenvalues, torch.as_tensor(reference.explained_variance_), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        result.explained_variance_ratio, torch.as_tensor(reference.explained_variance_ratio_), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(result.mean, torch.as_tensor(reference.mean_), rtol=1e-12, atol=1e-12)
    components = _aligned(result.components, reference.components_)
    torch.testing.assert_close(components, torch.as_tensor(reference.components_), rtol=1e-8, atol=1e-8)
    scores = result.project(x, 4) * torch.sign((result.components[:4] * components[:4]).sum(1))
    torch.testing.assert_close(scores, torch.as_tensor(reference.transform(x.numpy())[:, :4]), rtol=1e-8, atol=1e-8)

    # the same through a layer hook: the PCA of a Linear layer's outputs
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 6), torch.nn.Tanh()).double()
    with torch.no_grad():
        outputs = net[0](x)
    fitted = fit_layer_pca(net, "0", TensorDataset(x), batch_size=64)
    layer_reference = PCA(n_components=6).fit(outputs.numpy())
    torch.testing.assert_close(
        fitted.pca.eigenvalues, torch.as_tensor(layer_reference.explained_variance_), rtol=1e-9, atol=1e-12
    )
    low = pca_lowrank(x, 3, niter=8)
    torch.testing.assert_close(
        low.eigenvalues, torch.as_tensor(reference.explained_variance_[:3]), rtol=1e-6, atol=1e-9
    )


def test_fewer_samples_than_components_names_the_argument() -> None:
    from sklearn.decomposition import PCA

    x = torch.randn(5, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_components"):
        PCA(n_components=6).fit(x.numpy())  # scikit-learn refuses the same request
    pca = StreamingPCA().update(x)
    with pytest.raises(ValueError, match=r"num_components: expected at most the 5 samples"):
        pca.result(num_components=6)
    assert pca.result(num_components=5).num_components == 5
    net = torch.nn.Sequential(torch.nn.Linear(8, 8)).double()
    with pytest.raises(ValueError, match="num_components"):
        fit_layer_pca(net, "0", x, num_components=6)
    with pytest.raises(ValueError, match="num_components"):
        pca_lowrank(x, 6)
    with pytest.raises(ValueError, match="layer"):
        fit_layer_pca(net, "missing", x)
