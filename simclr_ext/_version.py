"""simclr_ext's version: the one place it is written.

setup.py reads this file as text (it does not import the package, which needs the compiled
extension), CMakeLists.txt reads it with a regular expression, and both compile it into _C, whose
build_info()["version"] must then equal simclr_ext.__version__ (tests/test_build.py).
"""
__version__ = "0.1.0"
