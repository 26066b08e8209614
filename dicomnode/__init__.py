"""The DICOM node: receive chest CT series, analyse them, send back DICOM SEG + TID 1500 SR.

Data flows one way: network -> spool -> assembled series -> jobs -> encoding -> sending.
"""

from inference.version import DISTRIBUTION, package_version

__version__ = package_version()

__all__ = ["DISTRIBUTION", "__version__"]
