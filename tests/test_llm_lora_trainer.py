"""IGA in the Hugging Face Trainer, and IGA state saved without pickle."""

import json

import pytest
import torch

from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor
from iga_theory.llm.lora_state import STATE_JSON, STATE_TENSORS, load_iga_state, save_iga_state
from iga_theory.llm.lora_trainer import DomainCollator, IGATrainer

K = 3
VOCAB = 50


def rows(n=12, length=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        x = torch.randint(0, VOCAB, (length,), generator=generator)
        data.append({"input_ids": x, "labels": x.clone(), "domain_ids": i % K})
    return data


def stack(features):
    return {key: torch.stack([torch.as_tensor(f[key]) for f in features]) for key in features[0]}


def arguments(tmp_path, **overrides):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2,
                    max_steps=3, learning_rate=1e-3, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                    report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_trainer_applies_operator_once_per_step_before_clipping(tmp_path):
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, init_lora_B="random")
    trainer = IGATrainer(model=model, args=arguments(tmp_path), train_dataset=rows(),
                         data_collator=DomainCollator(stack), iga_domains=["a", "b", "c"],
                         iga_config=LoraIGAConfig(mode="full", placement="gradient", remedy="none"),
                         iga_log_layers=True)
    trainer.train()
    assert trainer.iga.step_count == 3
    assert trainer.iga.last_micro_batches == 2
    logged = [entry for entry in trainer.state.log_history if "iga/grad_norm" in entry]
    assert len(logged) == 3
    for entry in logged:
        # The Trainer's pre-clip norm is the norm of IGA's gradients: the surgery ran first.
        assert entry["grad_norm"] == pytest.approx(entry["iga/grad_norm"], rel=1e-5)
        assert 0.0 <= entry["iga/mask_mean"] <= 1.0
        assert any(key.endswith("/safeguard_events") for key in entry)


def test_trainer_checkpoint_holds_iga_state_and_peft_adapter(tmp_path):
    from peft import PeftModel

    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB)
    trainer = IGATrainer(model=model, args=arguments(tmp_path, save_strategy="steps", save_steps=3),
                         train_dataset=rows(), data_collator=DomainCollator(stack), iga_domains=K)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / STATE_JSON).is_file() and (checkpoint / STATE_TENSORS).is_file()
    assert json.loads((checkpoint / STATE_JSON).read_text())["step_count"] == 3

    # The adapter in the same folder loads with plain PEFT.
    base = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB).get_base_model()
    reloaded = PeftModel.from_pretrained(base, checkpoint)
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    assert torch.equal(dict(reloaded.named_parameters())[name], dict(model.named_parameters())[name])


def test_trainer_rejects_batch_without_domain_ids(tmp_path):
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB)
    data = [{key: value for key, value in row.items() if key != "domain_ids"} for row in rows()]
    trainer = IGATrainer(model=model, args=arguments(tmp_path), train_dataset=data, data_collator=stack,
                         iga_domains=K)
    with pytest.raises(KeyError, match="domain_ids"):
        trainer.train()


def test_collator_pads_per_token_ids():
    collator = DomainCollator(lambda features: {"n": len(features)})
    batch = collator([{"domain_ids": [0, 1, 1]}, {"domain_ids": [2]}])
    assert batch["domain_ids"].tolist() == [[0, 1, 1], [2, -1, -1]]


def train_steps(processor, model, steps, optimizer=None, first=0):
    if optimizer is None:
        optimizer = LoraIGAOptimizer(
            torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2), processor)
    data = rows(n=6 * (first + steps))
    with processor.attached():
        for step in range(first, first + steps):
            batch = stack(data[6 * step:6 * step + 6])
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return optimizer


@pytest.mark.parametrize("mode", ["full", "tangent"])
def test_state_round_trip(tmp_path, mode):
    config = LoraIGAConfig(mode=mode, rho=0.9)
    model = tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB)
    processor = LoraIGAProcessor(model, ["a", "b", "c"], config)
    train_steps(processor, model, 2)
    save_iga_state(processor, tmp_path)

    fresh = LoraIGAProcessor(model, ["a", "b", "c"], LoraIGAConfig(mode=mode))
    load_iga_state(fresh, tmp_path)
    assert fresh.step_count == 2 and fresh.config.rho == 0.9
    assert fresh.safeguard_events == processor.safeguard_events
    for name, ema in processor.ema.items():
        for key in ("seen", "values", "left", "right"):
            saved, loaded = getattr(ema, key), getattr(fresh.ema[name], key)
            assert (saved is None and loaded is None) or torch.equal(saved, loaded)


def test_state_rejects_other_domains_and_modes(tmp_path):
    model = tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB)
    processor = LoraIGAProcessor(model, ["a", "b", "c"], LoraIGAConfig(mode="tangent"))
    train_steps(processor, model, 1)
    save_iga_state(processor, tmp_path)
    with pytest.raises(ValueError, match="domains"):
        load_iga_state(LoraIGAProcessor(model, ["a", "c", "b"]), tmp_path)
    with pytest.raises(ValueError, match="mode"):
        load_iga_state(LoraIGAProcessor(model, ["a", "b", "c"], LoraIGAConfig(mode="full")), tmp_path)
    with pytest.raises(FileNotFoundError, match="save_iga_state"):
        load_iga_state(processor, tmp_path / "missing")


@pytest.mark.parametrize("mode", ["full", "tangent"])
def test_resumed_run_matches_uninterrupted_run(tmp_path, mode):
    import copy

    def fresh():
        model = tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB)
        return model, LoraIGAProcessor(model, K, LoraIGAConfig(mode=mode, rho=0.9))

    model_a, processor_a = fresh()
    train_steps(processor_a, model_a, 3)

    model_b, processor_b = fresh()
    optimizer_b = train_steps(processor_b, model_b, 2)
    save_iga_state(processor_b, tmp_path)
    weights = copy.deepcopy(model_b.state_dict())
    optimizer_state = copy.deepcopy(optimizer_b.state_dict())

    model_c, processor_c = fresh()
    model_c.load_state_dict(weights)
    load_iga_state(processor_c, tmp_path)
    optimizer_c = LoraIGAOptimizer(torch.optim.AdamW([p for p in model_c.parameters() if p.requires_grad], lr=1e-2),
                                   processor_c)
    optimizer_c.load_state_dict(optimizer_state)
    train_steps(processor_c, model_c, 1, optimizer=optimizer_c, first=2)

    assert processor_c.step_count == 3
    for (name, a), (_, c) in zip(model_a.named_parameters(), model_c.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a, c), name


def test_load_lora_model_from_local_folders(tmp_path):
    from iga_theory.llm.lora_models import load_lora_model

    import copy

    trained = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, init_lora_B="random")
    copy.deepcopy(trained).unload().save_pretrained(tmp_path / "base")      # base weights without LoRA
    trained.save_pretrained(tmp_path / "adapter")

    fresh = load_lora_model(tmp_path / "base", r=2, target_modules=("q_proj",), dtype=torch.float32)
    assert len(LoraIGAProcessor(fresh, K).layers) == 2            # q_proj in 2 layers, rank 2
    resumed = load_lora_model(tmp_path / "base", adapter_path=tmp_path / "adapter", dtype=torch.float32)
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    assert torch.equal(dict(resumed.named_parameters())[name], dict(trained.named_parameters())[name])
    assert dict(resumed.named_parameters())[name].requires_grad
    base_name = "base_model.model.model.layers.1.self_attn.v_proj.base_layer.weight"
    assert torch.equal(dict(resumed.named_parameters())[base_name], dict(trained.named_parameters())[base_name])
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_lora_model(tmp_path / "missing")
