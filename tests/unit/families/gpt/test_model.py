from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.losses import cross_entropy
from ml_playground.families.gpt.model import GPT, GPTConfig, KVCache

pytestmark = pytest.mark.unit


def tiny(**kw: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw))  # type: ignore[arg-type]


def test_logits_shape_and_initial_loss_near_uniform() -> None:
    model = tiny()
    idx = torch.randint(50, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 50)
    loss = cross_entropy(logits, torch.randint(50, (3, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3


def test_weights_are_tied_and_counted_once() -> None:
    model = tiny(bias=True)
    assert model.lm_head.weight is model.wte.weight
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters(exclude_embeddings=False) == total
    assert model.num_parameters() == total - 16 * 16


def test_causality_future_tokens_do_not_change_the_past() -> None:
    model = tiny().eval()
    idx = torch.randint(50, (1, 10))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % 50
    assert torch.allclose(model(idx)[:, :7], model(changed)[:, :7], atol=1e-6)


def test_cached_forward_equals_full_forward() -> None:
    model = tiny().eval()
    idx = torch.randint(50, (2, 12))
    full = model(idx)
    cache = KVCache(model.config.n_layer)
    parts = [model(idx[:, :5], cache), model(idx[:, 5:8], cache)]  # a prefix, then several tokens at once
    parts += [model(idx[:, i : i + 1], cache) for i in range(8, 12)]  # then one at a time
    assert cache.length == 12
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_last_only_gives_the_last_positions_logits_alone() -> None:
    torch.manual_seed(0)
    shape = {"vocab_size": 40, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 16}
    ids = torch.tensor([[5, MARKER, 7, 1, 2], [3, 4, 5, 6, MARKER]])
    for config in (GPTConfig(**shape), GPTConfig(**shape, condition_marker=MARKER, condition_bias=True)):
        model = GPT(config).eval()
        if model.wce is not None:
            with torch.no_grad():
                model.wce.weight[:40].normal_()  # conditions that move the logits
        last = model(ids, last_only=True)
        assert last.shape == (2, 1, 40)
        torch.testing.assert_close(last, model(ids)[:, -1:], rtol=1e-5, atol=1e-5)
        cache = KVCache(model.config.n_layer)
        torch.testing.assert_close(model(ids, cache, last_only=True), last, rtol=1e-5, atol=1e-5)
        assert cache.length == 5  # every position is cached, the head ran on one


def test_overlong_input_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        tiny()(torch.zeros((1, 17), dtype=torch.long))


def test_dropout_only_in_training_mode() -> None:
    model = tiny(dropout=0.5)
    idx = torch.randint(50, (2, 8))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


@pytest.mark.parametrize(
    "options",
    [
        {"rotary": True},
        {"qk_norm": True},
        {"activation": "relu2"},
        {"tie_weights": False},
        {"rotary": True, "qk_norm": True, "activation": "relu2", "tie_weights": False},
    ],
)
def test_modern_options_keep_the_cache_exact_and_causal(options: dict[str, object]) -> None:
    model = tiny(**options).eval()
    idx = torch.randint(50, (2, 12))
    full = model(idx)
    cache = KVCache(model.config.n_layer)
    stepwise = torch.cat([model(idx[:, :4], cache)] + [model(idx[:, i : i + 1], cache) for i in range(4, 12)], dim=1)
    assert torch.allclose(stepwise, full, atol=1e-5)
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50
    assert torch.allclose(model(changed)[:, :8], full[:, :8], atol=1e-6)
    assert (model.wpe is None) == bool(options.get("rotary", False))
    assert (model.lm_head.weight is model.wte.weight) == options.get("tie_weights", True)


def test_rotary_encodes_relative_position() -> None:
    from ml_playground.families.gpt.model import apply_rotary, rotary_tables

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    scores = []
    for shift in (0, 5):
        cos_q, sin_q = rotary_tables(8, 3 + shift, 1, 10000.0, torch.device("cpu"))
        cos_k, sin_k = rotary_tables(8, 1 + shift, 1, 10000.0, torch.device("cpu"))
        scores.append((apply_rotary(q, cos_q, sin_q) * apply_rotary(k, cos_k, sin_k)).sum())
    assert torch.allclose(scores[0], scores[1], atol=1e-5)


MARKER, RESET = 30, 31  # stand-ins for <|party|> and <|end|> in a 40-token vocabulary


def conditioned_model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16, condition_marker=MARKER, condition_reset=RESET
    )
    return GPT(config).eval()


def test_condition_ids_follow_the_marker_until_the_reset() -> None:
    model = conditioned_model()
    none = 40
    #            hdr  <p>  SPD   t    t   end   \n  <p>  AfD   t
    ids = torch.tensor([[5, MARKER, 7, 1, 2, RESET, 3, MARKER, 9, 4]])
    assert model.condition_ids(ids).tolist() == [[none, none, 7, 7, 7, 7, none, none, 9, 9]]
    cache = KVCache(2)
    pieces = [model.condition_ids(ids[:, :2], cache), model.condition_ids(ids[:, 2:3], cache)]
    pieces += [model.condition_ids(ids[:, i : i + 1], cache) for i in range(3, 10)]
    assert torch.cat(pieces, dim=1).tolist() == model.condition_ids(ids).tolist()


def test_a_zero_initialised_condition_embedding_changes_nothing_until_trained() -> None:
    model = conditioned_model()
    ids = torch.tensor([[5, MARKER, 7, 1, 2, RESET, 3]])
    plain = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("wce.")})
    assert torch.equal(model(ids), plain(ids))
    with torch.no_grad():
        assert model.wce is not None
        model.wce.weight[7].normal_()
        model.wce.weight[9].normal_()
    other = ids.clone()
    other[0, 2] = 9
    assert not torch.allclose(model(ids)[0, 3:], model(other)[0, 3:])  # the party now reaches every position
    assert torch.equal(model(ids)[0, :2], model(other)[0, :2])  # but not the positions before it


def test_the_condition_bias_adds_each_position_its_party_row_and_learns() -> None:
    torch.manual_seed(0)
    shape = {"vocab_size": 40, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 16}
    model = GPT(GPTConfig(**shape, condition_marker=MARKER, condition_reset=RESET, condition_bias=True)).eval()
    without = GPT(GPTConfig(**shape, condition_marker=MARKER, condition_reset=RESET)).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("condition_head.")})
    ids = torch.tensor([[5, MARKER, 7, 1, 2, RESET, 3, MARKER, 9, 4]])
    assert model.wce is not None
    assert model.condition_head is not None
    assert torch.equal(model(ids), without(ids))  # a zero-initialised embedding: no bias yet
    with torch.no_grad():
        model.wce.weight[:40].normal_()
        without.wce.weight.copy_(model.wce.weight)
    conditions = model.condition_ids(ids)
    expected = without(ids) + model.condition_head(model.wce(conditions))
    assert torch.allclose(model(ids), expected, atol=1e-6)
    assert torch.equal(model(ids)[0, :2], without(ids)[0, :2])  # no condition before the marker: no bias
    model.train()
    F.cross_entropy(model(ids)[0], torch.roll(ids[0], -1)).backward()
    head_grad, party_grad = model.condition_head.weight.grad, model.wce.weight.grad
    assert head_grad is not None
    assert party_grad is not None
    assert head_grad.abs().sum() > 0
    assert party_grad[7].abs().sum() > 0


def test_generation_with_conditions_is_the_same_cached_and_uncached() -> None:
    from ml_playground.core.sampling_rules import SamplingParams
    from ml_playground.families.gpt.generation import generate

    model = conditioned_model()
    with torch.no_grad():
        assert model.wce is not None
        model.wce.weight[:40].normal_()
    prompt = torch.tensor([[5, MARKER, 7, 1]])
    params = SamplingParams(max_new_tokens=60, temperature=1.0, seed=2, keep_prefix=3)
    cached = generate(model, prompt, params)
    uncached = generate(model, prompt, SamplingParams(**{**params.__dict__, "use_kv_cache": False}))
    assert torch.equal(cached, uncached)


def test_rotary_and_relu_squared_give_the_floats_of_their_plain_formulas() -> None:
    from ml_playground.families.gpt.model import apply_rotary, relu_squared, rotary_tables

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8)  # (B, T, heads, D), tables broadcast as (T, 1, D)
    cos, sin = rotary_tables(8, 4, 5, 10000.0, torch.device("cpu"))
    half_cos, half_sin = cos[:, None, :4], sin[:, None, 4:]
    x1, x2 = x[..., :4], x[..., 4:]
    plain = torch.cat([x1 * half_cos - x2 * half_sin, x1 * half_sin + x2 * half_cos], dim=-1)
    assert torch.equal(apply_rotary(x, cos[:, None], sin[:, None]), plain)
    h = torch.randn(6, 10, requires_grad=True)
    grad = torch.randn(6, 10)
    expected = torch.autograd.grad(F.relu(h).square(), h, grad)[0]
    out = relu_squared(h)
    assert torch.equal(out, F.relu(h).square())
    assert torch.equal(torch.autograd.grad(out, h, grad)[0], expected)
    with torch.no_grad():
        assert torch.equal(relu_squared(h), F.relu(h).square())


class AttentionDtypes(torch.overrides.TorchFunctionMode):
    """Records the dtype of the queries each attention call receives."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is F.scaled_dot_product_attention:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("options", [{}, {"rotary": True, "qk_norm": True}])
def test_cpu_autocast_multiplies_in_bfloat16_but_attends_in_float32(options: dict[str, object]) -> None:
    """bfloat16 flash attention's backward on a CPU costs more than its products save: under CPU autocast the
    products run in bfloat16 and attention in float32, cached or not, and gradients reach every weight."""
    model = tiny(**options)
    idx = torch.randint(50, (2, 12))
    reference = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as seen:
        logits = model(idx)
        cache = KVCache(model.config.n_layer)
        with torch.no_grad():  # a prefix, several tokens at once (masked), then one at a time
            parts = [model(idx[:, :5], cache), model(idx[:, 5:8], cache), model(idx[:, 8:9], cache)]
    assert seen.dtypes == [torch.float32] * 2 * 4
    assert logits.dtype == torch.bfloat16
    assert not torch.equal(logits.float(), reference)  # the products did run in bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), reference[:, :9], atol=0.05, rtol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
