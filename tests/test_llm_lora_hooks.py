"""Per-domain LoRA gradient statistics from hooks, checked against torch.autograd.grad."""

import pytest
import torch
import torch.nn.functional as F

from iga_theory.llm.lora_hooks import DomainGradientCapture, find_lora_layers
from iga_theory.llm.lora_models import tiny_lora_model

K = 3
VOCAB = 50
# float64 GPT-2 keeps every operation in float64, so the hook path and autograd differ
# only by the order of additions: a few hundred ulps of the largest entry at most.
TOL64 = 1e3 * torch.finfo(torch.float64).eps
# Llama's RMSNorm and attention softmax compute in float32 even for float32 models;
# the two paths then differ by float32 rounding of sums over ~100 tokens.
TOL32 = 1e3 * torch.finfo(torch.float32).eps


def gpt2(dropout=0.0, dtype=torch.float64):
    return tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB, r=4, lora_dropout=dropout,
                           target_modules=("c_attn", "c_fc"), dtype=dtype, init_lora_B="random", seed=1)


def batch(seed=0, n=6, length=10):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, length), generator=generator)
    ids = torch.arange(n) % K
    return x, ids


def reference_losses(model, x, ids):
    """Per-domain mean token losses of one forward pass (causal shift)."""
    logits = model(input_ids=x).logits
    token = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="none")
    token = token.reshape(x.shape[0], -1)
    return [token[ids == e].mean() for e in range(K)]


def hooked_statistics(model, x, ids, mode, loss_scale=1.0, seed=None):
    capture = DomainGradientCapture(model, K, mode=mode)
    with capture.installed():
        if seed is not None:
            torch.manual_seed(seed)
        capture.set_domain_ids(ids)
        loss = capture.loss(model(input_ids=x).logits, x)
        (loss_scale * loss).backward()
    return capture, capture.pop_step()


def max_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("mode", ["full", "tangent"])
def test_hooks_match_autograd_per_domain(mode):
    model = gpt2()
    x, ids = batch()
    layers = find_lora_layers(model)
    bases = [layer.module.base_layer.weight for layer in layers]
    for weight in bases:
        weight.requires_grad_(True)
    # Per-domain gradients of the frozen weight equal G_e = Delta_e^T X_e when dropout is 0.
    reference = [torch.autograd.grad(R, bases, retain_graph=True) for R in reference_losses(model, x, ids)]

    _, statistics = hooked_statistics(model, x, ids, mode)
    for i, layer in enumerate(layers):
        means = statistics.means(layer.name)
        for e in range(K):
            G = reference[e][i].T          # Conv1D stores the weight as (in, out)
            if mode == "full":
                assert max_error(means["G"][e], G) < TOL64
            else:
                basis = statistics.bases[layer.name]
                assert max_error(means["GV"][e], G @ basis.V.Y) < TOL64
                assert max_error(means["UG"][e], basis.U.Y.T @ G) < TOL64


def test_hooks_sum_to_pooled_gradient():
    model = gpt2()
    x, ids = batch()
    layers = find_lora_layers(model)
    for layer in layers:
        layer.module.base_layer.weight.requires_grad_(True)
    _, statistics = hooked_statistics(model, x, ids, "full")
    for layer in layers:
        pooled = layer.module.base_layer.weight.grad.T
        # The loss is the mean over domains of each domain's mean token loss.
        assert max_error(statistics.means(layer.name)["G"].mean(0), pooled) < TOL64


def test_hooks_see_input_after_dropout():
    model = gpt2(dropout=0.5)
    x, ids = batch()
    layers = find_lora_layers(model)
    factors = [p for layer in layers for p in (layer.lora_B, layer.lora_A)]
    torch.manual_seed(7)
    reference = [torch.autograd.grad(R, factors, retain_graph=True) for R in reference_losses(model, x, ids)]

    _, statistics = hooked_statistics(model, x, ids, "full", seed=7)
    for i, layer in enumerate(layers):
        s = layer.scaling
        for e in range(K):
            G = statistics.means(layer.name)["G"][e]
            grad_B, grad_A = reference[e][2 * i], reference[e][2 * i + 1]
            assert max_error(s * G @ layer.lora_A.detach().T, grad_B) < TOL64
            assert max_error(s * layer.lora_B.detach().T @ G, grad_A) < TOL64


def test_dropout_input_differs_from_layer_input():
    # Control: with dropout, the base weight's gradient is not the adapter's G_e.
    model = gpt2(dropout=0.5)
    x, ids = batch()
    layer = find_lora_layers(model)[0]
    layer.module.base_layer.weight.requires_grad_(True)
    _, statistics = hooked_statistics(model, x, ids, "full", seed=7)
    pooled = layer.module.base_layer.weight.grad.T
    assert max_error(statistics.means(layer.name)["G"].mean(0), pooled) > 1e-3


def test_loss_scale_does_not_change_statistics():
    model = gpt2()
    x, ids = batch()
    _, plain = hooked_statistics(model, x, ids, "full")
    model.zero_grad()
    _, scaled = hooked_statistics(model, x, ids, "full", loss_scale=0.125)
    for name in plain.sums:
        assert max_error(scaled.sums[name]["G"], plain.sums[name]["G"]) < TOL64


def test_accumulation_matches_one_batch():
    model = gpt2()
    x, ids = batch(n=9)
    # Uneven split: the micro-batches hold different numbers of tokens per domain.
    parts = [slice(0, 4), slice(4, 9)]
    capture = DomainGradientCapture(model, K, mode="full")
    with capture.installed():
        for part in parts:
            capture.set_domain_ids(ids[part])
            loss = capture.loss(model(input_ids=x[part]).logits, x[part])
            (loss / len(parts)).backward()
    accumulated = capture.pop_step()
    model.zero_grad()
    _, whole = hooked_statistics(model, x, ids, "full")
    assert torch.equal(accumulated.counts, whole.counts)
    assert accumulated.n_micro_batches == 2
    for name in whole.sums:
        assert max_error(accumulated.means(name)["G"], whole.means(name)["G"]) < TOL64


def test_per_position_ids_and_exclusion():
    model = gpt2()
    x, ids = batch()
    per_position = ids[:, None].expand(x.shape).clone()
    per_position[0] = -1                 # sequence 0 excluded
    _, statistics = hooked_statistics(model, x, per_position, "full")
    keep = torch.arange(x.shape[0]) != 0
    model.zero_grad()
    _, reference = hooked_statistics(model, x[keep], ids[keep], "full")
    assert torch.equal(statistics.counts, reference.counts)
    for name in reference.sums:
        assert max_error(statistics.means(name)["G"], reference.means(name)["G"]) < TOL64


def test_llama_float32_matches_autograd():
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, r=4, init_lora_B="random")
    x, ids = batch()
    layers = find_lora_layers(model)
    bases = [layer.module.base_layer.weight for layer in layers]
    for weight in bases:
        weight.requires_grad_(True)
    reference = [torch.autograd.grad(R, bases, retain_graph=True) for R in reference_losses(model, x, ids)]
    _, statistics = hooked_statistics(model, x, ids, "full")
    for i, layer in enumerate(layers):
        for e in range(K):
            assert max_error(statistics.means(layer.name)["G"][e], reference[e][i]) < TOL32


def test_bfloat16_model_gives_float32_statistics():
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, dtype=torch.bfloat16)
    x, ids = batch()
    _, statistics = hooked_statistics(model, x, ids, "tangent")
    for sums in statistics.sums.values():
        for value in sums.values():
            assert value.dtype == torch.float32
            assert bool(value.isfinite().all())
    # B = 0 at initialisation: no column space, so the U^T G sketch is empty.
    assert all(basis.k_B == 0 for basis in statistics.bases.values())


def test_domain_ids_are_validated():
    model = gpt2()
    capture = DomainGradientCapture(model, K)
    with pytest.raises(TypeError, match="integer"):
        capture.set_domain_ids(torch.zeros(4))
    with pytest.raises(ValueError, match="0 .. 2"):
        capture.set_domain_ids(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        capture.set_domain_ids(torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        DomainGradientCapture(model, K, mode="dense")


def test_backward_without_domain_loss_raises():
    model = gpt2()
    x, ids = batch()
    capture = DomainGradientCapture(model, K)
    with capture.installed():
        capture.set_domain_ids(ids)
        logits = model(input_ids=x).logits
        with pytest.raises(RuntimeError, match="DomainGradientCapture.loss"):
            logits.sum().backward()


def test_pop_step_without_backward_raises():
    capture = DomainGradientCapture(gpt2(), K)
    with pytest.raises(RuntimeError, match="no gradient statistics"):
        capture.pop_step()


def test_no_grad_forward_is_not_captured():
    model = gpt2()
    x, ids = batch()
    capture = DomainGradientCapture(model, K)
    with capture.installed():
        capture.set_domain_ids(ids)
        with torch.no_grad():
            model(input_ids=x)
    assert not capture.has_statistics


def test_dora_is_rejected():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=16))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], use_dora=True, fan_in_fan_out=True))
    with pytest.raises(NotImplementedError, match="plain LoRA"):
        find_lora_layers(model)


def test_model_without_lora_is_rejected():
    with pytest.raises(ValueError, match="no PEFT LoRA linear layer"):
        find_lora_layers(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_same_statistics(reentrant):
    x, ids = batch()
    plain_model = gpt2()
    _, plain = hooked_statistics(plain_model, x, ids, "full")
    model = gpt2()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    model.train()
    _, checkpointed = hooked_statistics(model, x, ids, "full")
    assert checkpointed.n_micro_batches == 1
    for name in plain.sums:
        # Recomputation repeats the same float64 operations: equal to rounding.
        assert max_error(checkpointed.sums[name]["G"], plain.sums[name]["G"]) < TOL64
