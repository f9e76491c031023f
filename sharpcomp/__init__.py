"""sharpcomp: loss flatness (sharpness) next to representation compression, along SGD training."""

__version__ = "0.1.0"
