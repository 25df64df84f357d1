"""oneDNN linear layers: same results as F.linear (to float rounding), gradients included, and fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.errors import ConfigError
from ml_playground.core.linear_kernels import linear, onednn_available, resolve_linear_kernel
from ml_playground.core.losses import cross_entropy
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.gpt.family import model_from_checkpoint
from ml_playground.families.gpt.generation import generate
from ml_playground.families.gpt.kernel_choice import Workload, pick_linear_kernel
from ml_playground.families.gpt.model import GPT, GPTConfig, Linear
from tests.unit.families.gpt.test_gpt_loading import saved

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN"),
]


def twin_models(n_layer: int) -> tuple[GPT, GPT]:
    """The same weights twice: on PyTorch's default linear and on oneDNN."""
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=n_layer, n_head=2, n_embd=32, bias=True, tie_weights=False)
    torch.manual_seed(0)
    reference = GPT(config)
    onednn = GPT(config).use_linear_kernel("onednn")
    onednn.load_state_dict(reference.state_dict())
    return reference, onednn


def assert_same_gradients(mine: GPT, reference: GPT) -> None:
    for (name, got), expected in zip(mine.named_parameters(), reference.parameters(), strict=True):
        assert got.grad is not None, name
        assert expected.grad is not None, name
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("leading", [(7,), (3, 5)])
@pytest.mark.parametrize("with_bias", [False, True])
# wide: dW on oneDNN too; its entries reach about 80 (sums of 320 products), so rounding reaches 4e-5
@pytest.mark.parametrize(("features", "atol"), [((12, 9), 1e-5), ((320, 256), 1e-4)], ids=["narrow", "wide"])
def test_forward_and_gradients_match_f_linear(
    leading: tuple[int, ...], with_bias: bool, features: tuple[int, int], atol: float
) -> None:
    torch.manual_seed(0)
    n_in, n_out = features
    x = torch.randn(*leading, n_in, requires_grad=True)
    weight = torch.randn(n_out, n_in, requires_grad=True)
    bias = torch.randn(n_out, requires_grad=True) if with_bias else None
    upstream = torch.randn(*leading, n_out)

    def run(kernel: str) -> list[torch.Tensor]:
        out = linear(x, weight, bias, kernel)  # type: ignore[arg-type]
        inputs = [x, weight] + ([bias] if bias is not None else [])
        grads = torch.autograd.grad(out, inputs, upstream)
        return [out, *grads]

    for mine, reference in zip(run("onednn"), run("aten"), strict=True):
        assert mine.shape == reference.shape
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=atol)


def test_only_the_gradients_asked_for() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(5, 12), torch.randn(9, 12)
    frozen_input = linear(x, weight.requires_grad_(), None, "onednn")
    (weight_grad,) = torch.autograd.grad(frozen_input.sum(), [weight])
    torch.testing.assert_close(weight_grad, torch.ones(5, 9).t() @ x, rtol=1e-5, atol=1e-5)
    frozen_weight = linear(x.requires_grad_(), weight.detach(), None, "onednn")
    (input_grad,) = torch.autograd.grad(frozen_weight.sum(), [x])
    torch.testing.assert_close(input_grad, torch.ones(5, 9) @ weight.detach(), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_no_grad_path() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 4).t()  # (4, 12), transposed view
    weight = torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, weight, None, "onednn"), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_falls_back_to_f_linear_where_onednn_does_not_apply() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(3, 8, dtype=torch.bfloat16)
    assert torch.equal(linear(x, weight, None, "onednn"), F.linear(x, weight))  # bfloat16: bit for bit
    x32, weight32 = x.float(), weight.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = linear(x32, weight32, None, "onednn")
        assert under_autocast.dtype == torch.bfloat16  # autocast still applied: F.linear ran
        assert torch.equal(under_autocast, F.linear(x32, weight32))


# opcheck's own AOT test reads .grad of a non-leaf tensor it made (a warning from torch's test utility)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_the_compile_operator_passes_pytorchs_operator_checks() -> None:
    from ml_playground.core.linear_kernels import _onednn_op

    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 8), torch.randn(6, 8), torch.randn(6)
    wide_x, wide_weight = torch.randn(2, 3, 256), torch.randn(256, 256)
    for args in (
        (x, weight, bias),
        (x.requires_grad_(), weight.requires_grad_(), None),
        (wide_x.requires_grad_(), wide_weight.requires_grad_(), None),
    ):
        torch.library.opcheck(_onednn_op, args)  # schema, fake shapes, autograd registration
    torch.testing.assert_close(_onednn_op(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    upstream = torch.randn(2, 3, 256)
    mine = torch.autograd.grad(_onednn_op(wide_x, wide_weight, None), [wide_x, wide_weight], upstream)
    reference = torch.autograd.grad(F.linear(wide_x, wide_weight), [wide_x, wide_weight], upstream)
    for got, expected in zip(mine, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_compiled_model_keeps_the_onednn_products() -> None:
    from torch.profiler import ProfilerActivity, profile

    reference, onednn = twin_models(n_layer=1)
    compiled = torch.compile(onednn)
    idx, targets = torch.randint(40, (4, 16)), torch.randint(40, (4, 16))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = cross_entropy(compiled(idx), targets)
        loss.backward()  # type: ignore[no-untyped-call]
    calls = {event.key: event.count for event in prof.key_averages()}
    # 4 linear layers in the block plus the head, forward; and the input gradients but the first's
    assert calls.get("ml_playground::onednn_linear", 0) >= 5
    reference_loss = cross_entropy(reference(idx), targets)
    reference_loss.backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert_same_gradients(onednn, reference)


def test_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_linear_kernel("auto", cpu, available=True) == "onednn"
    assert resolve_linear_kernel("auto", cpu, available=False) == "aten"
    assert resolve_linear_kernel("auto", cuda, available=True) == "aten"
    assert resolve_linear_kernel("aten", cpu, available=True) == "aten"
    assert resolve_linear_kernel("onednn", cpu, available=True) == "onednn"
    with pytest.raises(ConfigError, match="no oneDNN") as err:
        resolve_linear_kernel("onednn", cpu, available=False)
    assert err.value.key == "train.model.linear_kernel"


def test_model_trains_and_generates_alike_on_both_kernels() -> None:
    reference, onednn = twin_models(n_layer=2)
    assert {m.kernel for m in onednn.modules() if isinstance(m, Linear)} == {"onednn"}
    idx, targets = torch.randint(40, (4, 16)), torch.randint(40, (4, 16))
    losses = []
    for model in (reference, onednn):
        loss = cross_entropy(model(idx), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert_same_gradients(onednn, reference)
    prompt = torch.randint(40, (1, 3))
    greedy = SamplingParams(max_new_tokens=20, temperature=0.0)
    assert torch.equal(generate(onednn, prompt, greedy), generate(reference, prompt, greedy))


def test_checkpoints_load_with_the_configured_kernel(tmp_path: Path) -> None:
    loaded = saved(tmp_path, ema=False)
    kernels = {
        setting: {m.kernel for m in model_from_checkpoint(loaded, torch.device("cpu"), "raw", setting).modules()
                  if isinstance(m, Linear)}
        for setting in ("auto", "aten", "onednn")
    }  # fmt: skip
    decoding = Workload(loaded.manifest["model_config"]["n_embd"], rows=1, training=False)
    measured_here = pick_linear_kernel("auto", torch.device("cpu"), decoding)  # what auto measured on this machine
    assert kernels == {"auto": {measured_here}, "aten": {"aten"}, "onednn": {"onednn"}}
