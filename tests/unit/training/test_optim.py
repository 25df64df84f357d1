"""AdamW, or Muon on the block matrices with AdamW on the rest, as one optimizer that checkpoints and resumes."""

from __future__ import annotations

import copy

import pytest
import torch

from ml_playground.configuration.models import OptimConfig
from ml_playground.core.losses import cross_entropy
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.optim import GroupedMuon, MuonWithAdamW, build_optimizer

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True, tie_weights=False))


def train_steps(model: GPT, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> list[float]:
    """Steps on sequences that count up modulo 30 from random starts: learnable, so the loss can fall."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = (torch.randint(30, (4, 1), generator=generator) + torch.arange(9)) % 30
        loss = cross_entropy(model(batch[:, :-1]), batch[:, 1:])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def test_adamw_decays_matrices_only() -> None:
    model = tiny()
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.2), CPU)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.2
    assert plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = tiny()
    optimizer = build_optimizer(model, OptimConfig(name="muon", learning_rate=1e-3, muon_learning_rate=0.02), CPU)
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    on_muon = {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    on_adamw = {names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]}
    assert on_muon == {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    assert on_muon.isdisjoint(on_adamw)
    assert on_muon | on_adamw == set(names.values())
    assert {"wte.weight", "wpe.weight", "lm_head.weight", "ln_f.weight", "blocks.0.attn.qkv.bias"} <= on_adamw
    assert optimizer.param_groups[0]["lr_ratio"] == pytest.approx(20.0)
    # The outer groups are the inner ones: a learning rate set by the loop reaches Muon.
    optimizer.param_groups[0]["lr"] = 0.5
    assert optimizer.muon.param_groups[0]["lr"] == 0.5


def test_muon_trains_and_updates_every_parameter() -> None:
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model, OptimConfig(name="muon", learning_rate=3e-3), CPU)
    losses = train_steps(model, optimizer, 40, seed=3)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    for name, value in model.state_dict().items():
        assert not torch.equal(value, before[name]), name


def test_state_round_trip_continues_bit_identically() -> None:
    config = OptimConfig(name="muon", learning_rate=3e-3)
    straight = tiny()
    straight_optimizer = build_optimizer(straight, config, CPU)
    train_steps(straight, straight_optimizer, 6, seed=1)
    saved_model, saved_state = copy.deepcopy(straight.state_dict()), copy.deepcopy(straight_optimizer.state_dict())
    straight_losses = train_steps(straight, straight_optimizer, 4, seed=2)

    resumed = tiny()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = build_optimizer(resumed, config, CPU)
    resumed_optimizer.load_state_dict(saved_state)
    resumed_optimizer.param_groups[0]["lr"] = 0.02  # the loop sets rates on the outer groups after loading
    assert resumed_optimizer.muon.param_groups[0]["lr"] == 0.02
    resumed_optimizer.param_groups[0]["lr"] = saved_state["muon"]["param_groups"][0]["lr"]
    assert train_steps(resumed, resumed_optimizer, 4, seed=2) == straight_losses
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, straight.state_dict()[name]), name


def test_foreign_state_is_refused() -> None:
    model = tiny()
    muon = build_optimizer(model, OptimConfig(name="muon"), CPU)
    adamw = build_optimizer(model, OptimConfig(), CPU)
    with pytest.raises(ValueError, match="not the state of Muon"):
        muon.load_state_dict(adamw.state_dict())
    with pytest.raises((KeyError, ValueError)):
        adamw.load_state_dict(muon.state_dict())


def test_closure_is_evaluated() -> None:
    model = tiny()
    optimizer = build_optimizer(model, OptimConfig(name="muon"), CPU)
    batch = torch.randint(30, (2, 9))

    def loss() -> torch.Tensor:
        return cross_entropy(model(batch[:, :-1]), batch[:, 1:])

    def closure() -> float:
        value = loss()
        value.backward()  # type: ignore[no-untyped-call]
        return float(value.detach())

    with torch.no_grad():
        before = float(loss())
    assert optimizer.step(closure) == pytest.approx(before)
    with torch.no_grad():
        assert float(loss()) != before  # the step moved the weights


@pytest.mark.parametrize("rule", ["original", "match_rms_adamw", "spectral_unclamped", None])
@pytest.mark.parametrize(("weight_decay", "nesterov"), [(0.0, True), (0.1, False)])
def test_grouped_muon_steps_like_torch_muon(rule: str | None, weight_decay: float, nesterov: bool) -> None:
    """Same-shape matrices orthogonalised in one batch give torch.optim.Muon's steps, matrix by matrix."""
    torch.manual_seed(4)
    shapes = [(48, 16), (48, 16), (16, 16), (16, 64), (16, 16), (64, 16)]  # tall, square and wide, repeated
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    grouped = GroupedMuon(ours, lr=0.02, weight_decay=weight_decay, nesterov=nesterov, adjust_lr_fn=rule)
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=weight_decay, nesterov=nesterov, adjust_lr_fn=rule)
    for step in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn_like(a) * (step + 1)
            b.grad = a.grad.clone()
        ours[2].grad = None if step == 1 else ours[2].grad  # a matrix without a gradient is left alone
        theirs[2].grad = ours[2].grad
        grouped.step()
        reference.step()  # type: ignore[no-untyped-call]
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert grouped.state_dict()["state"].keys() == reference.state_dict()["state"].keys()


def test_grouped_muon_with_nothing_to_step_changes_nothing() -> None:
    param = torch.nn.Parameter(torch.ones(4, 4))
    assert GroupedMuon([param], lr=0.1).step() is None
    assert torch.equal(param, torch.ones(4, 4))
