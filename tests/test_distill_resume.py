"""``iga distill`` killed with SIGKILL mid-run resumes from its checkpoint to the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

# A short run: a tiny model, 4 pre-training steps, ERM and IGA for 24 steps each with a
# checkpoint every 4 steps, LoRA dropout on so that the generator state matters, and
# IGA's moving averages on so that its state matters.
CONFIG = {
    "model": {"hidden_size": 32, "n_layers": 2, "n_heads": 2, "intermediate_size": 64},
    "tokenizer": {"vocab_size": 320},
    "pretrain": {"steps": 4, "n_sentences": 300, "block_size": 32, "batch_size": 4, "checkpoint_every": 2},
    "lora": {"r": 4, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "data": {"n_sets": 24, "skeletons": ["modus_tollens", "rate_inverse"], "max_eval_sets": 2},
    "train": {"methods": ["erm", "iga"], "steps": 24, "sets_per_step": 2, "warmup_steps": 2, "checkpoint_every": 4},
    "iga": {"remedy": "ema", "rho": 0.9},
    "eval": {"max_new_tokens": 8, "n_bootstrap": 200},
    "runtime": {"device": "cpu", "threads": 1},
}
# Upper bound of one run on a loaded 2-core machine (imports included).
RUN_TIMEOUT_S = 300
POLL_S = 0.02
# The kill waits for this many logged IGA steps, past its second checkpoint (step 8).
KILL_AFTER_STEPS = 10


def command(config_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "iga_theory.cli", "--log-level", "WARNING", "distill",
            "--config", str(config_path), "--out", str(out), "--no-progress"]


def log_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def comparable_records(path: Path) -> list[dict]:
    """Log records without their wall-clock durations."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def test_sigkill_mid_run_resumes_to_same_metrics(tmp_path):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(CONFIG))
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"

    # The uninterrupted run and the run to be killed start together.
    reference = subprocess.Popen(command(config_path, reference_dir), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen(command(config_path, killed_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    iga_run = killed_dir / "runs" / "iga-seed0"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while log_lines(iga_run / "log.jsonl") < KILL_AFTER_STEPS:
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run did not reach the kill point in time"
        time.sleep(POLL_S)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (iga_run / "done.json").exists()
    assert (killed_dir / "runs" / "erm-seed0" / "done.json").exists()
    checkpoint = json.loads((iga_run / "checkpoints" / "latest.json").read_text())["step"]
    assert 4 <= checkpoint < CONFIG["train"]["steps"]

    output, _ = reference.communicate(timeout=RUN_TIMEOUT_S)
    assert reference.returncode == 0, output
    resumed = subprocess.run(command(config_path, killed_dir), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # Same metrics, predictions, adapters and per-step logs as the uninterrupted run.
    expected = json.loads((reference_dir / "metrics.json").read_text())
    got = json.loads((killed_dir / "metrics.json").read_text())
    assert got["methods"] == expected["methods"]
    done = json.loads((iga_run / "done.json").read_text())
    assert done["resumed_from_step"] == checkpoint
    for method in ("erm", "iga"):
        a, b = reference_dir / "runs" / f"{method}-seed0", killed_dir / "runs" / f"{method}-seed0"
        assert (a / "predictions.jsonl").read_bytes() == (b / "predictions.jsonl").read_bytes()
        records = comparable_records(b / "log.jsonl")
        assert [r["step"] for r in records] == list(range(CONFIG["train"]["steps"]))
        assert records == comparable_records(a / "log.jsonl")
        adapter_a = load_file(str(a / "adapter" / "adapter_model.safetensors"))
        adapter_b = load_file(str(b / "adapter" / "adapter_model.safetensors"))
        assert adapter_a.keys() == adapter_b.keys()
        assert all((adapter_a[k] == adapter_b[k]).all() for k in adapter_a)
    assert "ID acc %" in output  # the table was printed


def test_adapter_loads_with_plain_peft(tmp_path):
    """The saved adapter folder is PEFT's own format: PeftModel.from_pretrained reads it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from iga_theory.llm.distill_config import load_distill_config
    from iga_theory.llm.distill_pipeline import run_distill

    config = load_distill_config(overrides={**CONFIG, "train": {**CONFIG["train"], "methods": ["erm"], "steps": 2},
                                            "runtime": {"device": "cpu", "output_dir": str(tmp_path / "run")}})
    metrics = run_distill(config, progress=False)
    assert set(metrics["methods"]) == {"erm"}
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "base_model"))
    model = PeftModel.from_pretrained(base, str(tmp_path / "run" / "runs" / "erm-seed0" / "adapter"))
    saved = load_file(str(tmp_path / "run" / "runs" / "erm-seed0" / "adapter" / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    for key, value in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert len(match) == 1, key
        assert (match[0] == value).all(), key
