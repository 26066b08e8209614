"""Series assembly: when a series is complete, and whether it is analysed."""

from dicomnode.assembly.assembler import Assembler
from dicomnode.assembly.rules import RULES, Rule, first_failure

__all__ = ["RULES", "Assembler", "Rule", "first_failure"]
