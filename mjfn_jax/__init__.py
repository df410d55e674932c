"""MJFN-JAX: the Multi-scale Joint Feature Network for micro-expression recognition in JAX/Flax.

Submodules are imported on demand (``mjfn_jax.models``, ``mjfn_jax.data``, ``mjfn_jax.train``,
...), so that ``import mjfn_jax`` stays cheap and never pulls in torch or TensorFlow.
"""

__version__ = "0.1.0"
