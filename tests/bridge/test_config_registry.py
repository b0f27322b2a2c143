"""Backend discovery and the four levels of configuration."""

from __future__ import annotations

import pytest

from bridge.backend import Backend, BackendError, Capabilities, Executable, RunResult
from bridge.config import ConfigError, resolve_backend
from bridge.ir import PrivacyMode
from bridge.registry import available_backends, get_backend, register_backend


def test_entry_points_list_the_shipped_backends():
    assert {"plaintext", "torch-spdz", "tf-pond"} <= set(available_backends())


def test_unknown_backend_lists_the_installed_ones():
    with pytest.raises(BackendError, match=r"unknown backend 'nope'.*plaintext.*torch-spdz"):
        get_backend("nope")


def test_a_third_party_backend_joins_without_touching_bridge():
    class EchoExecutable(Executable):
        def __init__(self, program):
            self.program = program

        def run(self, inputs):
            return RunResult(dict(inputs))

    class EchoBackend(Backend):
        name = "echo"

        def capabilities(self):
            return Capabilities(privacy_modes=frozenset({PrivacyMode.NONE}), ops=frozenset())

        def prepare(self, program, weights, **options):
            return EchoExecutable(program)

    register_backend("echo", EchoBackend)
    assert "echo" in available_backends()
    assert get_backend("echo").name == "echo"


def test_argument_beats_environment_beats_file_beats_default(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pond"\n')
    env = {"PRIVACY_BRIDGE_BACKEND": "plaintext"}
    assert resolve_backend("torch-spdz", environ=env, cwd=tmp_path).source == "argument"
    resolved = resolve_backend(None, environ=env, cwd=tmp_path)
    assert (resolved.backend, resolved.source) == ("plaintext", "environment")
    resolved = resolve_backend(None, environ={}, cwd=tmp_path)
    assert resolved.backend == "tf-pond" and resolved.source.endswith("pyproject.toml")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_backend(None, PrivacyMode.ENCRYPTED_SERVING, environ={}, cwd=empty).backend == "torch-spdz"
    assert resolve_backend(None, PrivacyMode.NONE, environ={}, cwd=empty).backend == "plaintext"


def test_standalone_config_file(tmp_path):
    (tmp_path / "privacy-bridge.toml").write_text('backend = "tf-pond"\n')
    resolved = resolve_backend(None, environ={}, cwd=tmp_path)
    assert resolved.backend == "tf-pond" and resolved.source.endswith("privacy-bridge.toml")


def test_pyproject_without_our_section_falls_through(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (tmp_path / "privacy-bridge.toml").write_text('backend = "torch-spdz"\n')
    assert resolve_backend(None, environ={}, cwd=tmp_path).backend == "torch-spdz"


def test_bad_config_is_refused_with_the_file_name(tmp_path):
    (tmp_path / "privacy-bridge.toml").write_text('backend = "tf-pond"\ncolour = "blue"\n')
    with pytest.raises(ConfigError, match="privacy-bridge.toml"):
        resolve_backend(None, environ={}, cwd=tmp_path)
    (tmp_path / "privacy-bridge.toml").write_text("backend = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_backend(None, environ={}, cwd=tmp_path)
