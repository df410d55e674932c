"""PyTorch twin of MJFN (imported only by the benchmark and parity tests, never by mjfn_jax)."""
