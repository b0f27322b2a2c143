"""Which backend runs a Program: configuration, not code.

Resolution order, first hit wins:
  1. an explicit ``backend=`` argument;
  2. the ``PRIVACY_BRIDGE_BACKEND`` environment variable;
  3. a project file, found the way ruff finds its settings: starting in the working
     directory and walking up, the first directory whose ``pyproject.toml`` has a
     ``[tool.privacy-bridge]`` table, or that holds a ``privacy-bridge.toml``, wins
     (in one directory ``pyproject.toml`` is read first).  A ``pyproject.toml``
     without our table does not stop the walk (a monorepo may configure us at its
     top); the walk stops after the first directory holding ``.git``/``.hg``/``.svn``
     (the repository root), or at the filesystem root;
  4. the default: ``plaintext`` for ``privacy="none"``, ``torch-spdz`` otherwise.

``Resolved.source`` names where the choice came from (the argument, the variable,
or the file's path), so that every error about a backend can say so.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bridge.ir import PrivacyMode

ENV_VAR = "PRIVACY_BRIDGE_BACKEND"
DEFAULT_SECURE_BACKEND = "torch-spdz"
DEFAULT_PLAIN_BACKEND = "plaintext"
PYPROJECT = "pyproject.toml"
STANDALONE = "privacy-bridge.toml"
#: a directory holding one of these is a repository root: the walk up stops there
VCS_MARKERS = (".git", ".hg", ".svn")

Kind = Literal["argument", "environment", "file", "default"]


class ConfigError(ValueError):
    """A configuration file says something this library does not understand."""


class BridgeConfig(BaseModel):
    """The settings a project file may hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str | None = None


@dataclass(frozen=True)
class Resolved:
    """A backend name and where it came from."""

    backend: str
    #: "argument", "environment", "file" or "default"
    kind: Kind
    #: the configuration file, when ``kind == "file"``
    path: Path | None = None

    @property
    def source(self) -> str:
        """Where the name came from, in words, for error messages."""
        if self.kind == "argument":
            return "the backend= argument"
        if self.kind == "environment":
            return f"the environment variable {ENV_VAR}"
        if self.kind == "file":
            table = "[tool.privacy-bridge] in " if self.path is not None and self.path.name == PYPROJECT else ""
            return f"{table}{self.path}"
        return "the default"

    @property
    def configured(self) -> bool:
        """Whether the name came from configuration (variable or file) rather than code or default."""
        return self.kind in ("environment", "file")


def load_file_config(directory: str | Path) -> tuple[BridgeConfig, Path] | None:
    """The project settings in ``directory`` itself (no walking), with their file, or None."""
    root = Path(directory)
    pyproject = root / PYPROJECT
    if pyproject.is_file():
        section = _read_toml(pyproject).get("tool", {}).get("privacy-bridge")
        if section is not None:
            return _parse(section, pyproject), pyproject
    standalone = root / STANDALONE
    if standalone.is_file():
        return _parse(_read_toml(standalone), standalone), standalone
    return None


def find_file_config(start: str | Path) -> tuple[BridgeConfig, Path] | None:
    """The nearest project settings at or above ``start``, up to the repository root."""
    for directory in search_path(start):
        found = load_file_config(directory)
        if found is not None:
            return found
    return None


def search_path(start: str | Path) -> list[Path]:
    """The directories ``find_file_config`` looks in, nearest first."""
    here = Path(start).resolve()
    out = []
    for directory in (here, *here.parents):
        out.append(directory)
        if any((directory / marker).exists() for marker in VCS_MARKERS):
            break
    return out


def resolve_backend(
    explicit: str | None = None,
    privacy: PrivacyMode | str = PrivacyMode.NONE,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Resolved:
    """The backend for ``privacy``: argument, then environment, then project file, then default."""
    if explicit:
        return Resolved(explicit, "argument")
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip():
        return Resolved(env[ENV_VAR].strip(), "environment")
    found = find_file_config(Path.cwd() if cwd is None else cwd)
    if found is not None and found[0].backend:
        return Resolved(found[0].backend, "file", found[1])
    return Resolved(default_backend(privacy), "default")


def default_backend(privacy: PrivacyMode | str) -> str:
    """``plaintext`` for ``privacy="none"``, ``torch-spdz`` for the private modes."""
    return DEFAULT_PLAIN_BACKEND if PrivacyMode(privacy) == PrivacyMode.NONE else DEFAULT_SECURE_BACKEND


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
