"""The one-token decoding path computes exactly what ``GPT.forward`` computes with a cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml_playground.core.linear_kernels import LinearKernel, onednn_available
from ml_playground.core.row_products import CANDIDATES, RowProducts, measured_blocks
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.gpt.decode import DecodeStep, decode_matrices
from ml_playground.families.gpt.family import decode_blocks
from ml_playground.families.gpt.generation import generate
from ml_playground.families.gpt.model import GPT, GPTConfig, KVCache

pytestmark = pytest.mark.unit

SHAPES = {
    "nanoGPT": GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=2, n_embd=32),
    "modern, biased, dropout": GPTConfig(
        vocab_size=50, block_size=24, n_layer=3, n_head=4, n_embd=32, dropout=0.2, bias=True,
        rotary=True, qk_norm=True, activation="relu2", tie_weights=False,
    ),
}  # fmt: skip
KERNELS: list[LinearKernel] = ["aten", "onednn"] if onednn_available() else ["aten"]


def model_of(config: GPTConfig, kernel: LinearKernel = "aten") -> GPT:
    torch.manual_seed(0)
    return GPT(config).use_linear_kernel(kernel).eval()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_logits_equal_the_module_path_bit_for_bit(shape: str, kernel: LinearKernel) -> None:
    model = model_of(SHAPES[shape], kernel)
    step = DecodeStep(model)
    assert DecodeStep.applies(model)
    tokens = torch.randint(50, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, theirs = KVCache(model.config.n_layer, capacity=24), KVCache(model.config.n_layer, capacity=24)
        model(tokens[:, :5], ours)
        model(tokens[:, :5], theirs)
        for t in range(5, 19):
            assert torch.equal(step(tokens[:, t : t + 1], ours), model(tokens[:, t : t + 1], theirs)), t
        assert ours.length == theirs.length == 19


def test_a_full_cache_is_refused_like_the_module_path() -> None:
    model = model_of(SHAPES["nanoGPT"])
    cache = KVCache(model.config.n_layer, capacity=24)
    with torch.inference_mode():
        model(torch.zeros((1, 24), dtype=torch.long), cache)
        with pytest.raises(ValueError, match="exceeds block_size 24"):
            DecodeStep(model)(torch.zeros((1, 1), dtype=torch.long), cache)


def test_only_eval_models_without_a_condition_embedding_take_it() -> None:
    assert not DecodeStep.applies(model_of(SHAPES["nanoGPT"]).train())
    conditioned = GPTConfig(vocab_size=50, block_size=24, n_layer=1, n_head=2, n_embd=16, condition_marker=3)
    assert not DecodeStep.applies(model_of(conditioned))


def test_generation_past_the_block_matches_uncached_generation() -> None:
    """Greedy tokens with the decoding path (cache refilled when the window slides) equal the uncached ones."""
    model = model_of(SHAPES["modern, biased, dropout"])
    prompt = torch.tensor([[1, 2, 3]])
    cached = generate(model, prompt, SamplingParams(max_new_tokens=60, temperature=0.0, use_kv_cache=True))
    uncached = generate(model, prompt, SamplingParams(max_new_tokens=60, temperature=0.0, use_kv_cache=False))
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("blocks", [2, 4])
def test_row_blocks_give_the_module_paths_logits_to_rounding_and_its_greedy_tokens(blocks: int) -> None:
    """With ``decode_blocks`` (as ``auto`` may measure it) the sums run in another order: logits within 1e-5 of
    the module path at every step, and 500 greedy tokens, the window sliding, equal the plain product's."""
    config = GPTConfig(vocab_size=50, block_size=64, n_layer=2, n_head=2, n_embd=32, bias=True)
    model = model_of(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a trained model's confident logits rather than a random model's ties
    tokens = torch.randint(50, (1, 40), generator=torch.Generator().manual_seed(2))
    step = DecodeStep(model.use_decode_blocks({1: blocks}))
    assert isinstance(step.product, RowProducts)
    assert set(step.product.weights) == {(id(w), blocks) for w in decode_matrices(model) if w.shape[0] % blocks == 0}
    with torch.inference_mode():
        ours, theirs = KVCache(config.n_layer, capacity=64), KVCache(config.n_layer, capacity=64)
        model(tokens[:, :5], ours)
        model(tokens[:, :5], theirs)
        for t in range(5, 40):
            torch.testing.assert_close(step(tokens[:, t : t + 1], ours), model(tokens[:, t : t + 1], theirs))
    greedy = SamplingParams(max_new_tokens=500, temperature=0.0)
    blocked = generate(model, tokens[:, :3], greedy)
    plain = generate(model.use_decode_blocks({}), tokens[:, :3], greedy)
    assert torch.equal(blocked, plain)


def test_row_blocks_are_measured_only_for_the_auto_kernel_on_a_cpu() -> None:
    model = model_of(SHAPES["nanoGPT"])
    assert decode_blocks(model, "aten") == {}  # the kernel asked for, plainly
    measured = decode_blocks(model, "auto")
    assert measured == measured_blocks(decode_matrices(model), F.linear)  # the machine's answer, kept
    assert set(measured) == {1, 2}
    assert set(measured.values()) <= {1, *CANDIDATES}
