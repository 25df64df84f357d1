"""``ml_playground chat``: talk to a trained model in the terminal, its answers streamed as they come.

A model with a chat template (a fine-tuned chat model) gets the conversation as messages; any other
model continues a transcript of everything said so far (for a header-conditioned model, under the
header of ``[sample]``'s speaker, party, year and topic). ``/reset`` forgets the conversation and
``/quit`` (or end of input) ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import ConfigError, UserError
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.conditioning import header_in_view, model_conditions, refuse_unconditioned, sample_fields
from ml_playground.sampling.runner import load_model, sampling_params, stream_decode

HELP = "/reset forgets the conversation, /quit ends it"


@dataclass
class Conversation:
    """What has been said: messages for a chat template, else one transcript the model continues."""

    model: InferenceModel
    header: str = ""
    header_tokens: int = 0  # kept in view when the transcript outgrows the context
    messages: list[dict[str, str]] = field(default_factory=list)
    transcript: str = ""
    system: str | None = None  # the chat template's system message, kept when old turns are forgotten

    @property
    def uses_template(self) -> bool:
        return self.model.chat_ids is not None

    def reset(self) -> None:
        self.messages.clear()
        self.transcript = ""

    def prompt_ids(self, user_text: str) -> tuple[list[int], int]:
        """(ids to continue from, how many leading ids stay in view) after the user says ``user_text``."""
        context = self.model.context_length
        if self.model.chat_ids is not None:
            self.messages.append({"role": "user", "content": user_text})
            system = [{"role": "system", "content": self.system}] if self.system else []
            ids = self.model.chat_ids(system + self.messages)
            while len(ids) > context and len(self.messages) > 1:  # forget the oldest turns first
                del self.messages[0]
                ids = self.model.chat_ids(system + self.messages)
            return ids[-context:], 0
        keep = self.header_tokens
        ids = self.model.tokenizer.encode(self.header + self.transcript + user_text)  # may refuse the text
        self.transcript += user_text
        if len(ids) > context:
            ids = ids[:keep] + ids[len(ids) - (context - keep) :]
        return ids, keep

    def answered(self, text: str) -> None:
        if self.uses_template:
            self.messages.append({"role": "assistant", "content": text})
        else:
            self.transcript += text


def chat(
    config: ExperimentConfig,
    *,
    read_line: Callable[[str], str | None],
    emit: Callable[[str], None],
    checkpoint: str | None = None,
) -> int:
    """Run the conversation until ``/quit`` or end of input; returns the number of answers given."""
    model = load_model(config, checkpoint)
    sc = config.sample
    if sc.chat and model.chat_ids is None:  # asked for the template of a model trained as plain text
        raise ConfigError("the model has no chat template; set sample.chat = false", key="sample.chat")
    header, header_tokens = "", 0
    conditions = model_conditions(model, config.prepare.dataset_dir)
    refuse_unconditioned(conditions, sample_fields(sc), sc.guidance)
    if conditions is not None:
        header, header_tokens = header_in_view(model.tokenizer, sample_fields(sc), conditions)
    conversation = Conversation(model, header, header_tokens, system=sc.system)
    mode = "chat template" if conversation.uses_template else "continuation"
    emit(f"chatting with {model.checkpoint} (step {model.step}, {mode}); {HELP}\n")
    answers = 0
    while True:
        line = read_line("> ")
        if line is None or line.strip() == "/quit":
            break
        if line.strip() == "/reset":
            conversation.reset()
            emit("(conversation forgotten)\n")
            continue
        if not line.strip():
            continue
        user_text = line if conversation.uses_template else line + "\n"
        try:
            ids, keep = conversation.prompt_ids(user_text)
        except UserError as exc:
            emit(f"error: {exc.message}\n")
            continue
        params = sampling_params(sc, answers, keep_prefix=keep)
        text = stream_decode(model, ids, params, emit)
        emit("\n")
        conversation.answered(text)
        answers += 1
    return answers
