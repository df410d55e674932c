"""CASME II builder; importing this package registers `casme2` with tfds."""

from data_builders.casme2.casme2_dataset_builder import Builder

__all__ = ["Builder"]
