"""The OpenAI request shapes the server takes, validated strictly: a wrong type or an unknown field is a 400."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StreamOptions(Strict):
    include_usage: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class GenerationFields(Strict):
    """What both endpoints take; a field left out takes the experiment's ``[sample]`` value."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="Not supported: 0 only.")
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="Not supported: 0 only.")
    user: str | None = None
    # Header-conditioned experiments (speakger): who speaks, for which party, when, about what.
    speaker: str | None = None
    party: str | None = None
    year: int | None = None
    topic: str | None = None
    guidance: float | None = Field(
        default=None, ge=0.0, le=10.0, description="Party guidance weight; default: the experiment's sample.guidance."
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def conditions(self) -> dict[str, str | int]:
        fields = {"speaker": self.speaker, "party": self.party, "year": self.year, "topic": self.topic}
        return {name: value for name, value in fields.items() if value is not None}


class CompletionRequest(GenerationFields):
    prompt: str | list[str] | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request (a list of exactly one string, or a string)")
        return value

    @property
    def prompt_text(self) -> str | None:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
