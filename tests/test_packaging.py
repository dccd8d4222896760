"""Packaging: setup.py's version source, that running it writes nothing into the source tree, and
its message when the build cannot see torch (README "Packaging")."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "setup.py"

pytestmark = pytest.mark.skipif(not SETUP.is_file(), reason="needs the source tree (setup.py)")


def run_setup(*args, block_torch=False):
    """Run setup.py with args from the repository root, optionally as if torch were missing."""
    prelude = "import sys\n"
    if block_torch:
        prelude += "sys.modules['torch'] = None  # import torch raises ImportError\n"
    code = (prelude + f"sys.argv = ['setup.py', *{list(args)!r}]\n"
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'),"
            " {'__name__': '__main__', '__file__': 'setup.py'})\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def version_file_version():
    text = (ROOT / "simclr_ext" / "_version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def test_setup_reads_the_one_version_source():
    out = run_setup("--version")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == version_file_version()


def snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_setup_writes_nothing_into_the_source_tree():
    # Without a build command (pip runs setup.py like this to get the metadata), the package folder
    # must stay as it is: the build record belongs next to a built _C only.
    before_pkg, before_root = snapshot(ROOT / "simclr_ext"), snapshot(ROOT)
    for args in (["--version"], ["--name"]):
        out = run_setup(*args)
        assert out.returncode == 0, out.stdout + out.stderr
    assert snapshot(ROOT / "simclr_ext") == before_pkg
    assert snapshot(ROOT) == before_root


def test_build_without_visible_torch_names_the_fix():
    out = run_setup("bdist_wheel", block_torch=True)
    assert out.returncode != 0
    msg = out.stdout + out.stderr
    assert "none was found" in msg
    assert "python -m build --no-isolation" in msg
    assert "pip wheel --no-build-isolation" in msg
