"""Configuration of ``iga distill``: student, data, methods, training, evaluation.

Every field carries a default, a help text and an allowed range (see
`iga_theory.config`). `load_distill_config` merges, in this order, a named preset, a
JSON or TOML file and command-line overrides, then validates the result. Presets:

``tiny-cpu``
    Builds a byte-level BPE tokenizer locally and pre-trains a 3-layer Llama-style
    model of about 0.35 M parameters from scratch on generic sentences made from the
    domain lexicons. It then distils the rationales of the four skeletons with the
    shortest rationales into LoRA adapters with ERM-SFT and IGA. Sized to finish on 2
    CPU cores in a few minutes (docs/distill.md has the measured time).
``qwen2.5-0.5b-gpu``
    The GPU recipe: ``Qwen/Qwen2.5-0.5B`` (or a local copy of it) in bfloat16 with LoRA
    rank 16 on every linear layer, all six methods, three seeds.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from iga_theory.config import ConfigError, field, from_dict, read_config_file, to_dict
from iga_theory.llm.isomers_skeletons import SKELETON_IDS

METHOD_NAMES: tuple[str, ...] = ("erm", "iga", "and_mask", "sand_mask", "vrex", "groupdro")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
POOLINGS: tuple[str, ...] = ("answer", "sequence")


@dataclass
class ModelConfig:
    """The student: a pretrained causal LM, or a small Llama-style model built from this config."""

    name_or_path: str | None = field(
        None, "local folder or Hugging Face hub name loaded with from_pretrained (a hub name needs "
        "internet access); null builds a small Llama-style model from the sizes below and trains "
        "its tokenizer locally")
    tokenizer: str | None = field(
        None, "tokenizer folder or hub name; null uses name_or_path, or the locally trained tokenizer")
    dtype: str = field("float32", "dtype of the student's weights (LoRA factors and the IGA "
                       "statistics stay float32)", choices=DTYPES)
    hidden_size: int = field(128, "width of the built model (ignored with name_or_path)", low=8, high=8192)
    n_layers: int = field(4, "transformer blocks of the built model", low=1, high=64)
    n_heads: int = field(4, "attention heads of the built model (must divide hidden_size)", low=1, high=128)
    intermediate_size: int = field(256, "MLP width of the built model", low=8, high=32768)
    max_positions: int = field(512, "maximum sequence length of the built model, in tokens", low=32, high=32768)
    init_seed: int = field(0, "seed of the built model's random initialisation", low=0, high=2**31 - 1)

    def __post_init__(self) -> None:
        if self.name_or_path is None and self.hidden_size % self.n_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be a multiple of model.n_heads ({self.n_heads})")


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer trained locally (only when model.name_or_path is null)."""

    vocab_size: int = field(1024, "vocabulary size of the trained tokenizer, special tokens included",
                            low=300, high=65536)


@dataclass
class PretrainConfig:
    """Causal-LM pre-training of the built model on generic lexicon text (only without name_or_path)."""

    steps: int = field(150, "optimizer steps of pre-training (0 keeps the random initialisation)",
                       low=0, high=10**7)
    n_sentences: int = field(6000, "sentences in the generated pre-training corpus", low=10, high=10**7)
    block_size: int = field(128, "tokens per pre-training sequence (sentences are packed)", low=8, high=32768)
    batch_size: int = field(16, "sequences per pre-training step", low=1, high=4096)
    lr: float = field(3e-3, "peak AdamW learning rate of pre-training", low=1e-7, high=1.0)
    warmup_steps: int = field(10, "linear warm-up steps before the cosine decay", low=0, high=10**6)
    seed: int = field(0, "seed of the corpus and of the batch order", low=0, high=2**31 - 1)
    checkpoint_every: int = field(50, "steps between checkpoints of pre-training", low=1, high=10**7)


@dataclass
class LoraSettings:
    """PEFT LoRA adapter trained on the student."""

    r: int = field(8, "LoRA rank", low=1, high=1024)
    alpha: float = field(16.0, "LoRA alpha; the update is scaled by alpha / r", low=1e-6, high=1e6)
    dropout: float = field(0.05, "dropout on the LoRA input", low=0.0, high=0.9)
    target_modules: list[str] = field(
        None, "module names that get adapters; ['all-linear'] targets every linear layer but the output head",
        default_factory=lambda: ["all-linear"])


@dataclass
class DataConfig:
    """Logical Isomer Sets: a JSONL file (generator or `iga teacher` output), or generated here."""

    items_file: str | None = field(
        None, "isomer JSONL file with train, test_id and test_ood splits; null generates sets with "
        "the settings below")
    n_sets: int = field(1200, "isomer sets to generate when items_file is null", low=4, high=10**6)
    seed: int = field(0, "seed of the generated sets", low=0, high=2**31 - 1)
    skeletons: list[str] | None = field(
        None, "skeleton ids to generate (null: all)", choices=SKELETON_IDS)
    max_length: int = field(320, "longest prompt + rationale kept for training, in tokens; longer "
                            "items are dropped with a warning", low=8, high=32768)
    max_eval_sets: int | None = field(
        None, "evaluate at most this many isomer sets per test split (null: all)", low=1, high=10**7)


@dataclass
class TrainConfig:
    """Distillation loop shared by every method."""

    methods: list[str] = field(None, "methods to train, in order", choices=METHOD_NAMES,
                               default_factory=lambda: ["erm", "iga"])
    seeds: list[int] = field(None, "training seeds (LoRA initialisation, dropout, batch order); "
                             "intervals pool isomer sets and seeds", low=0, high=2**31 - 1,
                             default_factory=lambda: [0])
    steps: int = field(300, "optimizer steps per method and seed", low=1, high=10**7)
    sets_per_step: int = field(4, "isomer sets per optimizer step; each set contributes its rendering in "
                               "every training domain, so a step holds sets_per_step * K sequences", low=1, high=4096)
    lr: float = field(2e-3, "peak AdamW learning rate of the adapter", low=1e-8, high=1.0)
    weight_decay: float = field(0.0, "AdamW weight decay", low=0.0, high=10.0)
    warmup_steps: int = field(20, "linear warm-up steps", low=0, high=10**6)
    schedule: str = field("cosine", "learning-rate schedule after warm-up", choices=SCHEDULES)
    grad_clip: float | None = field(1.0, "clip the global gradient norm to this value (null: no clipping)",
                                    low=1e-8, high=1e8)
    checkpoint_every: int = field(50, "steps between checkpoints", low=1, high=10**7)
    keep_checkpoints: int = field(2, "checkpoints kept on disk per run (older ones are deleted)", low=1, high=1000)


@dataclass
class IGASettings:
    """IGA on the LoRA layers (see `iga_theory.llm.lora_operator.LoraIGAConfig`)."""

    tau: float | None = field(None, "conflict threshold of c = s2 / mu^2; null uses min(0.1, K / t^2_{K-1, 0.975}) "
                              "for the K domains of the step", low=1e-12, high=1e12)
    kappa0: float = field(20.0, "scale-free sharpness of the mask", low=1e-3, high=1e4)
    m_min: float = field(0.0, "floor of the mask", low=0.0, high=0.999999)
    remedy: str = field("ema", "minibatch-noise remedy of the LoRA processor: the mask is computed from an "
                        "EMA of the per-domain mean gradients ('ema') or from each step's means ('none'); "
                        "the masked direction is always the step's mean gradient", choices=("ema", "none"))
    rho: float = field(0.99, "EMA rate of the per-domain means (remedy 'ema'); about (1 + rho) / (1 - rho) "
                       "steps are averaged", low=0.0, high=0.999999)
    placement: str = field("update", "apply the mask to the gradient or to AdamW's update "
                           "(only 'update' survives Adam's per-coordinate normalisation)",
                           choices=("gradient", "update"))
    capture: str = field("tangent", "operator mode: 'tangent' (mask in the adapter's tangent coordinates) "
                         "or 'full' (p x q weight-space mask and rank-r projection)", choices=("tangent", "full"))
    nan_policy: str = field("raise", "on a non-finite statistic: raise, or skip the step and count it",
                            choices=("raise", "skip"))


@dataclass
class BaselineSettings:
    """Hyper-parameters of the baselines, with the defaults of DomainBed unless stated."""

    and_mask_tau: float = field(1.0, "AND-mask: minimum sign agreement |mean_e sign(g_e)| to keep a coordinate",
                                low=0.0, high=1.0)
    sand_mask_tau: float = field(0.5, "SAND-mask: sign agreement at which the smooth mask opens "
                                 "(DomainBed's 1.0 closes every coordinate)", low=0.0, high=1.0)
    sand_mask_k: float = field(10.0, "SAND-mask: sharpness, in units of 1 / variance", low=1e-6, high=1e8)
    vrex_lambda: float = field(10.0, "V-REx: weight of the variance of the domain losses after annealing",
                               low=0.0, high=1e8)
    vrex_anneal_steps: int = field(50, "V-REx: steps with penalty weight 1 before vrex_lambda applies",
                                   low=0, high=10**7)
    mask_placement: str = field("gradient", "AND-mask and SAND-mask: mask the gradient (as published) or "
                                "AdamW's update", choices=("gradient", "update"))
    groupdro_eta: float = field(0.01, "GroupDRO: step size of the exponentiated-gradient update of the "
                                "domain weights", low=0.0, high=100.0)


@dataclass
class EvalConfig:
    """Greedy decoding and the metrics."""

    max_new_tokens: int = field(160, "longest generated rationale, in tokens", low=1, high=32768)
    batch_size: int = field(64, "prompts decoded together", low=1, high=4096)
    pooling: str = field("answer", "LCS representation: mean final hidden state over the generated "
                         "tokens ('answer') or over prompt and generation ('sequence')", choices=POOLINGS)
    confidence: float = field(0.95, "level of the bootstrap confidence intervals", low=0.5, high=0.999)
    n_bootstrap: int = field(2000, "bootstrap resamples of isomer sets and seeds", low=100, high=10**6)


@dataclass
class RuntimeConfig:
    """Output folder, device and threads of the run."""

    output_dir: str = field("runs/distill", "run folder: metrics.json, per-run logs, checkpoints, adapters")
    device: str = field("auto", "'auto' takes cuda when available, else cpu", choices=DEVICES)
    threads: int = field(0, "torch CPU threads (0: torch's default). On a shared machine 1 thread is "
                         "often fastest for tiny models", low=0, high=1024)


@dataclass
class DistillConfig:
    """Everything `iga distill` needs; `to_dict` of it is stored with every result."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    iga: IGASettings = dataclasses.field(default_factory=IGASettings)
    baselines: BaselineSettings = dataclasses.field(default_factory=BaselineSettings)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if not self.train.methods:
            raise ConfigError(f"train.methods is empty; choose from {list(METHOD_NAMES)}")
        if len(set(self.train.methods)) != len(self.train.methods):
            raise ConfigError(f"train.methods lists a method more than once: {self.train.methods}")
        if not self.train.seeds or len(set(self.train.seeds)) != len(self.train.seeds):
            raise ConfigError(f"train.seeds must be a non-empty list of distinct seeds; got {self.train.seeds}")
        if self.data.skeletons is not None and len(set(self.data.skeletons)) != len(self.data.skeletons):
            raise ConfigError(f"data.skeletons lists a skeleton more than once: {self.data.skeletons}")
        if not self.lora.target_modules:
            raise ConfigError("lora.target_modules is empty; use ['all-linear'] or name linear layers")


# Overrides of the defaults, by preset name. The tiny-cpu sizes were chosen by timing
# the whole run on a shared 2-core machine (docs/distill.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu": {
        "model": {"hidden_size": 96, "n_layers": 3, "n_heads": 4, "intermediate_size": 192},
        "tokenizer": {"vocab_size": 768},
        "pretrain": {"steps": 200, "n_sentences": 6000, "block_size": 128, "batch_size": 16, "lr": 3e-3},
        "lora": {"r": 8, "alpha": 16.0, "dropout": 0.05},
        "data": {"n_sets": 600, "max_length": 192, "max_eval_sets": 48,
                 "skeletons": ["syllogism_negation", "modus_tollens", "rate_inverse", "percent_of"]},
        "train": {"methods": ["erm", "iga"], "seeds": [0], "steps": 200, "sets_per_step": 4,
                  "lr": 1e-2, "checkpoint_every": 50},
        "eval": {"max_new_tokens": 80, "batch_size": 64},
        "runtime": {"device": "cpu", "threads": 1, "output_dir": "runs/distill-tiny-cpu"},
    },
    "qwen2.5-0.5b-gpu": {
        "model": {"name_or_path": "Qwen/Qwen2.5-0.5B", "dtype": "bfloat16"},
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05},
        "data": {"n_sets": 4000},
        "train": {"methods": list(METHOD_NAMES), "seeds": [0, 1, 2], "steps": 1000,
                  "sets_per_step": 4, "lr": 2e-4, "warmup_steps": 50, "checkpoint_every": 200},
        "eval": {"max_new_tokens": 192, "batch_size": 128},
        "runtime": {"device": "cuda", "output_dir": "runs/distill-qwen2.5-0.5b"},
    },
}


def merge_overrides(base: dict, overrides: dict, prefix: str = "") -> dict:
    """Return ``base`` updated by ``overrides`` recursively (nested tables merge, values replace)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value, prefix + key + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def preset_overrides(name: str) -> dict:
    """Return the overrides of preset ``name``; raise ConfigError naming the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def load_distill_config(path: str | None = None, preset: str | None = None,
                        overrides: dict | None = None) -> DistillConfig:
    """Build a validated `DistillConfig` from a preset, a file and overrides (later ones win).

    Parameters
    ----------
    path : str, optional
        JSON or TOML file with any subset of the keys of `DistillConfig`.
    preset : str, optional
        A key of `PRESETS`.
    overrides : dict, optional
        Nested plain data applied last (the command line's options).

    Raises
    ------
    ConfigError
        Unknown key, wrong type, value out of range, or unknown preset.
    """
    data: dict = {}
    if preset is not None:
        data = merge_overrides(data, preset_overrides(preset))
    if path is not None:
        data = merge_overrides(data, read_config_file(path))
    if overrides:
        data = merge_overrides(data, overrides)
    return from_dict(DistillConfig, data)


def config_to_dict(config: DistillConfig) -> dict:
    """Plain-data form of a configuration (JSON-ready)."""
    return to_dict(config)
