"""``ml_playground chat`` in a subprocess, typed at as a user would: continuation, /reset, /quit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.sampling.runner import load_model, sampling_params, stream_decode
from tests.conftest import REPO_ROOT
from tests.e2e.test_cli import sets

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def chat(overrides: list[str], typed: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ml_playground", "chat", "shakespeare", *sets(overrides)]
    return subprocess.run(command, input=typed, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env)


def test_chat_continues_the_conversation_and_reset_forgets_it(trained_tiny: tuple[ExperimentConfig, list[str]]) -> None:
    config, overrides = trained_tiny
    greedy = [*overrides, "sample.temperature=0.0", "sample.max_new_tokens=12", "train.num_threads=1"]
    result = chat(greedy, "ROMEO:\n/reset\nROMEO:\nJULIET:\n/quit\nnever read\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("> ")
    assert lines[0].startswith("chatting with ")
    assert "(step 30, continuation)" in lines[0]
    first, forgotten, second, third = (line.rstrip("\n") for line in lines[1:5])
    assert forgotten == "(conversation forgotten)"
    assert len(first) == 12
    assert second == first  # after /reset the same words get the same answer
    model = load_model(config.model_copy(update={"train": config.train.model_copy(update={"num_threads": 1})}))
    params = sampling_params(config.sample.model_copy(update={"temperature": 0.0, "max_new_tokens": 12}), 2)
    transcript = "ROMEO:\n" + second + "JULIET:\n"  # the history is part of the third prompt
    assert third == stream_decode(model, model.tokenizer.encode(transcript), params, lambda _: None)
    assert "never read" not in result.stdout


def test_chat_says_what_it_cannot_encode_and_goes_on(trained_tiny: tuple[ExperimentConfig, list[str]]) -> None:
    _, overrides = trained_tiny
    result = chat([*overrides, "sample.max_new_tokens=5"], "€uro\nROMEO:\n")
    assert result.returncode == 0, result.stderr
    assert "error: characters not in the vocabulary: '€'" in result.stdout
    assert result.stdout.rstrip().endswith(">")  # answered ROMEO:, then input ended
    assert result.stdout.count("> ") == 3
