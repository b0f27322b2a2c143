"""Backend discovery and the four levels of configuration."""

from __future__ import annotations

import pytest

from bridge.backend import Backend, BackendError, Capabilities, Executable, RunResult
from bridge.config import ConfigError, resolve_backend, search_path
from bridge.ir import PrivacyMode
from bridge.registry import available_backends, configured_backend, get_backend, register_backend


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


@pytest.fixture
def project(tmp_path):
    """A repository root (it holds .git) with a nested working directory: the walk stops at the root."""
    (tmp_path / ".git").mkdir()
    work = tmp_path / "src" / "pkg"
    work.mkdir(parents=True)
    return tmp_path, work


def test_argument_beats_environment_beats_file_beats_default(project):
    root, _ = project
    (root / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pond"\n')
    env = {"PRIVACY_BRIDGE_BACKEND": "plaintext"}
    resolved = resolve_backend("torch-spdz", environ=env, cwd=root)
    assert (resolved.kind, resolved.source) == ("argument", "the backend= argument")
    resolved = resolve_backend(None, environ=env, cwd=root)
    assert (resolved.backend, resolved.kind) == ("plaintext", "environment")
    assert resolved.source == "the environment variable PRIVACY_BRIDGE_BACKEND"
    resolved = resolve_backend(None, environ={}, cwd=root)
    assert resolved.backend == "tf-pond" and resolved.path == root / "pyproject.toml"
    assert resolved.source == f"[tool.privacy-bridge] in {root / 'pyproject.toml'}"
    empty = root.parent / (root.name + "-empty")
    empty.mkdir()
    (empty / ".git").mkdir()
    assert resolve_backend(None, PrivacyMode.ENCRYPTED_SERVING, environ={}, cwd=empty).backend == "torch-spdz"
    assert resolve_backend(None, PrivacyMode.NONE, environ={}, cwd=empty).backend == "plaintext"


def test_a_subdirectory_finds_the_project_file_by_walking_up(project):
    root, work = project
    (root / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pond"\n')
    resolved = resolve_backend(None, PrivacyMode.ENCRYPTED_SERVING, environ={}, cwd=work)
    assert (resolved.backend, resolved.path) == ("tf-pond", root / "pyproject.toml")


def test_the_nearest_file_wins_and_a_pyproject_without_our_table_does_not_stop_the_walk(project):
    root, work = project
    (root / "privacy-bridge.toml").write_text('backend = "tf-pond"\n')
    (work / "pyproject.toml").write_text('[project]\nname = "pkg"\n')  # a sub-package's own, without us
    assert resolve_backend(None, environ={}, cwd=work).path == root / "privacy-bridge.toml"
    (work.parent / "privacy-bridge.toml").write_text('backend = "torch-spdz"\n')
    resolved = resolve_backend(None, environ={}, cwd=work)
    assert (resolved.backend, resolved.path) == ("torch-spdz", work.parent / "privacy-bridge.toml")


def test_the_walk_stops_at_the_repository_root(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pond"\n')
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    assert search_path(repo / "sub") == [(repo / "sub").resolve(), repo.resolve()]
    resolved = resolve_backend(None, PrivacyMode.ENCRYPTED_SERVING, environ={}, cwd=repo / "sub")
    assert (resolved.backend, resolved.kind) == ("torch-spdz", "default")


def test_standalone_config_file(project):
    root, _ = project
    (root / "privacy-bridge.toml").write_text('backend = "tf-pond"\n')
    resolved = resolve_backend(None, environ={}, cwd=root)
    assert resolved.backend == "tf-pond" and resolved.source == str(root / "privacy-bridge.toml")


def test_pyproject_without_our_section_falls_through(project):
    root, _ = project
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (root / "privacy-bridge.toml").write_text('backend = "torch-spdz"\n')
    assert resolve_backend(None, environ={}, cwd=root).backend == "torch-spdz"


def test_bad_config_is_refused_with_the_file_name(project):
    root, work = project
    (root / "privacy-bridge.toml").write_text('backend = "tf-pond"\ncolour = "blue"\n')
    with pytest.raises(ConfigError, match="privacy-bridge.toml"):
        resolve_backend(None, environ={}, cwd=work)
    (root / "privacy-bridge.toml").write_text("backend = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_backend(None, environ={}, cwd=work)


# -- configured_backend: what privatize uses ------------------------------------------------------

def test_a_configured_secure_backend_leaves_privacy_none_on_the_plaintext_reference(project, monkeypatch):
    root, work = project
    monkeypatch.chdir(work)
    monkeypatch.setenv("PRIVACY_BRIDGE_BACKEND", "tf-pond")
    engine, resolved = configured_backend(None, "none")
    assert (engine.name, resolved.kind) == ("plaintext", "default")
    engine, resolved = configured_backend(None, "encrypted_serving")
    assert (engine.name, resolved.kind) == ("tf-pond", "environment")
    monkeypatch.delenv("PRIVACY_BRIDGE_BACKEND")
    (root / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "torch-spdz"\n')
    assert configured_backend(None, "none")[0].name == "plaintext"
    assert configured_backend(None, "federated")[0].name == "torch-spdz"


def test_an_explicit_backend_that_cannot_run_the_mode_is_still_an_error(project, monkeypatch):
    monkeypatch.chdir(project[1])
    monkeypatch.delenv("PRIVACY_BRIDGE_BACKEND", raising=False)
    with pytest.raises(BackendError, match=r"privacy='none' is not available on backend 'tf-pond'.*backend= argument"):
        configured_backend("tf-pond", "none")


@pytest.mark.parametrize("where", ["environment", "file", "argument"])
def test_an_unknown_backend_error_names_where_the_name_came_from(where, project, monkeypatch):
    root, work = project
    monkeypatch.chdir(work)
    monkeypatch.delenv("PRIVACY_BRIDGE_BACKEND", raising=False)
    explicit = None
    if where == "environment":
        monkeypatch.setenv("PRIVACY_BRIDGE_BACKEND", "tf-pnod")
        named_by = "the environment variable PRIVACY_BRIDGE_BACKEND"
    elif where == "file":
        (root / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pnod"\n')
        named_by = f"[tool.privacy-bridge] in {root / 'pyproject.toml'}"
    else:
        explicit = "tf-pnod"
        named_by = "the backend= argument"
    for mode in ("encrypted_serving", "none"):
        with pytest.raises(BackendError) as info:
            configured_backend(explicit, mode)
        message = str(info.value)
        assert "unknown backend 'tf-pnod'" in message and named_by in message and "tf-pond" in message


def test_privatize_privacy_none_works_with_a_configured_backend(project, monkeypatch):
    import keras
    import numpy as np

    from frontends.keras import privatize

    root, work = project
    monkeypatch.chdir(work)
    monkeypatch.delenv("PRIVACY_BRIDGE_BACKEND", raising=False)
    (root / "pyproject.toml").write_text('[tool.privacy-bridge]\nbackend = "tf-pond"\n')
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    private = privatize(model, privacy="none")
    assert private.backend.name == "plaintext"
    np.testing.assert_allclose(private.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert privatize(model, privacy="encrypted_serving").backend.name == "tf-pond"
