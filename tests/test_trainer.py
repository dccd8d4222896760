"""The SimCLR trainer: DDP equivalence (global BN + gathered negatives + gradient averaging),
exact resume, atomic checkpoints, clear errors, and the main command end to end."""
import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import simclr_ext
from simclr_ext import checkpoint as ckpt_lib
from simclr_ext.distributed import convert_global_batchnorm
from simclr_ext.models import SimCLRModel
from simclr_ext.recipe import simclr_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scripts():
    """python/train.py and python/linear_eval.py as modules: their directory is on sys.path while
    they are imported (as when they run as scripts), and only then."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "python"))
        yield SimpleNamespace(train=importlib.import_module("train"),
                              linear_eval=importlib.import_module("linear_eval"))

TINY = ["--train-size", "96", "--test-size", "40", "--batch-size", "32", "--width", "4",
        "--image-size", "16", "--eval-epochs", "3", "--no-progress", "--log-every", "1"]
N_PER_RANK, STEPS, SIZE = 6, 2, 16


def _fixed_views(world, steps=STEPS):
    """Pre-augmented global batch: view 1 and view 2 of world * N_PER_RANK images, per step."""
    g = torch.Generator().manual_seed(1234)
    n = world * N_PER_RANK
    return [(torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randn(n, 3, SIZE, SIZE, generator=g))
            for _ in range(steps)]


def _make(distributed):
    torch.manual_seed(0)
    model = SimCLRModel("resnet18", SIZE, "nonlinear", width=4, proj_dim=16)
    if distributed:
        model = convert_global_batchnorm(model, torch.device("cpu"))
    core = model
    crit = simclr_ext.NTXentLoss(temperature=0.2, gather_distributed=distributed)
    # a large lr and no adaptation on 1-d params: a wrong gradient shows up plainly in the weights
    opt = simclr_ext.LARS(simclr_ext.simclr_param_groups(core, 1e-4), lr=0.1, momentum=0.9,
                          weight_decay=1e-4)
    return core, crit, opt


def _ddp_rank(rank, world, steps=STEPS):
    core, crit, opt = _make(True)
    model = torch.nn.parallel.DistributedDataParallel(core, broadcast_buffers=False)
    losses = []
    for v1, v2 in _fixed_views(world, steps):
        sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)  # different data on every rank
        losses.append(simclr_step(model, crit, opt, torch.cat([v1[sl], v2[sl]])).item())
    return {"state": {k: v.clone() for k, v in core.state_dict().items()}, "losses": losses}


def test_ddp_step_equals_single_process_on_concatenated_batch(distributed):
    """2 gloo ranks with different data == 1 process on the concatenated batch (global BN,
    gathered negatives and gradient averaging together), and the ranks stay identical."""
    world = 2
    ranks = distributed(_ddp_rank, world)
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), f"{k} differs between ranks"
    core, crit, opt = _make(False)
    initial = {k: v.clone() for k, v in core.state_dict().items()}
    losses = [simclr_step(core, crit, opt, torch.cat([v1, v2])).item() for v1, v2 in _fixed_views(world)]
    # the global loss is reported on every rank
    for r in ranks:
        assert r["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-6)
    moved = 0
    for k, ref in core.state_dict().items():
        got = ranks[0]["state"][k]
        if ref.is_floating_point():
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-5, msg=f"{k} differs from 1 process")
            moved += int(not torch.equal(ref, initial[k]))
        else:
            assert torch.equal(got, ref), k
    assert moved > 10  # the steps really changed the weights and BN statistics


def _state(run_dir):
    return ckpt_lib.load(str(run_dir))


def test_resume_mid_epoch_is_exact(tmp_path, scripts):
    train = scripts.train
    common = TINY + ["--epochs", "2", "--no-eval"]
    assert train.main(common + ["--run-dir", str(tmp_path / "straight")]) == 0
    # SIGTERM path after step 4 of 6 (mid second epoch): checkpoint, exit 143, then resume
    rc = train.main(common + ["--run-dir", str(tmp_path / "cut"), "--stop-at-step", "4"])
    assert rc == 128 + 15
    cut = _state(tmp_path / "cut")
    assert (cut["epoch"], cut["step_in_epoch"], cut["global_step"]) == (1, 1, 4)
    assert train.main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "cut")
    assert b["global_step"] == a["global_step"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after resume"
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert torch.equal(a["rng"][0]["augment"], b["rng"][0]["augment"])


def test_resume_after_real_sigterm_is_exact(tmp_path):
    """A real SIGTERM at whatever step it lands, then --resume: same weights as straight through."""
    import signal
    import time

    # 20 epochs x 3 steps: the signal, sent after step 2, lands well before the end
    common = TINY + ["--epochs", "20", "--no-eval"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "python" / "train.py")]
    subprocess.run(cmd + common + ["--run-dir", str(tmp_path / "a")], check=True, env=env,
                   capture_output=True, timeout=300)
    proc = subprocess.Popen(cmd + common + ["--run-dir", str(tmp_path / "b")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in out, out
    assert ckpt_lib.load(str(tmp_path / "b"))["global_step"] < 60
    subprocess.run(cmd + ["--resume", str(tmp_path / "b"), "--no-progress"], check=True, env=env,
                   capture_output=True, timeout=300)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after SIGTERM + resume"


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / ckpt_lib.LAST)
    good = {"format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION, "w": torch.arange(10.0)}
    ckpt_lib.save_atomic(good, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # some bytes hit the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_lib.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt_lib.load(path)["w"], torch.arange(10.0))
    assert os.listdir(tmp_path) == [ckpt_lib.LAST]  # no temporary file left behind


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"garbage\.pt is unreadable"):
        ckpt_lib.load(str(bad))
    real = tmp_path / "real.pt"
    ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION,
                          "w": torch.randn(1000)}, str(real))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(real.read_bytes()[:2000])
    with pytest.raises(ckpt_lib.CheckpointError, match=r"trunc\.pt is unreadable"):
        ckpt_lib.load(str(trunc))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ckpt_lib.CheckpointError, match="not a simclr_ext checkpoint"):
        ckpt_lib.load(str(other))
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint at"):
        ckpt_lib.load(str(tmp_path / "missing"))


def test_augment_torchvision_trains_like_fused(tmp_path, scripts):
    """--augment torchvision makes the views per view with torchvision's ops from the same
    parameters: the first step (same weights, views equal to ~1e-5) has the same loss. Later
    steps drift apart: at this lr the run amplifies float rounding, so only the first is
    compared (test_trainer_parts compares the views of any step)."""
    train = scripts.train
    common = TINY + ["--epochs", "1", "--no-eval"]
    assert train.main(common + ["--run-dir", str(tmp_path / "f")]) == 0
    assert train.main(common + ["--run-dir", str(tmp_path / "t"), "--augment", "torchvision"]) == 0
    assert _state(tmp_path / "t")["config"]["augment"] == "torchvision"
    losses = {}
    for name in ("f", "t"):
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in recs if r["kind"] == "train"]
    assert len(losses["t"]) == 3 and all(math.isfinite(v) for v in losses["t"])
    assert losses["t"][0] == pytest.approx(losses["f"][0], rel=1e-5)


def test_imagefolder_of_mixed_sizes_trains_and_resumes_exactly(tmp_path, scripts):
    """Images of different sizes reach SimCLRAugment as a list; the views are a function of
    (seed, epoch, step, rank), so a resumed run matches one that never stopped."""
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            h, w = (int(v) for v in torch.randint(12, 40, (2,), generator=g))
            px = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(root / c / f"{i}.png")
    train = scripts.train
    common = ["--dataset", "imagefolder", "--data-dir", str(root), "--batch-size", "8",
              "--width", "4", "--image-size", "16", "--no-progress", "--epochs", "2", "--no-eval",
              "--val-fraction", "0.25"]
    assert train.main(common + ["--run-dir", str(tmp_path / "straight")]) == 0
    rc = train.main(common + ["--run-dir", str(tmp_path / "cut"), "--stop-at-step", "3"])
    assert rc == 128 + 15
    assert train.main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "cut")
    assert a["global_step"] == b["global_step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after resume"


def test_mismatched_checkpoint_gives_clear_error(tmp_path, capsys, scripts):
    train = scripts.train
    run = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--no-eval", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run), "--width", "8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "--width 8" in err and "checkpoint: 4" in err
    with pytest.raises(SystemExit):  # the augmentation defines the run too
        train.main(["--resume", str(run), "--augment", "torchvision"])
    assert "--augment 'torchvision' (checkpoint: 'fused')" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a fresh run may not overwrite a run directory
        train.main(TINY + ["--epochs", "1", "--run-dir", str(run)])
    assert "already holds a run" in capsys.readouterr().err
    ck = ckpt_lib.load(str(run))
    model = SimCLRModel("resnet18", 16, "nonlinear", width=8)
    with pytest.raises(ckpt_lib.CheckpointError, match="does not fit this model"):
        ckpt_lib.load_model_state(model, ck["model"], ck["path"])
    linear_eval = scripts.linear_eval
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ckpt_lib.LAST).write_bytes(b"junk")
    assert linear_eval.main([str(bad)]) == 2
    assert "unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be >= 2"),
    (["--arch", "resnet999"], "unknown architecture 'resnet999'"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent/imagenet"], "/nonexistent/imagenet"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
    (["--head", "mlp3"], "unknown projection head"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--base-lr", "0"], "--base-lr must be > 0"),
    (["--resume", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
    (["--lr-scaling", "cubic"], "invalid choice: 'cubic'"),
    (["--augment", "kornia"], "invalid choice: 'kornia'"),
    (["--crop-scale", "0"], "--crop-scale must be in (0, 1]"),
    (["--gray-p", "1.5"], "--gray-p must be in [0, 1]"),
    (["--ramp", "-0.1"], "--ramp must be finite and >= 0"),
    (["--ramp", "nan"], "--ramp must be finite and >= 0"),
    (["--monitor-every", "-1"], "--monitor-every must be >= 0"),
    (["--semi-hard"], "--semi-hard applies to --loss nt_logistic or margin_triplet"),
    (["--loss", "nt_logistic", "--margin", "0.3"], "--margin applies to --loss margin_triplet only"),
    (["--loss", "margin_triplet", "--margin", "0"], "--margin must be > 0"),
    (["--loss", "infonce"], "invalid choice: 'infonce'"),
])
def test_bad_flags_give_clear_errors(flags, message, capsys, scripts):
    train = scripts.train
    with pytest.raises(SystemExit) as e:
        train.main(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_malformed_data_dirs_give_clear_errors(tmp_path, capsys, scripts):
    train = scripts.train
    empty = tmp_path / "empty_imagenet"
    empty.mkdir()
    assert train.main(["--dataset", "imagefolder", "--data-dir", str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no class sub-directories" in err
    assert train.main(["--dataset", "cifar10", "--data-dir", str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read cifar10 from data directory {empty}" in err


def test_plot_helper_without_matplotlib_is_a_one_line_note(tmp_path, scripts, monkeypatch, capsys):
    train = scripts.train
    recs = [{"kind": "train", "step": i + 1, "loss": float(l), "lr": 0.1}
            for i, l in enumerate(torch.rand(5).tolist())]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    results = {"SimCLR": {"top1": 50.0, "top5": 90.0}}
    monkeypatch.setattr(train, "_NOTED", set())
    assert train.make_plot(str(tmp_path), results) is True
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "metrics.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert train.make_plot(str(tmp_path), results) is False
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "matplotlib is not installed" in out[0] and "[train]" in out[0]
    assert not (tmp_path / "metrics.png").exists()


def test_run_without_matplotlib_and_tqdm_succeeds(tmp_path, scripts, monkeypatch, capsys):
    """The plot and the progress bar are optional ([train] extra): a run without their libraries
    exits 0 with its results saved and one note per missing library, however many epochs."""
    train = scripts.train
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(train, "_NOTED", set())
    run = tmp_path / "run"
    flags = [f for f in TINY if f != "--no-progress"] + ["--epochs", "2", "--no-random-baseline"]
    assert train.main(flags + ["--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("note: matplotlib is not installed") == 1, out
    assert out.count("note: tqdm is not installed") == 1, out
    assert "| SimCLR |" in out and (run / "results.json").is_file()
    assert not (run / "metrics.png").exists() and "metrics.png" not in out.splitlines()[-1]


def test_a_plot_that_fails_does_not_fail_the_run(tmp_path, scripts, monkeypatch, capsys):
    train = scripts.train

    def broken_plot(run_dir, results=None):
        raise RuntimeError("no display backend")

    monkeypatch.setattr(train, "make_plot", broken_plot)
    run = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--no-eval", "--run-dir", str(run)]) == 0
    assert "metrics.png could not be drawn (RuntimeError: no display backend)" in capsys.readouterr().out
    assert ckpt_lib.load(str(run))["epoch"] == 1


def test_objects_crop_scale_monitor_and_supervised_baseline(tmp_path, scripts, capsys):
    run = tmp_path / "run"
    assert scripts.train.main(TINY + ["--dataset", "objects", "--epochs", "2", "--crop-scale", "0.5",
                                      "--supervised-baseline", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| supervised |" in out and "of the supervised ceiling" in out
    # the resolved augmentation is shown: the small-image defaults, the explicit crop
    assert ("views: 16 px, crop 0.5-1 + flip, color strength 0.5 (p 0.8), grayscale p 0.5, "
            "blur p 0, illumination ramp 0.4") in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"] == "objects" and cfg["crop_scale"] == 0.5
    assert (cfg["gray_p"], cfg["ramp"]) == (0.5, 0.4)
    res = json.loads((run / "results.json").read_text())["results"]
    assert set(res) == {"SimCLR", "random init", "supervised"}
    assert 0 <= res["supervised"]["top1"] <= res["supervised"]["top5"] <= 100
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    mon = [r for r in recs if r["kind"] == "monitor"]
    assert [r["epoch"] for r in mon] == [1, 2]
    for r in mon:
        assert 0 <= r["knn_top1"] <= 100 and -1 <= r["pos_cos"] <= 1 and 0 <= r["align"] <= 4
        assert r["uniform"] <= 0 and 1 <= r["erank"] <= 128
    assert ckpt_lib.load(str(run))["config"]["crop_scale"] == 0.5


def test_defaults_adapt_to_the_data(tmp_path, scripts):
    from PIL import Image

    from simclr_ext.defaults import augmentation_defaults

    train = scripts.train
    parse = lambda *f: train.build_parser().parse_args(list(f))  # noqa: E731
    # embedded data: its native 24 px, hence the small-image augmentation
    a = parse()
    train.resolve_defaults(a)
    assert (a.image_size, a.crop_scale, a.color_strength, a.blur_p) == (24, 0.35, 0.5, 0.0)
    assert (a.gray_p, a.ramp, a.base_lr) == (0.5, 0.4, 0.15)
    # an ImageFolder of 96 x 80 images: its short side, and the paper's ImageNet augmentation
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (96, 80)).save(tmp_path / c / "0.png")
    a = parse("--dataset", "imagefolder", "--data-dir", str(tmp_path))
    train.resolve_defaults(a)
    assert (a.image_size, a.crop_scale, a.color_strength, a.blur_p) == (80, 0.08, 1.0, 0.5)
    assert (a.gray_p, a.ramp, a.base_lr) == (0.2, 0.0, 0.075)
    # an explicit flag wins over the adaptive default; the rest still adapt to --image-size
    a = parse("--image-size", "128", "--blur-p", "0.2", "--crop-scale", "0.5", "--ramp", "0.3")
    train.resolve_defaults(a)
    assert (a.image_size, a.crop_scale, a.color_strength, a.blur_p) == (128, 0.5, 1.0, 0.2)
    assert (a.gray_p, a.ramp, a.base_lr) == (0.2, 0.3, 0.075)
    assert augmentation_defaults(64) != augmentation_defaults(65)


def test_resume_of_a_checkpoint_from_before_crop_scale_gray_p_ramp(tmp_path, scripts):
    train = scripts.train
    run = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "2", "--no-eval", "--monitor-every", "0",
                              "--run-dir", str(run), "--stop-at-step", "3"]) == 128 + 15
    ck = torch.load(run / ckpt_lib.LAST, weights_only=False)
    for key in ("crop_scale", "gray_p", "ramp"):
        del ck["config"][key]  # as written before the flags existed
    torch.save(ck, run / ckpt_lib.LAST)
    assert train.main(["--resume", str(run), "--no-progress"]) == 0
    cfg = ckpt_lib.load(str(run))["config"]
    assert (cfg["crop_scale"], cfg["gray_p"], cfg["ramp"]) == (0.08, 0.2, 0.0)  # what those runs used


def test_main_command_end_to_end(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "python" / "train.py"), *TINY, "--epochs", "1", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| SimCLR |" in out.stdout and "| random init |" in out.stdout
    for f in ("config.json", "metrics.jsonl", "metrics.png", "results.json", ckpt_lib.LAST):
        assert (run / f).is_file(), f
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert len(train_recs) == 3 and {"loss", "lr", "images_per_s"} <= set(train_recs[0])
    evals = {r["encoder"]: r for r in recs if r["kind"] == "eval"}
    assert set(evals) == {"SimCLR", "random init"}
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in evals.values())
    assert json.loads((run / "config.json").read_text())["arch"] == "resnet18"
    # the two companion scripts read the same run directory
    le = subprocess.run([sys.executable, str(ROOT / "python" / "linear_eval.py"), str(run),
                         "--eval-epochs", "3"], capture_output=True, text=True, timeout=300)
    assert le.returncode == 0 and "| SimCLR |" in le.stdout, le.stderr
    ft = subprocess.run([sys.executable, str(ROOT / "python" / "finetune.py"), str(run),
                         "--label-fraction", "0.5", "--epochs", "1", "--batch-size", "16"],
                        capture_output=True, text=True, timeout=300)
    assert ft.returncode == 0 and "SimCLR fine-tuned" in ft.stdout, ft.stderr


def test_scripts_find_the_installed_package_first_then_a_built_source_tree(tmp_path):
    """python/_bootstrap.py: an importable simclr_ext wins; else the scripts' own source tree when
    it holds a compiled _C; a tree without one stops the script with a message saying what to run."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    probe = "import _bootstrap\nimport simclr_ext\nprint('FROM', simclr_ext.__file__)\n"

    def run_probe(tree, extra_path=None):
        (tree / "python").mkdir(parents=True, exist_ok=True)
        (tree / "python" / "_bootstrap.py").write_text((ROOT / "python" / "_bootstrap.py").read_text())
        (tree / "python" / "probe.py").write_text(probe)
        e = dict(env, PYTHONPATH=str(extra_path)) if extra_path else env
        # -S: no site-packages, so a simclr_ext installed in this environment (CI installs it)
        # does not count as "installed" here; the probe's trees stand in for both cases
        return subprocess.run([sys.executable, "-S", str(tree / "python" / "probe.py")], env=e,
                              capture_output=True, text=True, timeout=120, cwd=str(tmp_path))

    # a source tree without a compiled extension, nothing installed: a clear stop
    bare = tmp_path / "bare"
    (bare / "simclr_ext").mkdir(parents=True)
    (bare / "simclr_ext" / "__init__.py").write_text("raise SystemExit('the bare tree was imported')\n")
    out = run_probe(bare)
    assert out.returncode == 1 and "has no compiled extension" in out.stderr, out.stderr
    assert "setup.py build_ext --inplace" in out.stderr
    # the same tree once built in place (a stand-in _C file): the tree is imported
    (bare / "simclr_ext" / "__init__.py").write_text("")
    (bare / "simclr_ext" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    out = run_probe(bare)
    assert out.returncode == 0 and f"FROM {bare / 'simclr_ext' / '__init__.py'}" in out.stdout, out.stderr
    # an installed package (here: on the path) wins over the built tree
    site = tmp_path / "site"
    (site / "simclr_ext").mkdir(parents=True)
    (site / "simclr_ext" / "__init__.py").write_text("")
    out = run_probe(bare, extra_path=site)
    assert out.returncode == 0 and f"FROM {site / 'simclr_ext' / '__init__.py'}" in out.stdout, out.stderr


def _criterion_args(**kw):
    base = dict(impl="fused", loss="nt_xent", temperature=0.2, semi_hard=False, margin=None)
    return SimpleNamespace(**dict(base, **kw))


@pytest.mark.parametrize("loss, knobs, other", [
    ("nt_logistic", {"temperature": 0.3}, {"temperature": 0.3, "semi_hard": True}),
    ("margin_triplet", {"margin": 0.3}, {"margin": 0.8}),
    ("margin_triplet", {"margin": 0.4, "semi_hard": True}, {"margin": 0.4}),
])
def test_loss_flag_builds_that_loss_with_its_knobs_fused_and_reference(scripts, loss, knobs, other):
    train = scripts.train
    z = torch.randn(48, 16, dtype=torch.float32)
    fused = train.build_criterion(_criterion_args(loss=loss, **knobs), False)
    ref = train.build_criterion(_criterion_args(loss=loss, impl="reference", **knobs), False)
    changed = train.build_criterion(_criterion_args(loss=loss, **other), False)
    assert type(fused).__name__ == type(ref).__name__ and fused.__class__ is not ref.__class__
    torch.testing.assert_close(fused(z), ref(z), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused(z), changed(z))  # the knob reached the loss


def test_other_loss_trains_and_a_resume_keeps_it(tmp_path, capsys, scripts):
    train = scripts.train
    run = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--no-eval", "--run-dir", str(run),
                              "--loss", "margin_triplet", "--semi-hard"]) == 0
    ck = ckpt_lib.load(str(run))
    assert (ck["config"]["loss"], ck["config"]["semi_hard"], ck["config"]["margin"]) == (
        "margin_triplet", True, 0.5)
    assert "loss margin_triplet (m=0.5, semi-hard)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.main(["--resume", str(run), "--loss", "nt_xent"])
    assert "--loss 'nt_xent' (checkpoint: 'margin_triplet')" in capsys.readouterr().err
