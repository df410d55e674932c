"""Research tools built on the public API of mjfn_jax: combine runs, re-predict, the
STSTNet reference, preprocessing accuracy."""
