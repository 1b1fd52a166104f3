"""Suite-wide settings.

torch's intra-op threads are set to one: the suite's tensors are small, and on a shared 2-core
machine two threads per process contend badly (measured: a test took 88 s with two threads under
load, seconds with one). Tests that need otherwise set it themselves.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
