"""GELU on decode-sized tensors takes ATen's kernel (no oneDNN setup per call); larger ones stay on F.gelu."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.activations import SMALL, gelu

pytestmark = pytest.mark.unit


def aten_gelu(x: torch.Tensor) -> torch.Tensor:
    torch.backends.mkldnn.enabled = False
    try:
        return F.gelu(x)
    finally:
        torch.backends.mkldnn.enabled = True


def test_small_tensors_take_atens_kernel_and_large_ones_pytorchs_default() -> None:
    generator = torch.Generator().manual_seed(0)
    small = torch.randn(8, 1, 1536, generator=generator)
    assert torch.equal(gelu(small), aten_gelu(small))
    torch.testing.assert_close(gelu(small), F.gelu(small))  # the same function, to rounding
    large = torch.randn(SMALL + 1, generator=generator)
    assert torch.equal(gelu(large), F.gelu(large))
    assert torch.backends.mkldnn.enabled


def test_the_switch_is_restored_after_a_failure_and_left_alone_when_off() -> None:
    with pytest.raises(RuntimeError):
        gelu(torch.ones(4, dtype=torch.long))  # GELU is not defined on integers
    assert torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        x = torch.randn(16)
        assert torch.equal(gelu(x), F.gelu(x))
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True


def test_gradients_flow_through_the_small_path() -> None:
    x = torch.randn(64, requires_grad=True)
    gelu(x).sum().backward()  # type: ignore[no-untyped-call]
    reference = x.detach().clone().requires_grad_()
    F.gelu(reference).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    assert reference.grad is not None
    torch.testing.assert_close(x.grad, reference.grad)
