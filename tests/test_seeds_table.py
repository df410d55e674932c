"""tools/seeds_table.py: mean +- sd over seeds, and refusing runs that differ otherwise."""

import statistics

import pytest

from mjfn_jax.train import train_and_evaluate
from tools import seeds_table


@pytest.mark.slow  # ~25 s of training runs for an experiments/ script
def test_mean_and_sd_over_seeds(tmp_path, smoke_config, tiny_dataset):
    dataset = tiny_dataset(3, 3)
    uf1s, workdirs = [], []
    for seed in (0, 1):
        workdir = str(tmp_path / f"seed{seed}")
        uf1s.append(
            train_and_evaluate(smoke_config(f"seed={seed}"), workdir, dataset)["pooled"]["uf1"]
        )
        workdirs.append(workdir)
    lines, summary = seeds_table.table(workdirs)
    assert summary["uf1"][0] == pytest.approx(statistics.mean(uf1s))
    assert summary["uf1"][1] == pytest.approx(statistics.stdev(uf1s))
    assert len(lines) == 2 + 2 + 1 and lines[2].startswith("| 0 |")
    other = str(tmp_path / "other")
    train_and_evaluate(smoke_config("train.learning_rate=0.01"), other, dataset)
    with pytest.raises(SystemExit, match="differ in more than the seed"):
        seeds_table.table([workdirs[0], other])
