"""Skip conditions that several test modules share."""

import shutil

import pytest

needs_cpp_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="the CPU inductor compiles C++: needs g++ (apt-get install g++)",
)
