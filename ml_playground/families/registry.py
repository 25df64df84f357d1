"""Find the family of an experiment: its registered implementation, imported on first use."""

from __future__ import annotations

import importlib
from typing import cast

from ml_playground.configuration.families import FamilyConfig, family_entry
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.families.base import ModelFamily


def family_of(config: ExperimentConfig | FamilyConfig) -> ModelFamily:
    model = config.train.model if isinstance(config, ExperimentConfig) else config
    implementation = family_entry(model.kind).implementation
    if isinstance(implementation, str):
        module, _, attribute = implementation.partition(":")
        implementation = getattr(importlib.import_module(module), attribute)
    return cast(ModelFamily, implementation)
