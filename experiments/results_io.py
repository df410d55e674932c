"""Where the experiments' commands leave their figures: ``<out>/<machine>/<stem>.{json,md}``."""

from __future__ import annotations

import json
import os

from mjfn_jax.report import json_safe


def write_result(out_dir: str, stem: str, result: dict, markdown: str) -> None:
    """``result`` as ``out_dir/stem.json`` and ``markdown`` as ``out_dir/stem.md`` (the folder
    made if needed); the markdown is printed too."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(json_safe(result), f, indent=1, default=float)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(markdown)
    print(markdown)
