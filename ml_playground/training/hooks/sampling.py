"""A short sample every ``every_evals`` evaluations, sent to the loggers (console, TensorBoard).

The text comes from the family's ``generate_text`` (``families/base.py``), so every family samples
during training the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from ml_playground.core.logging_protocol import MetricsLogger
from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.training.context import EvalResult, Hook, TrainingContext


class SampleHook(Hook):
    state_key = "sample_during_training"

    def __init__(
        self,
        *,
        every_evals: int,
        generate_text: Callable[[str, SamplingParams], str],
        prompt: str,
        params: SamplingParams,
        logger: MetricsLogger,
    ) -> None:
        self.every_evals = every_evals
        self.generate_text = generate_text
        self.prompt = prompt
        self.params = params
        self.logger = logger
        self.evals_seen = 0

    def on_eval_end(self, ctx: TrainingContext, result: EvalResult) -> None:
        if result.step == 0:
            return
        self.evals_seen += 1
        if self.evals_seen % self.every_evals:
            return
        self.logger.log_text(result.step, "sample", self.generate_text(self.prompt, self.params))

    def state_dict(self) -> dict[str, int]:
        return {"evals_seen": self.evals_seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.evals_seen = int(state["evals_seen"])
