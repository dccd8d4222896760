"""PEP 517 build backend for simclr_ext: setuptools, plus the torch of the target environment.

pip builds in an isolated environment by default, where the user's torch is not importable. A
build requirement on torch would install a second, multi-GB torch into that environment and
compile the extension against it, which can differ from the torch the package later runs under
(an ABI mismatch that shows up as undefined symbols at import). Instead this backend keeps pip's
isolation for the build tools (setuptools and ninja come from the isolated environment, first on
sys.path; pybind11 is the copy bundled with torch) and appends the target interpreter's own
site-packages at the end, so `import torch` finds the torch that is already installed. The
extension is then built against exactly the torch it will run with; simclr_ext's import-time check
catches a later torch change (docs/architecture.md, 6).

This works because pip runs the backend with the target environment's own interpreter. `python -m
build` instead runs it inside a separate virtual environment, whose site-packages are not the
target's: there setup.py stops with a message naming `python -m build --no-isolation`.
"""
import sys
import sysconfig

from setuptools import build_meta as _setuptools


def _expose_installed_torch():
    try:
        import torch  # noqa: F401  (already importable: --no-build-isolation, or a plain env)
        return
    except ImportError:
        pass
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        path = paths.get(key)
        if path and path not in sys.path:
            sys.path.append(path)


_expose_installed_torch()

get_requires_for_build_wheel = _setuptools.get_requires_for_build_wheel
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
build_wheel = _setuptools.build_wheel
build_sdist = _setuptools.build_sdist
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
