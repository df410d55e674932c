"""MEGC2019 composite builder; importing this package registers `megc2019` with tfds."""

from data_builders.megc2019.megc2019_dataset_builder import Builder

__all__ = ["Builder"]
