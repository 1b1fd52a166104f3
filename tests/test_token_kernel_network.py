"""The default kernel network for token sequences (T, F): chosen from the input shape, saved and reloaded, faithful."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_network_output import Pipeline
from torch.utils.data import DataLoader

from gpex_gpytorch.distillation import DefaultKernelNetwork, Distiller, load_explainer, save_explainer
from gpex_gpytorch.distillation.sequence_layers import AttentionPool1d, FlattenAndPool, TokenEmbedding
from gpex_gpytorch.explain import SubmoduleExplainer


def test_token_encoder_shapes_positions_and_pooling() -> None:
    torch.manual_seed(0)
    net = DefaultKernelNetwork((5, 3), num_heads=2, embedding_dim=4)
    assert isinstance(net[0], TokenEmbedding) and any(isinstance(m, FlattenAndPool) for m in net)
    x = torch.randn(7, 5, 3)
    assert net(x).shape == (7, 8)
    # Position embedding: swapping two tokens changes the embedding (a bag-of-tokens would not notice).
    assert not torch.allclose(net(x), net(x[:, [1, 0, 2, 3, 4]]))
    # Attention pooling: weights sum to one over the tokens, and the mean is appended.
    pool = AttentionPool1d(4)
    h = torch.randn(3, 4, 6)
    weights = pool.score(h).softmax(-1)
    torch.testing.assert_close(pool(h), torch.cat([(h * weights).sum(-1), h.mean(-1)], 1))
    both = FlattenAndPool(4)
    both.pool.load_state_dict(pool.state_dict())
    torch.testing.assert_close(both(h), torch.cat([h.reshape(3, 24), pool(h)], 1))
    with pytest.raises(ValueError, match=r"got a single example of shape \(5, 3\): add a batch dimension"):
        net(x[0])


def test_token_inputs_get_the_default_encoder_and_reload_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pipeline = Pipeline()
    loader = DataLoader(torch.randn(160, 4, 2), batch_size=32)
    settings = {"embedding_dim": 8, "batch_size": 32, "inducing_batch_size": 32, "lr": 3e-3, "progress": False}
    explainer = SubmoduleExplainer(pipeline, "block", output=0, steps=250, **settings).fit(loader)
    network = explainer.model_.covar_module.feature_extractor
    assert type(network) is DefaultKernelNetwork and network.input_shape == (4, 3)
    report = explainer.score(DataLoader(torch.randn(64, 4, 2), batch_size=32))
    assert report.pearson_mean > 0.95 and report.pearson_min > 0.93, report.pearson_per_head  # measured 0.972 / 0.959
    path = save_explainer(tmp_path / "tokens.pt", explainer.model_)
    x = explainer.capture_.inputs[:9]
    torch.testing.assert_close(load_explainer(path).predict(x)[0], explainer.model_.predict(x)[0], rtol=0, atol=0)


def test_distiller_on_token_tensors_directly() -> None:
    torch.manual_seed(0)
    ann = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    model = (
        Distiller(ann, embedding_dim=4, steps=3, batch_size=8, inducing_batch_size=8, progress=False)
        .fit(torch.randn(40, 4, 3))
        .model_
    )
    assert isinstance(model.covar_module.feature_extractor[0], TokenEmbedding)
