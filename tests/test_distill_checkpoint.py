"""Checkpoint parts in safetensors + JSON, generator states, checkpoint folders and the step log."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iga_theory.llm.distill_checkpoint import (
    LATEST_FILE, CheckpointManager, StepLog, capture_rng_state, flatten_state, load_part,
    load_trainable_state, restore_rng_state, save_part, trainable_state, unflatten_state,
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=8),
                    st.floats(allow_nan=False, width=64), st.sampled_from([math.inf, -math.inf]))
tensors = st.builds(lambda n, seed: torch.randn(n, generator=torch.Generator().manual_seed(seed)),
                    st.integers(0, 5), st.integers(0, 100))
trees = st.recursive(
    st.one_of(scalars, tensors),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: not k.startswith("__")), children, max_size=3),
        st.dictionaries(st.integers(0, 9), children, max_size=3),
    ),
    max_leaves=12,
)


def assert_same_tree(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    else:
        assert a == b


@given(trees)
def test_flatten_roundtrip_in_memory(tree):
    flat, skeleton = flatten_state(tree)
    json.dumps(skeleton, allow_nan=False)  # the skeleton is plain JSON
    assert_same_tree(unflatten_state(skeleton, flat), tree)


@given(trees)
def test_part_roundtrip_on_disk(tmp_path_factory, tree):
    folder = tmp_path_factory.mktemp("part")
    save_part(folder, "p", {"tree": tree})
    assert_same_tree(load_part(folder, "p"), {"tree": tree})


def test_flatten_rejects_unknown_type():
    with pytest.raises(TypeError, match="set"):
        flatten_state({"x": {1, 2}})


def test_unflatten_missing_tensor_raises():
    with pytest.raises(ValueError, match="t7"):
        unflatten_state({"__tensor__": "t7"}, {})


def test_optimizer_state_roundtrip_gives_same_next_steps(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, 4)
    for _ in range(3):
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_part(tmp_path, "optimizer", optimizer.state_dict())
    save_part(tmp_path, "model", trainable_state(model))

    # Continue the original and a restored copy by three more steps: identical bits.
    clone = torch.nn.Linear(4, 3)
    load_trainable_state(clone, load_part(tmp_path, "model"))
    clone_optimizer = torch.optim.AdamW(clone.parameters(), lr=1e-2)
    clone_optimizer.load_state_dict(load_part(tmp_path, "optimizer"))
    for net, opt in ((model, optimizer), (clone, clone_optimizer)):
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    assert torch.equal(model.weight, clone.weight)
    assert torch.equal(model.bias, clone.bias)


def test_load_trainable_state_rejects_other_names():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not match"):
        load_trainable_state(model, {"weight": torch.zeros(2, 2)})


def test_rng_state_roundtrip(tmp_path):
    save_part(tmp_path, "rng", capture_rng_state())
    expected = (random.random(), np.random.random(), torch.rand(3))
    random.random(), np.random.random(), torch.rand(5)  # move every generator on
    restore_rng_state(load_part(tmp_path, "rng"))
    got = (random.random(), np.random.random(), torch.rand(3))
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_manager_saves_points_and_prunes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    assert manager.load() is None
    for step in (5, 10, 15):
        manager.save(step, {"a": {"x": torch.tensor([float(step)])}})
    step, parts, folder = manager.load()
    assert step == 15
    assert folder.name == "step-00000015"
    assert parts["a"]["x"].item() == 15.0
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010", "step-00000015"]
    assert json.loads((tmp_path / LATEST_FILE).read_text()) == {"step": 15}


def test_manager_adds_component_files(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(2, {"a": {}}, write_files=lambda folder: (folder / "extra.bin").write_bytes(b"x"))
    assert (manager.load()[2] / "extra.bin").read_bytes() == b"x"


def test_manager_ignores_unreferenced_folder(tmp_path):
    # A folder without the pointer update (a kill between the two) is not loaded.
    manager = CheckpointManager(tmp_path)
    manager.save(3, {"a": {"x": torch.ones(1)}})
    (tmp_path / ".step-00000006-xyz").mkdir()  # an interrupted temporary folder
    assert manager.load()[0] == 3
    manager.save(6, {"a": {"x": torch.zeros(1)}})
    assert not list(tmp_path.glob(".step-*"))


def test_manager_pointer_to_missing_folder_raises(tmp_path):
    (tmp_path / LATEST_FILE).write_text('{"step": 4}')
    with pytest.raises(ValueError, match="missing or invalid"):
        CheckpointManager(tmp_path).load()


def test_step_log_truncates_and_drops_torn_line(tmp_path):
    log = StepLog(tmp_path / "log.jsonl")
    for step in range(6):
        log.append({"step": step, "loss": float(step)})
    log.close()
    with open(tmp_path / "log.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')  # a kill in the middle of a write
    log.truncate_after(3)
    assert [r["step"] for r in log.records()] == [0, 1, 2, 3]
    log.append({"step": 4, "loss": math.nan})
    log.close()
    assert log.records()[-1] == {"step": 4, "loss": None}
