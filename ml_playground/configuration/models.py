"""The experiment config tree: one pydantic model per TOML section, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidatorFunctionWrapHandler, field_validator, model_validator

from ml_playground.configuration.families import DEFAULT_KIND, FamilyConfig, family_entry, register_family
from ml_playground.configuration.section import Section

TokenizerName = Literal["char", "bpe", "gpt2", "tiktoken", "hf"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
MuonPrecision = Literal["auto", "bfloat16", "float32"]

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


class ColumnsConfig(Section):
    """Column names in a speech CSV (format csv: text is required; format speakger: SpeakGer's names by default)."""

    text: str | None = None
    speaker: str | None = None
    mpid: str | None = None
    party: str | None = None
    year: str | None = None
    date: str | None = None
    topic: str | None = None
    parliament: str | None = None
    period: str | None = None
    chair: str | None = None
    interjection: str | None = None


class FiltersConfig(Section):
    """Which speeches to keep (formats with records: bundestag, speakger, csv, speech_txt, jsonl)."""

    parliaments: list[str] = Field(default_factory=list, description="Empty: all.")
    periods: list[int] = Field(default_factory=list, description="Legislative periods; empty: all.")
    year_min: int | None = None
    year_max: int | None = None
    parties: list[str] = Field(default_factory=list, description="Empty: all.")
    min_length: int = Field(default=0, ge=0, description="Minimum speech length in characters.")
    drop_chair: bool = Field(default=False, description="Drop speeches by the presiding chair.")
    drop_interjections: bool = Field(default=False, description="Drop interjection rows and (...) lines.")


class PrepareConfig(Section):
    input_path: str = Field(
        description="A file, a folder of .txt files, or an http(s) URL fetched once into cache_dir."
    )
    dataset_dir: Path
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    tokenizer: TokenizerName = "char"
    bpe_vocab_size: int = Field(default=2048, ge=260, le=65535 * 16)
    tiktoken_encoding: str = "gpt2"
    tiktoken_file: Path | None = None
    cache_dir: Path = Path("~/.cache/ml_playground")
    encoding: str | None = Field(default=None, description="Force a text encoding instead of detecting it.")
    format: Literal[
        "text", "bundestag", "bundestag_xml", "jsonl", "speakger", "csv", "speech_txt", "chat", "bundestag_qa"
    ] = Field(
        default="text",
        description="text: files as they are; bundestag: plenary protocols split into speeches; "
        "bundestag_xml: the Bundestag's XML protocols (an archive, a folder of archives or *.xml, one file); "
        "jsonl: records with a 'text' field (for example a speeches.jsonl); speakger: SpeakGer speech CSVs "
        "joined with the MP metadata; csv: any speech CSV with prepare.columns; speech_txt: .txt speeches "
        "with a Sprecher:/Thema:/Jahr: header; chat: JSONL conversations ({'messages': [...]} or "
        "{'prompt', 'completion'}) through the base tokenizer's chat template, loss on the assistant's turns; "
        "bundestag_qa: question time and interposed questions from the XML protocols, as conversations.",
    )
    chat_template: str | None = Field(
        default=None,
        description="chat formats: a Jinja chat template (or a file holding one) instead of the base tokenizer's.",
    )
    chat_turns: Literal["all", "last"] = Field(
        default="all", description="chat formats: train every assistant turn of a conversation, or only the last."
    )
    chat_max_tokens: int | None = Field(
        default=None,
        ge=2,
        description="chat formats: longest conversation in tokens (cut after the last assistant turn that fits, "
        "else dropped); defaults to train.model.block_size + 1.",
    )
    answer_max_chars: int = Field(
        default=500,
        ge=40,
        description="bundestag_qa: an answer keeps its leading paragraphs up to this many characters (a longer "
        "first paragraph is cut after a sentence), so the model learns an answer, not the speech that follows.",
    )
    conditioning: Literal["none", "header"] = Field(
        default="none",
        description="header: each speech behind a speaker/party/year/topic header, never a target (special tokens "
        "with tokenizer = 'bpe', plain text with tokenizer = 'hf').",
    )
    speaker_dropout: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="conditioning = 'header': share of records whose header leaves the speaker out (a fixed "
        "draw per record), so that a prompt naming only a party is familiar.",
    )
    topic_dropout: float = Field(
        default=0.0, ge=0.0, le=1.0, description="conditioning = 'header': the same for the topic."
    )
    columns: ColumnsConfig = ColumnsConfig()
    filters: FiltersConfig = FiltersConfig()
    metadata_dir: Path | None = Field(
        default=None, description="speakger: folder with all_mps_meta.csv and all_mps_mapping.csv."
    )
    malformed: Literal["skip", "error"] = Field(
        default="skip",
        description="CSV rows or XML files that cannot be read: counted and skipped, or an error.",
    )
    hf_tokenizer: str | None = Field(
        default=None, description="tokenizer = 'hf': Hub id or folder; defaults to train.model.base_model."
    )
    template: str | None = Field(
        default=None,
        description="Header before each record's text, with {speaker}, {party}, {role}, {date} fields "
        "(bundestag/jsonl formats with tokenizer = 'hf').",
    )
    mask_template: bool = Field(default=False, description="Keep the template's tokens out of the loss.")
    interjections: Literal["keep", "strip", "separate"] = Field(
        default="keep", description="bundestag: keep interjections in the text, strip them, or make them records."
    )
    non_protocol: Literal["plain", "error"] = Field(
        default="plain", description="bundestag: a file that is not a protocol is used as plain text, or an error."
    )
    min_char_count: int = Field(
        default=1, ge=1, description="char tokenizer: characters seen fewer times map to the unknown symbol."
    )


class DataConfig(Section):
    batch_size: int = Field(default=12, ge=1)
    grad_accum_steps: int = Field(default=1, ge=1)
    allow_changed_batches: bool = Field(
        default=False,
        description="Resume a checkpoint trained with another batch_size, grad_accum_steps or block size. The "
        "batches after the resume then differ from those of an uninterrupted run; off: such a resume is refused.",
    )


class LoraConfig(Section):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class OptimConfig(Section):
    name: Literal["adamw", "muon"] = Field(
        default="adamw", description="muon: Muon on the matrices inside the blocks, AdamW (below) on the rest."
    )
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    grad_clip: float = Field(default=1.0, ge=0.0, description="0 disables clipping.")
    muon_learning_rate: float = Field(
        default=0.02, gt=0.0, description="Peak learning rate of the Muon matrices; follows the same schedule."
    )
    muon_momentum: float = Field(default=0.95, ge=0.0, lt=1.0)
    muon_weight_decay: float = Field(default=0.0, ge=0.0)
    muon_precision: MuonPrecision = Field(
        default="auto",
        description="What Muon orthogonalises in. auto: bfloat16 (torch.optim.Muon's) off the CPU and on a CPU "
        "measured clearly faster in it, else float32.",
    )


class ScheduleConfig(Section):
    warmup_iters: int = Field(default=100, ge=0)
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float = Field(default=1e-4, ge=0.0)
    decay_iters: int | None = Field(default=None, ge=1, description="Defaults to train.max_iters.")


class CheckpointConfig(Section):
    interval: int = Field(default=250, ge=1)
    keep_last: int = Field(default=2, ge=1)


class EmaConfig(Section):
    enabled: bool = False
    decay: float = Field(default=0.999, ge=0.0, le=1.0)
    start_step: int = Field(default=0, ge=0)


class EarlyStoppingConfig(Section):
    patience: int | None = Field(default=None, ge=1, description="Evaluations without improvement before stopping.")
    target_val_loss: float | None = Field(default=None, description="Stop as soon as the validation loss reaches this.")


class SampleDuringTrainingConfig(Section):
    every_evals: int = Field(default=0, ge=0, description="0 disables sampling during training.")
    max_new_tokens: int = Field(default=100, ge=1)
    prompt: str = "\n"


class TrackersConfig(Section):
    """Experiment trackers beside TensorBoard; each needs its dependency group (`uv sync --group trackers`)."""

    mlflow: bool = Field(default=False, description="Log to MLflow (a local file store unless a URI is given).")
    mlflow_tracking_uri: str | None = Field(default=None, description="Default: out_dir/mlruns.")
    wandb: bool = Field(default=False, description="Log to Weights & Biases in offline mode (out_dir/wandb).")
    project: str = Field(default="ml_playground", description="MLflow experiment / W&B project name.")


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="Used when launched by torchrun with more than one process."
    )
    timeout_s: int = Field(default=600, ge=10, description="How long a collective may wait for a stuck rank.")


class GptModelConfig(FamilyConfig):
    """``kind = "gpt"``: our GPT, trained from scratch."""

    kind: Literal["gpt"] = "gpt"  # pyright: ignore[reportIncompatibleVariableOverride] (frozen: narrowing is safe)
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=1)
    block_size: int = Field(default=64, ge=2)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: bool = False
    rotary: bool = Field(default=False, description="Rotary position embeddings instead of learned ones.")
    qk_norm: bool = Field(default=False, description="RMS-normalise queries and keys per head.")
    activation: Literal["gelu", "relu2"] = "gelu"
    tie_weights: bool = Field(default=True, description="Share the token embedding with the output head.")
    condition_embedding: bool = Field(
        default=False,
        description="Header-conditioned datasets: add a learned vector for the party (the token after <|party|>) "
        "to every position of its record, so each position sees it directly.",
    )
    condition_bias: bool = Field(
        default=False,
        description="With condition_embedding: also add a learned bias over the vocabulary per party to the logits "
        "(the party's word choice, learned directly rather than through every layer).",
    )

    linear_kernel: Literal["auto", "aten", "onednn"] = Field(
        default="auto",
        description="CPU float32 linear layers: onednn (auto on a CPU) or PyTorch's default aten (MKL on x86).",
    )
    compile: bool = Field(default=False, description="torch.compile the model for training (eager if unavailable).")
    ema: EmaConfig = EmaConfig()

    @property
    def sequence_length(self) -> int:
        return self.block_size

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GptModelConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary needs an even head width (n_embd / n_head)")
        if self.condition_bias and not self.condition_embedding:
            raise ValueError("condition_bias needs condition_embedding = true (the bias reads the party's vector)")
        return self


class HfLoraModelConfig(FamilyConfig):
    """``kind = "hf_lora"``: a pretrained Hugging Face causal LM, fine-tuned with LoRA adapters."""

    kind: Literal["hf_lora"] = "hf_lora"  # pyright: ignore[reportIncompatibleVariableOverride] (frozen)
    base_model: str = Field(description="Hub id or local folder of the causal LM to fine-tune.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of base_model.")
    block_size: int = Field(default=512, ge=2, description="Tokens per training sequence.")
    lora: LoraConfig = LoraConfig()
    gradient_checkpointing: bool = False
    save_merged_on_best: bool = Field(default=False, description="Also write the merged model to out_dir/merged.")
    linear_kernel: Literal["auto", "aten", "onednn"] = Field(
        default="auto",
        description="CPU float32 products by the frozen base weights: onednn, PyTorch's default aten (MKL on x86), "
        "or auto (the faster here, measured once per machine).",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile each decoder layer for training steps (one compile serves every layer; "
        "evaluation and sampling stay eager; eager if unavailable).",
    )

    @property
    def sequence_length(self) -> int:
        return self.block_size


class TrainConfig(Section):
    out_dir: Path
    max_iters: int = Field(default=2000, ge=1)
    eval_interval: int = Field(default=250, ge=1)
    eval_iters: int = Field(default=20, ge=1, description="Batches for the train-split loss estimate.")
    eval_at_start: bool = Field(
        default=True, description="Evaluate before the first step (logged at step 0): the reference loss."
    )
    eval_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Validation during training on at most about this many targets: the same evenly spaced "
        "windows at every evaluation. None: the whole split. `eval` always uses the whole split.",
    )
    log_interval: int = Field(default=10, ge=1)
    seed: int = 1337
    device: DeviceName = "auto"
    dtype: DtypeName = "float32"
    deterministic: bool = True
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for training and inference.")
    model: SerializeAsAny[FamilyConfig] = Field(
        default_factory=GptModelConfig, description="The model family (kind) and its own settings."
    )
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    sample_during_training: SampleDuringTrainingConfig = SampleDuringTrainingConfig()
    distributed: DistributedConfig = DistributedConfig()
    trackers: TrackersConfig = TrackersConfig()

    @field_validator("model", mode="wrap")
    @classmethod
    def _family_by_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """``[train.model]`` is validated as the section of the family its ``kind`` names (default: gpt)."""
        if isinstance(value, FamilyConfig):
            return value
        if not isinstance(value, dict):
            return handler(value)
        return family_entry(str(value.get("kind", DEFAULT_KIND))).config.model_validate(value)

    @property
    def sequence_length(self) -> int:
        """Tokens per training sequence: the family's ``block_size``."""
        return self.model.sequence_length

    @model_validator(mode="after")
    def _muon_where_it_applies(self) -> TrainConfig:
        if self.optim.name == "muon" and not isinstance(self.model, GptModelConfig):
            raise ValueError(
                f"train.optim.name = 'muon' is for train.model.kind = 'gpt' (this is {self.model.kind!r}); use adamw"
            )
        if self.optim.name == "muon" and self.distributed.strategy == "fsdp":
            raise ValueError("train.optim.name = 'muon' needs whole weight matrices, which FSDP shards; use ddp")
        if self.distributed.strategy == "fsdp" and not isinstance(self.model, GptModelConfig):
            raise ValueError(
                f"train.distributed.strategy = 'fsdp' is built for train.model.kind = 'gpt' (this is "
                f"{self.model.kind!r}): LoRA's trainable adapters are small enough to replicate; use ddp"
            )
        return self


class SampleConfig(Section):
    prompt: str = "\n"
    prompt_file: Path | None = None
    max_new_tokens: int = Field(default=500, ge=1)
    num_samples: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, description="0 means greedy.")
    top_k: int | None = Field(default=200, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(
        default=1.0,
        ge=1.0,
        le=2.0,
        description="Above 1, every token already in the answer is less likely (CTRL's penalty, as llama.cpp's "
        "repeat_penalty over the whole answer; the prompt's tokens are not counted); 1 is off.",
    )
    seed: int = 1337
    checkpoint: str = Field(default="best", description="best, last, or a checkpoint folder path.")
    weights: Literal["raw", "ema"] = "raw"
    use_kv_cache: bool = True
    require_adapters: bool = Field(
        default=True, description="Fine-tuning: refuse to sample the bare base model when no adapters exist."
    )
    chat: bool = Field(default=False, description="Wrap the prompt in the model's chat template (hf_lora models).")
    system: str | None = Field(
        default=None, description="A system message before the prompt in the chat template (sample.chat, chat)."
    )
    speaker: str | None = Field(default=None, description="Header-conditioned datasets: who speaks.")
    party: str | None = None
    year: int | None = None
    topic: str | None = None
    guidance: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="Header-conditioned GPTs, when a party is asked: sample from p(x|party) p(party|x)^guidance, "
        "p(party|x) read from the same model under every known party's header (one forward pass each per token).",
    )


class ExportConfig(Section):
    format: Literal["hf", "gguf", "ollama"] = "hf"
    out_dir: Path | None = Field(default=None, description="Default: export-<format> beside train.out_dir.")
    checkpoint: str = Field(default="best", description="best, last, or a checkpoint folder.")
    gguf_type: Literal["f32", "f16", "q8_0"] = "f16"
    ollama_model: str | None = Field(default=None, description="Model name for `ollama create`; default: experiment.")


class ServeConfig(Section):
    host: str = Field(default="127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port (printed at start).")
    checkpoint: str = Field(default="best", description="best, last, or a checkpoint folder.")
    max_tokens_limit: int = Field(default=2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_concurrent: int = Field(
        default=8,
        ge=1,
        description="Streams decoded at once, batched in one forward pass a step (streams the batch does not take, "
        "such as guided ones, in turn). The gpt family's batch holds a KV cache of this many whole contexts.",
    )
    queue_size: int = Field(default=64, ge=0, description="Requests that may wait for a slot; more get 503.")
    shutdown_grace_s: float = Field(default=30.0, ge=0.0, description="How long in-flight streams may finish.")
    api_key: str | None = Field(
        default=None,
        description="Clients must send 'Authorization: Bearer KEY' (401 otherwise; /health stays open). The "
        "environment variable ML_PLAYGROUND_API_KEY sets it too, and keeps it out of the config file.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger request bodies get a 413.")
    queue_timeout_s: float = Field(
        default=60.0, gt=0.0, description="A request that waited this long for a slot gets a 503."
    )


class ExperimentConfig(Section):
    prepare: PrepareConfig
    train: TrainConfig
    sample: SampleConfig = SampleConfig()
    export: ExportConfig = ExportConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _hf_tokenizer_defaults_to_the_base_model(self) -> ExperimentConfig:
        base_model = self.train.model.base_model if isinstance(self.train.model, HfLoraModelConfig) else None
        if self.prepare.tokenizer == "hf" and self.prepare.hf_tokenizer is None:
            if base_model is None:
                raise ValueError("prepare.tokenizer = 'hf' needs prepare.hf_tokenizer or train.model.base_model")
            object.__setattr__(self, "prepare", self.prepare.model_copy(update={"hf_tokenizer": base_model}))
        if self.prepare.chat_max_tokens is None and self.prepare.format in ("chat", "bundestag_qa"):
            window = self.train.model.sequence_length + 1
            object.__setattr__(self, "prepare", self.prepare.model_copy(update={"chat_max_tokens": window}))
        if base_model is not None and self.prepare.tokenizer != "hf":
            raise ValueError("train.model.kind = 'hf_lora' needs the base model's tokenizer: prepare.tokenizer = 'hf'")
        return self

    @model_validator(mode="after")
    def _ema_weights_need_ema(self) -> ExperimentConfig:
        if self.sample.weights == "ema" and not isinstance(self.train.model, GptModelConfig):
            raise ValueError(
                f"sample.weights = 'ema' needs train.model.ema, a key of kind 'gpt' (this is {self.train.model.kind!r})"
            )
        return self


# The families: one config class above and one line here each (implementations are imported on first use).
register_family("gpt", GptModelConfig, "ml_playground.families.gpt.family:FAMILY")
register_family("hf_lora", HfLoraModelConfig, "ml_playground.families.hf_lora.family:FAMILY")
