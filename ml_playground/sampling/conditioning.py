"""Prompts for header-conditioned datasets (``prepare.conditioning = "header"``): checked against what was seen."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_playground.configuration.models import SampleConfig
from ml_playground.core.errors import ConfigError, DataError
from ml_playground.core.sampling_rules import ContrastPrompt
from ml_playground.core.tokenizer_protocol import Tokenizer
from ml_playground.data_pipeline.header import format_header
from ml_playground.data_pipeline.speeches import read_conditions
from ml_playground.families.base import InferenceModel


def closest(value: str, known: list[str], n: int = 5) -> list[str]:
    """The most similar known values; case-insensitive, so 'spd' finds 'SPD'."""
    lowered = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=0.3)
    return [lowered[m] for m in matches]


def check_known(kind: str, value: str | None, known: list[str], key: str) -> None:
    if value is None or value in known:
        return
    suggestions = closest(value, known)
    hint = f"closest known: {', '.join(suggestions)}" if suggestions else f"{len(known)} are known"
    raise ConfigError(f"unknown {kind} {value!r} in this dataset; {hint}", key=key)


def conditioned_prompt(fields: Mapping[str, Any], conditions: Mapping[str, Any], text: str = "") -> str:
    """The header for ``fields`` (speaker, party, year, topic), after checking speaker and party exist."""
    check_known("party", fields.get("party"), list(conditions.get("parties", {})), "sample.party")
    check_known("speaker", fields.get("speaker"), list(conditions.get("speakers", {})), "sample.speaker")
    return format_header(fields) + text


def sample_fields(sc: SampleConfig) -> dict[str, Any]:
    """The conditions ``[sample]`` asks for."""
    return {"speaker": sc.speaker, "party": sc.party, "year": sc.year, "topic": sc.topic}


def header_in_view(tokenizer: Tokenizer, fields: Mapping[str, Any], conditions: Mapping[str, Any]) -> tuple[str, int]:
    """The checked header for ``fields`` and its length in tokens: the prefix kept in view as the window moves."""
    header = conditioned_prompt(fields, conditions)
    return header, len(tokenizer.encode(header))


def party_contrast(
    tokenizer: Tokenizer, fields: Mapping[str, Any], parties: list[str], text: str = ""
) -> tuple[ContrastPrompt, ...]:
    """The prompt under every known party's header (the asked one included), for guidance; () without a party."""
    if fields.get("party") is None or len(parties) < 2:
        return ()
    prompts = []
    for party in parties:
        header = format_header({**fields, "party": party})
        prompts.append(ContrastPrompt(tuple(tokenizer.encode(header + text)), len(tokenizer.encode(header))))
    return tuple(prompts)


def refuse_unconditioned(conditions: Mapping[str, Any] | None, fields: Mapping[str, Any], guidance: float) -> None:
    """Conditions or guidance asked of a model trained without them: refused alike by every command.

    (``serve`` answers the same refusal with a 400 naming the field.)"""
    if conditions is not None:
        return
    asked = [name for name in ("speaker", "party", "year", "topic") if fields.get(name) is not None]
    if asked:
        raise ConfigError(
            f"{asked[0]} applies to header-conditioned models; this one was trained without conditions",
            key=f"sample.{asked[0]}",
        )
    if guidance > 0:
        raise ConfigError(
            "guidance applies to header-conditioned models; this one was trained without conditions",
            key="sample.guidance",
        )


def require_conditions(model: InferenceModel, dataset_dir: Path, command: str) -> Mapping[str, Any]:
    """The model's conditions, for commands that only make sense with them (debate, analyze)."""
    conditions = model_conditions(model, dataset_dir)
    if conditions is None:
        raise ConfigError(
            f"{command} needs a header-conditioned model (prepare.conditioning = 'header'); "
            f"{model.checkpoint} was trained without conditions"
        )
    return conditions


def model_conditions(model: InferenceModel, dataset_dir: Path) -> Mapping[str, Any] | None:
    """The conditions a model was trained with: from its checkpoint, or (older checkpoints) its dataset."""
    if model.conditions is not None:
        return model.conditions
    try:
        return dataset_conditions(dataset_dir)
    except DataError:  # no dataset beside it: the checkpoint is all there is, and it has no conditions
        return None


def dataset_conditions(dataset_dir: Path) -> dict[str, Any] | None:
    """The dataset's known conditions when it is header-conditioned, else None."""
    from ml_playground.data_pipeline.meta import read_meta

    if read_meta(dataset_dir).get("conditioning") != "header":
        return None
    return read_conditions(dataset_dir)
