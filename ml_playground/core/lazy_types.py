"""``isinstance`` against classes of heavy modules without importing them.

``torch.distributed.fsdp`` and ``torch.distributed.tensor`` take about 1.8 s to import here; an
object can only be an ``FSDPModule`` or a ``DTensor`` once something imported them, so every
command that does not shard a model skips that import.
"""

from __future__ import annotations

import sys


def is_instance_if_loaded(obj: object, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` when ``module`` is imported already; False (and no import) otherwise."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(obj, getattr(loaded, name))


def is_fsdp_module(obj: object) -> bool:
    return is_instance_if_loaded(obj, "torch.distributed.fsdp", "FSDPModule")


def is_dtensor(obj: object) -> bool:
    return is_instance_if_loaded(obj, "torch.distributed.tensor", "DTensor")
