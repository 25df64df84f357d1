from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml_playground.core.errors import CheckpointError
from ml_playground.families.gpt.family import model_from_checkpoint
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.checkpointing.rng import capture_rng
from ml_playground.training.checkpointing.service import CheckpointPayload, CheckpointService, LoadedCheckpoint

pytestmark = pytest.mark.unit


def saved(tmp_path: Path, *, ema: bool) -> LoadedCheckpoint:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8))
    service = CheckpointService(tmp_path)
    averaged = {n: torch.zeros_like(p) for n, p in model.named_parameters()} if ema else None
    payload = CheckpointPayload(
        step=1,
        model=model.state_dict(),
        training={"optimizer": {}, "rng": capture_rng()},
        state={},
        config={},
        model_config=model.config.to_dict(),
        ema=averaged,
    )
    return service.load(service.save(payload, {"last"}))


def test_raw_and_ema_weights(tmp_path: Path) -> None:
    loaded = saved(tmp_path, ema=True)
    raw = model_from_checkpoint(loaded, torch.device("cpu"))
    assert not raw.training
    assert torch.equal(raw.wte.weight, loaded.model["wte.weight"])
    averaged = model_from_checkpoint(loaded, torch.device("cpu"), "ema")
    assert torch.count_nonzero(averaged.wte.weight) == 0
    assert averaged.lm_head.weight is averaged.wte.weight


def test_bad_model_config_and_mismatched_weights(tmp_path: Path) -> None:
    loaded = saved(tmp_path, ema=False)
    broken = LoadedCheckpoint(
        loaded.path, {**loaded.manifest, "model_config": {"vocab_size": 11, "depth": 3}}, loaded.model, None, {}, None
    )
    with pytest.raises(CheckpointError, match="model config not understood"):
        model_from_checkpoint(broken, torch.device("cpu"))
    wider = json.loads(json.dumps(loaded.manifest))
    wider["model_config"]["n_embd"] = 16
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        model_from_checkpoint(LoadedCheckpoint(loaded.path, wider, loaded.model, None, {}, None), torch.device("cpu"))


def test_untied_ema_weights_keep_their_own_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=False, rotary=True))
    service = CheckpointService(tmp_path)
    averaged = {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}
    payload = CheckpointPayload(
        step=1, model=model.state_dict(), training={"optimizer": {}, "rng": capture_rng()}, state={}, config={},
        model_config=model.config.to_dict(), ema=averaged,
    )  # fmt: skip
    loaded = service.load(service.save(payload, {"last"}))
    rebuilt = model_from_checkpoint(loaded, torch.device("cpu"), "ema")
    assert rebuilt.lm_head.weight is not rebuilt.wte.weight
    assert torch.all(rebuilt.lm_head.weight == 0.5)
    assert rebuilt.wpe is None
