"""Where the models run: CUDA when present (or asked for), else the CPU with a set thread count."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def choose_device(preference: str = "auto", threads: int | None = None) -> torch.device:
    """The torch device for ``preference`` ("auto", "cpu", "cuda"); sets the CPU thread count.

    Raises RuntimeError when "cuda" is asked for and there is none (a silent fall-back would
    hide a misconfigured GPU node).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' configured but no CUDA device is available")
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    logger.info("models run on %s (%d CPU threads)", device, torch.get_num_threads())
    return device
