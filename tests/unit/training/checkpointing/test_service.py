from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from ml_playground.core.errors import CheckpointError
from ml_playground.families.gpt.model import GPT, GPTConfig
from ml_playground.training.checkpointing.rng import capture_rng, restore_rng
from ml_playground.training.checkpointing.service import (
    MANIFEST,
    CheckpointPayload,
    CheckpointService,
    tensors_from_bytes,
    tensors_to_bytes,
    write_file_durably,
)

pytestmark = pytest.mark.unit


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))


def payload(step: int, tokenizer_dir: Path | None = None, *, ema: bool = False) -> CheckpointPayload:
    m = model()
    optimizer = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.zeros((1, 4), dtype=torch.long)).sum().backward()
    optimizer.step()
    return CheckpointPayload(
        step=step,
        model=m.state_dict(),
        training={"optimizer": optimizer.state_dict(), "rng": capture_rng()},
        state={"loop": {"step": step}},
        config={"train": {"max_iters": 10}},
        model_config=m.config.to_dict(),
        tokenizer_dir=tokenizer_dir,
        ema={k: v * 2 for k, v in m.state_dict().items() if k != "lm_head.weight"} if ema else None,
        extra_meta={"val_loss": 1.5},
    )


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"kind": "char", "chars": ["a"]}')
    (folder / ".hidden.tmp").write_text("ignored")
    (folder / "sub").mkdir()
    return folder


def test_save_then_load_round_trips_everything(tmp_path: Path, tokenizer_dir: Path) -> None:
    service = CheckpointService(tmp_path, keep_last=2)
    original = payload(5, tokenizer_dir, ema=True)
    path = service.save(original, {"last", "best"})
    assert path.name == "step_00000005"
    loaded = service.load(service.resolve("last"))
    assert loaded.step == 5
    assert loaded.path == service.resolve("best")
    for name, tensor in original.model.items():
        assert torch.equal(loaded.model[name], tensor)
    assert loaded.model["lm_head.weight"].data_ptr() == loaded.model["wte.weight"].data_ptr()
    assert loaded.ema is not None
    assert torch.equal(loaded.ema["wte.weight"], original.model["wte.weight"] * 2)
    assert loaded.state == {"step": 5, "loop": {"step": 5}}
    assert loaded.training_state is not None
    assert loaded.training_state["optimizer"]["state"][0]["step"] == original.training["optimizer"]["state"][0]["step"]
    assert loaded.manifest["model_config"]["n_embd"] == 8
    assert loaded.manifest["val_loss"] == 1.5
    assert (loaded.tokenizer_dir / "tokenizer.json").is_file()
    assert not (loaded.tokenizer_dir / ".hidden.tmp").exists()
    assert service.pointer_info("best") == {"dir": "step_00000005", "step": 5, "val_loss": 1.5}
    without_state = service.load(path, with_training_state=False)
    assert without_state.training_state is None
    assert without_state.ema is not None


def test_rng_round_trip() -> None:
    state = capture_rng()
    first = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng(state)
    again = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(first[0], again[0])
    assert first[1:] == again[1:]


def test_rotation_keeps_last_n_and_the_best(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path, keep_last=2)
    service.save(payload(1), {"last", "best"})
    for step in (2, 3, 4):
        service.save(payload(step), {"last"})
    names = [p.name for p in service.step_dirs()]
    assert names == ["step_00000001", "step_00000003", "step_00000004"]
    assert service.resolve("best").name == "step_00000001"
    service.save(payload(5), {"last", "best"})
    assert [p.name for p in service.step_dirs()] == ["step_00000004", "step_00000005"]


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    service.save(payload(3), {"last"})
    second = payload(3)
    second.extra_meta = {"val_loss": 0.5}
    service.save(second, {"last"})
    assert service.load(service.resolve("last")).manifest["val_loss"] == 0.5
    assert [p.name for p in service.directory.iterdir() if p.name.startswith(".tmp")] == []


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: corrupt(p / "model.safetensors"), "model.safetensors: checksum mismatch"),
        (lambda p: (p / "state.json").unlink(), "state.json: file missing from checkpoint"),
        (lambda p: (p / "training_state.pt").write_bytes(b"12"), "training_state.pt: truncated: 2 of"),
        (lambda p: (p / MANIFEST).unlink(), "manifest.json: manifest missing"),
        (lambda p: (p / MANIFEST).write_text("{"), "manifest.json: unreadable manifest"),
    ],
)
def test_damaged_checkpoints_are_named_in_one_line(tmp_path: Path, damage: Any, message: str) -> None:
    service = CheckpointService(tmp_path)
    path = service.save(payload(2), {"last"})
    damage(path)
    with pytest.raises(CheckpointError, match=message) as info:
        service.load(path)
    assert "\n" not in str(info.value)


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    path = service.save(payload(2), {"last"})
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["format_version"] = 99
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format 99 is not supported"):
        service.verify(path)


def rewrite_with_valid_checksum(path: Path, name: str, data: bytes) -> None:
    (path / name).write_bytes(data)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST).write_text(json.dumps(manifest))


class Exploit:
    """Unpickling this would create a marker file: proof that code ran."""

    marker: Path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    path = service.save(payload(2), {"last"})
    Exploit.marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"optimizer": Exploit(), "rng": {}}, buffer)
    rewrite_with_valid_checksum(path, "training_state.pt", buffer.getvalue())
    with pytest.raises(CheckpointError, match="refused to load: the file holds objects other than tensors") as info:
        service.load(path)
    assert "training_state.pt" in str(info.value)
    assert not Exploit.marker.exists()
    plain_pickle = pickle.dumps({"optimizer": Exploit()})
    rewrite_with_valid_checksum(path, "training_state.pt", plain_pickle)
    with pytest.raises(CheckpointError):
        service.load(path)
    assert not Exploit.marker.exists()


def test_garbage_training_state_and_safetensors(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    path = service.save(payload(2), {"last"})
    rewrite_with_valid_checksum(path, "training_state.pt", b"")
    with pytest.raises(CheckpointError, match="unreadable training state"):
        service.load(path)
    rewrite_with_valid_checksum(path, "model.safetensors", b"not safetensors at all")
    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable safetensors file"):
        service.load(path)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def disk_fills_up(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 6:  # the first save makes 4 writes
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        write_file_durably(path, data)

    service = CheckpointService(tmp_path, write_file=disk_fills_up)
    first = service.save(payload(1), {"last"})
    with pytest.raises(CheckpointError) as info:
        service.save(payload(2), {"last"})
    message = str(info.value)
    assert "could not write checkpoint for step 2 (No space left on device)" in message
    assert "the previous checkpoint step_00000001 is intact" in message
    assert service.resolve("last") == first
    assert service.load(first).step == 1
    assert [p.name for p in service.directory.iterdir() if p.name.startswith(".tmp")] == []


def test_failed_first_write_has_nothing_to_keep(tmp_path: Path) -> None:
    def read_only(path: Path, data: bytes) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.raises(CheckpointError, match=r"\(Read-only file system\)$"):
        CheckpointService(tmp_path, write_file=read_only).save(payload(1), {"last"})


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path: Path) -> None:
    warnings: list[str] = []
    service = CheckpointService(tmp_path, keep_last=3, warn=warnings.append)
    assert service.load_latest_intact() is None
    service.save(payload(1), {"last"})
    intact = service.load_latest_intact()
    assert intact is not None
    assert intact.step == 1
    assert warnings == []
    service.save(payload(2), {"last"})
    corrupt(service.resolve("last") / "model.safetensors")
    loaded = service.load_latest_intact()
    assert loaded is not None
    assert loaded.step == 1
    assert any("skipping damaged checkpoint" in w and "step_00000002/model.safetensors" in w for w in warnings)
    assert warnings[-1] == "resuming from step_00000001, the newest intact checkpoint"
    (service.directory / "last.json").write_text("garbage")
    assert service.pointer_info("last") is None
    fallback = service.load_latest_intact()
    assert fallback is not None
    assert fallback.step == 1
    corrupt(service.directory / "step_00000001" / "state.json")
    assert service.load_latest_intact() is None


def test_partial_saves_are_cleaned_up(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    service.remove_partial()
    (service.directory / ".tmp-step_00000009-123").mkdir(parents=True)
    service.remove_partial()
    assert list(service.directory.iterdir()) == []


def test_resolve_refuses_what_is_not_there(tmp_path: Path) -> None:
    service = CheckpointService(tmp_path)
    with pytest.raises(CheckpointError, match="no 'best' checkpoint yet"):
        service.resolve("best")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        service.resolve(str(tmp_path))
    path = service.save(payload(1), {"last"})
    assert service.resolve(str(path)) == path
    assert service.step_dirs() == [path]
    (service.directory / "last.json").write_text(json.dumps({"dir": "step_00000077"}))
    with pytest.raises(CheckpointError, match="no 'last' checkpoint yet"):
        service.resolve("last")


def test_tensor_bytes_round_trip_without_aliases() -> None:
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    again = tensors_from_bytes(tensors_to_bytes(tensors), Path("unused"))
    assert torch.equal(again["a"], tensors["a"])
    assert torch.equal(again["b"], tensors["b"])
