"""PEFT LoRA models for IGA: load a local checkpoint, or build a tiny one from a config.

`load_lora_model` is the path for real work: a causal LM from a local folder
(``from_pretrained`` with ``local_files_only=True``, safetensors weights only) wrapped
with a fresh LoRA adapter, or an existing adapter folder loaded on top of it.
`tiny_lora_model` builds a small Llama- or GPT-2-style model with random weights from a
config, for tests and benchmarks that must not download anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iga_theory.errors import check_positive_int

# Architectures `tiny_lora_model` can build, with the linear layers LoRA targets by default.
TINY_ARCHITECTURES = {
    "llama": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
}


def tiny_lora_model(architecture: str = "llama", hidden_size: int = 64, n_layers: int = 2,
                    n_heads: int = 4, vocab_size: int = 128, max_positions: int = 128, r: int = 4,
                    lora_alpha: float = 8.0, lora_dropout: float = 0.0,
                    target_modules: tuple[str, ...] | None = None, dtype: torch.dtype = torch.float32,
                    seed: int = 0, init_lora_B: str = "zeros"):
    """Build a causal LM with random weights from a config and wrap it with LoRA.

    Parameters
    ----------
    architecture : {"llama", "gpt2"}
        ``"gpt2"`` uses ``Conv1D`` layers (PEFT's ``fan_in_fan_out``) and keeps every
        computation in the model's dtype; Llama's RMSNorm computes in float32.
    hidden_size, n_layers, n_heads, vocab_size, max_positions : int
        Model size (the MLP is 2 x hidden_size wide for Llama, 4 x for GPT-2).
    r : int
        LoRA rank.
    lora_alpha : float
        LoRA alpha; the scaling is ``lora_alpha / r``.
    lora_dropout : float in [0, 1)
    target_modules : tuple of str, optional
        Default `TINY_ARCHITECTURES` [architecture].
    dtype : torch.dtype
    seed : int
        Seed of the random weights (model and adapter).
    init_lora_B : {"zeros", "random"}
        ``"zeros"`` is PEFT's initialisation (the adapter starts at 0); ``"random"``
        draws B from N(0, 0.1^2), so that tests see non-zero factor gradients of A.

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, get_peft_model

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(TINY_ARCHITECTURES)}; got {architecture!r}")
    if init_lora_B not in ("zeros", "random"):
        raise ValueError(f"init_lora_B must be 'zeros' or 'random'; got {init_lora_B!r}")
    for name, value in (("hidden_size", hidden_size), ("n_layers", n_layers), ("n_heads", n_heads),
                        ("vocab_size", vocab_size), ("max_positions", max_positions), ("r", r)):
        check_positive_int(name, value)
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _build_base(architecture, hidden_size, n_layers, n_heads, vocab_size, max_positions)
        model = model.to(dtype)
        config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=list(target_modules or TINY_ARCHITECTURES[architecture]),
                            fan_in_fan_out=architecture == "gpt2", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        if init_lora_B == "random":
            with torch.no_grad():
                for name, parameter in peft_model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0.0, 0.1)
    finally:
        torch.random.set_rng_state(generator_state)
    return peft_model


def _build_base(architecture: str, hidden_size: int, n_layers: int, n_heads: int, vocab_size: int,
                max_positions: int):
    if architecture == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                             num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             num_key_value_heads=n_heads, vocab_size=vocab_size,
                             max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1)
        return LlamaForCausalLM(config)
    from transformers import GPT2Config, GPT2LMHeadModel

    # Dropout off: tests compare several forward passes of the same batch.
    config = GPT2Config(n_embd=hidden_size, n_layer=n_layers, n_head=n_heads, vocab_size=vocab_size,
                        n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config)


def load_lora_model(base_path: str | Path, adapter_path: str | Path | None = None, r: int = 16,
                    lora_alpha: float = 32.0, lora_dropout: float = 0.05,
                    target_modules: tuple[str, ...] | str = "all-linear",
                    dtype: torch.dtype = torch.bfloat16, device: str | torch.device | None = None):
    """Load a local causal LM and attach a new or saved LoRA adapter.

    Parameters
    ----------
    base_path : path
        Local folder of a Hugging Face causal LM (``config.json`` and safetensors
        weights). Nothing is downloaded: ``local_files_only=True``, ``use_safetensors=True``.
    adapter_path : path, optional
        Folder written by ``PeftModel.save_pretrained``; loaded trainable. None creates a
        new adapter from ``r``, ``lora_alpha``, ``lora_dropout`` and ``target_modules``.
    dtype : torch.dtype
        Weights' dtype; IGA's statistics and factorisations run in float32 whatever it is.
    device : optional
        Where to move the model.

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_path = Path(base_path)
    if not (base_path / "config.json").is_file():
        raise FileNotFoundError(
            f"no config.json in {str(base_path)!r}; pass the local folder of a Hugging Face causal LM"
        )
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, local_files_only=True,
                                                 use_safetensors=True)
    if device is not None:
        model = model.to(device)
    if adapter_path is not None:
        adapter_path = Path(adapter_path)
        if not (adapter_path / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"no adapter_config.json in {str(adapter_path)!r}; pass a folder written by "
                "PeftModel.save_pretrained"
            )
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True, local_files_only=True)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)
