"""SAMM builder; importing this package registers `samm` with tfds."""

from data_builders.samm.samm_dataset_builder import Builder

__all__ = ["Builder"]
