"""The IGA operator on LoRA layers: modes, placements, safeguard, NaN policy, retraction."""

import pytest
import torch
from torch import nn

from iga_theory.errors import NonFiniteError
from iga_theory.llm.lora_hooks import LoraLayerRef, find_lora_layers
from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig, layer_gradients, tangent_direction
from iga_theory.llm.lora_processor import LoraIGAOptimizer, LoraIGAProcessor
from iga_theory.llm.lora_tangent import coordinates_dense, tangent_basis

K = 3
VOCAB = 50
EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def gpt2(init_lora_B="random", dtype=torch.float64, seed=1):
    return tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB, r=4, dtype=dtype,
                           target_modules=("c_attn", "c_fc"), init_lora_B=init_lora_B, seed=seed)


def tokens(seed=0, n=6, length=10, identical_domains=False):
    generator = torch.Generator().manual_seed(seed)
    if identical_domains:
        one = torch.randint(0, VOCAB, (n // K, length), generator=generator)
        x = one.repeat_interleave(K, dim=0)
    else:
        x = torch.randint(0, VOCAB, (n, length), generator=generator)
    return x, torch.arange(n) % K


def backward(model, x, ids, scale=1.0):
    outputs = model(input_ids=x, labels=x, domain_ids=ids)
    (scale * outputs.loss).backward()
    return outputs.loss


def pooled_factor_gradients(model, x, ids):
    """Plain LoRA gradients of the same domain-balanced loss (no IGA)."""
    processor = LoraIGAProcessor(model, K)
    with processor.attached():
        backward(model, x, ids)
    processor.capture.discard_step()
    grads = {ref.name: (ref.lora_B.grad.clone(), ref.lora_A.grad.clone()) for ref in processor.layers}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("placement", ["gradient", "update"])
def test_tangent_mode_equals_lora_when_domains_agree(placement):
    model = gpt2()
    x, ids = tokens(identical_domains=True)
    expected = pooled_factor_gradients(model, x, ids)
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode="tangent", placement=placement))
    with processor.attached():
        backward(model, x, ids)
    assert processor.prepare_step()
    for ref in processor.layers:
        # Identical domains: s2 = 0, so the mask is exactly 1 (full agreement).
        assert processor.diagnostics[ref.name]["mask_mean"] == 1.0
        grad_B, grad_A = expected[ref.name]
        assert torch.allclose(ref.lora_B.grad, grad_B, rtol=1e-9, atol=1e3 * EPS64 * float(grad_B.abs().max()))
        assert torch.allclose(ref.lora_A.grad, grad_A, rtol=1e-9, atol=1e3 * EPS64 * float(grad_A.abs().max()))


def test_full_mode_pulls_back_rank_r_projection():
    model = gpt2()
    x, ids = tokens(identical_domains=True)
    layers = find_lora_layers(model)
    for ref in layers:
        ref.module.base_layer.weight.requires_grad_(True)
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode="full", placement="gradient"))
    with processor.attached():
        backward(model, x, ids)
    pooled = {ref.name: ref.module.base_layer.weight.grad.T.clone() for ref in layers}
    assert processor.prepare_step()
    for ref in layers:
        # mask = 1, so D = mu and P = Pi_r(mu) by a dense SVD.
        U, S, Vh = torch.linalg.svd(pooled[ref.name])
        P = (U[:, :ref.rank] * S[:ref.rank]) @ Vh[:ref.rank]
        s, A, B = ref.scaling, ref.lora_A.detach(), ref.lora_B.detach()
        tol = 1e4 * EPS64 * float(P.abs().max()) * s
        assert torch.allclose(ref.lora_B.grad, s * P @ A.T, atol=tol)
        assert torch.allclose(ref.lora_A.grad, s * B.T @ P, atol=tol)
        assert 0.0 < processor.diagnostics[ref.name]["projection_residual"] < 1.0


class TwoByTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.proj(x)


def two_by_two_layer():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(TwoByTwo().double(), LoraConfig(r=1, lora_alpha=1, target_modules=["proj"]))
    with torch.no_grad():
        find_lora_layers(model)[0].lora_B.fill_(0.5)
    return find_lora_layers(model)[0]


def test_safeguard_falls_back_to_masked_direction():
    ref = two_by_two_layer()
    # Three domains agree on three coordinates and conflict on the fourth (mean -10,
    # spread 30), which the mask removes; the best rank-1 approximation of the masked
    # mean then has <mu, Pi_1(D)> = -1.85 < 0.
    g = torch.tensor([[[1., 1.], [1., 20.]], [[1., 1.], [1., -40.]], [[1., 1.], [1., -10.]]], dtype=torch.float64)
    outcome = layer_gradients(ref, g.reshape(3, -1), None, LoraIGAConfig(mode="full"))
    assert outcome.safeguard_fired
    D = (outcome.mask * outcome.mu).reshape(2, 2)
    assert float((D * outcome.mu.reshape(2, 2)).sum()) > 0
    A, B = ref.lora_A.detach(), ref.lora_B.detach()
    assert torch.allclose(outcome.grad_B, ref.scaling * D @ A.T)
    assert torch.allclose(outcome.grad_A, ref.scaling * B.T @ D)

    unguarded = layer_gradients(ref, g.reshape(3, -1), None, LoraIGAConfig(mode="full", safeguard=False))
    assert not unguarded.safeguard_fired
    assert float(unguarded.direction.inner(outcome.mu.reshape(2, 2))) < 0


def first_order_coordinates(ref, basis, before, after):
    """Tangent coordinates (at the old point) of the first-order move s (dB A + B dA)."""
    B_old, A_old = before
    dB = ref.lora_B.detach() - B_old
    dA = ref.lora_A.detach() - A_old
    move = ref.scaling * (dB @ A_old + B_old @ dA)
    coords = coordinates_dense(basis, move)
    return torch.cat([coords[name].reshape(-1) for name in ("core", "left", "right")])


def one_step(placement, optimizer_class, lr=1e-3, seed=3):
    model = gpt2()
    x, ids = tokens(seed=seed, n=9)
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode="tangent", placement=placement, remedy="none"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = LoraIGAOptimizer(optimizer_class(params, lr=lr), processor)
    with processor.attached():
        backward(model, x, ids)
    bases = {ref.name: tangent_basis(ref.lora_B, ref.lora_A, ref.scaling) for ref in processor.layers}
    before = processor.snapshot_factors()
    assert processor.prepare_step()
    masks = {ref.name: processor._prepared["outcomes"][ref.name].mask.clone() for ref in processor.layers}
    optimizer.step()
    return model, processor, bases, before, masks


def test_placements_agree_under_sgd():
    model_g, processor_g, *_ = one_step("gradient", torch.optim.SGD)
    model_u, processor_u, *_ = one_step("update", torch.optim.SGD)
    for ref_g, ref_u in zip(processor_g.layers, processor_u.layers):
        for a, b in ((ref_g.lora_A, ref_u.lora_A), (ref_g.lora_B, ref_u.lora_B)):
            # Both compute lr * (masked tangent vector pulled back); float64 rounding only.
            assert torch.allclose(a, b, rtol=0, atol=1e4 * EPS64 * float(a.abs().max()))


@pytest.mark.parametrize("placement, keeps_still", [("update", True), ("gradient", False)])
def test_only_update_placement_keeps_masked_coordinates_under_adamw(placement, keeps_still):
    model, processor, bases, before, masks = one_step(placement, torch.optim.AdamW)
    for ref in processor.layers:
        coords = first_order_coordinates(ref, bases[ref.name], before[ref.name], None)
        masked = masks[ref.name] < 1e-12
        assert 0 < int(masked.sum()) < masked.numel()
        leak = float(coords[masked].abs().max() / coords.abs().max())
        if keeps_still:
            # The re-split multiplies each coordinate by its mask: rounding only.
            assert leak < 1e4 * EPS64
        else:
            # Adam divides by its own RMS per factor entry, which undoes the mask.
            assert leak > 1e-2


@pytest.mark.parametrize("mode", ["full", "tangent"])
@pytest.mark.parametrize("placement", ["gradient", "update"])
def test_zero_initialised_adapter_gives_finite_step(mode, placement):
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, r=4)
    x, ids = tokens()
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode=mode, placement=placement))
    optimizer = LoraIGAOptimizer(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3),
                                 processor)
    with processor.attached():
        for _ in range(2):
            backward(model, x, ids)
            optimizer.step()
            optimizer.zero_grad()
    for ref in processor.layers:
        assert bool(ref.lora_A.isfinite().all())
        assert bool(ref.lora_B.isfinite().all())
        assert float(ref.lora_B.abs().max()) > 0          # B has left 0
    assert processor.step_count == 2
    assert processor.skipped_steps == 0


def test_bfloat16_model_steps_in_float32():
    # PEFT keeps adapters in float32 over a bfloat16 base; cast them too.
    model = tiny_lora_model("llama", hidden_size=32, n_heads=4, vocab_size=VOCAB, r=4,
                            init_lora_B="random").to(torch.bfloat16)
    x, ids = tokens()
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode="full", placement="gradient"))
    with processor.attached():
        backward(model, x, ids)
    assert processor.prepare_step()
    for ref in processor.layers:
        assert ref.lora_B.grad.dtype == torch.bfloat16
        assert bool(ref.lora_B.grad.isfinite().all())
        assert bool(ref.lora_A.grad.isfinite().all())
        assert processor._prepared["outcomes"][ref.name].mu.dtype == torch.float32


def poison(model, x):
    """Make one sequence's forward pass NaN through its first token's embedding."""
    with torch.no_grad():
        model.get_input_embeddings().weight[x[0, 0]] = float("nan")


def test_nan_statistic_raises_by_default():
    model = gpt2()
    x, ids = tokens()
    poison(model, x)
    processor = LoraIGAProcessor(model, K)
    with processor.attached():
        backward(model, x, ids)
    with pytest.raises(NonFiniteError, match="step 0"):
        processor.prepare_step()


def test_nan_statistic_is_skipped_and_counted():
    model = gpt2()
    x, ids = tokens()
    poison(model, x)
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(nan_policy="skip"))
    inner = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer = LoraIGAOptimizer(inner, processor)
    before = processor.snapshot_factors()
    with processor.attached():
        backward(model, x, ids)
    optimizer.step()
    assert processor.skipped_steps == 1
    assert processor.step_count == 1
    assert inner.state == {} or all(len(s) == 0 for s in inner.state.values())
    for ref in processor.layers:
        B, A = before[ref.name]
        assert torch.equal(ref.lora_B.detach(), B)
        assert torch.equal(ref.lora_A.detach(), A)


def test_failed_svd_follows_nan_policy(monkeypatch):
    model = gpt2()
    x, ids = tokens()

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated failure to converge")

    for policy in ("raise", "skip"):
        processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode="full", placement="gradient", nan_policy=policy))
        with processor.attached():
            backward(model, x, ids)
        monkeypatch.setattr(torch.linalg, "svd", failing_svd)
        if policy == "raise":
            with pytest.raises(NonFiniteError, match="SVD failed"):
                processor.prepare_step()
        else:
            assert not processor.prepare_step()
            assert processor.failed_svd_steps == 1
            assert processor.skipped_steps == 1
        monkeypatch.undo()
        model.zero_grad()


@pytest.mark.parametrize("mode", ["full", "tangent"])
def test_retraction_step_keeps_rank_r(mode):
    model = gpt2()
    x, ids = tokens()
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode=mode, remedy="none"))
    with processor.attached():
        backward(model, x, ids)
    old = {ref.name: ref.scaling * ref.lora_B.detach() @ ref.lora_A.detach() for ref in processor.layers}
    assert processor.retraction_step(0.5)
    for ref in processor.layers:
        new = ref.scaling * ref.lora_B.detach() @ ref.lora_A.detach()
        assert int(torch.linalg.matrix_rank(new)) <= ref.rank
        assert not torch.allclose(new, old[ref.name])
        assert ref.lora_B.grad is None
    assert processor.step_count == 1


def test_retraction_matches_dense_truncated_svd():
    from iga_theory.llm.lora_operator import Direction, retract

    ref = find_lora_layers(gpt2())[0]
    generator = torch.Generator().manual_seed(0)
    p, q = ref.shape
    direction = Direction(torch.randn(p, 3, generator=generator, dtype=torch.float64),
                          torch.randn(3, q, generator=generator, dtype=torch.float64))
    B_new, A_new = retract(ref, direction, 0.3)
    target = ref.scaling * ref.lora_B.detach() @ ref.lora_A.detach() - 0.3 * direction.dense()
    U, S, Vh = torch.linalg.svd(target)
    best = (U[:, :ref.rank] * S[:ref.rank]) @ Vh[:ref.rank]
    assert torch.allclose(ref.scaling * B_new @ A_new, best, atol=1e3 * EPS64 * float(best.abs().max()))


def test_one_domain_is_rejected():
    model = gpt2()
    x, _ = tokens()
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(remedy="none"))
    with processor.attached():
        backward(model, x, torch.zeros(x.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        processor.prepare_step()


def test_config_is_validated():
    with pytest.raises(ValueError, match="mode"):
        LoraIGAConfig(mode="dense")
    with pytest.raises(ValueError, match="placement"):
        LoraIGAConfig(placement="weights")
    with pytest.raises(ValueError, match="rho"):
        LoraIGAConfig(rho=1.0)
    with pytest.raises(ValueError, match="domains"):
        LoraIGAProcessor(gpt2(), ["only"])


def test_wrapper_works_with_lr_scheduler():
    model = gpt2()
    processor = LoraIGAProcessor(model, K)
    optimizer = LoraIGAOptimizer(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0),
                                 processor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    x, ids = tokens()
    with processor.attached():
        backward(model, x, ids)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_tangent_direction_matches_dense_coordinates():
    ref = find_lora_layers(gpt2())[0]
    basis = tangent_basis(ref.lora_B, ref.lora_A, ref.scaling)
    generator = torch.Generator().manual_seed(0)
    G = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    coords = coordinates_dense(basis, G)
    flat = torch.cat([coords[name].reshape(-1) for name in ("core", "left", "right")])
    U, V = basis.U.Y, basis.V.Y
    projected = G @ V @ V.T + U @ U.T @ G @ (torch.eye(G.shape[1], dtype=G.dtype) - V @ V.T)
    assert torch.allclose(tangent_direction(basis, flat).dense(), projected, atol=1e3 * EPS64)


def test_averaged_mask_keeps_step_direction():
    """With separate mask vectors, the mask follows them and mu stays the step's own mean."""
    from iga_theory.llm.lora_operator import masked_moments
    from iga_theory.mask_torch import conflict_mask

    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(4, 50, dtype=torch.float64, generator=generator)
    averages = torch.randn(4, 50, dtype=torch.float64, generator=generator) + 1.0
    config = LoraIGAConfig()

    mu, _, mask = masked_moments(vectors, config, averages)

    torch.testing.assert_close(mu, vectors.mean(dim=0), rtol=0, atol=1e-15)
    torch.testing.assert_close(mask, conflict_mask(averages), rtol=1e-12, atol=1e-15)
    own_mu, _, own_mask = masked_moments(vectors, config)
    torch.testing.assert_close(own_mu, mu, rtol=0, atol=1e-15)
    assert not torch.allclose(own_mask, mask)
