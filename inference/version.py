"""The installed distribution's version: every result names the code that produced it.

Both import packages (``inference`` and ``dicomnode``) ship in one distribution; this module is
the one place that asks for its version, and imports nothing heavy.
"""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "decov-node"


def package_version() -> str:
    """The version of the installed ``decov-node`` distribution."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
        return "0+unknown"
