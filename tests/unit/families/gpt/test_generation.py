from __future__ import annotations

import math

import pytest
import torch

from ml_playground.core.sampling_rules import ContrastPrompt, SamplingParams, filter_logits, guided_logits
from ml_playground.families.gpt.generation import generate, generate_stream
from ml_playground.families.gpt.model import GPT, GPTConfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=50, temperature=0.0),
        SamplingParams(max_new_tokens=50, temperature=1.0, seed=3),
        SamplingParams(max_new_tokens=50, temperature=0.7, top_k=5, top_p=0.9, seed=4),
    ],
)
def test_cached_and_uncached_paths_give_the_same_tokens(model: GPT, params: SamplingParams) -> None:
    """Also past block_size (16): 50 new tokens force several window jumps."""
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    cached = generate(model, prompt, params)
    uncached = generate(model, prompt, SamplingParams(**{**params.__dict__, "use_kv_cache": False}))
    assert cached.shape == (2, 53)
    assert torch.equal(cached, uncached)


def test_same_seed_same_text_other_seed_other_text(model: GPT) -> None:
    prompt = torch.tensor([[1]])
    a = generate(model, prompt, SamplingParams(max_new_tokens=30, temperature=1.0, seed=1))
    b = generate(model, prompt, SamplingParams(max_new_tokens=30, temperature=1.0, seed=1))
    c = generate(model, prompt, SamplingParams(max_new_tokens=30, temperature=1.0, seed=2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_long_prompt_is_cropped_to_the_window(model: GPT) -> None:
    prompt = torch.randint(40, (1, 40))
    tokens = list(generate_stream(model, prompt, SamplingParams(max_new_tokens=3, temperature=0.0)))
    assert len(tokens) == 3


def test_greedy_follows_argmax(model: GPT) -> None:
    prompt = torch.tensor([[7, 8]])
    out = generate(model, prompt, SamplingParams(max_new_tokens=1, temperature=0.0))
    assert out[0, -1].item() == model(prompt)[0, -1].argmax().item()


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2, top_p=None))
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.7))
    assert kept_p.tolist() == [[True, True, False, False]]
    kept_p_small = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.1))
    assert kept_p_small.tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_k=None, top_p=0.7)).tolist() == [[False, True, False, True]]
    assert torch.equal(filter_logits(logits, top_k=10, top_p=1.0), logits)


def test_top_k_restricts_samples(model: GPT) -> None:
    prompt = torch.tensor([[1]])
    out = generate(model, prompt, SamplingParams(max_new_tokens=1, temperature=5.0, top_k=1, seed=9))
    assert out[0, -1].item() == model(prompt)[0, -1].argmax().item()


class Recording(torch.nn.Module):
    """The model, recording the first ids of every full forward pass (one that starts a window)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model, self.config, self.windows = model, model.config, list[list[int]]()

    def forward(self, ids: torch.Tensor, cache: object = None, *, last_only: bool = False) -> torch.Tensor:
        if ids.size(1) > 1:
            self.windows.append(ids[0].tolist())
            assert last_only  # generation reads only the last position of a window
        return self.model(ids, cache, last_only=last_only)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_a_kept_prefix_stays_in_view_when_the_window_moves(model: GPT, use_kv_cache: bool) -> None:
    header = [7, 8, 9, 10]
    prompt = torch.tensor([[*header, 1, 2]])
    params = SamplingParams(max_new_tokens=40, temperature=0.0, keep_prefix=len(header), use_kv_cache=use_kv_cache)
    recording = Recording(model)
    out = generate(recording, prompt, params)  # type: ignore[arg-type]
    assert out.shape == (1, 46)
    assert len(recording.windows) > 2, "40 new tokens in a 16-token block move the window"
    assert all(window[:4] == header and len(window) <= 16 for window in recording.windows)
    unkept = generate(model, prompt, SamplingParams(max_new_tokens=40, temperature=0.0))
    assert torch.equal(out[:, :16], unkept[:, :16]), "until the window first moves, nothing differs"
    cached = generate(model, prompt, SamplingParams(**{**params.__dict__, "use_kv_cache": True}))
    assert torch.equal(out, cached)


def test_guided_logits_favour_what_is_evidence_for_the_asked_condition() -> None:
    asked = torch.tensor([[2.0, 0.0, 0.0]])
    other = torch.tensor([[0.0, 2.0, 0.0]])
    same = guided_logits(asked, [asked, asked], weight=3.0)
    assert torch.allclose(same, torch.log_softmax(asked, dim=-1))  # nothing to contrast: nothing changes
    guided = guided_logits(asked, [asked, other], weight=1.0)
    plain = torch.log_softmax(asked, dim=-1)
    assert guided[0, 0] > plain[0, 0]  # likelier under the asked condition than on average: raised
    assert guided[0, 1] < plain[0, 1]  # the other condition's token: lowered
    # the added term is log p(c|x) + const: p(asked | token) = p_asked / (p_asked + p_other)
    posterior = torch.log(torch.softmax(asked, -1) / (torch.softmax(asked, -1) + torch.softmax(other, -1)))
    assert torch.allclose(guided - plain, posterior + math.log(2), atol=1e-6)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_guidance_follows_each_alternative_prompt_and_keeps_its_header(model: GPT, use_kv_cache: bool) -> None:
    asked = [1, 2, 3, 4]
    alternatives = (ContrastPrompt(tuple(asked), 3), ContrastPrompt((1, 5, 6, 7, 8, 4), 5))
    base = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, keep_prefix=3, use_kv_cache=use_kv_cache)
    plain = generate(model, torch.tensor([asked]), base)
    itself = SamplingParams(**{**base.__dict__, "guidance": 2.0, "contrast": (alternatives[0], alternatives[0])})
    assert torch.equal(generate(model, torch.tensor([asked]), itself), plain)  # only the asked prompt: no change
    guided_params = SamplingParams(**{**base.__dict__, "guidance": 2.0, "contrast": alternatives})
    guided = generate(model, torch.tensor([asked]), guided_params)
    assert guided.shape == plain.shape
    assert not torch.equal(guided, plain)
    # 40 tokens run past block_size 16 on both prompts: the cached and uncached paths agree
    other = SamplingParams(**{**guided_params.__dict__, "use_kv_cache": not use_kv_cache})
    assert torch.equal(generate(model, torch.tensor([asked]), other), guided)
    with pytest.raises(ValueError, match="one sequence at a time"):
        generate(model, torch.tensor([asked, asked]), guided_params)
