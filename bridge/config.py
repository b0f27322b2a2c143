"""Which backend runs a Program: configuration, not code.

Resolution order, first hit wins:
  1. an explicit ``backend=`` argument;
  2. the ``PRIVACY_BRIDGE_BACKEND`` environment variable;
  3. ``[tool.privacy-bridge]`` in ``pyproject.toml`` of the working directory, or the
     top level of ``privacy-bridge.toml`` there;
  4. the default: ``plaintext`` for ``privacy="none"``, ``torch-spdz`` otherwise.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bridge.ir import PrivacyMode

ENV_VAR = "PRIVACY_BRIDGE_BACKEND"
DEFAULT_SECURE_BACKEND = "torch-spdz"
DEFAULT_PLAIN_BACKEND = "plaintext"


class ConfigError(ValueError):
    """A configuration file says something this library does not understand."""


class BridgeConfig(BaseModel):
    """The settings a project file may hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str | None = None


@dataclass(frozen=True)
class Resolved:
    backend: str
    #: where the choice came from: "argument", "environment", a file path, or "default"
    source: str


def load_file_config(directory: str | Path) -> tuple[BridgeConfig, str] | None:
    """The project config in ``directory``, with the file it came from, or None."""
    root = Path(directory)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("privacy-bridge")
        if section is not None:
            return _parse(section, pyproject), str(pyproject)
    standalone = root / "privacy-bridge.toml"
    if standalone.is_file():
        return _parse(_read_toml(standalone), standalone), str(standalone)
    return None


def resolve_backend(
    explicit: str | None = None,
    privacy: PrivacyMode | str = PrivacyMode.NONE,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Resolved:
    if explicit:
        return Resolved(explicit, "argument")
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Resolved(env[ENV_VAR], "environment")
    found = load_file_config(Path.cwd() if cwd is None else cwd)
    if found is not None and found[0].backend:
        return Resolved(found[0].backend, found[1])
    default = DEFAULT_PLAIN_BACKEND if PrivacyMode(privacy) == PrivacyMode.NONE else DEFAULT_SECURE_BACKEND
    return Resolved(default, "default")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _parse(section: Any, path: Path) -> BridgeConfig:
    try:
        return BridgeConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(f"privacy-bridge settings in {path} are invalid:\n{exc}") from exc
