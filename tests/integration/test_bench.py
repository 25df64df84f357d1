"""``bench --quick`` from the CLI, once for the whole suite: every benchmark runs on tiny sizes and is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_playground.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def bench_data(shared_data: Path) -> list[str]:
    return [
        "--shakespeare",
        str(shared_data / "shakespeare" / "input.txt"),
        "--bundestag",
        str(shared_data / "bundestag"),
    ]


def test_bench_quick_writes_every_result(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    data = bench_data(shared_data)
    assert main(["bench", "--quick", *data, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "vs HF GPT2LMHeadModel" in out
    assert "wrote" in out
    written = json.loads(results.read_text())
    machine = written["machine"]
    assert machine["torch_threads"] >= 1
    assert machine["cpu"] in out
    assert "torch.mm" in machine["matmul_gflops"]
    assert "float32 matmul peak GFLOP/s: torch.mm" in out
    # every target is a ratio against a peer measured in the same run (memory ceilings aside)
    for row in written["results"]:
        if row["target"] is not None and row["unit"] != "MiB":
            assert row["target_is_ratio"], row["name"]
            assert row["peer_figure"] is not None, row["name"]
    names = [r["name"] for r in written["results"]]
    assert any("KV cache" in n for n in names)
    assert any(n.startswith("prepare char") for n in names)
    assert any(n.startswith("speedrun") for n in names)
    assert any(n.startswith("peak RSS, default Shakespeare training") for n in names)
    sharded = next(r for r in written["results"] if r["name"].startswith("FSDP per-rank state"))
    assert sharded["ratio"] >= 1.5  # each rank holds about half of what a DDP rank holds, whatever the box
    served = [r for r in written["results"] if r["name"].startswith("serve, ")]
    assert [r["name"] for r in served] == ["serve, 1 client (aggregate)", "serve, 8 clients (aggregate)"]
    assert all(r["figure"] > 0 and r["peer_figure"] > 0 for r in served)
    llama = next(r for r in written["results"] if r["name"].endswith("vs llama.cpp"))
    assert llama["figure"] > 0
    assert llama["peer_figure"] > 0
    assert "GGUF f32" in llama["peer"]
    for prefix in ("prepare char", "BPE encode"):
        row = next(r for r in written["results"] if r["name"].startswith(prefix))
        assert row["peer_figure"] > 0, prefix
    lora = [r for r in written["results"] if r["name"].startswith("LoRA ")]
    assert [r["name"] for r in lora] == [
        "LoRA train tokens/s vs HF Trainer + PEFT, float32",
        "LoRA training peak RSS vs HF Trainer + PEFT, float32",
    ]  # each side trained in a process of its own, so each peak memory is its own
    assert all(r["figure"] > 0 and r["peer_figure"] > 0 for r in lora)
    assert "Trainer + PEFT" in lora[0]["peer"]
    pretrained = [r for r in written["results"] if r["name"].startswith(("serve a pretrained", "serve vs"))]
    assert [r["name"] for r in pretrained] == [
        "serve a pretrained model, 1 client (aggregate)",
        "serve a pretrained model, 2 clients (aggregate)",
        "serve vs transformers serve, 2 clients",
    ]  # a tiny Llama stands in for SmolLM2: the same server, batched, against the same model in process and
    # against transformers' own server with its continuous batching
    assert all(r["figure"] > 0 and r["peer_figure"] > 0 for r in pretrained)
    hf = next(r for r in written["results"] if "vs HF GPT2LMHeadModel" in r["name"])
    assert hf["peer_figure"] > 0
    assert hf["ratio"] == pytest.approx(hf["figure"] / hf["peer_figure"])


def test_bench_without_its_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--bundestag", str(tmp_path / "nowhere")]) == 2
    assert "benchmark data not found" in capsys.readouterr().err


def test_bench_refuses_a_folder_that_is_not_nanogpt(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bench_data(shared_data)
    assert main(["bench", "--quick", *data, "--nanogpt", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not a nanoGPT checkout" in err[0]


STAND_IN_PREPARE = """
import os
assert os.path.exists("input.txt"), "the harness must bring the text: no download"
open("train.bin", "wb").write(open("input.txt", "rb").read()[:100])
"""
STAND_IN_TRAIN = """
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
assert sys.argv[1] == "config/train_shakespeare_char.py" and args["device"] == "cpu" and args["n_embd"] == "128"
assert open("data/shakespeare_char/train.bin", "rb").read()
if args["max_iters"] == "0":
    sys.exit("refused")
print(f"step {args['max_iters']}: train loss 1.7000, val loss 1.8800")
"""


def test_the_nanogpt_peer_runs_a_checkout_s_own_scripts_in_a_copy(tmp_path: Path, shared_data: Path) -> None:
    """The harness around nanoGPT's train.py (the real one runs in `make bench NANOGPT=...`; it is not in the
    repository), checked with a stand-in checkout of the same layout that asserts what the harness passes."""
    from ml_playground.bench.process_benchmarks import run_nanogpt

    checkout = tmp_path / "nanoGPT"
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    (checkout / "data" / "shakespeare_char" / "prepare.py").write_text(STAND_IN_PREPARE)
    (checkout / "train.py").write_text(STAND_IN_TRAIN)
    work = tmp_path / "work"
    work.mkdir()
    seconds, last = run_nanogpt(checkout, shared_data / "shakespeare" / "input.txt", work, max_iters=30)
    assert seconds > 0
    assert last == "step 30: val loss 1.8800 (its estimate, 20 batches)"
    assert not (checkout / "data" / "shakespeare_char" / "input.txt").exists()  # the checkout is left as it was
    with pytest.raises(RuntimeError, match=r"nanoGPT's train\.py failed .*refused"):
        run_nanogpt(checkout, shared_data / "shakespeare" / "input.txt", work, max_iters=0)
