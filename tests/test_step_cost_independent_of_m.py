"""No operation inside a training step touches all M rows of the inducing cache.

The profiler records the input shapes of every aten op of one training step (forward with fresh
rows, ANNMatchingELBO, backward, optimiser step, refresh). With M a prime that no other size in
the model shares, an M-sized input can only be the cache itself, and it may only reach ops that
view it or gather/scatter a few of its rows.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from gpex_gpytorch import ANNMatchingELBO, CachedDeepKernel, GPEXModel

M = 7919  # prime: no batch, width or head count equals it
ROW_ACCESS_OPS = {
    # views: no data touched
    "aten::slice",
    "aten::select",
    "aten::as_strided",
    "aten::transpose",
    "aten::t",
    "aten::view",
    "aten::expand",
    "aten::unsqueeze",
    "aten::permute",
    "aten::alias",
    "aten::detach",
    "detach",
    "aten::lift_fresh",
    "aten::numpy_T",
    "aten::_reshape_alias",
    "aten::reshape",
    # gathers/scatters of the selected rows
    "aten::index",
    "aten::index_put_",
    "aten::_index_put_impl_",
    "aten::index_select",
    "aten::index_copy_",
}


def test_a_training_step_touches_only_the_rows_it_uses() -> None:
    torch.manual_seed(0)
    heads, dim, batch, width = 3, 8, 32, 16
    net = nn.Sequential(nn.Linear(width, 24), nn.ReLU(), nn.Linear(24, heads * dim))
    kernel = CachedDeepKernel(net, M, heads, dim)
    inducing = torch.randn(M, width)
    kernel.fill(inducing, progress=False)
    model = GPEXModel(kernel, torch.randn(M, heads))
    mll = ANNMatchingELBO(None, model, num_data=M)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        fresh = torch.randperm(M)[:batch]
        x = torch.randn(batch, width)
        output = model(x, fresh_indices=fresh, fresh_inputs=inducing[fresh])
        loss = -mll(output, torch.randn(batch, heads))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows = torch.arange(batch) * 7
        kernel.refresh(rows, inducing[rows])

    step()
    fresh_rows = torch.randperm(M)[:batch]  # drawn outside the profile: a sampler's own O(M)
    inputs_fresh = inducing[fresh_rows]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        output = model(torch.randn(batch, width), fresh_indices=fresh_rows, fresh_inputs=inputs_fresh)
        loss = -mll(output, torch.randn(batch, heads))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows = torch.arange(batch) * 7
        kernel.refresh(rows, inducing[rows])
    touched = set()
    for event in prof.events():
        shapes = [s for s in (event.input_shapes or []) if isinstance(s, list)]
        if any(M in shape for shape in shapes) and event.name not in ROW_ACCESS_OPS:
            touched.add((event.name, str(shapes)))
    assert not touched, f"ops reading all M rows inside a step: {sorted(touched)}"
    # The check can fail: a full recompute does read every row.
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        kernel.recompute_statistics(batch_size=M)
    assert any(
        any(M in s for s in (e.input_shapes or []) if isinstance(s, list)) and e.name not in ROW_ACCESS_OPS
        for e in prof.events()
    )
