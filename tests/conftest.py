"""Shared fixtures.  torch is imported before TensorFlow, as Keras' own tests do."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Every subprocess a test starts (user scripts, launched parties) inherits this: a native crash
# (SIGSEGV, SIGABRT) prints every thread's Python stack instead of dying with an empty stderr.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import torch  # noqa: E402,F401  - import order matters when both frameworks load

import pytest  # noqa: E402

from bridge.registry import available_backends, get_backend  # noqa: E402

SECURE_BACKENDS = [b for b in ("torch-spdz", "tf-pond") if b in available_backends()]
ALL_BACKENDS = ["plaintext", *SECURE_BACKENDS]


@pytest.fixture(params=SECURE_BACKENDS)
def secure_backend(request):
    return get_backend(request.param)


@pytest.fixture(params=SECURE_BACKENDS)
def kernels(request):
    return get_backend(request.param).make_kernels()


# -- the time budget of `make test` ------------------------------------------------------------------
#: Long scenarios of other modules' tests that run under `make test-slow` only (`-m slow`), each
#: with the short case that stays in `make test`.  (test file, test function, words in the test's
#: parameter id; "" = every case) -> why.  Marking here keeps the list of what `make test` skips
#: in one place; a test file may also mark its own tests with @pytest.mark.slow.
SLOW_SCENARIOS: dict[tuple[str, str, str], str] = {
    ("tests/examples/test_examples.py", "test_demo_prints_the_table_and_writes_the_plot", ""):
        "the whole demo (every mode, 3 epochs); tests/cli/test_demo.py checks its parts",
    ("tests/examples/test_examples.py", "test_example_runs_and_reports_an_accuracy", "encrypted_training"):
        "kept: encrypted_serving; encrypted training of the same kind in tests/training",
    ("tests/examples/test_examples.py", "test_example_runs_and_reports_an_accuracy", "logistic_regression"):
        "kept: encrypted_serving; the same logistic regression trained encrypted in "
        "tests/training/test_accuracy.py (breast_cancer_logreg, both backends)",
    ("tests/federated/test_keras_federated.py", "test_injected_failures_drop_clients_without_stopping_rounds",
     "tf-pond"): "dropping clients is the backend-neutral round logic; kept: torch-spdz, and tf-pond's secure "
                 "sum in test_secure_and_trusted_aggregation_agree[tf-pond]",
    ("tests/conformance/test_recurrent.py", "test_embedding_encrypted_serving_shares_one_hot_rows", "tf-pond"):
        "the one-hot rows are made at the data owner, before any backend; kept: torch-spdz, and Embedding "
        "served on tf-pond in tests/conformance/test_text_models.py (text_cnn-tf-pond)",
    ("tests/distributed/test_bench.py", "test_training_row_counts_one_epoch_in_three_processes_as_embedded", ""):
        "three more processes; kept: the serving row's launch (test_measure_reports_process_figures_...) and "
        "encrypted training across processes with counts equal to embedded (tests/distributed/test_launch.py)",
    ("tests/examples/test_examples.py", "test_example_runs_and_reports_an_accuracy", "federated_hospitals"):
        "kept: tests/federated (the same FedAvg, shorter)",
    ("tests/examples/test_examples.py", "test_example_runs_one_process_per_party_with_its_cluster_file", ""):
        "four Keras processes per example; kept: every example's cluster file checked without a process "
        "(test_every_example_cluster_file_fits_its_example), an unchanged Keras script under launch "
        "(tests/distributed/test_user_script.py) and the federated launch (tests/distributed/test_federated.py)",
    ("tests/training/test_accuracy.py", "test_private_training_matches_plaintext_keras_accuracy", "digits"):
        "full-data MLP/CNN accuracy; kept: breast_cancer_logreg on both backends",
    ("tests/federated/test_keras_federated.py", "test_iid_accuracy_within_two_points_of_centralized", ""):
        "10 rounds x 2 local epochs; kept: the 2-round runs of the same file",
    ("tests/federated/test_keras_federated.py", "test_non_iid_figure", ""):
        "10 rounds x 2 local epochs; kept: the 2-round runs of the same file",
    ("tests/distributed/test_launch.py", "test_party_killed_mid_protocol_is_named_by_the_others", "tf-pond"):
        "kept: torch-spdz with the dealer killed",
    ("tests/distributed/test_launch.py", "test_party_killed_mid_protocol_is_named_by_the_others", "server1"):
        "kept: torch-spdz with the dealer killed",
    ("tests/distributed/test_federated.py", "test_a_client_killed_mid_share_is_dropped_and_the_others_finish",
     "tf-pond"): "kept: torch-spdz",
    ("tests/distributed/test_user_script.py", "test_same_script_embedded_and_launched", "tf-pond"):
        "kept: torch-spdz (the same script serving and training, embedded and launched); tf-pond's launched "
        "serving in tests/distributed/test_launch.py, Keras on torch with tf-pond embedded in "
        "tests/backends/test_switching.py; repeated by test_stress_same_script_embedded_and_launched",
    ("tests/distributed/test_federated.py", "test_federated_rounds_across_processes_match_embedded", ""):
        "five Keras processes (about 50 s on a quiet 2-core host); kept: the launched 3-client run with a "
        "client killed, whose survivors are checked against the embedded 2-client run (their second round "
        "is this run's) on torch-spdz, and tf-pond's gRPC transport across processes in "
        "tests/distributed/test_launch.py (serving and training)",
    ("tests/distributed/test_federated.py",
     "test_the_survivors_of_a_killed_client_match_the_embedded_two_client_run", "tf-pond"): "kept: torch-spdz",
    ("tests/training/test_fit_arguments.py", "test_secure_validation_split_reports_the_held_out_rows", "tf-pond"):
        "the split is made in the front end, before any backend; kept: torch-spdz",
    ("tests/training/test_fit_arguments.py", "test_secure_training_of_two_inputs_follows_the_reference", "tf-pond"):
        "kept: torch-spdz (the protocol code is shared); tf-pond's kernels: the weighted and sliced runs",
    ("tests/training/test_optimizers.py", "test_one_step_costs_what_the_module_documents", "tf-pond"):
        "bytes and rounds are the shared protocol's; kept: torch-spdz",
    ("tests/training/test_v2_training.py", "test_sgd_steps_follow_the_reference", "tf-pond-sequence"):
        "kept: tf-pond's attention model and torch-spdz's four; every v2 rule runs on tf-pond in test_gradients",
    ("tests/training/test_v2_training.py", "test_sgd_steps_follow_the_reference", "tf-pond-image"):
        "kept: tf-pond's attention model and torch-spdz's four; every v2 rule runs on tf-pond in test_gradients",
    ("tests/training/test_v2_training.py", "test_sgd_steps_follow_the_reference", "tf-pond-merge"):
        "kept: tf-pond's attention model and torch-spdz's four; every v2 rule runs on tf-pond in test_gradients",
    ("tests/training/test_v2_training.py", "test_sgd_steps_follow_the_reference", "tf-pond-transformer"):
        "kept: tf-pond's attention model and torch-spdz's five; every v2 rule runs on tf-pond in test_gradients",
    ("tests/training/test_v2_training.py", "test_text_cnn_on_token_ids_trains_as_the_reference", "tf-pond"):
        "kept: torch-spdz (the protocol code is shared); Embedding's rule runs on tf-pond in test_gradients",
    ("tests/training/test_optimizers.py", "test_three_encrypted_fit_steps_follow_the_reference", "tf-pond-rmsprop"):
        "kept: tf-pond Adam and torch-spdz RMSprop; RMSprop's rule is tested on tf-pond's kernels step by step",
}


def _slow_reason(item: pytest.Item) -> str | None:
    path = item.nodeid.split("::", 1)[0]
    function = getattr(item, "originalname", item.name)
    callspec = getattr(item, "callspec", None)
    case = callspec.id if callspec is not None else ""
    for (file, name, words), why in SLOW_SCENARIOS.items():
        if path == file and function == name and words in case:
            return why
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        why = _slow_reason(item)
        if why is not None:
            item.add_marker(pytest.mark.slow(reason=why))
