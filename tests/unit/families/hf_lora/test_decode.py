"""Decoding a Llama-shaped model without its module calls: every row's logits are the model's own for its tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ml_playground.core.packed_products import Method, linear_layers
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.hf_lora.decode import LlamaDecoder, LlamaWeights, agrees, fuse, stream_rows
from ml_playground.families.hf_lora.generation import generate_ids
from ml_playground.families.hf_lora.inference import Decoding
from tests.unit.families.hf_lora.decoding_checks import (
    PACKING,
    alone,
    assert_answers_together_are_answers_alone,
    join,
    step_against_alone,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def weights(lm: nn.Module) -> LlamaWeights:
    found = LlamaWeights.of(lm)
    assert found is not None
    return found


@pytest.mark.parametrize("method", PACKING)
def test_every_row_gets_the_models_logits_for_its_own_tokens_as_rows_join_leave_and_grow(
    lm: nn.Module, weights: LlamaWeights, method: Method
) -> None:
    # With oneDNN's packs, prompts go through them too (``prompt_route``): the steps check the cache they made.
    prompt = method == "onednn"
    decoder = LlamaDecoder(
        weights, rows=4, context_length=64, pack=lambda band: method, columns=4, prompt=lambda ws: prompt
    )
    sequences: dict[int, list[int]] = {}

    join(decoder, lm, sequences, [5, 6, 7])
    join(decoder, lm, sequences, [9] * 11)  # longer than the cache's first room: it grows
    for step in range(12):
        if step == 2:
            join(decoder, lm, sequences, [11, 12])
        if step == 4:
            decoder.remove(0)  # the last row moves into the first slot
            del sequences[0]
        if step == 6:
            join(decoder, lm, sequences, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
        step_against_alone(decoder, lm, sequences)
    assert sorted(sequences) == [1, 2, 3]
    assert decoder.cache.columns == 32  # 4 doubled as the longest row grew past 4, 8 and 16 columns
    assert decoder.products.band == (0 if method == "plain" else 4)
    assert decoder.route is not None
    assert bool(decoder.route[1].packs) is prompt  # q, k, v, o, gate, up, down packed at the first prompt
    for handle in (2, 1, 3):
        decoder.remove(handle)
    assert decoder.step() == {}


@pytest.mark.parametrize("method", PACKING)
def test_answers_together_are_the_models_own_answers_alone(
    lm: nn.Module, weights: LlamaWeights, method: Method
) -> None:
    """Greedy and seeded samples: beside others the same tokens as the model's own forward gives them alone."""
    decoder = LlamaDecoder(weights, rows=4, context_length=64, pack=lambda band: method)
    assert_answers_together_are_answers_alone(decoder, lm)


def test_the_models_own_weights_become_views_of_the_fused_ones(lm: nn.Module, weights: LlamaWeights) -> None:
    body = lm.model
    assert isinstance(body, nn.Module)
    attention = body.layers[0].self_attn
    qkv, bias = weights.layers[0].qkv
    assert attention.q_proj.weight.data_ptr() == qkv.data_ptr()  # nothing copied
    rows = attention.q_proj.weight.size(0)
    assert attention.k_proj.weight.data_ptr() == qkv[rows:].data_ptr()
    assert (bias is None) == (attention.q_proj.bias is None)  # Qwen2 has q, k, v biases; Llama none


def test_a_model_that_the_step_does_not_compute_keeps_its_own_path(lm: nn.Module, weights: LlamaWeights) -> None:
    assert agrees(weights)
    assert not agrees(weights, plain=lambda x, w, b: F.linear(x, w, b) * 1.01)  # a step that is not the model's

    def fails(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    assert not agrees(weights, plain=fails)  # a shape the step does not compute: the model's own path, no crash


def test_only_llama_shaped_configurations_are_taken() -> None:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    assert LlamaWeights.of(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))) is None
    sliding = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=8, max_window_layers=0,
        layer_types=["sliding_attention", "sliding_attention"],
    )  # fmt: skip
    assert LlamaWeights.of(Qwen2ForCausalLM(sliding)) is None
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    assert LlamaWeights.of(MistralForCausalLM(MistralConfig(**shape, **heads, sliding_window=16))) is None
    full = LlamaWeights.of(MistralForCausalLM(MistralConfig(**shape, **heads, sliding_window=None)).eval())
    assert full is not None
    assert agrees(full)
    wide_heads = LlamaWeights.of(LlamaForCausalLM(LlamaConfig(**shape, **heads, head_dim=16)).eval())  # 4 x 16 > 32
    assert wide_heads is not None
    assert agrees(wide_heads)


def test_one_stream_is_a_batch_of_one_row_where_it_fits_else_the_models_own_path(lm: nn.Module) -> None:
    decoding = Decoding.of(lm, context=32)
    assert decoding.lean is not None
    assert isinstance(decoding.decoder(2), LlamaDecoder)
    prompt = torch.tensor([[5, 6, 7]])
    for params in (
        SamplingParams(max_new_tokens=10, temperature=0.0),
        SamplingParams(max_new_tokens=10, temperature=1.0, top_k=20, seed=5),
        SamplingParams(max_new_tokens=40, temperature=0.0),  # past the context: the window slides, token by token
    ):
        tokens = [int(t[0, 0]) for t in decoding.stream(prompt, params)]
        assert tokens == generate_ids(lm, [5, 6, 7], params, None)
        assert len(tokens) == params.max_new_tokens


def test_a_stream_that_stops_early_gives_its_row_back(weights: LlamaWeights) -> None:
    decoder = LlamaDecoder(weights, rows=1, context_length=32)
    tokens = stream_rows(decoder, torch.tensor([[5, 6, 7]]), SamplingParams(max_new_tokens=10, temperature=0.0))
    next(tokens)
    next(tokens)
    assert len(decoder) == 1
    tokens.close()
    assert len(decoder) == 0


def test_streams_prefilled_together_get_the_models_logits_for_their_own_tokens(
    lm: nn.Module, weights: LlamaWeights
) -> None:
    decoder = LlamaDecoder(weights, rows=4, context_length=64, pack=lambda band: "plain")
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    _, first = decoder.add([20, 21], greedy)  # a stream already decoding
    decoder.step()
    sequences = {0: [20, 21, first, decoder.rows[0].last]}
    prompts = [[5, 6, 7], [9] * 11, [11, 12]]  # one pass, left-padded to 11; each row keeps its own columns
    for (handle, first), prompt in zip(decoder.add_many(prompts, [greedy] * 3), prompts, strict=True):
        assert first == int(alone(lm, prompt).argmax())
        sequences[handle] = [*prompt, first]
    assert decoder.cache.lengths[:4].tolist() == [3, 3, 11, 2]  # the columns each row holds
    for _ in range(4):
        step_against_alone(decoder, lm, sequences)


def test_row_blocks_are_made_for_the_weights_the_chosen_path_multiplies_by(lm: nn.Module) -> None:
    def halves(weights: list[torch.Tensor]) -> set[tuple[int, int]]:  # what two row blocks take: an even number of rows
        return {(id(weight), 2) for weight in weights if weight.shape[0] % 2 == 0}

    lean = Decoding.of(lm, context=32, blocks=lambda weights: {1: 2})
    assert lean.lean is not None
    assert set(lean.one_row.weights) == halves(lean.lean.matrices())  # the fused q/k/v and gate/up
    refused = Decoding.of(lm, context=32, check=lambda weights, product: False, blocks=lambda weights: {1: 2})
    assert refused.lean is None
    own = halves([layer.weight for layer in linear_layers(lm)])
    assert set(refused.one_row.weights) == own  # the model's own layers, which its forward passes
    assert (id(lm.get_submodule("model.layers.0.self_attn.q_proj").weight), 2) in own - set(lean.one_row.weights)


def test_a_model_of_another_shape_decodes_through_its_own_forward() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from ml_playground.families.hf_lora.batched import HfBatchedDecoder

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).eval()
    decoding = Decoding.of(gpt2, context=64)
    assert decoding.lean is None
    assert decoding.batches
    assert isinstance(decoding.decoder(2), HfBatchedDecoder)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    tokens = [int(t[0, 0]) for t in decoding.stream(torch.tensor([[5, 6, 7]]), params)]
    assert tokens == generate_ids(gpt2, [5, 6, 7], params, None)


def test_layers_with_a_bias_and_without_are_not_fused() -> None:
    with pytest.raises(ValueError, match="some of these layers have a bias"):
        fuse([nn.Linear(4, 4, bias=True), nn.Linear(4, 4, bias=False)])
