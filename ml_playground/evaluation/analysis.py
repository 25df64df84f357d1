"""``analyze``: how well generated speeches read, and whether they sound like the party that was asked for.

Samples are generated per party from the header alone. Reported: length, distinct-1/2/3 (unique
n-grams over all n-grams, across samples), repetition rate (share of repeated word 3-grams within
a sample), the share of samples that keep the header format (finish with ``<|end|>`` and contain
no stray markers), and conditioning accuracy: a party classifier (TF-IDF + logistic regression,
scikit-learn) trained on the real speeches predicts each sample's party. Its own held-out accuracy
on real speeches and chance are reported beside it, so the figure can be read. Beside the samples, the
header check (``header_check.py``) asks the model itself whether it reads the party: its likelihood of
held-out real speeches under each party's header.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.atomic import atomic_write_text, atomic_write_with
from ml_playground.core.errors import DataError
from ml_playground.data_pipeline.header import format_header, parse_example
from ml_playground.data_pipeline.speeches import iter_records
from ml_playground.evaluation.header_check import HeaderCheck, check_header
from ml_playground.sampling.batched import Answer, Job, decode_many
from ml_playground.sampling.conditioning import party_contrast, require_conditions
from ml_playground.sampling.runner import Generator, load_generator

MIN_SPEECHES_PER_PARTY = 20  # fewer real speeches make a class the classifier cannot learn
MAX_PARTIES = 8


@dataclass(frozen=True)
class GeneratedSample:
    party: str
    text: str
    keeps_format: bool
    predicted: str = ""


@dataclass
class AnalysisReport:
    parties: list[str]
    samples: int
    mean_words: float
    distinct: dict[int, float]
    repetition_rate: float
    header_format_share: float
    conditioning_accuracy: float
    classifier_accuracy: float
    chance: float
    majority_share: float
    per_party: dict[str, float] = field(default_factory=dict)
    header_check: HeaderCheck | None = None  # the model's own party choice for held-out real speeches
    checkpoint: str = ""
    step: int = -1
    report_path: Path | None = None
    chart_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything, plus the short names scripts read: header_kept, distinct_2."""
        data = asdict(self)
        data["header_kept"] = self.header_format_share
        data["distinct_2"] = self.distinct[2]
        data["report_path"] = str(self.report_path) if self.report_path else None
        data["chart_path"] = str(self.chart_path) if self.chart_path else None
        return data


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    grams = ngrams(text.split(), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


class PartyClassifier:
    """TF-IDF over word uni- and bigrams, then multinomial logistic regression."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        self.pipeline = Pipeline(
            [
                ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000)),
                ("logreg", LogisticRegression(max_iter=2000, class_weight="balanced")),
            ]
        )

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> PartyClassifier:
        self.pipeline.fit(list(texts), list(labels))
        return self

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [str(label) for label in self.pipeline.predict(list(texts))]


def _split_records(config: ExperimentConfig, parties: list[str]) -> tuple[list[Any], list[Any]]:
    records = [r for r in iter_records(config.prepare.dataset_dir) if r.party in parties]
    n_val = max(len(parties), round(len(records) * config.prepare.val_fraction))
    if len(records) <= n_val:
        raise DataError("too few speeches with a party to train and test a classifier", path=config.prepare.dataset_dir)
    return records[:-n_val], records[-n_val:]


def party_fields(config: ExperimentConfig, party: str) -> dict[str, Any]:
    """What a sample for ``party`` is asked for: the party, ``sample.year`` and ``sample.topic``."""
    return {"party": party, "year": config.sample.year, "topic": config.sample.topic}


def party_header(config: ExperimentConfig, party: str) -> str:
    """The header a sample for ``party`` starts from."""
    return format_header(party_fields(config, party))


def sample_from_text(party: str, header: str, text: str, stopped: bool) -> GeneratedSample:
    """A generated continuation of ``header`` as a sample; ``stopped``: it ended at a stop token."""
    parsed = parse_example(header + text)
    # finished: at <|end|> (our GPT's header vocabulary) or at the base model's end of text (LoRA)
    keeps = parsed is not None and (parsed.finished or stopped)
    return GeneratedSample(party, parsed.text if parsed else text, keeps)


def generate_samples(
    config: ExperimentConfig, parties: list[str], per_party: int, emit: Callable[[str], None], generator: Generator
) -> list[GeneratedSample]:
    """``per_party`` samples from each party's header, decoded together where the family batches."""
    jobs: list[Job] = []
    headers: list[tuple[str, str]] = []  # (party, header) of each job
    for party in parties:
        header = party_header(config, party)
        prompt = generator.tokenizer.encode(header)
        contrast = (
            party_contrast(generator.tokenizer, party_fields(config, party), parties)
            if config.sample.guidance > 0
            else ()
        )
        for index in range(per_party):
            jobs.append((prompt, generator.params(config.sample, index, keep_prefix=len(prompt), contrast=contrast)))
            headers.append((party, header))
    left = Counter(party for party, _ in headers)

    def finished(index: int, _answer: Answer) -> None:
        party = headers[index][0]
        left[party] -= 1
        if left[party] == 0:
            emit(f"generated {per_party} sample(s) for {party}\n")

    answers = decode_many(generator.inference, jobs, on_done=finished)
    return [
        sample_from_text(party, header, text, stopped)
        for (party, header), (text, stopped) in zip(headers, answers, strict=True)
    ]


Sampler = Callable[[ExperimentConfig, list[str], int, Callable[[str], None], Generator], list[GeneratedSample]]
"""(config, parties, samples per party, emit, the loaded checkpoint) -> the samples, party by party."""


def analyze(
    config: ExperimentConfig,
    per_party: int = 10,
    emit: Callable[[str], None] = print,
    sampler: Sampler = generate_samples,
    out_name: str = "analysis",
) -> AnalysisReport:
    """``sampler``: our own decoding by default; another runtime (llama.cpp on the exported file) is judged by
    the same classifier from the same prompts. The report goes to ``train.out_dir / out_name``."""
    generator = load_generator(config)
    conditions = require_conditions(generator.inference, config.prepare.dataset_dir, "analyze")
    counts: dict[str, int] = conditions["parties"]
    parties = [p for p, n in counts.items() if n >= MIN_SPEECHES_PER_PARTY][:MAX_PARTIES]
    if len(parties) < 2:
        raise DataError(
            f"analysis needs at least two parties with {MIN_SPEECHES_PER_PARTY}+ speeches",
            path=config.prepare.dataset_dir,
        )
    train, held_out = _split_records(config, parties)
    classifier = PartyClassifier().fit([r.text for r in train], [r.party for r in train])
    predicted_real = classifier.predict([r.text for r in held_out])
    classifier_accuracy = sum(p == r.party for p, r in zip(predicted_real, held_out, strict=True)) / len(held_out)
    majority_share = Counter(r.party for r in held_out).most_common(1)[0][1] / len(held_out)
    model = generator.inference
    header_check = check_header(model.module, model.tokenizer, held_out, parties, per_party, model.context_length)
    samples = sampler(config, parties, per_party, emit, generator)
    predictions = classifier.predict([s.text or "-" for s in samples])
    samples = [GeneratedSample(s.party, s.text, s.keeps_format, p) for s, p in zip(samples, predictions, strict=True)]
    texts = [s.text for s in samples]
    per_party_accuracy = {
        party: sum(s.predicted == party for s in samples if s.party == party) / per_party for party in parties
    }
    report = AnalysisReport(
        parties=parties,
        samples=len(samples),
        mean_words=sum(len(t.split()) for t in texts) / len(texts),
        distinct={n: distinct_n(texts, n) for n in (1, 2, 3)},
        repetition_rate=sum(repetition_rate(t) for t in texts) / len(texts),
        header_format_share=sum(s.keeps_format for s in samples) / len(samples),
        conditioning_accuracy=sum(s.predicted == s.party for s in samples) / len(samples),
        classifier_accuracy=classifier_accuracy,
        chance=1 / len(parties),
        majority_share=majority_share,
        per_party=per_party_accuracy,
        header_check=header_check,
        checkpoint=generator.checkpoint,
        step=generator.step,
    )
    out = config.train.out_dir / out_name
    report.chart_path = out / "conditioning.png"
    atomic_write_with(report.chart_path, lambda path: _chart(report, path))
    report.report_path = out / "report.md"
    atomic_write_text(report.report_path, render_report(report, samples))
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    return report


def _chart(report: AnalysisReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["classifier on\nreal speeches", "generated:\nrequested party", "chance"]
    values = [report.classifier_accuracy, report.conditioning_accuracy, report.chance]
    left.bar(names, values, color=["#777777", "#1f77b4", "#cccccc"])
    left.set_ylim(0, 1)
    left.set_ylabel("share")
    left.set_title("Party classifier agreement")
    right.bar(list(report.per_party), list(report.per_party.values()), color="#1f77b4")
    right.axhline(report.chance, color="#999999", linestyle="--", label="chance")
    right.set_ylim(0, 1)
    right.set_title("Generated samples classified as the requested party")
    plt.setp(right.get_xticklabels(), rotation=30, ha="right")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)


def header_rows(check: HeaderCheck | None) -> list[tuple[str, str]]:
    """The header check as (measure, value) rows, for the report and the command's table."""
    if check is None or check.speeches == 0:
        return []
    return [
        (
            f"model's own likelihood picks the party ({check.speeches} held-out real speeches, "
            f"first {check.text_tokens} tokens)",
            f"{check.own_party_share:.1%}",
        ),
        ("gain of the true party's header over the others", f"{check.gain_nats_per_token:+.4f} nats/token"),
    ]


def render_report(report: AnalysisReport, samples: Sequence[GeneratedSample]) -> str:
    rows = [
        ("samples", f"{report.samples} ({report.samples // len(report.parties)} per party)"),
        ("mean length", f"{report.mean_words:.1f} words"),
        ("distinct-1 / 2 / 3", " / ".join(f"{report.distinct[n]:.3f}" for n in (1, 2, 3))),
        ("repetition rate (repeated word 3-grams)", f"{report.repetition_rate:.3f}"),
        ("keep the header format", f"{report.header_format_share:.1%}"),
        ("classified as the requested party", f"{report.conditioning_accuracy:.1%}"),
        ("classifier accuracy on held-out real speeches", f"{report.classifier_accuracy:.1%}"),
        ("chance (1 / parties)", f"{report.chance:.1%}"),
        ("majority class share (held-out)", f"{report.majority_share:.1%}"),
        *header_rows(report.header_check),
    ]
    lines = ["# Analysis of generated speeches", "", f"Parties: {', '.join(report.parties)}.", ""]
    lines += ["| measure | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows], ""]
    own = report.header_check.per_party if report.header_check else {}
    lines += ["## Per party", "", "| party | classified as requested | held-out speeches the model gives their party |"]
    lines += ["|---|---|---|"]
    lines += [
        f"| {party} | {share:.1%} | {f'{own[party]:.1%}' if party in own else '-'} |"
        for party, share in report.per_party.items()
    ]
    lines += ["", "![conditioning](conditioning.png)", "", "## Examples", ""]
    shown: set[str] = set()
    for sample in samples:
        if sample.party not in shown:
            shown.add(sample.party)
            excerpt = " ".join(sample.text.split()[:60])
            lines += [f"**{sample.party}** (classified: {sample.predicted}): {excerpt} …", ""]
    return "\n".join(lines)
