"""How the scripts in python/ find simclr_ext; each imports this module before simclr_ext.

The installed package comes first (pip install .). Without one, the source tree these scripts
sit in is used, but only when it holds a compiled extension (python setup.py build_ext
--inplace): the bare tree has no _C and would fail later with a less helpful error, so the
script stops here and says what to run instead.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_tree_is_built(root: str = ROOT) -> bool:
    """True when root/simclr_ext holds a compiled _C (an in-place build)."""
    pkg = os.path.join(root, "simclr_ext")
    return os.path.isdir(pkg) and any(
        f.startswith("_C.") and f.endswith((".so", ".pyd")) for f in os.listdir(pkg))


if importlib.util.find_spec("simclr_ext") is None:
    if not source_tree_is_built():
        sys.exit(f"error: simclr_ext is not installed, and the source tree {ROOT} has no compiled "
                 f"extension. Install it (pip install '{ROOT}[train]') or build it in place "
                 f"(cd {ROOT} && python setup.py build_ext --inplace).")
    sys.path.insert(0, ROOT)
