"""Experiments: configs, the PyTorch baseline and the benchmark (not part of the library)."""
