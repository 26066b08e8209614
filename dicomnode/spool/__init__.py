"""Durable storage of received instances and their index."""

from dicomnode.spool.header import HeaderError, InstanceHeader, read_header
from dicomnode.spool.index import IndexedInstance, InstanceIndex, QuietSeries
from dicomnode.spool.store import OutOfSpace, Spool

__all__ = [
    "HeaderError",
    "IndexedInstance",
    "InstanceHeader",
    "InstanceIndex",
    "OutOfSpace",
    "QuietSeries",
    "Spool",
    "read_header",
]
