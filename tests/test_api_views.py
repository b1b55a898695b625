"""The runner API's read side, as `nanostudy status` and the TUI use it: a study's status with each cell's
speed, MFU, GPUs and attempts in a few queries; the chat's checkpoint candidates; a cell's log tail; STUDY
resolved without opening anything."""

import time
from pathlib import Path

import pytest
from tui_fixtures import STUDY, demo_study

from runner import api
from runner.api import LOG_TAIL_BYTES
from store import open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path):
    return demo_study(tmp_path)


def test_status_has_each_cells_speed_mfu_gpus_and_attempts(demo):
    with open_store(demo.db, create=False) as store:
        status = api.study_status(store, STUDY)
    cells = {cell.id: cell for cell in status.cells}
    running = cells["d2-c16"]
    assert (running.state, running.step, running.gpus) == ("running", 40, "0")
    assert (running.tok_per_s, running.mfu) == (12_000.0, 0.41)
    assert running.eta_s == pytest.approx(160.0)  # 1 s per step measured, 160 steps left
    failed = cells["d4-c16"]
    assert (failed.state, failed.attempts, failed.reason, failed.gpus) == (
        "failed",
        2,
        "CUDA out of memory",
        None,
    )
    assert (failed.tok_per_s, failed.mfu) == (9_000.0, 0.3)  # its newest step, from the first attempt
    pending = cells["d8-c16"]
    assert (pending.attempts, pending.tok_per_s, pending.gpus) == (0, None, None)
    assert pending.eta_s is not None and pending.eta_s > 0  # from the study's measured FLOP rate
    assert cells["d2-c15"].val_bpb == 1.30 and cells["d2-c15"].gpus is None
    assert status.counts == {
        "pending": 1,
        "running": 1,
        "done": 3,
        "failed": 1,
        "diverged": 0,
        "cancelled": 0,
    }
    assert status.to_json()["cells"][0].keys() >= {"tok_per_s", "mfu", "gpus"}


def test_status_of_a_thousand_cells_takes_a_handful_of_queries(tmp_path):
    """The TUI polls this every second: no query per cell (it took 0.6 s at 1,000 cells with one)."""
    from benchmarks.tui_first_frame import fill_study

    db = fill_study(tmp_path / "big.db", num_cells=1000, steps=5)
    with open_store(db, create=False) as store:
        api.study_status(store, "bench")
        began = time.perf_counter()
        status = api.study_status(store, "bench")
        elapsed_s = time.perf_counter() - began
    assert len(status.cells) == 1000 and all(cell.tok_per_s for cell in status.cells if cell.step)
    assert elapsed_s < 0.5, f"study_status took {elapsed_s:.2f} s on 1,000 cells"


def test_checkpoint_candidates_start_with_the_best(demo):
    with open_store(demo.db, create=False) as store:
        candidates = api.checkpoint_candidates(store, STUDY)
        best = api.best_checkpoint(store, STUDY)
    # Mid-training first although its bpb is the highest; then the largest budget's done cells by bpb.
    assert [c.cell_id for c in candidates] == ["mid-d4", "d4-c15", "d2-c15"]
    assert candidates[0] == best
    assert candidates[1].path == (demo.runs / "d4-c15" / "checkpoints" / "step_000200").resolve()
    assert (candidates[2].mode, candidates[2].val_bpb, candidates[2].step) == ("pretraining", 1.30, 200)


def test_log_tail_shows_the_newest_attempts_output(demo):
    with open_store(demo.db, create=False) as store:
        running = api.log_tail(store, "d2-c16", num_lines=3)
        failed = api.log_tail(store, "d4-c16")
        never_started = api.log_tail(store, "d8-c16")
    assert [tail.path.name for tail in running] == ["attempt_1.out"]  # its empty stderr is left out
    assert running[0].lines == ("step 38 loss 3.62", "step 39 loss 3.61", "step 40 loss 3.60")
    assert [tail.path.name for tail in failed] == ["attempt_2.out", "attempt_2.err"]
    assert failed[1].lines[-1] == "CUDA out of memory"
    assert never_started == []


def test_log_tail_of_a_huge_log_reads_only_its_end(demo):
    log = demo.runs / "d2-c16" / "logs" / "attempt_1.out"
    log.write_text("x" * (3 * LOG_TAIL_BYTES) + "\nsecond to last\nlast\n")
    with open_store(demo.db, create=False) as store:
        [tail] = api.log_tail(store, "d2-c16", num_lines=5)
    assert tail.lines == ("second to last", "last")  # the cut first line is dropped


def test_resolve_study_opens_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert api.resolve_study("demo") == ("nanostudy.db", "demo")
    assert api.resolve_study("demo", "other.db") == ("other.db", "demo")
    assert not (tmp_path / "nanostudy.db").exists()
    study_file = ROOT / "studies" / "quickstart.yaml"
    assert api.resolve_study(str(study_file)) == (str(ROOT / "studies" / "nanostudy.db"), "quickstart")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [not, a, name]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:1: name: expected a non-empty string"):
        api.resolve_study(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngrid: [\n")
    with pytest.raises(ValueError, match=r"broken\.yaml:\d+: YAML"):
        api.resolve_study(str(broken))


def test_status_and_cancel_find_a_study_whose_file_changed_since_it_ran(tmp_path):
    """Only the name is read: a key mistyped in an edit, or data a relative path no longer finds from here,
    must not keep anyone from watching or cancelling the study that runs."""
    edited = tmp_path / "edited.yaml"
    text = (ROOT / "studies" / "quickstart.yaml").read_text()
    edited.write_text(text + "\noptim: {matrix_lrr: 0.04}\n")
    db = str(tmp_path / "nanostudy.db")
    assert api.resolve_study(str(edited)) == (db, "quickstart")
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("data: {source: {name: local, paths: 'nowhere/*.txt'}}\n")
    assert api.resolve_study(str(unnamed)) == (db, "unnamed")  # a study without `name` is its file's stem
