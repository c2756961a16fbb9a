"""The distillation methods on a tiny LoRA student: gradients against independent routes, state."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from iga_theory.llm.distill_checkpoint import (
    load_part, load_trainable_state, save_part, trainable_state,
)
from iga_theory.llm.distill_config import load_distill_config
from iga_theory.llm.distill_data import prepare_data
from iga_theory.llm.distill_methods import METHODS, domain_losses, make_method, token_losses
from iga_theory.llm.distill_pretrain import build_tiny_model, generic_corpus
from iga_theory.llm.distill_tokenizer import train_tokenizer
from iga_theory.llm.distill_train import make_step_batch
from iga_theory.llm.isomers_api import generate_items
from iga_theory.synthetic.algorithms_gradient import and_mask, rescale_mask

# Gradients computed by two routes through the same float32 graph differ by rounding
# only: float32 eps (1.2e-7) times the ~1e3 terms summed per weight entry gives ~1e-4
# relative; the absolute part covers entries near 0.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7


@pytest.fixture(scope="module")
def setup():
    items = generate_items(24, seed=5, skeletons=["modus_tollens", "rate_inverse"])
    tokenizer = train_tokenizer(generic_corpus(300, seed=0) + [i.question + " " + i.rationale for i in items], 360)
    data = prepare_data(items, tokenizer, max_length=10**4)
    config = load_distill_config(overrides={
        "model": {"hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64},
        "lora": {"r": 4, "dropout": 0.0}, "train": {"steps": 10, "sets_per_step": 2, "warmup_steps": 0},
        "baselines": {"vrex_anneal_steps": 2}, "iga": {"remedy": "ema", "rho": 0.9},
    })
    base = build_tiny_model(config.model, tokenizer)
    return items, tokenizer, data, config, base


def student(setup, seed=0):
    _, _, _, config, base = setup
    torch.manual_seed(seed)
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(copy.deepcopy(base), lora)
    # Non-zero B, so that every LoRA factor has a gradient from the first step.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model


def batch(setup, step=0):
    _, tokenizer, data, config, _ = setup
    return make_step_batch(data, config.train.sets_per_step, step, 0, tokenizer.pad_token_id, torch.device("cpu"))[0]


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_grads_close(got, expected):
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)


def test_domain_losses_match_manual(setup):
    model = student(setup)
    data = batch(setup).combined
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    losses, pooled = domain_losses(logits, data["labels"], data["domain_ids"], 4)
    loss, valid = token_losses(logits, data["labels"])
    ids = data["domain_ids"][:, :-1]
    for e in range(4):
        chosen = valid & (ids == e)
        torch.testing.assert_close(losses[e], loss[chosen].mean())
    torch.testing.assert_close(pooled, loss[valid].mean())
    # Hugging Face's own causal-LM loss is the pooled mean over label tokens.
    reference = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss
    torch.testing.assert_close(pooled, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no label token"):
        domain_losses(logits, data["labels"], torch.zeros_like(data["domain_ids"]), 4)


def test_erm_gradient_is_pooled_gradient(setup):
    model = student(setup)
    method = make_method("erm", model, ["a", "b", "c", "d"], setup[3])
    step_batch = batch(setup)
    method.gradients(step_batch, 0)
    got = grads_of(model)
    model.zero_grad()
    data = step_batch.combined
    model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss.backward()
    assert_grads_close(got, grads_of(model))


def per_domain_gradients(model, step_batch):
    """Reference: one Hugging Face loss and backward per domain, gradients flattened to (K, P)."""
    rows = []
    for data in step_batch.per_domain:
        model.zero_grad()
        model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], labels=data["labels"]).loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]))
    return torch.stack(rows)


def test_and_mask_gradient_matches_reference(setup):
    model = student(setup)
    method = make_method("and_mask", model, ["a", "b", "c", "d"], setup[3])
    step_batch = batch(setup)
    method.gradients(step_batch, 0)
    got = grads_of(model)

    g = per_domain_gradients(model, step_batch)
    blocks, start = {}, 0
    for name, p in method.named_params:
        blocks[name] = slice(start, start + p.numel())
        start += p.numel()
    direction = rescale_mask(and_mask(g, setup[3].baselines.and_mask_tau), blocks) * g.mean(dim=0)
    expected = {name: direction[blocks[name]].reshape(p.shape) for name, p in method.named_params}
    assert_grads_close(got, expected)


def test_sand_mask_step_moves_and_masks(setup):
    model = student(setup)
    method = make_method("sand_mask", model, ["a", "b", "c", "d"], setup[3])
    before = {n: p.detach().clone() for n, p in method.named_params}
    diagnostics = method.step(batch(setup), 0)
    assert 0.0 <= diagnostics["mask_mean"] <= 1.0
    assert any(not torch.equal(before[n], p) for n, p in method.named_params)


def test_mask_update_placement_keeps_masked_coordinates(setup):
    config = copy.deepcopy(setup[3])
    config.baselines.mask_placement = "update"
    model = student(setup)
    method = make_method("and_mask", model, ["a", "b", "c", "d"], config)
    before = torch.cat([p.detach().reshape(-1).clone() for p in method.params])
    step_batch = batch(setup)
    g = per_domain_gradients(model, step_batch)
    a = and_mask(g, config.baselines.and_mask_tau)
    method.step(step_batch, 0)
    after = torch.cat([p.detach().reshape(-1) for p in method.params])
    moved = after != before
    assert not moved[a == 0].any()          # AdamW cannot move a masked coordinate
    assert moved[a == 1].float().mean() > 0.5


def test_groupdro_weights_after_one_step(setup):
    model = student(setup)
    config = setup[3]
    method = make_method("groupdro", model, ["a", "b", "c", "d"], config)
    step_batch = batch(setup)
    data = step_batch.combined
    with torch.no_grad():
        logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        losses, _ = domain_losses(logits, data["labels"], data["domain_ids"], 4)
    method.gradients(step_batch, 0)
    expected = torch.softmax(torch.log(torch.full((4,), 0.25, dtype=torch.float64))
                             + config.baselines.groupdro_eta * losses.double(), dim=0)
    torch.testing.assert_close(method.q, expected, rtol=1e-6, atol=0.0)


def test_vrex_objective_and_adam_reset(setup):
    model = student(setup)
    method = make_method("vrex", model, ["a", "b", "c", "d"], setup[3])
    step_batch = batch(setup)
    method.gradients(step_batch, 0)
    got = grads_of(model)
    model.zero_grad()
    data = step_batch.combined
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    losses, _ = domain_losses(logits, data["labels"], data["domain_ids"], 4)
    (losses.mean() + ((losses - losses.mean()) ** 2).mean()).backward()  # weight 1 before annealing
    assert_grads_close(got, grads_of(model))

    method.step(step_batch, 0)
    method.step(step_batch, 1)
    assert len(method.optimizer.state) > 0
    method.gradients(step_batch, setup[3].baselines.vrex_anneal_steps)
    assert len(method.optimizer.state) == 0  # fresh AdamW moments when the full weight starts


def test_iga_step_runs_and_reports_mask(setup):
    model = student(setup)
    method = make_method("iga", model, ["a", "b", "c", "d"], setup[3])
    before = {n: p.detach().clone() for n, p in method.named_params}
    diagnostics = method.step(batch(setup), 0)
    method.close()
    assert 0.0 <= diagnostics["mask_mean"] <= 1.0
    assert set(diagnostics) >= {"loss", "loss_a", "loss_d", "grad_norm"}
    assert any(not torch.equal(before[n], p) for n, p in method.named_params)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_state_resume_is_exact(setup, tmp_path, name):
    """Two steps, save everything, restore into a fresh method: the third step is bit-identical."""
    config = setup[3]
    domains = ["a", "b", "c", "d"]
    first = make_method(name, student(setup), domains, config)
    for step in range(2):
        first.step(batch(setup, step), step)
    for part, obj in (("model", trainable_state(first.model)), ("optimizer", first.optimizer.state_dict()),
                      ("scheduler", first.scheduler.state_dict()), ("method", first.extra_state())):
        save_part(tmp_path, part, obj)
    first.save_state_files(tmp_path)

    second = make_method(name, student(setup, seed=1), domains, config)
    load_trainable_state(second.model, load_part(tmp_path, "model"))
    second.optimizer.load_state_dict(load_part(tmp_path, "optimizer"))
    second.scheduler.load_state_dict(load_part(tmp_path, "scheduler"))
    second.load_extra_state(load_part(tmp_path, "method"), tmp_path)
    for method in (first, second):
        method.step(batch(setup, 2), 2)
        method.close()
    for (n, p), (_, q) in zip(first.named_params, second.named_params):
        assert torch.equal(p, q), n


def test_make_method_rejects_unknown(setup):
    with pytest.raises(ValueError, match="unknown method"):
        make_method("irm", student(setup), ["a", "b"], setup[3])
