"""A LoRA run's frozen products on oneDNN: the same loss and adapter gradients, eager and compiled; the choice."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from ml_playground.configuration.models import LoraConfig
from ml_playground.core.devices import Precision
from ml_playground.core.errors import ConfigError
from ml_playground.core.linear_kernels import LinearKernel, onednn_available
from ml_playground.core.losses import IGNORE_INDEX
from ml_playground.families.hf_lora import frozen_products
from ml_playground.families.hf_lora.compiled_layers import compile_layers_for_training
from ml_playground.families.hf_lora.frozen_products import FrozenWorkload, choose, pick
from ml_playground.families.hf_lora.hub import load_pretrained_model
from ml_playground.families.hf_lora.lora import apply_lora
from ml_playground.families.hf_lora.modules import LogitsOnly, target_loss
from ml_playground.families.hf_lora.setup import route_frozen_products
from ml_playground.families.hf_lora.tiny import build_tiny_causal_lm
from tests.unit.families.hf_lora.test_target_loss import TEXT, _grads, _lora

pytestmark = pytest.mark.unit
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
CPU32 = Precision(torch.device("cpu"), torch.float32)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randint(0, 200, (3, 20), generator=generator)
    y = torch.randint(0, 200, (3, 20), generator=generator)
    y[:, :7] = IGNORE_INDEX  # masked prompts: a row count that is no multiple of the head's row step
    return x, y


def _step(base: nn.Module, model: nn.Module, kernel: LinearKernel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = _batch()
    loss = target_loss(base, model, kernel)(x, y)  # type: ignore[arg-type]
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.detach(), _grads(model)


def _assert_close(
    got: tuple[torch.Tensor, dict[str, torch.Tensor]], want: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert got[1].keys() == want[1].keys()
    assert got[1]
    assert all("lora_" in name for name in got[1])
    for name, grad in got[1].items():
        assert torch.allclose(grad, want[1][name], rtol=1e-4, atol=1e-6), name


def test_frozen_linears_are_the_base_projections_and_head_not_the_adapters(tmp_path: Path) -> None:
    base, _ = _lora(tmp_path)
    found = frozen_products.frozen_linears(base)
    head = base.get_output_embeddings()
    assert head in found
    assert found
    assert all(not p.requires_grad for layer in found for p in layer.parameters())
    adapters = [m for name, m in base.named_modules() if "lora_" in name and isinstance(m, nn.Linear)]
    assert adapters
    assert not set(map(id, adapters)) & set(map(id, found))
    projections = [layer for layer in found if layer is not head]
    work = frozen_products.workload(projections, rows=60)
    assert work.shapes == tuple(sorted({(m.out_features, m.in_features) for m in projections}))
    assert frozen_products.route(projections, "aten") == 0
    assert all(type(layer) is nn.Linear for layer in projections)  # aten leaves the layers as they are


@needs_onednn
def test_routed_projections_train_like_the_default_eager_and_compiled(tmp_path: Path) -> None:
    base, model = _lora(tmp_path)
    reference = _step(base, model, "aten")
    with torch.no_grad():
        plain_logits = model(_batch()[0])
    assert route_frozen_products(base, "onednn", CPU32, rows=60) == "onednn"
    routed = [m for m in frozen_products.frozen_linears(base) if isinstance(m, frozen_products.RoutedLinear)]
    assert len(routed) == len(frozen_products.frozen_linears(base)) - 1  # every projection, not the head
    eager = _step(base, model, "onednn")
    _assert_close(eager, reference)
    assert compile_layers_for_training(base, pytest.fail) == 2
    compiled = _step(base, model, "onednn")
    _assert_close(compiled, reference)
    assert "lora_A" in next(name for name in model.state_dict() if "lora_" in name)  # names unchanged
    with torch.no_grad():  # evaluation and sampling: the routed layers without a graph
        assert torch.allclose(model(_batch()[0]), plain_logits, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_routed_layers_share_one_compiled_trace(tmp_path: Path) -> None:
    tiny = build_tiny_causal_lm(tmp_path / "tiny", [TEXT], num_layers=4, architecture="llama")
    base = load_pretrained_model(str(tiny), revision=None, dtype=torch.float32)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model = LogitsOnly(apply_lora(base, lora))
    assert route_frozen_products(base, "onednn", CPU32, rows=60) == "onednn"
    graphs: list[torch.fx.GraphModule] = []

    def counting(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        graphs.append(graph)
        return graph.forward

    def compiler(forward):  # type: ignore[no-untyped-def]
        return torch.compile(forward, backend=counting)

    assert compile_layers_for_training(base, pytest.fail, compiler) == 4
    _step(base, model, "onednn")
    # the first layer's input needs no gradient, the others' do: two traces for four layers, none per layer
    # (a per-layer forward object is guarded by identity, and every layer compiled again)
    assert len(graphs) == 2


def test_only_plain_linears_change_and_routing_twice_changes_nothing() -> None:
    class Quantized(nn.Linear):
        pass

    plain, other = nn.Linear(4, 8), Quantized(4, 8)
    weight = plain.weight
    assert frozen_products.route([plain, other], "onednn") == 1
    assert type(plain) is frozen_products.RoutedLinear
    assert type(other) is Quantized
    assert plain.weight is weight
    assert frozen_products.route([plain], "onednn") == 1
    assert type(plain) is frozen_products.RoutedLinear
    x = torch.randn(3, 4)
    assert torch.allclose(plain(x), x @ weight.t() + plain.bias, atol=1e-6)


def test_the_choice_is_measured_once_and_needs_a_margin(tmp_path: Path) -> None:
    calls: list[FrozenWorkload] = []

    def timings(seconds: Mapping[LinearKernel, float]):  # type: ignore[no-untyped-def]
        def measure(work: FrozenWorkload) -> Mapping[LinearKernel, float]:
            calls.append(work)
            return seconds

        return measure

    faster = FrozenWorkload(((8, 4),), rows=16)
    assert choose(faster, cache_dir=tmp_path, measure_fn=timings({"aten": 2.0, "onednn": 1.0})) == "onednn"
    assert choose(faster, cache_dir=tmp_path, measure_fn=timings({"aten": 1.0, "onednn": 2.0})) == "onednn"  # cached
    near_tie = FrozenWorkload(((8, 4),), rows=32)
    assert choose(near_tie, cache_dir=tmp_path, measure_fn=timings({"aten": 1.1, "onednn": 1.0})) == "aten"
    assert calls == [faster, near_tie]
    assert (tmp_path / frozen_products.CACHE_FILE).exists()


@needs_onednn
def test_the_real_measurement_times_both_kernels() -> None:
    seconds = frozen_products.measure(FrozenWorkload(((48, 32), (32, 48)), rows=64), repeats=1)
    assert set(seconds) == {"aten", "onednn"}
    assert all(value > 0 for value in seconds.values())


def test_pick_measures_only_where_onednn_could_change_a_product() -> None:
    work = FrozenWorkload(((8, 4),), rows=16)
    asked: list[FrozenWorkload] = []

    def chooser(w: FrozenWorkload) -> LinearKernel:
        asked.append(w)
        return "onednn"

    cpu = torch.device("cpu")
    assert pick("auto", cpu, torch.float32, work, available=True, chooser=chooser) == "onednn"
    assert pick("auto", cpu, torch.bfloat16, work, available=True, chooser=chooser) == "aten"
    assert pick("auto", cpu, torch.float32, work, available=False, chooser=chooser) == "aten"
    assert pick("auto", torch.device("meta"), torch.float32, work, available=True, chooser=chooser) == "aten"
    assert pick("aten", cpu, torch.float32, work, available=True, chooser=chooser) == "aten"
    assert pick("onednn", cpu, torch.float32, work, available=True, chooser=chooser) == "onednn"
    assert asked == [work]
    with pytest.raises(ConfigError, match="no oneDNN"):
        pick("onednn", cpu, torch.float32, work, available=False, chooser=chooser)


def test_setup_asks_the_chooser_with_the_projections_shapes_and_the_runs_rows(tmp_path: Path) -> None:
    base, _ = _lora(tmp_path)
    asked: list[FrozenWorkload] = []

    def chooser(work: FrozenWorkload) -> LinearKernel:
        asked.append(work)
        return "aten"

    assert route_frozen_products(base, "auto", CPU32, rows=4 * 24, chooser=chooser) == "aten"
    assert all("forward" not in vars(layer) for layer in frozen_products.frozen_linears(base))
    if onednn_available():  # elsewhere auto resolves to aten without measuring
        (work,) = asked
        assert work.rows == 96
        head = base.get_output_embeddings()
        assert (head.out_features, head.in_features) not in work.shapes  # the head is not measured
    assert route_frozen_products(nn.Sequential(nn.ReLU()), "auto", CPU32, rows=8, chooser=chooser) == "aten"
