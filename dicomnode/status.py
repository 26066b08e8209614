"""Named DIMSE status codes the node returns (PS3.4 Annex B, PS3.7 Annex C)."""

import enum


class Status(enum.IntEnum):
    """C-STORE/C-ECHO response statuses used by the node."""

    SUCCESS = 0x0000
    #: Refused: out of resources (disk full, below the configured free-space floor).
    OUT_OF_RESOURCES = 0xA700
    #: Error: cannot understand (undecodable dataset, missing UIDs, inconsistent pixel data).
    CANNOT_UNDERSTAND = 0xC210
    #: Refused: SOP class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: Failure: unrecognised operation (a DIMSE service other than C-ECHO and C-STORE).
    UNRECOGNIZED_OPERATION = 0x0211
    #: Failure: processing failure (an unexpected error inside the node).
    PROCESSING_FAILURE = 0x0110


#: Statuses a peer may answer to our C-STORE that still mean "stored" (PS3.4 B.2.3).
STORE_WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
