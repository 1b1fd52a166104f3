"""Recipes for HuggingFace models (optional extra ``hf``): logits, a block, an attention module's tuple output.

A tiny ViT is built from a config (no weights are downloaded) and explained as it is, randomly
initialised: what is tested is that each output structure reaches the GPs and is matched.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gpex_gpytorch.distillation import Distiller, faithfulness
from gpex_gpytorch.distillation.sequence_layers import TokenEmbedding
from gpex_gpytorch.explain import SubmoduleExplainer, capture_submodule
from gpex_gpytorch.utils.network_output import SelectOutput

transformers = pytest.importorskip("transformers")

TOKENS, WIDTH = 5, 16  # 4 patches of 4x4 pixels + the CLS token; hidden size
SETTINGS = {"embedding_dim": 8, "batch_size": 32, "inducing_batch_size": 32, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        attn_implementation="eager",  # attention probabilities are returned (not under "sdpa")
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _token_net(heads: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(TOKENS * WIDTH, 128), nn.Tanh(), nn.Linear(128, heads * 8))


def test_logits_of_a_classifier_output(vit) -> None:
    train, test = _images(256, 0), _images(128, 1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 3 * 8))
    distiller = Distiller(vit, net, output="logits", steps=200, **SETTINGS).fit(train)
    report = faithfulness(distiller.model_, SelectOutput(vit, "logits"), TensorDataset(test), classifier=False)
    assert report.pearson_mean > 0.85, report.pearson_per_head


def test_an_attention_module_tuple_output_and_a_block_called_with_a_mask(vit) -> None:
    loader, held_out = DataLoader(_images(256, 0), batch_size=64), DataLoader(_images(128, 1), batch_size=64)
    # The attention module returns (output, probabilities) and is called with (hidden_states, None);
    # its (tokens, features) inputs get the default token-sequence kernel network.
    attention = SubmoduleExplainer(vit, "vit.layers.0.attention", output=0, steps=150, **SETTINGS).fit(loader)
    assert attention.capture_.call.args[1] is None
    assert isinstance(attention.model_.covar_module.feature_extractor[0], TokenEmbedding)
    report = attention.score(held_out)
    # measured: 0.9876 mean, 0.978 min at 150 steps (0.995 / 0.9916 at 300)
    assert report.pearson_mean > 0.975 and report.pearson_min > 0.96, report.pearson_per_head
    # The whole block, called with (hidden_states, attention_mask=None), returns a tensor.
    block = SubmoduleExplainer(vit, "vit.layers.0", kernel_network=_token_net(TOKENS * WIDTH), steps=150, **SETTINGS)
    report = block.fit(loader).score(held_out)
    assert report.pearson_mean > 0.9, report.pearson_per_head
    # Attention probabilities (eager attention): rows sum to one, one head per (head, query, key).
    probabilities = capture_submodule(vit, "vit.layers.0.attention", held_out, output=1)
    assert probabilities.output_shape == (2, TOKENS, TOKENS)
    sums = probabilities.outputs.reshape(-1, 2, TOKENS, TOKENS).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_the_gp_stands_in_for_an_attention_modules_output_inside_the_vit(vit) -> None:
    loader = DataLoader(_images(256, 0), batch_size=64)
    attention = SubmoduleExplainer(vit, "vit.layers.0.attention", output=0, steps=150, **SETTINGS).fit(loader)
    images = _images(32, 2)
    module = dict(vit.named_modules())["vit.layers.0.attention"]
    seen: list = []
    with torch.no_grad():
        original = vit(images).logits
        captured = capture_submodule(vit, "vit.layers.0.attention", [images], output=1)
        with attention.substitute():
            # registered after the substitution's hook: it sees the output the rest of the ViT receives
            handle = module.register_forward_hook(lambda m, args, out: seen.append(out))
            try:
                replaced = vit(images).logits
            finally:
                handle.remove()
        gp_mean, _ = attention.predict(captured.inputs)
    out, probabilities = seen[0]
    torch.testing.assert_close(out, gp_mean)  # output 0 is the GP's posterior mean ...
    torch.testing.assert_close(probabilities, captured.outputs.reshape(probabilities.shape))  # ... 1 passes through
    assert not torch.equal(replaced, original)
    assert torch.corrcoef(torch.stack([replaced.flatten(), original.flatten()]))[0, 1] > 0.95
    assert torch.equal(vit(images).logits, original)  # restored
