"""The trainer under real faults (CPU, gloo): a rank SIGKILLed under torchrun with restarts, a
truncated latest checkpoint, a NaN loss, unreadable images. Tiny model and data throughout."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simclr_ext import checkpoint as ckpt_lib

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-size", "96", "--test-size", "40", "--batch-size", "32", "--width", "4",
        "--image-size", "16", "--no-progress", "--log-every", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def train():
    """python/train.py as a module (its directory on sys.path only while it is imported)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "python"))
        yield importlib.import_module("train")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("TORCHELASTIC_RESTART_COUNT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
              "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(run_dir, max_restarts, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(max_restarts), "--monitor-interval", "0.2",
           str(ROOT / "python" / "train.py"), *TINY, "--epochs", "3", "--no-eval",
           "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _assert_same_weights(a, b, what):
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=1e-6, msg=f"{k} differs {what}")


@pytest.mark.slow
def test_torchrun_restart_after_sigkill_resumes_by_itself(tmp_path):
    """2 ranks under torchrun --max-restarts 1, the last rank SIGKILLed after step 5 (mid epoch 2
    of 3 x 3 steps): the restarted group finds the run directory's checkpoint with the command
    line unchanged, and ends with the weights of an uninterrupted 2-rank run."""
    straight = _torchrun(tmp_path / "straight", 0)
    killed = _torchrun(tmp_path / "killed", 1, ["--sigkill-at-step", "5"])
    out_s = straight.communicate(timeout=300)[0]
    out_k = killed.communicate(timeout=300)[0]
    assert straight.returncode == 0, out_s
    assert killed.returncode == 0, out_k
    assert "exitcode: -9" in out_k, out_k  # the rank really died of SIGKILL
    assert "torchrun restart 1: continuing the run in" in out_k, out_k
    assert "at epoch 1, step 3" in out_k, out_k  # from the end of epoch 1: step 5's work was lost
    a, b = ckpt_lib.load(str(tmp_path / "straight")), ckpt_lib.load(str(tmp_path / "killed"))
    assert a["global_step"] == b["global_step"] == 9 and len(b["rng"]) == 2
    _assert_same_weights(a, b, "after SIGKILL + torchrun restart")
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert steps == list(range(1, 10))  # the replayed steps are logged once
