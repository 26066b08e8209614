"""The DICOM node: receive chest CT series, analyse them, send back DICOM SEG + TID 1500 SR.

Data flows one way: network -> spool -> assembled series -> jobs -> encoding -> sending.
"""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "decov-node"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["DISTRIBUTION", "__version__"]
