"""Model families by ``train.model.kind``: each one's config section and where its implementation lives.

A family is a config class (a :class:`FamilyConfig` with its own keys) and an implementation of
``ml_playground.families.base.ModelFamily``, named here as ``"module:attribute"`` and imported only
when a command first asks for it (``ml_playground.families.registry.family_of``). Validation needs
the config classes only, so reading a config never imports PyTorch or ``transformers``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml_playground.configuration.section import Section

DEFAULT_KIND = "gpt"


class FamilyConfig(Section):
    """``[train.model]``: ``kind`` picks the family; the other keys are that family's own."""

    kind: str

    @property
    def sequence_length(self) -> int:
        """Tokens per training sequence (and the context evaluation scores with)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FamilyEntry:
    kind: str
    config: type[FamilyConfig]
    implementation: str | object  # "module:attribute", or the implementation itself


_FAMILIES: dict[str, FamilyEntry] = {}


def register_family(kind: str, config: type[FamilyConfig], implementation: str | object) -> None:
    """Add a family. ``implementation``: ``"package.module:NAME"`` (imported on first use) or the object."""
    if kind in _FAMILIES and _FAMILIES[kind].config is not config:
        raise ValueError(f"model family {kind!r} is already registered")
    _FAMILIES[kind] = FamilyEntry(kind, config, implementation)


def unregister_family(kind: str) -> None:
    _FAMILIES.pop(kind, None)


def family_entry(kind: str) -> FamilyEntry:
    try:
        return _FAMILIES[kind]
    except KeyError:
        known = ", ".join(repr(k) for k in _FAMILIES)
        raise ValueError(f"unknown model family {kind!r}; known: {known}") from None
