"""Shared fixtures: where the shared test data is, and tiny real configs built from it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.configuration.models import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
RANK_FILES = REPO_ROOT / ".cache" / "tiktoken_ranks"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two workers on two cores: one thread each

TINY_MODEL = [
    "train.model.n_layer=2",
    "train.model.n_head=2",
    "train.model.n_embd=32",
    "train.model.block_size=32",
    "train.data.batch_size=4",
    "train.eval_interval=10",
    "train.eval_iters=2",
    "train.log_interval=5",
    "train.checkpoint.interval=10",
    "train.max_iters=30",
    "train.schedule.warmup_iters=5",
    "train.device='cpu'",
    "sample.max_new_tokens=40",
    "sample.num_samples=1",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rank_files() -> Path:
    """The official tiktoken rank files that `make setup` reads out of PyPI packages (tools/fetch_rank_files.py)."""
    names = ("r50k_base", "cl100k_base", "o200k_base")
    if not all((RANK_FILES / f"{name}.tiktoken").is_file() for name in names):
        pytest.fail(f"tiktoken rank files missing in {RANK_FILES}; run `make setup` (or `make rank-files`)")
    return RANK_FILES


@pytest.fixture(scope="session")
def shakespeare_text(shared_data: Path) -> str:
    return (shared_data / "shakespeare" / "input.txt").read_text("utf-8")


@pytest.fixture
def shakespeare_slice(tmp_path: Path, shakespeare_text: str) -> Path:
    """The first 30,000 characters of Tiny Shakespeare, as a user's own small corpus."""
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:30_000], encoding="utf-8")
    return path


ConfigFactory = Callable[..., ExperimentConfig]


def tiny_overrides(tmp_path: Path, input_path: Path) -> list[str]:
    return [
        f"prepare.input_path='{input_path}'",
        f"prepare.dataset_dir='{tmp_path / 'dataset'}'",
        f"prepare.cache_dir='{tmp_path / 'cache'}'",
        f"train.out_dir='{tmp_path / 'run'}'",
        *TINY_MODEL,
    ]


@pytest.fixture
def tiny_config(tmp_path: Path, shakespeare_slice: Path) -> ConfigFactory:
    """The shakespeare experiment's own config, shrunk to a tiny model and pointed into tmp_path."""

    def build(*extra: str) -> ExperimentConfig:
        return load_config(
            experiment_config_path("shakespeare"), [*tiny_overrides(tmp_path, shakespeare_slice), *extra]
        )

    return build


XML_SESSIONS = ("19008", "19009")  # small sessions of period 19 that are also in ../shared/data/bundestag as text


def xml_members(archive: Path, sessions: tuple[str, ...]) -> dict[str, bytes]:
    """The ``NNNNN-data.xml`` members of a real archive for ``sessions``, reading the stream only as far as needed."""
    import tarfile

    found: dict[str, bytes] = {}
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            session = Path(member.name).name[:5]
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None and session in sessions:
                found[session] = handle.read()
                if len(found) == len(sessions):
                    break
    return found


@pytest.fixture(scope="session")
def xml_sessions(shared_data: Path) -> dict[str, bytes]:
    """Two real XML protocols (19/8 and 19/9) from the shared period-19 archive."""
    return xml_members(shared_data / "bundestag_xml" / "wp19.tar.gz", XML_SESSIONS)


@pytest.fixture(scope="session")
def xml_archive(tmp_path_factory: pytest.TempPathFactory, xml_sessions: dict[str, bytes]) -> Path:
    """A small ``.tar.gz`` laid out like the official ones (``wp19/NNNNN-data.xml``), built from real sessions."""
    import io
    import tarfile

    path = tmp_path_factory.mktemp("xml") / "wp19-small.tar.gz"
    with tarfile.open(path, mode="w:gz") as tar:
        for session, data in sorted(xml_sessions.items()):
            info = tarfile.TarInfo(f"wp19/{session}-data.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory, shakespeare_text: str) -> tuple[ExperimentConfig, list[str]]:
    """The tiny shakespeare model trained once per test worker: (its config, the --set overrides that make it)."""
    import io

    from rich.console import Console

    from ml_playground.commands.train import train
    from ml_playground.data_pipeline.preparer import prepare

    root = tmp_path_factory.mktemp("trained_tiny")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:30_000], encoding="utf-8")
    overrides = tiny_overrides(root, corpus)
    config = load_config(experiment_config_path("shakespeare"), overrides)
    prepare(config.prepare)
    train(config, quiet=True, console=Console(file=io.StringIO()))
    return config, overrides


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> ExperimentConfig:
    """A chat fine-tune (tiny Qwen2 + LoRA on chat JSONL, ``tests.chat_helpers.OUR_TEMPLATE``), once per worker."""
    from tests.chat_helpers import train_chat_run

    return train_chat_run(tmp_path_factory.mktemp("chat"), shared_data)
