"""GELU for decode-sized tensors without oneDNN's per-call setup.

PyTorch sends a contiguous float32 ``F.gelu`` on a CPU to oneDNN, which sets up a primitive for every call:
tens of microseconds whatever the size. Measured on a 2-core Intel Xeon (Ice Lake, 2026-12-08) in a decoding
step of the bench model (6 x 384): 48 us a call for one row of 1,536 activations and 95 us for eight rows,
against 4-5 us and about 24 us with ATen's own vectorised kernel; on the 2-core AMD EPYC of the earlier
notes the same call took 34 us in the loop against 8 us alone. On 1.5M activations (a training batch)
oneDNN's kernel is the faster (0.9 against 1.4 ms here), so only tensors of at most ``SMALL`` elements (32
rows of a 1,024-wide model's MLP) take ATen's kernel, in ``GPT.forward`` and in the decoding steps alike:
a step's logits stay equal to the module path's. Both kernels compute the exact erf form; they differ in
the last bit of some results.

The switch is PyTorch's process-wide ``torch.backends.mkldnn.enabled``, off for the one call: an operator
another thread ran in those microseconds would take its ATen kernel too, the same function to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMALL = 1 << 17


def gelu(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x)`` (the exact form); a CPU tensor of at most ``SMALL`` elements on ATen's kernel."""
    if x.numel() > SMALL or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.gelu(x)  # a compiled graph computes GELU in its own generated code
    if not torch._C._get_mkldnn_enabled():
        return F.gelu(x)
    torch._C._set_mkldnn_enabled(False)  # what setting ``torch.backends.mkldnn.enabled`` calls
    try:
        return F.gelu(x)
    finally:
        torch._C._set_mkldnn_enabled(True)
