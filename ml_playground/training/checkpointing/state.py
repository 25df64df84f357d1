"""The stateful parts of a training run, by name: what a checkpoint saves and what a resume restores.

One map, built by the training wiring, is read both ways, so saving and restoring cannot drift
apart: a part added here is saved and restored, or neither. Each part names the file it lives in:
``model`` (``model.safetensors``: the trainable weights), ``ema`` (``ema.safetensors``),
``training`` (``training_state.pt``: optimizer, RNG, grad scaler: tensors and plain data, loaded
with ``weights_only``) and ``json`` (``state.json``: loop counters, hook states, sampler).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ml_playground.core.errors import CheckpointError
from ml_playground.training.checkpointing.service import CheckpointPayload, LoadedCheckpoint

Store = Literal["model", "ema", "training", "json"]

# The order a resume restores the parts in, and a checkpoint saves them. The model comes before the
# optimizer (whose state refers to the parameters), the EMA after both; the RNG state after every part
# whose loading could draw random numbers; the sampler last, as it only checks the run's settings.
RESTORE_ORDER = ("model", "optimizer", "ema", "scaler", "rng", "loop", "hooks", "sampler")


@dataclass(frozen=True)
class StatePart:
    store: Store
    save: Callable[[], Any]
    load: Callable[[Any], None]
    required: bool = True  # absent from a checkpoint: an error, or (False) left as it is (older checkpoints)


class StateMap:
    def __init__(self, parts: Mapping[str, StatePart]) -> None:
        single = [store for store in ("model", "ema") if sum(p.store == store for p in parts.values()) > 1]
        if single:
            raise ValueError(f"at most one part may live in {single[0]!r}")
        unknown = sorted(set(parts) - set(RESTORE_ORDER))
        if unknown:
            raise ValueError(f"state part {unknown[0]!r} has no place in RESTORE_ORDER")
        self.parts = {name: parts[name] for name in RESTORE_ORDER if name in parts}

    def payload(
        self,
        step: int,
        *,
        config: Mapping[str, Any],
        model_config: Mapping[str, Any],
        tokenizer_dir: Path | None = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> CheckpointPayload:
        by_store: dict[Store, dict[str, Any]] = {"model": {}, "ema": {}, "training": {}, "json": {}}
        for name, part in self.parts.items():
            by_store[part.store][name] = part.save()
        model: Mapping[str, Any] = next(iter(by_store["model"].values()), {})
        ema = next(iter(by_store["ema"].values()), None)
        return CheckpointPayload(
            step=step,
            model=model,
            training=by_store["training"],
            state=by_store["json"],
            config=config,
            model_config=model_config,
            tokenizer_dir=tokenizer_dir,
            ema=ema,
            extra_meta=dict(extra_meta or {}),
        )

    def restore(self, loaded: LoadedCheckpoint) -> None:
        """Every part from ``loaded``, in ``RESTORE_ORDER``."""
        training = loaded.training_state or {}
        for name, part in self.parts.items():
            value: Any
            if part.store == "model":
                value = loaded.model
            elif part.store == "ema":
                value = loaded.ema
            elif part.store == "training":
                value = training.get(name)
            else:
                value = loaded.state.get(name)
            if value is None:
                if part.required:
                    raise CheckpointError(f"holds no {name!r} state to resume from", path=loaded.path)
                continue
            try:
                part.load(value)
            except CheckpointError as exc:
                raise CheckpointError(exc.message, path=exc.path or loaded.path) from None
