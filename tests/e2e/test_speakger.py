"""`speakger` end to end through the CLI on speeches from two real Bundestag protocols, tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_MODEL
from tests.e2e.test_cli import assert_one_line_user_error, cli, in_process, sets
from tests.serving_helpers import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_loop_sample_debate_analyze(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    protocols = tmp_path / "protocols"
    protocols.mkdir()
    for name in ("19009.txt", "19010.txt"):
        (protocols / name).symlink_to(shared_data / "bundestag" / name)
    args = sets(
        [
            f"prepare.input_path='{protocols}'",
            "prepare.format='bundestag'",  # the text protocols (the default is the XML archives)
            f"prepare.dataset_dir='{tmp_path / 'dataset'}'",
            f"train.out_dir='{tmp_path / 'run'}'",
            "prepare.bpe_vocab_size=600",
            *TINY_MODEL,
            "train.model.block_size=64",  # headers are up to 34 tokens; each window holds a header and text
            "sample.max_new_tokens=20",
        ]
    )
    loop = cli("loop", "speakger", *args)
    assert "per party: " in loop.stdout
    assert "per decade: 2010s" in loop.stdout
    conditions = json.loads((tmp_path / "dataset" / "conditions.json").read_text("utf-8"))
    assert "SPD" in conditions["parties"]
    sampled = cli(
        "sample", "speakger", *args, "--set", "sample.party='FDP'", "--set", "sample.topic='Europa'", "--quiet"
    )
    assert sampled.stdout.startswith("<|party|>FDP<|year|>2019<|topic|>Europa<|text|>")
    fdp = ["--set", "sample.party='FDP'", "--set", "sample.topic='Europa'", "--quiet"]
    plain = in_process(capsys, "sample", "speakger", *args, *fdp, "--set", "sample.guidance=0")
    assert plain.stdout.startswith("<|party|>FDP<|year|>2019<|topic|>Europa<|text|>")
    assert plain.stdout != sampled.stdout  # the config's guidance: the other parties' predictions moved tokens
    unknown = in_process(capsys, "sample", "speakger", *args, "--set", "sample.party='spd'", check_code=None)
    assert_one_line_user_error(unknown, "sample.party", "unknown party 'spd'", "closest known: SPD")
    speaker = in_process(
        capsys, "sample", "speakger", *args, "--set", "sample.speaker='Christian Lindnr'", check_code=None
    )
    assert_one_line_user_error(speaker, "unknown speaker 'Christian Lindnr'", "Christian Lindner")
    debate = cli(
        "debate", "speakger", *args, "--topic", "Europa", "--parties", "SPD,CDU/CSU", "--turns", "3",
        "--set", "sample.guidance=1.0",
    )  # fmt: skip
    path = Path(debate.stdout.strip().splitlines()[-1].rsplit(" to ", 1)[1])
    markdown = path.read_text("utf-8")
    assert markdown.startswith("# Debatte: Europa")
    assert markdown.count("\n## ") == 3
    assert "(SPD)" in markdown
    assert "(CDU/CSU)" in markdown
    guidance = ["--set", "sample.guidance=1.0"]
    table = in_process(capsys, "analyze", "speakger", *args, *guidance, "--per-party", "1", "--quiet").stdout
    assert "classified as the requested party" in table
    assert "classifier on held-out real speeches" in table
    assert "model's own likelihood picks the party" in table
    analyzed = cli("analyze", "speakger", *args, "--per-party", "2", "--json")
    report = json.loads(analyzed.stdout)  # the JSON alone: progress lines stay out of it
    assert 0.0 <= report["conditioning_accuracy"] <= 1.0
    assert 0.0 < report["classifier_accuracy"] <= 1.0
    assert report["chance"] == pytest.approx(1 / len(report["parties"]))
    assert report["samples"] == 2 * len(report["parties"])
    assert 0 < report["header_check"]["speeches"] <= 2 * len(report["parties"])
    assert 0.0 <= report["header_check"]["own_party_share"] <= 1.0
    written = Path(report["report_path"]).read_text("utf-8")
    assert written.startswith("# Analysis of generated speeches")
    assert "| party | classified as requested | held-out speeches the model gives their party |" in written
    assert Path(report["chart_path"]).read_bytes().startswith(b"\x89PNG")
    no_parties = in_process(
        capsys, "debate", "speakger", *args, "--topic", "x", "--parties", "Piraten", check_code=None
    )
    assert_one_line_user_error(no_parties, "--parties", "unknown party 'Piraten'")

    # The checkpoint carries its conditions: sampling and serving need no dataset beside it.
    (tmp_path / "dataset").rename(tmp_path / "dataset-moved")
    header = "<|party|>FDP<|year|>2019<|topic|>Europa<|text|>"
    again = in_process(
        capsys, "sample", "speakger", *args, "--set", "sample.party='FDP'", "--set", "sample.topic='Europa'", "--quiet"
    )
    assert again.stdout == sampled.stdout
    generated = sampled.stdout[len(header) :].split("\n---------------\n")[0]
    with ServerProcess("speakger", [*args[1::2], "train.num_threads=1"]) as server:
        described = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        body = {"party": "FDP", "year": 2019, "topic": "Europa", "max_tokens": 20, "seed": 1337, "temperature": 0.8}
        answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
        wrong = httpx.post(f"{server.url}/v1/completions", json={**body, "party": "spd"}, timeout=60)
        unguided = httpx.post(f"{server.url}/v1/completions", json={**body, "guidance": 0}, timeout=60).json()
    assert "FDP" in described["conditions"]["parties"]
    assert answer["choices"][0]["text"] == generated  # the config's guidance, as sample applied it
    assert unguided["choices"][0]["text"] == plain.stdout[len(header) :].split("\n---------------\n")[0]
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "party"
    assert "closest known: SPD" in wrong.json()["error"]["message"]
