"""Binarization schemes: one module per method. ``SCHEMES`` lists what the registry serves."""

from zoo.schemes.base import BinaryExport, Reported, Scheme, export_rule
from zoo.schemes.bireal import BiReal
from zoo.schemes.bnn import BNN
from zoo.schemes.bonn import BONN
from zoo.schemes.cbcn import CBCN
from zoo.schemes.fp import FullPrecision, FullPrecisionBiReal
from zoo.schemes.rbcn import RBCN
from zoo.schemes.rbnn import RBNN
from zoo.schemes.xnor import XNOR

SCHEMES: tuple[Scheme, ...] = (
    FullPrecision(), FullPrecisionBiReal(), BNN(), XNOR(), BiReal(), RBNN(), BONN(), CBCN(), RBCN(),
)

__all__ = ["SCHEMES", "BinaryExport", "Reported", "Scheme", "export_rule"]
