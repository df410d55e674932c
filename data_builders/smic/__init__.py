"""SMIC-HS builder; importing this package registers `smic` with tfds."""

from data_builders.smic.smic_dataset_builder import Builder

__all__ = ["Builder"]
