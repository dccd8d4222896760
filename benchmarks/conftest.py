"""pytest-benchmark configuration: `pytest benchmarks --benchmark-only`.

Every benchmark records extra_info: op, impl (fused / reference / compiled / library baseline),
device, shape, peak_mib. benchmarks/run_benchmarks.py saves the JSON under
benchmarks/results/<device>/ and benchmarks/report.py turns it into README's tables.
"""
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption(
        "--bench-device", default=None, choices=["cpu", "cuda"],
        help="run only this device's benchmarks (default: cpu, plus cuda when available)",
    )


def pytest_generate_tests(metafunc):
    if "bench_device" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--bench-device")
        devices = [chosen] if chosen else (["cpu", "cuda"] if HAS_CUDA else ["cpu"])
        # --bench-device cuda on a machine without one: every CUDA case skips, saying why
        cuda_marks = [pytest.mark.cuda,
                      pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
        params = [pytest.param(d, marks=cuda_marks if d == "cuda" else []) for d in devices]
        metafunc.parametrize("bench_device", params)


@pytest.fixture(autouse=True)
def _name_the_machine(request):
    """Every result names the machine that produced it (report.py prints it with the table)."""
    if "benchmark" in request.fixturenames:
        import harness

        dev = request.getfixturevalue("bench_device") if "bench_device" in request.fixturenames else "cpu"
        request.getfixturevalue("benchmark").extra_info["device_name"] = harness.device_name(dev)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a CUDA benchmark")
