"""Generates a tiny synthetic raw layout (the builder itself generates its own; this is for
looking at the layout and for tests): 2 subjects x 3 clips of 64x64 frames.

Usage: python -m data_builders.synthetic.dummy_data.make_dummy_data OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

TINY = {"num_subjects": 2, "clips_per_subject": 3, "frame_size": 64, "seed": 0}


def make(out_dir: str | Path, **overrides) -> Path:
    """Writes the raw layout (frames/, annotations.csv, true_flow/); returns annotations.csv."""
    from mjfn_jax.synthetic import generate_raw

    return Path(generate_raw(out_dir, **{**TINY, **overrides}, workers=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    print("annotations:", make(parser.parse_args().out_dir))
