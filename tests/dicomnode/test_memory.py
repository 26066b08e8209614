"""The serve command's allocator setting (dicomnode.memory): it takes effect on glibc."""

from __future__ import annotations

import platform

import pytest

from dicomnode.memory import limit_malloc_arenas


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena limit is a glibc setting")
def test_glibc_accepts_the_arena_limit() -> None:
    assert limit_malloc_arenas() is True
