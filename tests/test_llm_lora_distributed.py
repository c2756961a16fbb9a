"""Data-parallel IGA on CPU: 2 gloo processes give the gradients of one process."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from iga_theory.llm.lora_models import tiny_lora_model
from iga_theory.llm.lora_operator import LoraIGAConfig
from iga_theory.llm.lora_processor import LoraIGAProcessor

K = 3
VOCAB = 50
WORLD = 2
MODES = ("full", "tangent")
# float64 GPT-2: the two runs differ only in the order in which token sums are added.
TOL = 1e3 * torch.finfo(torch.float64).eps


def batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (12, 8), generator=generator)
    return x, torch.arange(12) % K


def iga_gradients(mode, x, ids, micro_batches=1):
    model = tiny_lora_model("gpt2", hidden_size=32, n_heads=4, vocab_size=VOCAB, dtype=torch.float64,
                            init_lora_B="random", target_modules=("c_attn", "c_fc"))
    processor = LoraIGAProcessor(model, K, LoraIGAConfig(mode=mode, placement="gradient"))
    with processor.attached():
        for part in torch.arange(x.shape[0]).chunk(micro_batches):
            outputs = model(input_ids=x[part], labels=x[part], domain_ids=ids[part])
            (outputs.loss / micro_batches).backward()
    assert processor.prepare_step()
    grads = {}
    for ref in processor.layers:
        grads[f"{ref.name}.B"] = ref.lora_B.grad.contiguous()
        grads[f"{ref.name}.A"] = ref.lora_A.grad.contiguous()
    grads["losses"] = torch.tensor(list(processor.last_domain_losses.values()), dtype=torch.float64)
    return grads


def worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        x, ids = batch()
        # Each rank holds every domain: rank k takes sequences k, k + 2, k + 4, ...
        mine = torch.arange(rank, x.shape[0], WORLD)
        for mode in MODES:
            save_file(iga_gradients(mode, x[mine], ids[mine]), os.path.join(folder, f"{mode}-{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    if not dist.is_available() or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs torch.distributed and the fork start method")
    x, ids = batch()
    # The reference runs first, so that the forked workers inherit the imported
    # transformers and peft modules instead of importing them again.
    single_process = {mode: iga_gradients(mode, x, ids) for mode in MODES}
    mp.start_processes(worker, args=(str(tmp_path),), nprocs=WORLD, start_method="fork")
    for mode in MODES:
        single = single_process[mode]
        for rank in range(WORLD):
            ranked = load_file(tmp_path / f"{mode}-{rank}.safetensors")
            for key, value in single.items():
                scale = max(1.0, float(value.abs().max()))
                assert torch.allclose(ranked[key], value, rtol=0, atol=TOL * scale), (mode, rank, key)


def test_accumulation_matches_one_batch():
    x, ids = batch()
    for mode in MODES:
        whole = iga_gradients(mode, x, ids)
        accumulated = iga_gradients(mode, x, ids, micro_batches=3)
        for key, value in whole.items():
            assert torch.allclose(accumulated[key], value, rtol=0, atol=TOL * max(1.0, float(value.abs().max())))
