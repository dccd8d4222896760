"""Guard for a PyTorch oneDNN bug (docs/known-issues.md): the weight gradient of a 1x1, stride-2,
channels_last convolution with fewer than 8 input channels crashes (abort, segfault, bus error or
hang) when oneDNN runs its AVX2 kernels. The trainer avoids that configuration
(simclr_ext.models.preferred_memory_format); these tests run it in subprocesses, so a crash is a
failing test and not a dead test run.

CI cannot choose its CPU: on an AVX-512 machine oneDNN is told to use its AVX2 kernels with
ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's own ISA switch; ATEN_CPU_CAPABILITY does not reach it), which
reproduces the crash there too.
"""
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from simclr_ext.models import SimCLRModel, onednn_channels_last_hazards, preferred_memory_format

ROOT = Path(__file__).resolve().parent.parent
AVX2_ENV = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1")
TIMEOUT = 120  # with 2 threads the bug hangs instead of crashing: a timeout is a failure too

needs_avx2 = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="oneDNN's AVX2 kernels need a CPU with AVX2",
)


def _run(code, *args, timeout=TIMEOUT):
    """Run `code` in a fresh interpreter with oneDNN capped at AVX2 -> (returncode, output).

    It runs outside the repository: `python -c` puts the working directory first on sys.path,
    and the bare source tree (no compiled _C) must not shadow the package under test."""
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                           env=AVX2_ENV, capture_output=True, text=True, timeout=timeout,
                           cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return "timeout", ""
    return p.returncode, p.stdout + p.stderr


# The minimal reproduction: one conv's weight gradient; argv: in_channels, memory format name.
MINIMAL = """
    import sys, torch, torch.nn.functional as F
    torch.set_num_threads(1)
    ic, fmt = int(sys.argv[1]), getattr(torch, sys.argv[2])
    x = torch.randn(64, ic, 24, 24).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(2 * ic, ic, 1, 1).contiguous(memory_format=fmt).requires_grad_()
    for _ in range(3):
        F.conv2d(x, w, stride=2).sum().backward()
    print("ok")
"""

# Three training steps of the trainer's model in the memory format the trainer picks for it
# (the bug corrupts memory: one step does not always crash, three nearly always do);
# argv: width, image size.
TRAINER_STEP = """
    import sys, torch
    import simclr_ext
    from simclr_ext.models import SimCLRModel, preferred_memory_format
    torch.set_num_threads(1)
    torch.manual_seed(0)
    width, size = int(sys.argv[1]), int(sys.argv[2])
    model = SimCLRModel("resnet18", size, "nonlinear", width=width, proj_dim=16)
    fmt = preferred_memory_format(model, "cpu")
    model = model.to(memory_format=fmt)
    for _ in range(3):
        x = torch.randn(64, 3, size, size).contiguous(memory_format=fmt)
        h, z = model(x)
        simclr_ext.nt_xent_loss(z, temperature=0.2).backward()
    print("ok", fmt)
"""


@needs_avx2
def test_avx2_cap_reproduces_the_pytorch_bug():
    """The guard below is meaningful only if the AVX2 cap reproduces the crash on this machine.
    If this fails, the installed torch no longer has the bug and the workaround can be dropped."""
    rc, out = _run(MINIMAL, 4, "channels_last")
    assert rc != 0, f"channels_last 1x1/2 conv with 4 input channels no longer crashes:\n{out}"


@needs_avx2
@pytest.mark.parametrize("in_channels", [2, 4, 7])
def test_contiguous_format_avoids_the_crash(in_channels):
    rc, out = _run(MINIMAL, in_channels, "contiguous_format")
    assert rc == 0, out


@pytest.mark.parametrize("width", [4, 16])
def test_trainer_model_step_survives_avx2_onednn(width):
    """The configuration the trainer actually uses (its model, its memory-format choice, one
    thread) runs training steps under oneDNN's AVX2 kernels: width 4 is the tests' TINY model
    (the crashing downsample conv), width 16 the default (channels_last, safe)."""
    rc, out = _run(TRAINER_STEP, width, 16)
    assert rc == 0, f"trainer step at width {width} failed under ONEDNN_MAX_CPU_ISA=AVX2:\n{out}"


def test_trainer_command_survives_avx2_onednn(tmp_path):
    """The trainer command from the bug report, end to end with one thread, under AVX2 oneDNN."""
    cmd = [sys.executable, str(ROOT / "python" / "train.py"), "--train-size", "96",
           "--test-size", "40", "--batch-size", "32", "--width", "4", "--image-size", "16",
           "--epochs", "1", "--no-eval", "--no-progress", "--threads", "1",
           "--run-dir", str(tmp_path / "run")]
    try:
        p = subprocess.run(cmd, env=AVX2_ENV, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the trainer hung under ONEDNN_MAX_CPU_ISA=AVX2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.parametrize("width", range(1, 17))
def test_hazard_detection_matches_the_measured_boundary(width):
    """A ResNet-18's downsample shortcut is a 1x1/2 conv with `width` input channels: hazardous
    below 8 channels (measured: 2..7 crash, 8..33 do not; docs/known-issues.md)."""
    model = SimCLRModel("resnet18", 16, "nonlinear", width=width, proj_dim=16)
    hazards = onednn_channels_last_hazards(model)
    assert bool(hazards) == (width < 8)
    if hazards:
        assert all(name.endswith("downsample.0") for name in hazards)
    expected_cpu = torch.contiguous_format if width < 8 else torch.channels_last
    assert preferred_memory_format(model, "cpu") == expected_cpu
    assert preferred_memory_format(model, "cuda") == torch.channels_last
