"""Read an experiment's TOML, apply ``--set section.key=value`` overrides, validate once."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ml_playground.configuration.migration import old_shape
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.errors import ConfigError

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def experiment_config_path(experiment: str) -> Path:
    return EXPERIMENTS_DIR / experiment / "config.toml"


def list_experiments() -> list[tuple[str, str]]:
    """Each experiment folder with a config.toml, with the first line of its README."""
    found = []
    for folder in sorted(EXPERIMENTS_DIR.iterdir()):
        if not (folder / "config.toml").is_file():
            continue
        readme = folder / "README.md"
        summary = ""
        if readme.is_file():
            lines = [line.strip("# ").strip() for line in readme.read_text("utf-8").splitlines() if line.strip()]
            summary = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        found.append((folder.name, summary))
    return found


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.max_iters=100`` -> (["train", "max_iters"], 100). Values are TOML; bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects section.key=value, got {text!r}", key=key or None)
    try:
        value: Any = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _apply(tree: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: depth + 1])} is a value, not a section", key=origin)
        node = child
    node[path[-1]] = value


def _format_validation_error(error: ValidationError, config_path: Path, overridden: Mapping[str, str]) -> ConfigError:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
    source = f"--set {overridden[key]}" if key in overridden else None
    if source:
        message += f", from {source}"
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(message, path=config_path, key=key or None)


def load_config(config_path: Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load, merge overrides and validate; every problem becomes a ConfigError naming file and key."""
    if not config_path.is_file():
        raise ConfigError("config file not found", path=config_path)
    try:
        tree: dict[str, Any] = tomllib.loads(config_path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=config_path) from None
    overridden: dict[str, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        _apply(tree, path, value, text)
        overridden[".".join(path)] = text
    moved = old_shape(tree)
    if moved is not None:
        key, how = moved
        source = next((f", from --set {text}" for k, text in overridden.items() if k.startswith(key)), "")
        raise ConfigError(how + source, path=config_path, key=key)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise _format_validation_error(exc, config_path, overridden) from None
