"""CTest check of the CMake-built extension: import _C from the build dir, check build_info() and
the _build_config.py record beside it, and run one op.

Usage: python check_build_info.py <dir holding _C.*.so> <expected version> <expect cuda 0|1>
"""
import pathlib
import runpy
import sys

build_dir, want_version, want_cuda = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sys.path.insert(0, build_dir)

import torch  # noqa: E402  (loads libtorch before _C needs its symbols)
import _C  # noqa: E402

module_file = pathlib.Path(_C.__file__).resolve()
assert module_file.parent == pathlib.Path(build_dir).resolve(), (
    f"imported {module_file}, not the module in {build_dir}")
info = _C.build_info()
print(f"{module_file.name}: {info}")
assert info["version"] == want_version, info
assert info["torch_version"] == torch.__version__.split("+")[0], (info, torch.__version__)
assert info["with_cuda"] is want_cuda, info
if want_cuda:
    assert info["cuda_archs"] not in (None, "unknown"), info

# The record simclr_ext/_extension.py compares with the running torch before it loads _C.
record = runpy.run_path(str(module_file.parent / "_build_config.py"))
print(f"_build_config.py: TORCH_VERSION={record['TORCH_VERSION']!r}, "
      f"WITH_CUDA={record['WITH_CUDA']!r}, CUDA_ARCH_LIST={record['CUDA_ARCH_LIST']!r}")
assert record["VERSION"] == want_version, record["VERSION"]
assert record["TORCH_VERSION"] == torch.__version__, (record["TORCH_VERSION"], torch.__version__)
assert record["WITH_CUDA"] is want_cuda, record["WITH_CUDA"]

# One real op through the module proves the kernels linked, not only the bindings: a LARS step
# on one float64 tensor, against the update written out here (docs/architecture.md, 3.1).
torch.manual_seed(0)
w, g = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
v = torch.randn(5, dtype=torch.float64)
lr, wd, momentum, eta = 0.1, 1e-4, 0.9, 1e-3
g2 = g + wd * w
want_v = momentum * v + lr * (eta * w.norm() / g2.norm()) * g2
want_w = w - want_v
_C.lars_step([w], [g], [v], [lr], [wd], [momentum], [eta], [True], [False])
assert torch.allclose(v, want_v), (v, want_v)
assert torch.allclose(w, want_w), (w, want_w)
print("ok")
