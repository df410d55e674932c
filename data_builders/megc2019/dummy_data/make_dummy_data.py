"""Generates a tiny MEGC2019 manual folder: smic/, casme2/ and samm/ dummy sources side by side.

Usage: python -m data_builders.megc2019.dummy_data.make_dummy_data OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_builders.casme2.dummy_data import make_dummy_data as casme2
from data_builders.samm.dummy_data import make_dummy_data as samm
from data_builders.smic.dummy_data import make_dummy_data as smic


def make(out_dir: str | Path, *, size: int = 64) -> dict[str, list[dict]]:
    """Writes the three sources; returns each source's rows (see their make functions)."""
    out = Path(out_dir)
    return {
        "smic": smic.make(out / "smic", layout="raw", size=size, seed=1),
        "casme2": casme2.make(out / "casme2", layout="raw", size=size, seed=2),
        "samm": samm.make(out / "samm", size=size, seed=3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    rows = make(args.out_dir)
    print({source: len(r) for source, r in rows.items()}, "written to", args.out_dir)
