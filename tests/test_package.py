"""The project is a real package: a wheel with both packages and the console scripts, which
imports and runs from outside the repository."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    shutil.rmtree(os.path.join(ROOT, "build"), ignore_errors=True)  # no stale modules in it
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), ROOT],
        check=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("mjfn_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("mjfn_jax/train.py", "mjfn_jax/preprocess/flow.py", "mjfn_jax/models/mjfn.py",
                   "data_builders/build.py", "data_builders/casme2/checksums.tsv",
                   *(f"mjfn_jax/configs/{name}.py" for name in ("synthetic", "casme2", "samm",
                     "smic", "megc2019", "flow_images", "benchmark"))):  # fmt: skip
        assert module in names, module
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in SCRIPTS:
        assert f"{script} = " in scripts
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(site))
    code = (
        "import sys, mjfn_jax.train, mjfn_jax.data, mjfn_jax.predict\n"
        f"assert mjfn_jax.train.__file__.startswith({str(site)!r}), mjfn_jax.train.__file__\n"
        "from mjfn_jax.config_io import load_config\n"  # a shipped config, by name, from /tmp
        "assert load_config('casme2:smoke').model.num_classes == 5\n"
        "assert not any(m.startswith('data_builders') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env, timeout=120)
    for script, module in SCRIPTS.items():  # what each console script runs, from /tmp
        help_run = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True,
            cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip
        assert help_run.returncode == 0 and "Traceback" not in help_run.stderr, script
        assert help_run.stdout.startswith(f"usage: {script}"), help_run.stdout[:200]
        flags = set(re.findall(r"(?<![\w-])--([a-z][\w-]*)", help_run.stdout))
        assert flags and not [f for f in flags if "-" in f], (script, flags)
    listed = subprocess.run(
        [sys.executable, "-m", "mjfn_jax.main", "--list_configs"], capture_output=True,
        text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == ["benchmark", "casme2", "flow_images", "megc2019", "samm", "smic", "synthetic"]


SCRIPTS = {
    "mjfn-train": "mjfn_jax.main",
    "mjfn-predict": "mjfn_jax.predict",
    "mjfn-summary": "mjfn_jax.models",
    "mjfn-build": "data_builders",
    "mjfn-compare": "mjfn_jax.compare",
}
