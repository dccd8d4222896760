"""CTest check of the CMake-built extension: import _C from the build dir and call build_info().

Usage: python check_build_info.py <dir holding _C.*.so> <expected version> <expect cuda 0|1>
"""
import pathlib
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
# One real op through the module proves the kernels linked, not only the bindings.
u, norm = _C.ntxent_normalize(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
assert torch.allclose(norm, torch.tensor([5.0], dtype=torch.float64)), norm
assert torch.allclose(u, torch.tensor([[0.6, 0.8]], dtype=torch.float64)), u
print("ok")
