"""The trainer under real faults (CPU, gloo): a rank SIGKILLed under torchrun with restarts, a
truncated latest checkpoint, a NaN loss, unreadable images. Tiny model and data throughout."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simclr_ext
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
    # the children import the simclr_ext these tests import (installed, or a built source tree)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(simclr_ext.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pkg_parent)
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


@pytest.fixture(scope="module")
def straight(train, tmp_path_factory):
    """An uninterrupted 1-process run of 3 epochs x 3 steps: what every resumed run must equal."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train.main(TINY + ["--epochs", "3", "--no-eval", "--run-dir", str(run)]) == 0
    return ckpt_lib.load(str(run))


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path, train, straight, capsys):
    """--resume auto on an empty run directory starts the run; after an interruption at step 5
    the latest checkpoint (step 5) is cut to half its size: the same command line resumes from
    checkpoint_prev.pt (step 3), says so naming the bad file, and ends exactly as `straight`."""
    run = tmp_path / "run"
    cmd = TINY + ["--epochs", "3", "--no-eval", "--resume", "auto", "--run-dir", str(run)]
    assert train.main(cmd + ["--stop-at-step", "5"]) == 128 + 15
    last, prev = run / ckpt_lib.LAST, run / ckpt_lib.PREV
    assert ckpt_lib.load(str(last))["global_step"] == 5
    assert ckpt_lib.load(str(prev))["global_step"] == 3
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert train.main(cmd) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {last} is unreadable" in out, out
    assert f"resuming from the previous checkpoint {prev}" in out and "at epoch 1, step 3" in out
    end = ckpt_lib.load(str(run))
    assert end["global_step"] == 9
    _assert_same_weights(straight, end, "after falling back to checkpoint_prev.pt")


def test_checkpoint_fallback_rules(tmp_path):
    """load_latest: a missing latest (a crash between the two renames) falls back too; a readable
    checkpoint of another format version is an error, not a fallback; two unreadable files name
    both; an empty directory is no checkpoint."""
    assert ckpt_lib.load_latest(str(tmp_path)) is None
    w = torch.randn(50)
    ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION, "w": w},
                         str(tmp_path / ckpt_lib.PREV))
    said = []
    got = ckpt_lib.load_latest(str(tmp_path), said.append)
    assert torch.equal(got["w"], w) and "checkpoint_last.pt is missing" in said[0]
    ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION + 1},
                         str(tmp_path / ckpt_lib.LAST))
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=f"format version {ckpt_lib.VERSION + 1}, this simclr_ext reads version"):
        ckpt_lib.load_latest(str(tmp_path), said.append)
    (tmp_path / ckpt_lib.LAST).write_bytes(b"\x00" * 64)
    (tmp_path / ckpt_lib.PREV).write_bytes(b"PK\x03\x04")
    with pytest.raises(ckpt_lib.CheckpointError, match="checkpoint_last.pt is unreadable.*"
                                                       "checkpoint_prev.pt is unreadable"):
        ckpt_lib.load_latest(str(tmp_path), said.append)


def test_resume_auto_refuses_other_flags(tmp_path, train, capsys):
    """--resume auto on a run directory that holds a run: a flag that defines the run and differs
    from the checkpoint's is an error naming it (as with --resume), not a silent new run."""
    run = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--no-eval", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--epochs", "1", "--no-eval", "--run-dir", str(run), "--resume", "auto",
                           "--temperature", "0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    default = train.build_parser().get_default("temperature")
    assert "does not match" in err and "--temperature 0.5" in err and f"checkpoint: {default}" in err
    with pytest.raises(SystemExit):
        train.main(TINY + ["--resume", "auto"])
    assert "--resume auto needs --run-dir" in capsys.readouterr().err


@pytest.mark.parametrize("log_every, nan_at, stop_at, kept", [
    (4, 5, 6, (1, 1, 4)),    # caught at the next loss read-back: step 6, the end of epoch 2
    (100, 4, 4, (1, 0, 3)),  # no read-back before step 4's checkpoint: the save itself checks
])
def test_nan_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path, train, capsys, log_every,
                                                            nan_at, stop_at, kept):
    """The loss of one step is NaN (its backward poisons the weights); checkpoints every 2 steps
    and at epoch ends (3 steps). The run stops at the first host read of the device-side flag
    after that step (a log line or a checkpoint), exits 3 naming the step, and the checkpoint on
    disk is the last one before it, all finite."""
    run = tmp_path / "run"
    rc = train.main(TINY + ["--epochs", "3", "--no-eval", "--run-dir", str(run),
                            "--log-every", str(log_every), "--save-every-steps", "2",
                            "--nan-at-step", str(nan_at)])
    assert rc == 3
    err = capsys.readouterr().err
    assert (f"not finite (nan or inf) at step {nan_at}; stopped at step {stop_at} without "
            f"writing") in err, err
    assert str(run / ckpt_lib.LAST) in err
    ck = ckpt_lib.load(str(run))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == kept
    assert all(v.isfinite().all() for v in ck["model"].values() if v.is_floating_point())


def test_sigkill_between_epochs_loses_at_most_save_every_steps(tmp_path, straight):
    """One process SIGKILLed after step 5 with --save-every-steps 2: the checkpoint holds step 4
    (mid epoch 2), and rerunning the same command line (--resume auto) ends exactly as `straight`."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "python" / "train.py"), *TINY, "--epochs", "3", "--no-eval",
           "--resume", "auto", "--run-dir", str(run), "--save-every-steps", "2"]
    out = subprocess.run(cmd + ["--sigkill-at-step", "5"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == -9, out.stdout + out.stderr
    ck = ckpt_lib.load(str(run))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 1, 4)
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "at epoch 1, step 4" in out.stdout, out.stdout + out.stderr
    _assert_same_weights(straight, ckpt_lib.load(str(run)), "after SIGKILL + --resume auto")


def _image_folder(root, n=96):
    """n small PNGs of the shapes data set in 2 class directories, plus the two bad files."""
    from PIL import Image
    from simclr_ext.data import make_shapes

    images, _ = make_shapes(n, 16, seed=int(torch.randint(0, 1000, ())))
    for i, img in enumerate(images):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    jpg = root / "class0" / "corrupt.jpg"
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # a copy cut short
    empty = root / "class1" / "empty.png"
    empty.write_bytes(b"")
    return {str(jpg), str(empty)}


def test_bad_images_are_named_or_skipped_and_counted(tmp_path, train, capsys):
    """An ImageFolder with a truncated JPEG and a zero-byte PNG: the run stops with an error
    naming the file it met; with --skip-bad-images it completes (pretraining and linear
    evaluation read every file) and reports the two files, listed in bad_images.txt."""
    data = tmp_path / "data"
    bad = _image_folder(data)
    flags = ["--dataset", "imagefolder", "--data-dir", str(data), "--batch-size", "32",
             "--width", "4", "--image-size", "16", "--no-progress", "--log-every", "1",
             "--device", "cpu", "--epochs", "1", "--eval-epochs", "1", "--no-random-baseline"]
    assert train.main(flags + ["--run-dir", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    named = [p for p in bad if f"cannot read image {p}:" in err]
    assert len(named) == 1 and "--skip-bad-images" in err, err
    run = tmp_path / "skip"
    assert train.main(flags + ["--run-dir", str(run), "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert f"run: skipped 2 unreadable images (listed in {run / 'bad_images.txt'})" in out, out
    listed = {line.split("\t")[0] for line in (run / "bad_images.txt").read_text().splitlines()}
    assert listed == bad
    assert "| SimCLR |" in out and ckpt_lib.load(str(run))["epoch"] == 1


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hung_rank_is_named_within_dist_timeout(tmp_path):
    """2 ranks without torchrun (nothing restarts or kills the group); rank 1 is frozen with
    SIGSTOP mid-run: rank 0's collective gives up after --dist-timeout 5 s, and rank 0 leaves
    with exit code 4 and an error naming rank 1 instead of hanging."""
    import signal
    import time

    port = _free_port()
    cmd = [sys.executable, str(ROOT / "python" / "train.py"), *TINY, "--epochs", "200",
           "--no-eval", "--run-dir", str(tmp_path / "run"), "--dist-timeout", "5"]
    procs = []
    for rank in range(2):
        env = dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and procs[0].poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.time()
        _, err = procs[0].communicate(timeout=90)
        waited = time.time() - t0
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == 4, err
    assert "error: rank 0 of 2 lost its peers, rank 1 did not answer a roll call" in err, err
    assert "Timed out waiting 5000ms" in err, err  # the timeout, not a closed connection
    assert waited < 60, waited  # the 5 s timeout, the 5 s roll call, and a loaded machine
