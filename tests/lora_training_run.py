"""A short LoRA training run with IGA in the Hugging Face Trainer, resumable after a kill.

Usage: ``python lora_training_run.py OUT``. Trains a tiny GPT-2 LoRA model (random
weights, 3 domains of random tokens) for `MAX_STEPS` optimizer steps, saving a
checkpoint every `SAVE_STEPS` steps under OUT. A rerun resumes from the newest
complete checkpoint. At the end it writes OUT/final.safetensors (the trainable LoRA
weights) atomically. The SIGKILL tests run it in a subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save
from transformers import TrainingArguments

from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_trainer import IGATrainer
from iga_theory.runs import atomic_write_bytes, last_complete_checkpoint

N_DOMAINS = 3
VOCAB = 50
MAX_STEPS = 8
SAVE_STEPS = 2
FINAL = "final.safetensors"


def rows(n=48, length=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        tokens = torch.randint(0, VOCAB, (length,), generator=generator)
        data.append({"input_ids": tokens, "labels": tokens.clone(), "domain_ids": i % N_DOMAINS})
    return data


def stack(features):
    return {key: torch.stack([torch.as_tensor(f[key]) for f in features]) for key in features[0]}


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB)
    arguments = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=3, gradient_accumulation_steps=2, max_steps=MAX_STEPS,
        learning_rate=1e-3, max_grad_norm=1.0, logging_steps=1, save_strategy="steps", save_steps=SAVE_STEPS,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = IGATrainer(model=model, args=arguments, train_dataset=rows(), data_collator=stack,
                         iga_domains=N_DOMAINS, iga_config=LoraIGAConfig(mode="tangent"))
    checkpoint = last_complete_checkpoint(out, required=("optimizer.pt", "rng_state.pth", "iga_state.json"))
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    weights = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    atomic_write_bytes(out / FINAL, save(weights))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
