"""Chat JSONL -> conversations: one per line, in the two shapes people already have.

- ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`` (OpenAI, TRL)
- ``{"prompt": "...", "completion": "..."}`` (one user turn, one assistant turn)

A line that is not JSON, has neither shape, names an unknown role, holds an empty assistant turn or no
assistant turn at all is refused with the file and the line. Validation is pydantic's; the messages
pass through as plain dicts, which is what chat templates read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ml_playground.core.errors import DataError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]
    source: str = ""  # where it came from: "file:line", or what a converter says


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class _Messages(BaseModel):
    model_config = ConfigDict(extra="allow")  # other keys (ids, metadata) are the user's business
    messages: list[_Message]

    @field_validator("messages")
    @classmethod
    def _has_an_answer(cls, messages: list[_Message]) -> list[_Message]:
        if not any(m.role == "assistant" for m in messages):
            raise ValueError("the conversation has no assistant turn")
        for number, message in enumerate(messages, 1):
            if message.role == "assistant" and not message.content.strip():
                raise ValueError(f"message {number} is an empty assistant turn")
        return messages


class _PromptCompletion(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    completion: str

    @field_validator("completion")
    @classmethod
    def _not_empty(cls, completion: str) -> str:
        if not completion.strip():
            raise ValueError("the completion (the assistant turn) is empty")
        return completion


def _problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_line(line: str, path: Path, number: int) -> Conversation:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"line {number}: not JSON ({exc.msg})", path=path) from None
    if not isinstance(data, dict) or not ({"messages", "prompt"} & data.keys()):
        raise DataError(
            f'line {number}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": ...}}', path=path
        )
    try:
        if "messages" in data:
            messages = [m.model_dump() for m in _Messages.model_validate(data).messages]
        else:
            pair = _PromptCompletion.model_validate(data)
            messages = [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.completion}]
    except ValidationError as exc:
        raise DataError(f"line {number}: {_problem(exc)}", path=path) from None
    return Conversation(tuple(messages), f"{path.name}:{number}")


def read_chat_jsonl(sources: Sequence[tuple[Path, str]]) -> Iterator[Conversation]:
    """Every conversation of the (path, decoded text) sources in order; blank lines are skipped."""
    for path, text in sources:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield parse_line(line, path, number)
