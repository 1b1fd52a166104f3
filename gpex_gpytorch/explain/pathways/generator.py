"""The pathway generator: reads a frozen network's feature maps and predicts instance-specific channel masks.

Architecture (a small re-derivation of GEN-CNP's description; every choice is listed in
``docs/pathways.md``):

1. **Read.** For each *read* layer (shallow and deep conv/linear layers of the target), the
   layer's output from the *unmasked* forward pass is summarised per channel -- spatial mean and
   spatial max for conv maps, the value itself for linear outputs -- normalised with a
   parameter-free layer norm (feature scales differ by orders of magnitude across layers) and
   embedded by ``Linear -> ReLU`` into ``hidden`` units.
2. **Fuse.** The embeddings of all read layers are concatenated and mapped by
   ``Linear -> ReLU -> LayerNorm`` to a shared code ``z``. Deep layers carry class information,
   shallow layers the instance's low-level evidence; the fused code is what lets same-class
   inputs share mask structure (the class-relevance objective acts on its output). Optionally
   (the default in :meth:`PathwayExplainer.build`) the full network's class probabilities -- its
   output, the deepest map of all -- enter ``z`` through a linear class embedding, so the class
   a pathway must support is given, not re-inferred: without it the generator sometimes built
   the pathway of a wrong class for an unseen input, which then flipped the prediction.
3. **Decode recursively.** Mask layers are decoded in network order. The decoder of layer ``l``
   sees the recurrent state ``h_{l-1}`` (``h_0 = z``) and produces one logit per channel, plus a
   per-channel affine *skip* from that layer's own normalised activation summary, so a channel's
   score can depend directly on how strongly it fired. The state is then updated with the layer's
   soft mask, ``h_l = LayerNorm(ReLU(W [h_{l-1}; sigmoid(logits_l)]))``, so downstream masks know
   which upstream channels were kept (the layer norms keep the state's scale fixed along the
   recursion; without them the logits grew to the thousands and every mask saturated).
4. **Quantise.** Scores become soft masks ``sigmoid(logit)``; at inference they are binarised at
   0.5. During training the binarisation uses a straight-through estimator (forward pass: the
   binary mask, backward pass: the gradient of the soft mask), after a soft warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpex_gpytorch.explain.pathways.channel_masks import (
    apply_channel_masks,
    capture_outputs,
    channel_dim,
    layer_channels,
    resolve_layers,
)
from gpex_gpytorch.utils.modules import eval_mode

__all__ = ["MaskMode", "PathwayExplainer", "PathwayGenerator", "binarize", "summarize_channels"]

MaskMode = Literal["soft", "straight_through", "hard"]
_MODES: tuple[str, ...] = ("soft", "straight_through", "hard")


def summarize_channels(module: nn.Module, output: Tensor) -> Tensor:
    """Per-channel summary of a layer output, shape ``(B, C)`` for linear and ``(B, 2C)`` for conv layers.

    Conv maps ``(B, C, *spatial)`` give ``[spatial mean, spatial max]``; linear outputs ``(B, *, C)``
    are averaged over any middle dimensions.
    """
    dim = channel_dim(module, output)
    if dim == 1 and output.dim() > 2:
        flat = output.flatten(2)
        return torch.cat([flat.mean(dim=2), flat.amax(dim=2)], dim=1)
    if output.dim() > 2:
        return output.flatten(1, -2).mean(dim=1)
    return output


def binarize(probabilities: Tensor, mode: MaskMode, threshold: float = 0.5) -> Tensor:
    """Turn soft mask probabilities into masks.

    :param mode: ``"soft"`` returns the probabilities; ``"hard"`` returns ``(p >= threshold)`` as
        float without gradient; ``"straight_through"`` returns the hard mask in the forward pass
        and passes the gradient of ``p`` unchanged in the backward pass.
    """
    if mode == "soft":
        return probabilities
    hard = (probabilities >= threshold).to(probabilities.dtype)
    if mode == "hard":
        return hard
    if mode == "straight_through":
        return hard + (probabilities - probabilities.detach())  # exactly `hard` in the forward pass
    raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")


class _Reader(nn.Module):
    """Embeds one read layer's channel summary into ``hidden`` units."""

    def __init__(self, in_features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features, elementwise_affine=False)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(in_features, hidden)

    def forward(self, summary: Tensor) -> Tensor:
        return F.relu(self.proj(self.drop(self.norm(summary))))


class _Decoder(nn.Module):
    """Decodes one mask layer: channel logits from the recurrent state and the layer's own summary."""

    def __init__(
        self, hidden: int, channels: int, summary_features: int | None, init_bias: float, num_classes: int | None
    ) -> None:
        super().__init__()
        self.channels = channels
        self.logits = nn.Linear(hidden, channels)
        nn.init.zeros_(self.logits.weight)
        nn.init.constant_(self.logits.bias, init_bias)
        # Per-channel skip from the channel's own (normalised) activation summary, with one gain per
        # (class, statistic, channel): how much a channel's firing matters depends on the class
        # being supported (for the last hidden layer it can learn the classifier weight w_yc).
        self.has_skip = summary_features is not None
        if summary_features is not None:
            self.norm = nn.LayerNorm(summary_features, elementwise_affine=False)
            gains = (num_classes or 1, summary_features // channels, channels)
            self.skip_weight = nn.Parameter(torch.zeros(gains))
        self.update = nn.Linear(hidden + channels, hidden)
        self.state_norm = nn.LayerNorm(hidden)

    def forward(self, state: Tensor, summary: Tensor | None, class_probs: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = self.logits(state)
        if self.has_skip and summary is not None:
            normed = self.norm(summary).reshape(summary.shape[0], -1, self.channels)
            if class_probs is not None:
                gains = torch.einsum("bk,ksc->bsc", class_probs, self.skip_weight)
            else:
                gains = self.skip_weight[0]
            logits = logits + (normed * gains).sum(dim=1)
        new_state = self.state_norm(F.relu(self.update(torch.cat([state, torch.sigmoid(logits)], dim=1))))
        return logits, new_state


class PathwayGenerator(nn.Module):
    """Predicts channel-mask logits for the mask layers from the target's read-layer feature maps.

    :param read_features: ``{read layer name: size of its channel summary}`` (see
        :func:`summarize_channels`; :meth:`PathwayExplainer.build` fills this in).
    :param mask_channels: ``{mask layer name: number of channels}`` in network order.
    :param mask_summary_features: ``{mask layer name: summary size}`` for mask layers whose own
        summary feeds the per-channel skip (normally every mask layer that is also read).
    :param hidden: width of the embeddings and of the recurrent decoder state.
    :param init_bias: initial logit of every channel; ``1.0`` starts every channel at
        ``sigmoid(1) = 0.73``, above the 0.5 threshold, so training starts from the complete (hence
        faithful) binary network and prunes from there, without saturated sigmoids.
    :param dropout: dropout on the normalised read-layer summaries during training (the generator
        sees each training input many times and otherwise memorises instance-specific masks that
        do not carry over to new inputs).
    """

    def __init__(
        self,
        read_features: Mapping[str, int],
        mask_channels: Mapping[str, int],
        mask_summary_features: Mapping[str, int] | None = None,
        *,
        hidden: int = 64,
        init_bias: float = 1.0,
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not read_features:
            raise ValueError("read_features: expected at least one read layer")
        if not mask_channels:
            raise ValueError("mask_channels: expected at least one mask layer")
        if hidden < 1:
            raise ValueError(f"hidden: expected a positive width, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes: expected a positive number of classes or None, got {num_classes}")
        summaries = dict(mask_summary_features or {})
        unknown = sorted(set(summaries) - set(mask_channels))
        if unknown:
            raise ValueError(f"mask_summary_features: layers {unknown} are not mask layers {list(mask_channels)}")
        self.read_names = list(read_features)
        self.mask_names = list(mask_channels)
        self.mask_channels = dict(mask_channels)
        # ModuleDict keys may not contain dots; index by position instead.
        self.readers = nn.ModuleList([_Reader(int(read_features[n]), hidden, dropout) for n in self.read_names])
        self.fuse = nn.Linear(hidden * len(self.read_names), hidden)
        self.fuse_norm = nn.LayerNorm(hidden)
        self.num_classes = num_classes
        self.class_embedding = nn.Linear(num_classes, hidden, bias=False) if num_classes is not None else None
        self.decoders = nn.ModuleList(
            [_Decoder(hidden, int(mask_channels[n]), summaries.get(n), init_bias, num_classes) for n in self.mask_names]
        )

    def forward(self, summaries: Mapping[str, Tensor], class_probs: Tensor | None = None) -> dict[str, Tensor]:
        """Channel logits ``{mask layer: (B, C)}`` from the channel summaries of every read layer.

        :param class_probs: ``(B, num_classes)`` class probabilities of the full network, required
            when the generator was built with ``num_classes``.
        """
        missing = [n for n in self.read_names if n not in summaries]
        if missing:
            raise ValueError(f"summaries: missing read layers {missing}; got {list(summaries)}")
        embedded = [reader(summaries[name]) for reader, name in zip(self.readers, self.read_names, strict=True)]
        fused = self.fuse(torch.cat(embedded, dim=1))
        if self.class_embedding is not None:
            batch = embedded[0].shape[0]
            if class_probs is None or class_probs.shape != (batch, self.num_classes):
                got = None if class_probs is None else tuple(class_probs.shape)
                raise ValueError(f"class_probs: expected shape ({batch}, {self.num_classes}), got {got}")
            fused = fused + self.class_embedding(class_probs)
        else:
            class_probs = None
        state = self.fuse_norm(F.relu(fused))
        logits: dict[str, Tensor] = {}
        for decoder, name in zip(self.decoders, self.mask_names, strict=True):
            logits[name], state = decoder(state, summaries.get(name), class_probs)
        return logits


@dataclass
class PathwayExplainer:
    """A frozen target network, the layers it is masked at, and the generator that predicts its pathways.

    Build one with :meth:`build`. The methods run the target as it is: put it in ``eval`` mode
    first (:func:`~gpex_gpytorch.explain.pathways.training.frozen` does that and restores it);
    its parameters are never updated by this class.

    :ivar target: the network being explained.
    :ivar generator: the :class:`PathwayGenerator`.
    :ivar mask_layers: names of the layers whose channels form the pathway, in network order.
    :ivar read_layers: names of the layers whose outputs the generator reads.
    """

    target: nn.Module
    generator: PathwayGenerator
    mask_layers: list[str]
    read_layers: list[str]

    @classmethod
    def build(
        cls,
        target: nn.Module,
        mask_layers: Sequence[str],
        example_input: Tensor,
        *,
        read_layers: Sequence[str] | None = None,
        hidden: int = 64,
        init_bias: float = 1.0,
        dropout: float = 0.0,
        condition_on_prediction: bool = True,
    ) -> PathwayExplainer:
        """Create a generator sized for ``target``.

        :param mask_layers: conv/linear layers to mask (do not include the output layer: masking
            logits is not a pathway).
        :param example_input: one batch (any size >= 1) used to infer the summary sizes.
        :param read_layers: layers the generator reads; defaults to ``mask_layers`` (they already
            span shallow to deep layers).
        :param hidden: see :class:`PathwayGenerator`.
        :param init_bias: see :class:`PathwayGenerator`.
        :param dropout: see :class:`PathwayGenerator`.
        :param condition_on_prediction: feed the full network's class probabilities (its output,
            the deepest "feature map") to the generator; requires ``(B, K)`` logits as output.
        """
        resolve_layers(target, mask_layers, argument="mask_layers")  # errors name the caller's argument
        mask_layers = list(mask_layers)
        read_layers = list(read_layers) if read_layers is not None else list(mask_layers)
        channels = layer_channels(target, mask_layers)
        resolve_layers(target, read_layers, argument="read_layers")
        logits, summaries = _summaries(target, read_layers, example_input[:2])
        num_classes: int | None = None
        if condition_on_prediction:
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"condition_on_prediction: needs (B, K) logits from target, got {shape}")
            num_classes = int(logits.shape[1])
        read_features = {n: int(s.shape[1]) for n, s in summaries.items()}
        mask_summary = {n: read_features[n] for n in mask_layers if n in read_features}
        generator = PathwayGenerator(
            read_features,
            channels,
            mask_summary,
            hidden=hidden,
            init_bias=init_bias,
            dropout=dropout,
            num_classes=num_classes,
        )
        return cls(target=target, generator=generator, mask_layers=mask_layers, read_layers=read_layers)

    def full_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Unmasked logits and read-layer channel summaries, without gradients."""
        layers = list(dict.fromkeys([*self.read_layers, *self.mask_layers]))
        modules = resolve_layers(self.target, layers)
        with torch.no_grad(), capture_outputs(self.target, layers, detach=True) as outputs:
            logits = self.target(x)
        summaries = {n: summarize_channels(modules[n], outputs[n]) for n in layers}
        return logits, summaries

    def probabilities(self, summaries: Mapping[str, Tensor], full_logits: Tensor) -> dict[str, Tensor]:
        """Soft masks (keep probabilities) ``{mask layer: (B, C)}`` from read-layer summaries and full logits."""
        class_probs = F.softmax(full_logits, dim=1) if self.generator.num_classes is not None else None
        return {n: torch.sigmoid(v) for n, v in self.generator(summaries, class_probs).items()}

    def masks(self, x: Tensor, mode: MaskMode = "hard") -> dict[str, Tensor]:
        """Pathway masks of the inputs ``x``: binary with ``mode="hard"`` (the default, no gradient)."""
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        logits, summaries = self.full_forward(x)
        if mode == "hard":
            with torch.no_grad():
                return {n: binarize(p, "hard") for n, p in self.probabilities(summaries, logits).items()}
        return {n: binarize(p, mode) for n, p in self.probabilities(summaries, logits).items()}

    def scores(self, x: Tensor) -> dict[str, Tensor]:
        """Keep probabilities without gradient: the generator's channel ranking (used by insertion/deletion curves)."""
        logits, summaries = self.full_forward(x)
        with torch.no_grad():
            return self.probabilities(summaries, logits)

    def masked_logits(self, x: Tensor, masks: Mapping[str, Tensor]) -> Tensor:
        """Logits of the target with ``masks`` applied (gradients flow to the masks)."""
        with apply_channel_masks(self.target, masks):
            return self.target(x)


def _summaries(target: nn.Module, layers: Sequence[str], x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    modules = resolve_layers(target, layers)
    with eval_mode(target), torch.no_grad(), capture_outputs(target, layers, detach=True) as outputs:
        logits = target(x)
    return logits, {n: summarize_channels(modules[n], outputs[n]) for n in layers}
