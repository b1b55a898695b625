"""Fixtures shared by several test modules; each is used only where a test or module asks for it by name.

- one_torch_thread: torch on one thread for the test (faster on a shared 2-core machine, and the same
  arithmetic every time), put back afterwards; modules take it with
  `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
- chat_runs: the base and chat checkpoints of tests/chat_fixtures.py (ChatCheckpoints).
- slurm_cluster: one local Slurm cluster for the session (tests/slurm_fixtures.py), SLURM_CONF pointing at
  it while it runs; skips where Slurm is not installed. A module whose jobs must not meet another module's
  (same job names, `scancel --user`) starts its own with `slurm_fixtures.cluster_for_tests`.
"""

import pytest


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def chat_runs(tmp_path_factory):
    from chat_fixtures import chat_checkpoints

    return chat_checkpoints(tmp_path_factory)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    from slurm_fixtures import cluster_for_tests

    with cluster_for_tests(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
