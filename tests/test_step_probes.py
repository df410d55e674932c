"""The step probes of a GPU lease (experiments/bn_passes.py, experiments/handover_copy.py) run
end to end on the quick preset and print what they measure (slow: each compiles the step), and
the copies it times end on the host."""

import re

import pytest

QUICK = "experiments/configs/benchmark.py:quick"


@pytest.mark.slow
def test_bn_passes_compares_the_two_batchnorm_forms(capsys):
    from experiments.bn_passes import main

    main(["--config", QUICK, "--rounds", "2", "--steps", "2"])
    out = capsys.readouterr().out
    diff = float(re.search(r"max parameter difference after one step: (\S+)", out).group(1))
    assert diff < 1e-3  # the same function, up to the last bits (Adam's first step)
    for name in ("two-pass", "one-pass"):
        assert len(re.search(rf"{name} ms: \[(.*)\]", out).group(1).split(",")) == 2
    assert re.search(r"one/two per round: median \d+\.\d+", out)


@pytest.mark.slow
def test_handover_copy_times_each_copy_and_each_beside_training(capsys):
    from experiments.handover_copy import main

    main(["--config", QUICK, "--repeats", "2", "--steps", "2"])
    out = capsys.readouterr().out
    copies = re.findall(r"^copy (\w+)\s+(\d+\.\d+) ms", out, re.M)
    assert [name for name, _ in copies] == ["per_leaf", "flat", "pinned"]  # the CPU has pinned
    assert all(float(ms) > 0 for _, ms in copies)
    beside = re.findall(r"^2 steps, (.+?)\s+\d+\.\d+ ms", out, re.M)
    assert beside == ["alone", "per_leaf beside", "flat beside", "pinned beside"]


def test_handover_copies_return_host_arrays_equal_to_the_model():
    """Each timed copy ends on the host (a copy that rebuilt device arrays would time a round
    trip), with the model's values and structure."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.handover_copy import _copies

    model = {"params": {"k": jnp.arange(24.0).reshape(2, 3, 4)}, "stats": {"m": jnp.ones(5)}}
    for name, copy in _copies(model).items():
        out = copy(model)
        assert jax.tree.structure(out) == jax.tree.structure(model), name
        for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(model), strict=True):
            assert isinstance(got, np.ndarray), (name, type(got))
            np.testing.assert_array_equal(got, np.asarray(want))
