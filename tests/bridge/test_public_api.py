"""``privacy_bridge``: the import name of the public API, installed by pyproject."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_public_names_are_the_front_end_s():
    import privacy_bridge
    from frontends.keras import PrivateModel, privatize, to_ir

    assert privacy_bridge.privatize is privatize and privacy_bridge.to_ir is to_ir
    assert privacy_bridge.PrivateModel is PrivateModel
    assert set(privacy_bridge.__all__) >= {"privatize", "to_ir", "PrivateModel", "available_backends"}
    assert all(hasattr(privacy_bridge, name) for name in privacy_bridge.__all__)


def test_installed_and_importable_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", "import privacy_bridge, sys; print(privacy_bridge.__file__); "
         "print(privacy_bridge.privatize.__module__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    path, module = done.stdout.split()
    assert Path(path) == ROOT / "privacy_bridge" / "__init__.py" and module == "frontends.keras.privatize"


def test_pyproject_packages_it_and_states_the_license_as_spdx():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "privacy_bridge*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert project["project"]["license"] == "Apache-2.0"  # the string form: no setuptools deprecation warning
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])
