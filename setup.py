"""Build simclr_ext and its C++/CUDA extension module simclr_ext._C.

The extension is built against the torch that is already installed (see _build_backend/, README
"Packaging" and docs/architecture.md section 6). What the build decides, and why, is printed as
"[simclr_ext] ..." lines (visible with `pip install -v .`).

Environment overrides:
  SIMCLR_EXT_FORCE_CPU=1  CPU-only build even where a CUDA toolkit is found (much faster)
  FORCE_CUDA=1            build the CUDA kernels even if detection says no (needs nvcc)
  TORCH_CUDA_ARCH_LIST    CUDA archs, e.g. "9.0". Default: the visible GPUs' archs (+PTX), or
                          DEFAULT_ARCHS below when no GPU is visible (a login node, CI)
  MAX_JOBS                parallel compile jobs (ninja; its default is all cores + 2)
  NVCC_FLAGS              extra flags appended to nvcc's command line
  DEBUG=1                 -O0 -g (host) and -O0 -lineinfo (device) for debugging
  CUDA_HOME               CUDA toolkit root (default: /usr/local/cuda when it exists)

Nothing is written into the source tree except by `build_ext --inplace`: the record of the build
(simclr_ext/_build_config.py, read at import by simclr_ext/_extension.py) is written next to the
compiled _C, in the build directory (and so in the wheel), or in the tree for an in-place build.
"""
import glob
import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# The oldest torch the extension has been built and tested against (README "Packaging"); the
# pinned CI environment (requirements.txt) uses the newest.
TORCH_FLOOR = "2.13"
# No GPU visible: sm_80 (A100; its SASS also runs on sm_86 / sm_89) and sm_90 (H100 / H200) SASS,
# plus compute_90 PTX that newer GPUs JIT-compile. Why not lower: the NT-Xent kernels use
# bf16/fp16 mma.sync m16n8k16 and cp.async, which need sm_80.
DEFAULT_ARCHS = "8.0;9.0+PTX"
MIN_ARCH = (8, 0)
BUILD_CONFIG = "_build_config.py"


def read_version():
    """simclr_ext/_version.py's __version__, read as text: importing the package needs _C."""
    text = (ROOT / "simclr_ext" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if match is None:
        raise SystemExit('simclr_ext/_version.py must hold a line __version__ = "x.y.z"')
    return match.group(1)


VERSION = read_version()


def log(msg):
    print(f"[simclr_ext] {msg}", flush=True)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# torch.utils.cpp_extension resolves CUDA_HOME once, at import. Without CUDA_HOME it guesses from
# the `nvcc` on PATH, which on some machines is a wrapper outside the toolkit (the link then fails
# on -lcudart), so point it at the standard toolkit location first when that exists.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    if Path("/usr/local/cuda/bin/nvcc").exists():
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError as exc:  # reported to the user at build time
    raise SystemExit(
        "simclr_ext builds against the torch already installed in the environment it is built "
        f"for, and none was found (Python: {sys.executable}).\n"
        "- If torch is installed, the build ran in an isolated environment that hides it: "
        "`python -m build` isolates by default, so run `python -m build --no-isolation` (or "
        "`pip wheel --no-build-isolation .`) in the environment that has torch; plain "
        "`pip install .` finds it by itself.\n"
        "- Otherwise install torch first (pip install -r requirements.txt pins the tested one), "
        "then build again. See README, 'Packaging'."
    ) from exc


def resolve_cuda():
    """Decide whether the CUDA sources are compiled; return (with_cuda, reason)."""
    if env_flag("SIMCLR_EXT_FORCE_CPU"):
        return False, "SIMCLR_EXT_FORCE_CPU=1"
    cuda_home = cpp_extension.CUDA_HOME
    if env_flag("FORCE_CUDA"):
        if cuda_home is None:
            raise SystemExit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    if cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME to build the CUDA kernels)"
    return True, (f"toolkit at {cuda_home}, torch built with CUDA {torch.version.cuda}; "
                  "SIMCLR_EXT_FORCE_CPU=1 skips it")


def visible_gpu_capabilities():
    try:
        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken driver must not stop a build that names its archs
        log(f"could not query the visible GPUs ({exc}); using the default arch list")
        return []


def resolve_archs():
    """TORCH_CUDA_ARCH_LIST for this build; return (archs, reason).

    Each arch costs one more device compilation of every .cu file (README "Build" gives the
    measured cost), so only the archs asked for, or the visible GPUs', are compiled.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "from TORCH_CUDA_ARCH_LIST"
    caps = visible_gpu_capabilities()
    usable = sorted({c for c in caps if c >= MIN_ARCH})
    if usable:
        archs = [f"{major}.{minor}" for major, minor in usable]
        archs[-1] += "+PTX"  # why: a newer GPU can JIT it; no measurable compile cost (README)
        return ";".join(archs), "the visible GPU(s); set TORCH_CUDA_ARCH_LIST for others"
    if caps:
        older = ", ".join(f"sm_{a}{b}" for a, b in caps)
        return DEFAULT_ARCHS, f"default list: the visible GPU(s) ({older}) are older than sm_80"
    return DEFAULT_ARCHS, "default list (no GPU visible); set TORCH_CUDA_ARCH_LIST to narrow it"


def cuda_library_includes():
    """cuBLAS/cuSPARSE headers that ATen/cuda/CUDAContext.h needs, shipped by torch's pip deps."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for base in spec.submodule_search_locations:
        for pattern in ("cu[0-9]*/include", "cublas/include", "cusparse/include"):
            found += [p for p in sorted(glob.glob(os.path.join(base, pattern))) if os.path.isdir(p)]
    return found


def sources(with_cuda):
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True)) if with_cuda else []
    return cpp + cu


WITH_CUDA, CUDA_REASON = resolve_cuda()


def make_extension():
    debug = env_flag("DEBUG")
    log(f"version {VERSION}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    log(f"CUDA kernels: {'yes' if WITH_CUDA else 'no'} ({CUDA_REASON})")
    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}, DEBUG={int(debug)}")

    cxx = ["-fopenmp", "-Wno-psabi"] + (["-O0", "-g"] if debug else ["-O3"])
    nvcc = ["--expt-relaxed-constexpr", "-lineinfo"] + (["-O0"] if debug else ["-O3"])
    nvcc += shlex.split(os.environ.get("NVCC_FLAGS", ""))
    if os.environ.get("NVCC_FLAGS"):
        log(f"NVCC_FLAGS={os.environ['NVCC_FLAGS']}")
    macros = [("SIMCLR_EXT_VERSION", VERSION)]
    include_dirs = [str(ROOT / "csrc")]
    if WITH_CUDA:
        macros.append(("WITH_CUDA", None))
        include_dirs += cuda_library_includes()

    kind = cpp_extension.CUDAExtension if WITH_CUDA else cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx}
    if WITH_CUDA:
        extra_compile_args["nvcc"] = nvcc
    return kind(
        name="simclr_ext._C",
        sources=sources(WITH_CUDA),
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"],
    )


class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension, which also chooses the CUDA archs when it actually compiles and
    records the build in _build_config.py next to _C (a build output, never a source file)."""

    cuda_arch_list = None

    def build_extensions(self):
        if WITH_CUDA:
            archs, reason = resolve_archs()
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by cpp_extension's -gencode flags
            self.cuda_arch_list = archs
            log(f"CUDA_HOME={cpp_extension.CUDA_HOME}, TORCH_CUDA_ARCH_LIST={archs} ({reason})")
        super().build_extensions()

    def run(self):
        super().run()  # builds into build_lib; --inplace then copies _C into the source tree
        built, inplace = self._config_paths()
        self.mkpath(os.path.dirname(built))
        Path(built).write_text(
            "# Written by setup.py's build_ext next to the _C it describes; do not edit.\n"
            f"VERSION = {VERSION!r}\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n"
            f"WITH_CUDA = {WITH_CUDA!r}\n"
            f"CUDA_ARCH_LIST = {self.cuda_arch_list!r}\n"
        )
        if self.inplace:
            self.copy_file(built, inplace, level=self.verbose)

    def _config_paths(self):
        """(path in build_lib, path in the source package) of _build_config.py."""
        package_dir = self.get_finalized_command("build_py").get_package_dir("simclr_ext")
        return (os.path.join(self.build_lib, "simclr_ext", BUILD_CONFIG),
                os.path.join(package_dir, BUILD_CONFIG))

    # Declared outputs, so that wheels and editable installs carry _build_config.py with _C.
    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        if self.inplace:
            built, inplace = self._config_paths()
            mapping[built] = inplace
        return mapping

    def get_outputs(self):
        outputs = super().get_outputs()
        built = self._config_paths()[0]
        return outputs if built in outputs else outputs + [built]


setup(
    name="simclr_ext",
    version=VERSION,
    description="SimCLR with fused C++/CUDA kernels: NT-Xent loss, LARS, color distortion",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="BSD-3-Clause",  # PEP 639 (setuptools >= 77)
    license_files=["LICENSE"],
    packages=find_packages(include=["simclr_ext", "simclr_ext.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.10",
    install_requires=[f"torch>={TORCH_FLOOR}", "torchvision", "numpy"],
    # What python/train.py, linear_eval.py and finetune.py import beyond the library: the metrics
    # plot and the progress bar (pip install ".[train]").
    extras_require={"train": ["matplotlib", "tqdm"]},
    zip_safe=False,
)
