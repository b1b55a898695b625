"""Fixtures shared by several test modules; each is used only where a test or module asks for it by name.

- one_torch_thread: torch on one thread for the test (faster on a shared 2-core machine, and the same
  arithmetic every time), put back afterwards; modules take it with
  `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
- chat_runs: the base and chat checkpoints of tests/chat_fixtures.py (ChatCheckpoints).
- slurm_cluster: one local Slurm cluster for the session (tests/slurm_fixtures.py), SLURM_CONF pointing at
  it while it runs; skips where Slurm is not installed.
"""

import os

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
    from slurm_fixtures import running_cluster, why_no_slurm

    reason = why_no_slurm()
    if reason is not None:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
