"""A short sample every ``every_evals`` evaluations, sent to the loggers (console, TensorBoard)."""

from __future__ import annotations

import torch

from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.models.core.inference import SamplingParams, generate
from ml_playground.models.core.model import GPT
from ml_playground.training.hooks.base import EvalResult, Hook
from ml_playground.training.loop.runner import TrainingContext


class SampleHook(Hook):
    state_key = "sample_during_training"

    def __init__(
        self,
        *,
        every_evals: int,
        model: GPT,
        tokenizer: Tokenizer,
        prompt: str,
        params: SamplingParams,
        logger: MetricsLogger,
        device: torch.device,
    ) -> None:
        self.every_evals = every_evals
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.params = params
        self.logger = logger
        self.device = device
        self.evals_seen = 0

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        if result.step == 0:
            return
        self.evals_seen += 1
        if self.evals_seen % self.every_evals:
            return
        prompt = torch.tensor([self.tokenizer.encode(self.prompt)], dtype=torch.long, device=self.device)
        was_training = self.model.training
        out = generate(self.model, prompt, self.params)
        self.model.train(was_training)
        self.logger.log_text(result.step, "sample", self.tokenizer.decode(out[0].tolist()))

    def state_dict(self) -> dict[str, int]:
        return {"evals_seen": self.evals_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.evals_seen = int(state["evals_seen"])
