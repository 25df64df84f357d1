"""Many prompts decoded together: the batch decoder ``serve`` uses, run to the end for a fixed list.

``analyze`` (samples per party) and ``eval --questions`` (greedy answers to validation questions)
ask the model many independent questions. Where the family offers a batch decoder
(``InferenceModel.batch_decoder``), up to ``rows`` of them decode in one forward pass per step, and
a finished one makes room for the next at once; a prompt the batch does not take (guidance, or an
answer longer than the context) is decoded alone, as ``decode_sample`` does. Each answer is the one
decoding alone gives, to within float rounding (the batch decoders' own statement and tests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ml_playground.core.sampling_rules import SamplingParams
from ml_playground.families.base import InferenceModel
from ml_playground.sampling.decoding import TextStream
from ml_playground.sampling.runner import decode_sample

Job = tuple[list[int], SamplingParams]  # (prompt ids, settings)
Answer = tuple[str, bool]  # (text, whether it ended at a stop token)

DEFAULT_ROWS = 16  # enough rows that a step reads the weights once for many; small enough for a laptop's memory


def decode_many(
    model: InferenceModel,
    jobs: Sequence[Job],
    rows: int = DEFAULT_ROWS,
    on_done: Callable[[int, Answer], None] = lambda _index, _answer: None,
) -> list[Answer]:
    """Every job's answer, in the jobs' order; ``on_done(index, answer)`` as each one ends."""
    answers: dict[int, Answer] = {}

    def done(index: int, answer: Answer) -> None:
        answers[index] = answer
        on_done(index, answer)

    decoder = model.batch_decoder(rows) if model.batch_decoder is not None else None
    pending = deque(range(len(jobs)))
    if decoder is None:
        for index in pending:
            done(index, decode_sample(model, *jobs[index]))
        return [answers[i] for i in range(len(jobs))]
    active: dict[int, tuple[int, TextStream]] = {}  # handle -> (job index, its text)

    def push(handle: int, token: int) -> None:
        index, text = active[handle]
        text.push(token)
        if text.finish_reason is None and text.tokens >= jobs[index][1].max_new_tokens:
            text.finish()
        if text.finish_reason is not None:
            del active[handle]
            decoder.remove(handle)
            done(index, (text.text, text.finish_reason == "stop"))

    while pending or active:
        joining: list[int] = []  # prefilled together
        while pending and decoder.admits(len(jobs[pending[0]][0]), jobs[pending[0]][1], joining=len(joining)):
            index = pending.popleft()
            if jobs[index][1].max_new_tokens <= 0:
                done(index, ("", False))
                continue
            joining.append(index)
        started = decoder.add_many([jobs[i][0] for i in joining], [jobs[i][1] for i in joining]) if joining else []
        for index, (handle, token) in zip(joining, started, strict=True):
            active[handle] = (index, TextStream(model.tokenizer, model.stop_ids, model.stop_in_text))
            push(handle, token)
        if pending and not active:  # the batch does not take it: alone, the one-stream way
            index = pending.popleft()
            done(index, decode_sample(model, *jobs[index]))
            continue
        for handle, token in decoder.step().items():
            push(handle, token)
    return [answers[i] for i in range(len(jobs))]
