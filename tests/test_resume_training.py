"""A short LoRA training run killed with SIGKILL resumes to the same weights, bit for bit.

The run (tests/lora_training_run.py) trains with IGA in the Hugging Face Trainer and
resumes from the newest complete checkpoint that `runs.last_complete_checkpoint`
finds. The default run checks that function on checkpoint folders cut short the way
a kill cuts them. The SIGKILL test itself takes minutes on 2 cores, so it is marked slow.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from iga_theory import runs
from resume_support import Kill, draw_moments, kill_at, quiet_env, run_timed, run_to_completion, temporaries

SCRIPT = Path(__file__).with_name("lora_training_run.py")
COMPLETE_FILES = ("adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "iga_state.json")


def write_checkpoint(folder, step, files=COMPLETE_FILES, state='{"global_step": 0}'):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"x")
    if state is not None:
        (path / runs.CHECKPOINT_MARKER).write_text(state)
    return path


def test_last_checkpoint_skips_torn_folders(tmp_path):
    write_checkpoint(tmp_path, 2)
    complete = write_checkpoint(tmp_path, 4)
    write_checkpoint(tmp_path, 6, files=("adapter_model.safetensors",), state=None)  # killed before the marker
    write_checkpoint(tmp_path, 8, state='{"global_step": 8, "log_hi')  # killed inside the marker's write
    write_checkpoint(tmp_path, 10, files=("optimizer.pt",))  # files missing although the marker exists
    (tmp_path / "checkpoint-12").write_text("")  # a file, not a folder
    assert runs.last_complete_checkpoint(tmp_path, required=COMPLETE_FILES) == complete


def test_last_checkpoint_orders_steps_numerically(tmp_path):
    write_checkpoint(tmp_path, 9)
    newest = write_checkpoint(tmp_path, 10)
    assert runs.last_complete_checkpoint(tmp_path) == newest


def test_last_checkpoint_none_without_checkpoints(tmp_path):
    assert runs.last_complete_checkpoint(tmp_path / "absent") is None
    write_checkpoint(tmp_path, 2, state=None)
    assert runs.last_complete_checkpoint(tmp_path) is None
    write_checkpoint(tmp_path, 4, state="[1, 2]")  # valid JSON, but not a trainer state
    assert runs.last_complete_checkpoint(tmp_path) is None


def checkpoints_done(out: Path) -> int:
    """Checkpoints written so far, counted by the newest step (checkpoints are never deleted here)."""
    steps = [int(m.group(1)) for p in out.glob("checkpoint-*") if (m := runs.CHECKPOINT_PATTERN.fullmatch(p.name))]
    return max(steps, default=0) // 2


def final_weights(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "final.safetensors"))


@pytest.mark.slow
def test_training_sigkill_resume_same_weights(tmp_path):
    command = [sys.executable, str(SCRIPT)]
    baseline = tmp_path / "baseline"
    phases = run_timed(command + [str(baseline)], baseline, tmp_path / "baseline.log", env=quiet_env(),
                       progress=checkpoints_done)

    out = tmp_path / "out"
    log_path = tmp_path / "killed.log"
    kills = []
    for moment in draw_moments(np.random.default_rng(6), 4, phases):
        running = kill_at(command + [str(out)], out, log_path, moment, env=quiet_env(), progress=checkpoints_done)
        kills.append(Kill(moment, running, checkpoints_done(out)))
    run_to_completion(command + [str(out)], log_path, env=quiet_env())

    context = f"kills: {kills}; log: {log_path}"
    assert sum(kill.running for kill in kills) >= 2, context
    expected, resumed = final_weights(baseline), final_weights(out)
    assert expected.keys() == resumed.keys(), context
    for name in expected:
        assert np.array_equal(expected[name], resumed[name]), f"{name}; {context}"
    # Checkpoint folders that a kill left behind mid-save are saved again on resume, and
    # save_iga_state removes its own stale temporaries then.
    assert temporaries(out) == [], context
    state = json.loads((runs.last_complete_checkpoint(out) / runs.CHECKPOINT_MARKER).read_text())
    assert state["global_step"] == 8
