"""The OpenAI request shapes the server takes, validated strictly: a wrong type or an unknown field is a 400."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    repetition_penalty: float | None = Field(
        default=None,
        ge=1.0,
        le=2.0,
        description="Over the answer's tokens, as llama.cpp's repeat_penalty; 1 is off. Default: the experiment's.",
    )
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


Prompt = str | list[int]


class CompletionRequest(GenerationFields):
    """``prompt``: a string, a list of strings, a list of token ids or a list of token-id lists (one choice each)."""

    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = Field(default=None, ge=0, description="0 with echo: score the prompt only.")
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Top alternatives per token (0-5).")

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[str] | list[int] | list[list[int]] | None) -> object:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list; give at least one prompt")
        if isinstance(value, list) and any(isinstance(item, list) and not item for item in value):
            raise ValueError("an empty list of token ids; give at least one token")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> CompletionRequest:
        if self.echo and self.stream:
            raise ValueError("echo cannot be combined with stream")
        if self.logprobs is not None and self.stream:
            raise ValueError("logprobs cannot be combined with stream")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens = 0 generates nothing; it needs echo (score the prompt)")
        return self

    @property
    def prompts(self) -> list[Prompt] | None:
        """Each prompt on its own: a string or a list of token ids (None: the experiment's sample.prompt)."""
        if self.prompt is None:
            return None
        if isinstance(self.prompt, str):
            return [self.prompt]
        ids = [item for item in self.prompt if isinstance(item, int)]
        if len(ids) == len(self.prompt):
            return [ids]
        return [item for item in self.prompt if not isinstance(item, int)]

    @property
    def is_plain(self) -> bool:
        """One prompt given as text (or none), no echo, no logprobs: the streaming path takes it."""
        prompts = self.prompts
        one_text = prompts is None or (len(prompts) == 1 and isinstance(prompts[0], str))
        return one_text and not self.echo and self.logprobs is None

    @property
    def prompt_text(self) -> str | None:
        prompts = self.prompts
        return prompts[0] if prompts and isinstance(prompts[0], str) else None


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5, description="With logprobs: alternatives per token.")

    @model_validator(mode="after")
    def _combinations(self) -> ChatRequest:
        if self.logprobs and self.stream:
            raise ValueError("logprobs cannot be combined with stream")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs = true")
        return self


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = False  # (vLLM's and lm-evaluation-harness's field) only false: ids of the text alone


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int] = Field(min_length=1)
