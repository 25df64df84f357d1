"""The command line: parse, load the config, call the runner, turn user errors into one line (exit 2)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from rich.console import Console

from ml_playground.configuration import experiment_config_path, list_experiments, load_config
from ml_playground.configuration.models import ExperimentConfig
from ml_playground.core.allocator import keep_freed_memory
from ml_playground.core.errors import ConfigError, UserError

# Commands import their machinery lazily: `prepare` never loads PyTorch (about 650 MB of RSS for the CUDA build).


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


EXIT_USER_ERROR = 2
API_KEY_VARIABLE = "ML_PLAYGROUND_API_KEY"  # the serve key, kept out of config files
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name (see `ml_playground experiments`)")
    parser.add_argument("--config", type=Path, help="config file (default: the experiment's config.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_iters=500 (repeatable; values are TOML)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output, only results and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ml_playground",
        description="Prepare a corpus, train a GPT, sample from it: one command per task, one TOML per experiment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("experiments", help="list the experiments")
    bench = commands.add_parser("bench", help="benchmarks against peers (make bench); writes .cache/bench/results.json")
    bench.add_argument("--quick", action="store_true", help="tiny sizes only: checks the harness, not the speed")
    bench.add_argument("--shakespeare", type=Path, default=Path("../shared/data/shakespeare/input.txt"))
    bench.add_argument("--bundestag", type=Path, default=Path("../shared/data/bundestag"))
    bench.add_argument("--results", type=Path, default=Path(".cache/bench/results.json"))
    bench.add_argument(
        "--nanogpt", type=Path, default=None, help="a karpathy/nanoGPT checkout: the speedrun's peer runs its train.py"
    )
    compare = commands.add_parser(
        "compare", help="the same text under several experiments' models: bits per byte, a table and a chart"
    )
    compare.add_argument(
        "experiments", nargs="+", help="experiment names or config.toml paths (each scored with its sample.checkpoint)"
    )
    compare.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="for every experiment"
    )
    compare.add_argument("--data", type=Path, required=True, help="text file or folder to score")
    compare.add_argument("--max-tokens", type=int, help="score about this many targets per model")
    compare.add_argument("--out", type=Path, default=Path("out/compare"), help="folder for compare.json and the chart")
    compare.add_argument("--json", action="store_true", help="print the table as one JSON object on the last line")
    compare.add_argument("--quiet", action="store_true", help="no progress output")
    harness = commands.add_parser(
        "harness",
        help="lm-evaluation-harness on two tasks of ours, through serve and on the HF export, beside eval --data",
        description="Writes two lm-evaluation-harness tasks over --data (rolling bits per byte; which of two "
        "sentences comes next), runs them against the model served on loopback and the next-sentence task "
        "against the Hugging Face export, and prints them beside eval --data.",
    )
    _add_common(harness)
    harness.add_argument("--data", type=Path, required=True, help="held-out text (read as eval reads it)")
    harness.add_argument("--items", type=int, default=100, help="next-sentence items (default 100)")
    harness.add_argument("--out", type=Path, help="folder for tasks and export (default: beside out_dir)")
    harness.add_argument("--no-hf", action="store_true", help="skip the export and the harness's hf model")
    harness.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    specs: list[tuple[str, str]] = [
        ("prepare", "raw text -> token files, tokenizer and meta.json in prepare.dataset_dir"),
        ("train", "train (resuming from the last checkpoint if there is one) -> out_dir"),
        ("sample", "generate text from a checkpoint (sample.checkpoint: best, last or a path)"),
        ("loop", "prepare, train and sample in one go"),
        ("eval", "loss and bits per byte of a checkpoint over the validation split or any text (--data)"),
        ("debate", "a generated debate between parties on a topic (header-conditioned experiments: speakger)"),
        ("analyze", "report on generated samples: diversity, header format, party conditioning accuracy"),
        ("export", "a checkpoint as a Hugging Face folder, a GGUF file, or GGUF + Ollama Modelfile"),
        ("serve", "an OpenAI-compatible HTTP server (streaming) with a web page at /"),
        ("chat", "talk to the model in the terminal (/reset, /quit)"),
    ]
    for name, help_text in specs:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        if name in ("train", "loop"):
            sub.add_argument(
                "--fresh", action="store_true", help="start over; the previous run is moved aside, not deleted"
            )
        if name in ("sample", "loop"):
            sub.add_argument("--prompt", help="start the sample from this text (same as --set sample.prompt=...)")
        if name == "debate":
            sub.add_argument("--topic", required=True, help="what the debate is about")
            sub.add_argument("--parties", required=True, help="comma-separated, e.g. SPD,CDU/CSU,FDP")
            sub.add_argument("--turns", type=int, default=6, help="speeches in the debate (default 6)")
        if name == "export":
            sub.add_argument("--format", choices=["hf", "gguf", "ollama"], help="default: [export] format")
            sub.add_argument("--checkpoint", help="best, last or a checkpoint folder (default: [export] checkpoint)")
            sub.add_argument("--out", type=Path, help="output folder (default: export-FORMAT beside train.out_dir)")
            sub.add_argument("--force", action="store_true", help="replace an output folder that is not empty")
        if name in ("serve", "chat"):
            where = "[serve] checkpoint" if name == "serve" else "sample.checkpoint"
            sub.add_argument("--checkpoint", help=f"best, last or a checkpoint folder (default: {where})")
        if name == "serve":
            sub.add_argument("--host", help="address to listen on (default: [serve] host, 127.0.0.1)")
            sub.add_argument("--port", type=int, help="port (default: [serve] port, 8000; 0 picks a free one)")
        if name == "analyze":
            sub.add_argument("--per-party", type=int, default=10, help="generated samples per party (default 10)")
        if name == "eval":
            sub.add_argument("--data", type=Path, help="score this text file or folder instead of the validation split")
            sub.add_argument("--max-tokens", type=int, help="score about this many targets (evenly spaced windows)")
            sub.add_argument(
                "--questions",
                type=int,
                default=50,
                help="chat datasets: ask this many validation questions again, greedily, for the stop rate "
                "and answer lengths (default 50; 0 skips it)",
            )
        if name in ("eval", "analyze"):
            sub.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    return parser


def _load(args: argparse.Namespace) -> ExperimentConfig:
    path = args.config or experiment_config_path(args.experiment)
    if args.config is None and not path.is_file():
        known = ", ".join(name for name, _ in list_experiments())
        raise UserError(f"unknown experiment {args.experiment!r} (known: {known})")
    overrides = list(args.overrides)
    if getattr(args, "prompt", None) is not None:
        overrides.append(f"sample.prompt={json.dumps(args.prompt, ensure_ascii=False)}")
    return load_config(path, overrides)


def cmd_experiments(args: argparse.Namespace, console: Console) -> int:
    for name, summary in list_experiments():
        console.print(f"{name:<28} {summary}", highlight=False)
    return 0


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.bench.runner import run_benchmarks

    for path in (args.shakespeare, args.bundestag):
        if not path.exists():
            raise UserError("benchmark data not found (pass --shakespeare/--bundestag)", path=path)
    if args.nanogpt is not None and not (args.nanogpt / "train.py").is_file():
        raise UserError("not a nanoGPT checkout (no train.py); pass the folder of karpathy/nanoGPT", path=args.nanogpt)
    run_benchmarks(
        shakespeare=args.shakespeare,
        bundestag=args.bundestag,
        results_path=args.results,
        quick=args.quick,
        emit=lambda text: console.print(text, highlight=False, markup=False),
        nanogpt=args.nanogpt,
    )
    return 0


def cmd_prepare(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.data_pipeline.preparer import prepare

    report = prepare(_load(args).prepare)
    console.print(report.summary(), highlight=False)
    return 0


def _run_train(config: ExperimentConfig, args: argparse.Namespace, console: Console) -> int:
    from ml_playground.commands.train import train

    result = train(config, fresh=args.fresh, quiet=args.quiet, console=console, environ=os.environ)
    if not result.is_main:
        return 0 if result.interrupted_by is None else SIGNAL_EXIT_CODES.get(result.interrupted_by, 1)
    if result.interrupted_by is not None:
        console.print(
            f"interrupted by {result.interrupted_by} at step {result.step}; last checkpoint written. "
            f"Resume with: ml_playground train {args.experiment} (same --config/--set)",
            highlight=False,
        )
        return SIGNAL_EXIT_CODES.get(result.interrupted_by, 1)
    if result.stop_reason:
        console.print(f"stopped early: {result.stop_reason}", highlight=False)
    if result.best_val_loss is not None:
        console.print(
            f"done at step {result.step} in {result.elapsed_s:.1f} s of training (evaluation included); "
            f"best val loss {result.best_val_loss:.4f}; outputs in {result.out_dir}",
            highlight=False,
        )
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    return _run_train(_load(args), args, console)


def cmd_sample(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.sampling.runner import sample

    samples = sample(_load(args), emit=write_stdout)
    if not args.quiet:
        console.print(f"wrote {len(samples)} sample(s) to {samples[0].path.parent}", highlight=False)
    return 0


def cmd_loop(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.data_pipeline.preparer import prepare
    from ml_playground.sampling.runner import sample

    config = _load(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("loop runs in one process; under torchrun run `prepare` first, then `train`, then `sample`")
    console.print(prepare(config.prepare).summary(), highlight=False)
    code = _run_train(config, args, console)
    if code != 0:
        return code
    sample(config, emit=write_stdout)
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.evaluation.runner import VALIDATION_SPLIT, evaluate_checkpoint

    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("must be a positive number of tokens", key="--max-tokens")
    if args.questions < 0:
        raise ConfigError("must be 0 or more", key="--questions")
    emit = (lambda _: None) if args.json else (lambda line: console.print(line, highlight=False, markup=False))
    report = evaluate_checkpoint(_load(args), args.data, args.max_tokens, args.questions, emit)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if args.json:
        write_stdout(json.dumps(report.to_dict()) + "\n")
    else:
        bits = f", {report.bits_per_byte:.4f} bits/byte over {report.bytes:,} bytes" if report.bits_per_byte else ""
        console.print(
            f"{'val loss' if report.data == VALIDATION_SPLIT else 'loss'} {report.val_loss:.4f} over "
            f"{report.tokens:,} tokens{bits} of the {report.data} "
            f"(checkpoint {report.checkpoint}, step {report.step})",
            highlight=False,
        )
        if report.chat is not None:
            chat = report.chat
            console.print(
                f"chat: {chat.questions} validation questions, greedy: stop rate {chat.stop_rate:.2f}; answers "
                f"{chat.answer_tokens:.0f} tokens on average (the real ones {chat.reference_tokens:.0f}); German "
                f"function-word share {chat.german_share:.3f} (the real answers {chat.reference_german_share:.3f})",
                highlight=False,
                markup=False,
            )
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from dataclasses import asdict

    from rich.table import Table

    from ml_playground.evaluation.compare import CHART_FILE, compare_models

    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("must be a positive number of tokens", key="--max-tokens")
    configs = []
    for name in args.experiments:
        path = Path(name) if name.endswith(".toml") else experiment_config_path(name)
        if not path.is_file():
            known = ", ".join(known_name for known_name, _ in list_experiments())
            raise UserError(f"unknown experiment {name!r} (known: {known}, or a config.toml path)")
        configs.append((name, load_config(path, args.overrides)))
    rows = compare_models(
        configs, args.data, args.out, max_tokens=args.max_tokens, emit=(lambda _: None) if args.quiet else write_stdout
    )
    if args.json:
        write_stdout(json.dumps({"data": str(args.data), "rows": [asdict(r) for r in rows]}, ensure_ascii=False) + "\n")
        return 0
    table = Table(title=f"{args.data} under each model", title_justify="left")
    for column in ("experiment", "bits/byte", "loss/token", "tokens", "chars/token", "seconds"):
        table.add_column(column, justify="left" if column == "experiment" else "right")
    for row in rows:
        bits = f"{row.bits_per_byte:.4f}" if row.bits_per_byte is not None else "-"
        table.add_row(
            row.experiment,
            bits,
            f"{row.loss_per_token:.4f}",
            f"{row.tokens:,}",
            f"{row.characters_per_token:.2f}",
            f"{row.seconds:.1f}",
        )
    console.print(table)
    console.print(f"chart: {args.out / CHART_FILE}", highlight=False, markup=False)
    return 0


def cmd_debate(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.sampling.debate import run_debate

    parties = [party.strip() for party in args.parties.split(",") if party.strip()]
    debate = run_debate(_load(args), args.topic, parties, args.turns, emit=write_stdout)
    console.print(f"\nwrote the debate ({len(debate.turns)} turns) to {debate.path}", highlight=False, markup=False)
    return 0


def cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.evaluation.analysis import analyze, header_rows

    def progress(text: str) -> None:
        if not args.quiet and not args.json:  # --json: standard output is the JSON alone
            console.print(text.rstrip("\n"), highlight=False, markup=False)

    report = analyze(_load(args), per_party=args.per_party, emit=progress)
    if args.json:
        write_stdout(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        from rich.table import Table

        table = Table(title=f"{report.checkpoint} (step {report.step})", title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        rows = [
            ("classified as the requested party", f"{report.conditioning_accuracy:.1%} of {report.samples}"),
            ("classifier on held-out real speeches", f"{report.classifier_accuracy:.1%}"),
            ("chance (1 / parties)", f"{report.chance:.1%}"),
            *((f"  {party}", f"{share:.1%}") for party, share in report.per_party.items()),
            *header_rows(report.header_check),
            ("header format kept", f"{report.header_format_share:.1%}"),
            ("distinct-2", f"{report.distinct[2]:.3f}"),
            ("mean length (words)", f"{report.mean_words:.1f}"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        console.print(f"report {report.report_path}", highlight=False, markup=False)
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.commands.export import ExportRequest, default_out_dir, run_export

    config = _load(args)
    fmt = args.format or config.export.format
    request = ExportRequest(
        format=fmt,
        out_dir=args.out or default_out_dir(config, fmt),
        checkpoint=args.checkpoint or config.export.checkpoint,
        force=args.force,
        name=config.export.ollama_model or args.experiment,
        gguf_type=config.export.gguf_type,
    )
    result = run_export(config, request)
    console.print(
        f"exported step {result.step} as {fmt} to {result.out_dir}: {', '.join(result.files)}",
        highlight=False,
        markup=False,
    )
    for note in result.notes:
        console.print(note, highlight=False, markup=False)
    return 0


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.serving.server import serve

    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError("must be a port number from 0 to 65535", key="--port")
    serve(
        _load(args),
        args.experiment,
        announce=lambda text: console.print(text, highlight=False, markup=False),
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        api_key=os.environ.get(API_KEY_VARIABLE) or None,
    )
    return 0


def cmd_harness(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.commands.export import ExportRequest, run_export
    from ml_playground.evaluation import harness
    from ml_playground.evaluation.runner import evaluate_checkpoint, read_eval_text
    from ml_playground.serving.server import build_served, serving_process

    if args.items < 1:
        raise ConfigError("must be a positive number of items", key="--items")
    config = _load(args)
    folder = args.out or config.train.out_dir.parent / f"{config.train.out_dir.name}-harness"
    tasks = folder / "tasks"
    items = harness.write_tasks(read_eval_text(config, args.data), tasks, args.items)
    ours = evaluate_checkpoint(config, args.data)
    if ours.bits_per_byte is None:
        raise UserError("the checkpoint's tokenizer gives no byte lengths, so there are no bits per byte to compare")
    served = partial(build_served, config, args.experiment, config.sample.checkpoint, engine_thread=False)
    with serving_process(served) as url:
        model_args = harness.served_model_args(f"{url}/v1/completions", args.experiment, ours.context_length)
        both = [harness.BPB_TASK, harness.NEXT_TASK]
        through_server = harness.run_tasks("local-completions", model_args, both, tasks)
    hf_accuracy = None
    if not args.no_hf:
        request = ExportRequest(
            format="hf",
            out_dir=folder / "hf",
            checkpoint=config.sample.checkpoint,
            force=True,
            name=args.experiment,
            gguf_type=config.export.gguf_type,
        )
        exported = run_export(config, request)
        hf_accuracy = harness.run_tasks("hf", harness.hf_model_args(exported.out_dir), [harness.NEXT_TASK], tasks)[
            harness.NEXT_TASK
        ]["acc"]
    report = harness.HarnessReport(
        ours.bits_per_byte,
        through_server[harness.BPB_TASK]["bits_per_byte"],
        through_server[harness.NEXT_TASK]["acc"],
        hf_accuracy,
        items,
        ours.tokens,
        ours.context_length,
        str(tasks),
    )
    if args.json:
        write_stdout(json.dumps(report.to_dict()) + "\n")
        return 0
    hf = "skipped" if report.hf_accuracy is None else f"{report.hf_accuracy:.4f}"
    console.print(
        f"bits per byte: eval --data {report.eval_bits_per_byte:.6f}, lm-eval through serve "
        f"{report.served_bits_per_byte:.6f} (relative difference {report.relative_difference:.2e}; "
        f"{report.tokens:,} tokens in windows of {report.context_length:,})\n"
        f"next sentence ({report.items} items): accuracy through serve {report.served_accuracy:.4f}, "
        f"lm-eval hf on the export {hf}\ntasks: {report.tasks}",
        highlight=False,
        markup=False,
    )
    return 0


def read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def cmd_chat(args: argparse.Namespace, console: Console) -> int:
    from ml_playground.sampling.chat import chat

    chat(_load(args), read_line=read_line, emit=write_stdout, checkpoint=args.checkpoint)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "experiments": cmd_experiments,
    "bench": cmd_bench,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "sample": cmd_sample,
    "loop": cmd_loop,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "debate": cmd_debate,
    "analyze": cmd_analyze,
    "export": cmd_export,
    "serve": cmd_serve,
    "chat": cmd_chat,
    "harness": cmd_harness,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    console = Console(highlight=False, soft_wrap=True)
    try:
        return COMMANDS[args.command](args, console)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
