r"""Data-parallel IGA on LoRA: one all-reduce of the per-domain statistics per optimizer step.

Layout. Every rank has every domain (each batch contains all domains of its isomer
sets) and an identical copy of the adapter, as under DDP. A rank's statistics for
domain ``e`` are the count ``n_e^(k)`` of its loss tokens and the token sum
``S_e^(k) = n_e^(k) mean_e^(k)`` of their gradients (`lora_hooks.StepStatistics`).
The merge of the triples ``(count, mean, M2)`` of Chan et al. reduces, for the count
and the mean, to sums:

.. math::

    n_e = \sum_k n_e^{(k)}, \qquad
    \bar g_e = \frac{1}{n_e} \sum_k n_e^{(k)} \bar g_e^{(k)} = \frac{1}{n_e} \sum_k S_e^{(k)},

so one ``all_reduce(SUM)`` of the token sums gives every rank the exact per-domain
means of the global batch, and each rank then computes the cross-domain ``mu`` and
``s2`` (the ``M2`` across domains) from the same K means, identically. The result
equals a single process that saw the union of the ranks' batches, up to the order
of floating-point additions. The token counts and loss sums travel in a second,
tiny float64 all-reduce, so that counts stay exact beyond 2^24 tokens.

Call `all_reduce_statistics` between the last backward pass of a step and the
operator; `LoraIGAProcessor` does so automatically when ``torch.distributed`` is
initialised with more than one rank.

Sharded training. FSDP (``FULL_SHARD``) and DeepSpeed ZeRO-3 shard the LoRA factors
across ranks and gather them only inside each layer's forward and backward. The
hooks need the full factors ``A`` and ``B`` (for the tangent bases) and the operator
writes full-size gradients, so IGA supports replicated adapters: DDP, FSDP with
``use_orig_params=True`` and the LoRA parameters left unsharded (an ``ignored_states``
entry or a wrapping policy that keeps them in a replicated unit), ZeRO stages 1 and 2
(which shard optimizer states and gradients, not parameters, and receive the
gradients IGA writes before their reduction). ZeRO-3 and sharded LoRA factors are
not supported.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from iga_theory.llm.lora_hooks import StepStatistics


def distributed_world_size(group=None) -> int:
    """Number of ranks in ``group``, or 1 when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def all_reduce_statistics(statistics: StepStatistics, group=None) -> StepStatistics:
    """Sum the per-domain token sums and counts of all ranks in place; return ``statistics``.

    Parameters
    ----------
    statistics : StepStatistics
        This rank's statistics of the step; every rank must hold the same layers,
        keys and shapes (same model, same mode, same adapter factors).
    group : ProcessGroup, optional
        Default: the world.

    Notes
    -----
    The sums of all layers are packed into one flat buffer per dtype and device,
    so a step costs one large all-reduce (plus one of ``2 K`` float64 values).
    """
    if distributed_world_size(group) == 1:
        return statistics

    # One flat buffer per (dtype, device) holding every layer's sums, in a fixed order.
    entries = [(layer, key, value) for layer in sorted(statistics.sums)
               for key, value in sorted(statistics.sums[layer].items())]
    buckets: dict[tuple, list] = {}
    for entry in entries:
        buckets.setdefault((entry[2].dtype, entry[2].device), []).append(entry)
    for bucket in buckets.values():
        flat = torch.cat([value.reshape(-1) for _, _, value in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        start = 0
        for layer, key, value in bucket:
            size = value.numel()
            statistics.sums[layer][key] = flat[start:start + size].view_as(value)
            start += size

    device = entries[0][2].device if entries else torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    small = torch.cat([statistics.counts, statistics.domain_loss_sums]).to(device)
    dist.all_reduce(small, op=dist.ReduceOp.SUM, group=group)
    small = small.cpu()
    K = statistics.counts.shape[0]
    statistics.counts = small[:K]
    statistics.domain_loss_sums = small[K:]
    return statistics
