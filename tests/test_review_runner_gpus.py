"""GPU selection edge cases: what the runner's CUDA_VISIBLE_DEVICES and NVML may say."""

import threading

import pytest
from runner_fixtures import FakeNvml, add_tiny_cells, fake_python, make_loop, new_study, wait_for, write_plan
from test_gpus import LostGpu
from trainer_fixtures import make_data_dir

from runner.gpus import GpuPool
from store import AttemptOutcome, CellState, attempts_of, cell_statuses


@pytest.mark.parametrize("visible", ["0,0", "2,GPU-00000002", "GPU-00000001,1"])
def test_cuda_visible_devices_naming_a_gpu_twice_is_refused(visible):
    """A GPU listed twice was free twice: a two-GPU cell got CUDA_VISIBLE_DEVICES=0,0 (two ranks on one
    GPU), or two one-GPU cells shared it."""
    with pytest.raises(ValueError, match=rf"CUDA_VISIBLE_DEVICES={visible!r}: .* names GPU \d again"):
        GpuPool(nvml=FakeNvml(4), visible_devices=visible)


def _study_on(tmp_path, data_dir, name: str):
    root = tmp_path / name
    store, study_id = new_study(root / "nanostudy.db", name)
    add_tiny_cells(store, study_id, data_dir, root / "runs", [{"id": f"{name}-cell"}])
    return store, study_id


def test_two_runners_of_two_studies_never_put_cells_on_one_gpu_at_once(tmp_path, monkeypatch):
    """A trainer shows in NVML only once it has set up CUDA (this fake NVML never shows one): meanwhile a
    second runner found its GPU free and started its own cell there too. The runners claim GPUs."""
    monkeypatch.setenv("FAKE_TRAINER_STEP_S", "0.02")
    data_dir = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    nvml = FakeNvml(num_gpus=1)
    loops, stores = [], []
    for name in ("first", "second"):
        store, study_id = _study_on(tmp_path, data_dir, name)
        plan = write_plan(tmp_path / name, {f"{name}-cell": ["slow"]})
        pool = GpuPool(nvml=nvml, claim_dir=tmp_path / "claims")
        loops.append(make_loop(store, study_id, python=fake_python(tmp_path), plan=plan, pool=pool))
        stores.append(store)
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    [first], [second] = (
        attempts_of(store, f"{name}-cell") for store, name in zip(stores, ("first", "second"), strict=True)
    )
    for store in stores:
        store.close()
    assert first.outcome is second.outcome is AttemptOutcome.DONE
    assert first.gpus == second.gpus == "0"
    assert first.ended_at <= second.started_at or second.ended_at <= first.started_at, (first, second)
    assert GpuPool(nvml=nvml, claim_dir=tmp_path / "claims").claim([0]) == [0]  # given back at the end


def test_a_runner_waiting_on_a_gpu_nvml_cannot_read_says_so(tmp_path):
    """It said 'other processes hold the GPUs' while nothing ran on the lost GPU."""
    data_dir = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    store, study_id = _study_on(tmp_path, data_dir, "lost")
    nvml = LostGpu(2, lost=1)
    log: list[str] = []
    pool = GpuPool(nvml=nvml, restrict=(1,), claim_dir=None)
    loop = make_loop(store, study_id, python=fake_python(tmp_path), pool=pool, log=log)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        wait_for(lambda: any("waiting" in line for line in log), timeout_s=30, what="the waiting line")
    finally:
        nvml.lost = None  # the GPU is back (a reset): the loop goes on and ends
        thread.join(timeout=60)
    store.close()
    [waiting] = [line for line in log if "waiting" in line]
    assert (
        waiting
        == "waiting for a free GPU (1 cell(s) ready; GPU 1 cannot be read (RuntimeError: GPU is lost))"
    )


def test_a_done_cell_that_had_more_gpus_than_this_run_does_not_stop_the_rest(tmp_path):
    """`run --gpus 0` to finish a study's one-GPU cells was refused: 'cell big needs 4 GPUs but only 1 are
    usable', for a cell done long ago."""
    data_dir = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    store, study_id = new_study(tmp_path / "nanostudy.db")
    add_tiny_cells(store, study_id, data_dir, tmp_path / "runs", [{"id": "big", "flops": 4e9}])
    pool = GpuPool(nvml=FakeNvml(4), claim_dir=None)
    make_loop(store, study_id, python=fake_python(tmp_path), pool=pool, num_gpus={"big": 4}).run()
    add_tiny_cells(store, study_id, data_dir, tmp_path / "runs", [{"id": "small"}])
    pool = GpuPool(nvml=FakeNvml(4), restrict=(0,), claim_dir=None)
    make_loop(store, study_id, python=fake_python(tmp_path), pool=pool, num_gpus={"big": 4}).run()
    assert {status.id: status.state for status in cell_statuses(store, study_id)} == {
        "big": CellState.DONE,
        "small": CellState.DONE,
    }
    add_tiny_cells(store, study_id, data_dir, tmp_path / "runs", [{"id": "more"}])
    with pytest.raises(ValueError, match="cell more needs 2 GPUs but only 1 are usable"):
        make_loop(store, study_id, pool=pool, num_gpus={"big": 4, "more": 2})
    store.close()


def test_a_pool_dropped_without_giving_its_claims_back_gives_them_back(tmp_path):
    """Its claims were raw descriptors that nothing closed: a pool dropped while it held GPUs kept them
    claimed until the process ended, so another pool (a runner, the TUI's chat) never got them."""
    import gc

    nvml = FakeNvml(num_gpus=2)
    pool = GpuPool(nvml=nvml, claim_dir=tmp_path / "claims")
    assert pool.claim([0, 1]) == [0, 1]
    assert GpuPool(nvml=nvml, claim_dir=tmp_path / "claims").claim([0, 1]) == []
    del pool
    gc.collect()
    assert GpuPool(nvml=nvml, claim_dir=tmp_path / "claims").claim([0, 1]) == [0, 1]


def test_a_runner_that_cannot_claim_gpus_says_so_once(tmp_path):
    """A claim folder that cannot be made left the runner without claims and without a word."""
    data_dir = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    store, study_id = _study_on(tmp_path, data_dir, "only")
    (tmp_path / "not-a-folder").write_text("")
    pool = GpuPool(nvml=FakeNvml(num_gpus=1), claim_dir=tmp_path / "not-a-folder" / "claims")
    log: list[str] = []
    loop = make_loop(store, study_id, python=fake_python(tmp_path), pool=pool, log=log)
    assert loop.run() is False
    problems = [line for line in log if line.startswith("cannot claim GPUs")]
    assert len(problems) == 1 and "not-a-folder/claims: Not a directory" in problems[0], log
    assert [status.state for status in cell_statuses(store, study_id)] == [CellState.DONE]
    store.close()
