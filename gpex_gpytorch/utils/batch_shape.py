"""Say "add a batch dimension" when a single example is passed where a batch is expected."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["check_batched"]


def check_batched(name: str, inputs: Tensor, example_shape: Sequence[int]) -> None:
    """Check that ``inputs`` is ``(N, *example_shape)``.

    :raises ValueError: naming ``name``; for one unbatched example (shape ``example_shape``) the
        message says to add a batch dimension.
    """
    expected = tuple(int(s) for s in example_shape)
    shape = tuple(inputs.shape)
    if shape == expected:
        raise ValueError(
            f"{name}: expected a batch of shape (N, {', '.join(map(str, expected))}), got a single example of shape "
            f"{shape}: add a batch dimension ({name}.unsqueeze(0) or {name}[None])"
        )
    if len(shape) != len(expected) + 1 or shape[1:] != expected:
        raise ValueError(f"{name}: expected a batch of shape (N, {', '.join(map(str, expected))}), got {shape}")
