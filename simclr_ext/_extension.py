"""Loads the compiled extension simclr_ext._C, refusing a torch it was not built against.

A C++ extension is tied to the exact torch it was compiled with: loaded under another one it
fails with undefined symbols or, worse, crashes. The torch version is therefore recorded at build
time in _build_config.py, a build output written next to _C (by setup.py's build_ext into the
build directory and the wheel, or into the source tree by `build_ext --inplace`; the CMake build
writes one beside its _C too), and compared before _C is loaded. Without that record (a _C copied
in by hand) the release check on _C.build_info() below still applies (docs/architecture.md, 6).
"""
import re

import torch

REBUILD_HINT = (
    "Rebuild simclr_ext against the installed torch: from its source tree run "
    "`pip install --force-reinstall --no-deps --no-cache-dir .` (see README, 'Packaging')."
)

try:
    from . import _build_config as build_config
except ImportError:  # no record beside _C: only the release check below applies
    build_config = None

if build_config is not None and build_config.TORCH_VERSION != torch.__version__:
    raise ImportError(
        f"simclr_ext was built against torch {build_config.TORCH_VERSION}, but torch "
        f"{torch.__version__} is installed. {REBUILD_HINT}"
    )

try:
    from . import _C
except ImportError as exc:
    raise ImportError(
        f"simclr_ext's compiled extension (simclr_ext._C) could not be loaded under torch "
        f"{torch.__version__}: {exc}. It is missing, or was built against another torch. "
        f"{REBUILD_HINT}"
    ) from exc

# _C knows the (major, minor, patch) it was compiled against; pre-release tags such as
# "2.5.0a0+872d972" or "2.9.0.dev20250101" carry the same release numbers.
_compiled_torch = _C.build_info()["torch_version"]
_match = re.match(r"(\d+)\.(\d+)\.(\d+)", torch.__version__)
_running_release = ".".join(_match.groups()) if _match else torch.__version__
if _compiled_torch != _running_release:
    raise ImportError(
        f"simclr_ext._C was compiled against torch {_compiled_torch}, but torch "
        f"{torch.__version__} is installed. {REBUILD_HINT}"
    )


def build_info() -> dict:
    """How the extension was built.

    Returns a dict with ``version``, ``with_cuda`` (whether the CUDA kernels were compiled),
    ``cuda_archs`` (e.g. ``"800,900"``), ``cuda_version`` and ``torch_version`` as compiled into
    ``_C``, plus ``torch_version_full`` and ``cuda_arch_list`` recorded at build time
    (_build_config.py) when available.
    """
    info = dict(_C.build_info())
    if build_config is not None:
        info["torch_version_full"] = build_config.TORCH_VERSION
        info["cuda_arch_list"] = build_config.CUDA_ARCH_LIST
    return info
