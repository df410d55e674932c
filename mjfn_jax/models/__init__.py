"""MJFN model, loss and summary. ``from mjfn_jax.models import MJFN, mjfn_loss, HEADS``."""

from mjfn_jax.models.losses import cross_entropy, mjfn_loss
from mjfn_jax.models.mjfn import FUSIONS, HEADS, MJFN
from mjfn_jax.models.summary import count_flops, count_params, model_summary

__all__ = [
    "FUSIONS",
    "HEADS",
    "MJFN",
    "count_flops",
    "count_params",
    "cross_entropy",
    "mjfn_loss",
    "model_summary",
]
