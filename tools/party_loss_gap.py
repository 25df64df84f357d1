"""How much a header-conditioned model uses the party: text loss under a swapped party minus under the true one.

    uv run python tools/party_loss_gap.py                # speakger's last checkpoint and dataset
    uv run python tools/party_loss_gap.py --speeches 240 --checkpoint best

For validation speeches of the parties that ``analyze`` asks for, the first 180 text tokens are scored
behind ``<|party|>P<|year|>Y<|text|>`` with the speech's own party and with another one drawn at random.
A model that ignores its header scores both alike (gap 0); the unigram information of the party on the
Bundestag corpus is about 0.011 nats per token, the most a bag-of-words style could give.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
import torch.nn.functional as F

from ml_playground.configuration import experiment_config_path, load_config
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.data_pipeline.header import END_TOKEN, format_header
from ml_playground.data_pipeline.meta import read_meta
from ml_playground.data_pipeline.speeches import iter_records
from ml_playground.families.gpt.family import model_from_checkpoint
from ml_playground.training.checkpointing.service import CheckpointService

TEXT_TOKENS = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="speakger")
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--speeches", type=int, default=240)
    args = parser.parse_args()
    config = load_config(experiment_config_path(args.experiment), [])
    service = CheckpointService(config.train.out_dir)
    loaded = service.load(service.resolve(args.checkpoint), with_training_state=False)
    model = model_from_checkpoint(loaded, torch.device("cpu"), "raw", "auto").eval()
    tokenizer = load_tokenizer(loaded.tokenizer_dir, config.prepare.cache_dir)
    parties = list(config.prepare.filters.parties) or ["CDU/CSU", "SPD", "AfD", "BÜNDNIS 90/DIE GRÜNEN", "FDP"]
    meta = read_meta(config.prepare.dataset_dir)
    n_train = int(np.fromfile(config.prepare.dataset_dir / "train_index.bin", dtype=np.int64).size // 3)
    validation = itertools.islice(iter_records(config.prepare.dataset_dir), n_train, None)
    speeches = list(itertools.islice((r for r in validation if r.party in parties), args.speeches))
    rng = np.random.default_rng(0)
    gaps = []
    with torch.no_grad():
        for speech in speeches:
            body = tokenizer.encode(speech.text.strip() + END_TOKEN)[:TEXT_TOKENS]
            other = str(rng.choice([p for p in parties if p != speech.party]))
            losses = []
            for party in (speech.party, other):
                header = tokenizer.encode(format_header({"party": party, "year": speech.year}))
                ids = torch.tensor([header + body])
                logits = model(ids[:, :-1])[0, len(header) - 1 :]
                losses.append(float(F.cross_entropy(logits, ids[0, len(header) :])))
            gaps.append(losses[1] - losses[0])
    gap = np.asarray(gaps)
    print(
        f"{loaded.path} (step {loaded.step}, dataset {meta['train_tokens']:,} train tokens): "
        f"{len(gap)} validation speeches; swapped minus true party: {gap.mean():.4f} nats/token, "
        f"own party better for {(gap > 0).mean():.0%}"
    )


if __name__ == "__main__":
    main()
