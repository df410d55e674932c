"""Synthetic builder; importing this package registers `synthetic` with tfds."""

from data_builders.synthetic.synthetic_dataset_builder import Builder

__all__ = ["Builder"]
