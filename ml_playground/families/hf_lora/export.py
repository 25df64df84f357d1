"""Export a LoRA fine-tune: base + adapters merged, as a Hugging Face folder, a GGUF file, or GGUF + Modelfile.

Before anything is swapped into place, one check that every copy agrees on how the model ends a
turn: the training data's end-of-sequence token, the tokenizer's, the GGUF file's (read back as
llama.cpp will read it) and the Modelfile's stop list, and the chat template in the tokenizer and in
the GGUF file. A fine-tune that was trained to stop at one token and is told to stop at another
never stops; export names what differs instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ml_playground.configuration.models import ExperimentConfig, HfLoraModelConfig
from ml_playground.core.errors import UserError
from ml_playground.core.gguf_import import hf_folder_for
from ml_playground.core.tokenizer import load_tokenizer
from ml_playground.data_pipeline.meta import TOKENIZER_DIR
from ml_playground.export.ollama import modelfile, ollama_template
from ml_playground.export.request import ExportError, ExportRequest, ExportResult, refuse_to_overwrite, write_export
from ml_playground.families.base import family_settings
from ml_playground.families.hf_lora.chat import end_of_turn
from ml_playground.families.hf_lora.gguf import architecture, pre_tokenizer_name, read_back, write_hf_gguf
from ml_playground.families.hf_lora.inference import load_lora_model
from ml_playground.families.hf_lora.lora import merged
from ml_playground.training.checkpointing.service import CheckpointService

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def stop_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokens that end a turn: end-of-sequence, and the chat template's end of turn (ChatML: ``<|im_end|>``)."""
    stops = [str(tokenizer.eos_token)] if tokenizer.eos_token else []
    return stops + [token for token in end_of_turn(tokenizer) if token not in stops]


def check_consistency(
    tokenizer: PreTrainedTokenizerBase, dataset_eos: int | None, gguf: Path | None, model_file: str | None
) -> None:
    """One line naming the first disagreement about the end of a turn or the chat template, else nothing."""
    eos_id, eos = tokenizer.eos_token_id, tokenizer.eos_token
    if dataset_eos is not None and dataset_eos != eos_id:
        raise ExportError(
            f"the training data ends records with token {dataset_eos}, the exported tokenizer with {eos_id} ({eos!r})"
        )
    if gguf is not None:
        read = read_back(gguf)
        if read["eos_id"] != eos_id:
            raise ExportError(f"the GGUF file's end-of-sequence id is {read['eos_id']}, the tokenizer's {eos_id}")
        if eos_id is not None and read["tokens"][eos_id] != eos:
            raise ExportError(f"the GGUF file's token {eos_id} is {read['tokens'][eos_id]!r}, the tokenizer's {eos!r}")
        template = getattr(tokenizer, "chat_template", None) or None
        if read["chat_template"] != template:
            raise ExportError("the GGUF file's chat template differs from the tokenizer's")
    if model_file is not None:
        stops = {
            line.split(" ", 2)[2].strip('"') for line in model_file.splitlines() if line.startswith("PARAMETER stop ")
        }
        missing = [stop for stop in stop_texts(tokenizer) if stop not in stops]
        if missing:
            raise ExportError(f"the Modelfile does not stop at {', '.join(missing)}")


def _dataset_eos(config: ExperimentConfig) -> int | None:
    try:
        tokenizer = load_tokenizer(config.prepare.dataset_dir / TOKENIZER_DIR, config.prepare.cache_dir)
    except UserError:
        return None  # no dataset beside the run: nothing to compare with
    return tokenizer.eos_token_id


def export_lora(
    config: ExperimentConfig, request: ExportRequest, write_hook: Callable[[Path], None] | None = None
) -> ExportResult:
    refuse_to_overwrite(request)
    settings = family_settings(config, HfLoraModelConfig)
    loaded, tokenizer, _ = load_lora_model(config, settings, request.checkpoint)
    model = merged(loaded)
    arch = architecture(model.config) if request.format != "hf" else None
    base_folder = hf_folder_for(settings.base_model, config.prepare.cache_dir, "train.model.base_model")
    pre = pre_tokenizer_name(tokenizer, arch, Path(base_folder)) if arch is not None else None
    pointer = CheckpointService(config.train.out_dir).pointer_info(request.checkpoint)
    step = int(pointer["step"]) if pointer is not None else -1
    gguf_name = f"{request.name}-{request.gguf_type}.gguf"
    dataset_eos = _dataset_eos(config)

    def write(tmp: Path) -> None:
        if request.format == "hf":
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            check_consistency(tokenizer, dataset_eos, None, None)
        else:
            write_hf_gguf(tmp / gguf_name, model, tokenizer, request.gguf_type, request.name, pre)
            text = None
            if request.format == "ollama":
                template = ollama_template(getattr(tokenizer, "chat_template", None) or None)
                context = int(model.config.max_position_embeddings)
                text = modelfile(gguf_name, config.sample, stop_texts(tokenizer), context, template)
                (tmp / "Modelfile").write_text(text, "utf-8")
            check_consistency(tokenizer, dataset_eos, tmp / gguf_name, text)
        if write_hook is not None:
            write_hook(tmp)

    return write_export(request, write, step)
