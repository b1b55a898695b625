"""The trainer end to end on the CPU: events, horizon, exact resume, divergence, stops, mid-training, bad
input, several ranks (torchrun + gloo), W&B offline. Runs use a depth-2, width-32 model on a byte-level
synthetic corpus (tests/trainer_fixtures.py); a step takes milliseconds."""

import gzip
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_fixtures import byte_tokenizer, make_data_dir, snapshot, tiny_config, write_run

from nanogpt import checkpoint as ckpt
from nanogpt import shards
from nanogpt import train as train_module
from nanogpt.config import RunConfig
from nanogpt.data import TokenLoader
from nanogpt.events import read_events, validate
from nanogpt.gpu_lock import GPU_LOCKS_ENV, GpuLock
from nanogpt.model import GPT, GPTConfig
from nanogpt.optim import MuonAdamW
from nanogpt.train import (
    AUTO_COMPILE_MFU,
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_STOPPED,
    Trainer,
    build_optimizer,
    effective_hparams,
    init_runtime,
    peak_flops,
    resolve_compile,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
# One thread everywhere: faster on a shared 2-core machine, and the same arithmetic in every process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    """A 12-step run with checkpoints at 6 and 12, shared by tests that only read it (or copy it)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert run(write_run(run_dir, tiny_config(data_dir))) == EXIT_DONE
    return run_dir


def events_of(run_dir: Path) -> list[dict]:
    return read_events(run_dir / "events.jsonl")[0]


def losses(run_dir: Path, kind: str = "step", key: str = "loss") -> dict[int, float]:
    return {e["step"]: e[key] for e in events_of(run_dir) if e["kind"] == kind}


def test_a_run_writes_every_event_with_sane_fields(finished_run, data_dir):
    events = events_of(finished_run)
    for event in events:
        validate(event)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    assert [e["step"] for e in events if e["kind"] == "step"] == list(range(1, 13))
    assert [e["step"] for e in events if e["kind"] == "val"] == [6, 12]
    assert [(e["step"], e["final"]) for e in events if e["kind"] == "checkpoint"] == [(6, False), (12, True)]
    assert not any(e["stopping"] for e in events if e["kind"] == "checkpoint")

    start, end = events[0], events[-1]
    phases = ["runtime", "model", "batch_probe", "data_and_optimizer", "other"]
    assert list(start["setup_s"]) == phases and all(0 <= start["setup_s"][p] < 60 for p in phases)
    model = GPT(GPTConfig(depth=2, aspect_ratio=16, head_dim=16, sequence_len=32, vocab_size=257))
    assert start["num_params"] == sum(p.numel() for p in model.parameters())
    assert start["flops_per_token"] == model.estimate_flops()
    assert start["num_scaling_params"] == model.num_scaling_params()
    assert start["total_steps"] == 12 and start["total_tokens"] == 12 * 256
    assert start["device_batch_size"] == 4 and start["grad_accum"] == 2  # 8 sequences per step, 4 at a time
    assert (
        start["world_size"] == 1
        and start["device"]["type"] == "cpu"
        and start["device"]["peak_flops"] is None
    )
    assert start["versions"]["torch"] == torch.__version__ and start["resumed_from"] is None
    assert start["git_sha"] is None or len(start["git_sha"]) == 40
    assert 0 < start["data_epochs"] < 1 and start["warnings"] == []
    assert start["config"]["model"]["depth"] == 2

    steps = [e for e in events if e["kind"] == "step"]
    for e in steps:
        assert e["tokens"] == e["step"] * 256 and e["flops"] == e["tokens"] * start["flops_per_token"]
        assert e["tok_per_s"] > 0 and e["mfu"] is None and e["lr"] == pytest.approx(0.02 * e["lr_frac"])
    assert [e["lr_frac"] for e in steps[-4:]] == pytest.approx([1.0, 0.75, 0.5, 0.25])  # cooldown 0.3 × 12
    # ln(257) ≈ 5.55 at initialisation; the synthetic grammar is learnt fast.
    assert steps[0]["loss"] == pytest.approx(math.log(257), abs=0.1)
    assert max(e["loss"] for e in steps[-3:]) < steps[0]["loss"] - 2.5
    assert end["status"] == "done" and end["message"] is None and end["step"] == 12
    assert end["val_loss"] == events[-3]["val_loss"]  # the final validation, then the final checkpoint


def test_validation_matches_an_independent_computation(finished_run, data_dir):
    """The final val event recomputed from the final checkpoint: nats per target, bits per byte."""
    final = ckpt.latest_checkpoint(finished_run)
    meta = ckpt.read_meta(final)
    model = GPT(GPTConfig(**meta["model_config"]))
    model.load_state_dict(ckpt.load_model_state(final, "cpu"))
    # eval.val_tokens = 512: the validation reads the split's first 16 sequences of 32 tokens (one step of
    # the loader, in 4 micro-batches of 4), so one batch of 16 sequences reads the same.
    loader = TokenLoader(data_dir, split="val", batch_size=16, seq_len=32)
    token_bytes = torch.tensor([1] * 256 + [0])  # byte tokens are one byte; end-of-text is none
    x, y = loader.next_batch()
    with torch.no_grad():
        per_token = model(x, y, reduction="none")
    nats, count = per_token.sum().item(), y.numel()
    text_nats = (per_token * (token_bytes[y] > 0)).sum().item()
    num_bytes = token_bytes[y].sum().item()
    val = [e for e in events_of(finished_run) if e["kind"] == "val"][-1]
    assert val["val_tokens"] == count == 512
    assert val["val_loss"] == pytest.approx(nats / count, rel=1e-6)
    assert val["val_bpb"] == pytest.approx(text_nats / math.log(2) / num_bytes, rel=1e-6)


def test_horizon_from_a_flop_budget_and_an_automatic_micro_batch(tmp_path, data_dir):
    model = GPT(GPTConfig(depth=2, aspect_ratio=16, head_dim=16, sequence_len=32, vocab_size=257))
    target_flops = 7.4 * model.estimate_flops() * 256  # 7.4 steps' worth: rounds to 7
    config = tiny_config(
        data_dir,
        train={"num_steps": None, "target_flops": target_flops, "device_batch_size": "auto"},
        checkpoint={"every_steps": None},
    )
    assert run(write_run(tmp_path, config)) == EXIT_DONE
    start = events_of(tmp_path)[0]
    assert start["total_steps"] == 7 and start["total_flops"] == 7 * 256 * model.estimate_flops()
    assert start["device_batch_size"] == 8 and start["grad_accum"] == 1  # all 8 sequences in one micro-batch
    assert max(losses(tmp_path)) == 7
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000007"]  # the final one only


@pytest.mark.parametrize(("target_tokens", "num_steps"), [(1380, 5), (100, 1)])  # 5.4 and 0.4 steps
def test_horizon_from_a_token_budget(tmp_path, data_dir, target_tokens, num_steps):
    """steps = round(target_tokens / total_batch_tokens), at least one."""
    config = tiny_config(
        data_dir, train={"num_steps": None, "target_tokens": target_tokens}, checkpoint={"every_steps": None}
    )
    assert run(write_run(tmp_path, config)) == EXIT_DONE
    events = events_of(tmp_path)
    start, end = events[0], events[-1]
    assert start["total_steps"] == num_steps and start["total_tokens"] == num_steps * 256
    assert sorted(losses(tmp_path)) == list(range(1, num_steps + 1))
    assert end["status"] == "done" and end["step"] == num_steps and end["tokens"] == num_steps * 256
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [f"step_{num_steps:06d}"]


def test_resume_is_bit_identical(tmp_path, finished_run, data_dir):
    """N steps straight vs N/2, then a new process resuming from the N/2 checkpoint for the other N/2."""
    resumed = tmp_path / "resumed"
    write_run(resumed, tiny_config(data_dir))
    shutil.copytree(finished_run / "checkpoints" / "step_000006", resumed / "checkpoints" / "step_000006")
    assert run(resumed / "config.json") == EXIT_DONE
    straight = losses(finished_run)
    second_half = losses(resumed)
    assert sorted(second_half) == list(range(7, 13))
    assert all(second_half[s] == straight[s] for s in second_half)  # exactly, not approximately
    assert losses(resumed, "val", "val_loss")[12] == losses(finished_run, "val", "val_loss")[12]
    start = events_of(resumed)[0]
    assert start["resumed_from"] == "checkpoints/step_000006"
    a = ckpt.load_model_state(ckpt.latest_checkpoint(finished_run), "cpu")
    b = ckpt.load_model_state(ckpt.latest_checkpoint(resumed), "cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("now", [False, "auto"])
def test_a_checkpoint_older_than_a_config_key_resumes_at_its_default_then(
    tmp_path, finished_run, data_dir, capsys, now
):
    """A checkpoint written before `fp8_head` existed has no such key in its config (nor the head it trained
    in its meta): it was trained with the default then (off), so a config that has it off, or auto (which
    adopts the checkpoint's head), resumes it, exactly; one that asks for FP8 does not."""
    resumed = tmp_path / "resumed"
    write_run(resumed, tiny_config(data_dir, fp8_head=now))
    checkpoint = resumed / "checkpoints" / "step_000006"
    shutil.copytree(finished_run / "checkpoints" / "step_000006", checkpoint)
    meta = json.loads((checkpoint / ckpt.META_NAME).read_text())
    del meta["config"]["fp8_head"], meta["fp8_head"]
    (checkpoint / ckpt.META_NAME).write_text(json.dumps(meta))
    write_run(tmp_path / "fp8", tiny_config(data_dir, fp8_head=True))
    shutil.copytree(checkpoint, tmp_path / "fp8" / "checkpoints" / "step_000006")
    assert run(resumed / "config.json") == EXIT_DONE
    straight = losses(finished_run)
    assert all(loss == straight[step] for step, loss in losses(resumed).items())
    assert [e["device"]["fp8_head"] for e in events_of(resumed) if e["kind"] == "start"] == [False]
    capsys.readouterr()
    assert run(tmp_path / "fp8" / "config.json") == EXIT_BAD_INPUT
    assert "(fp8_head: False in the checkpoint, True now)" in capsys.readouterr().err


def test_fp8_head_auto_trains_the_exact_head_on_the_cpu_and_a_resume_keeps_its_checkpoints_head(
    tmp_path, finished_run, data_dir
):
    """The default, `fp8_head: auto`, leaves the head exact on the CPU (no FP8 tensor cores): the losses of
    `fp8_head: false`, and every checkpoint and start event says so. A checkpoint whose head trained in FP8
    resumed under auto where FP8 cannot go on (here the CPU) goes on with the exact head, and says so: auto
    pins nothing (true and false do)."""
    assert tiny_config(data_dir).get("fp8_head") is None  # finished_run trained at the default
    off = tmp_path / "off"
    assert run(write_run(off, tiny_config(data_dir, fp8_head=False))) == EXIT_DONE
    assert losses(off) == losses(finished_run)
    start = events_of(finished_run)[0]
    assert start["config"]["fp8_head"] == "auto" and start["device"]["fp8_head"] is False
    metas = [json.loads(p.read_text()) for p in sorted(finished_run.glob("checkpoints/*/meta.json"))]
    assert metas and all(meta["fp8_head"] is False for meta in metas)

    fp8 = tmp_path / "fp8"
    assert run(write_run(fp8, tiny_config(data_dir, fp8_head=True))) == EXIT_DONE
    assert json.loads((fp8 / "checkpoints" / "step_000006" / "meta.json").read_text())["fp8_head"] is True
    shutil.rmtree(fp8 / "checkpoints" / "step_000012")  # as if stopped at step 6
    (fp8 / "events.jsonl").write_text("")
    config = tiny_config(data_dir, fp8_head=True)
    config["fp8_head"] = "auto"
    assert run(write_run(fp8, config)) == EXIT_DONE
    [start] = [e for e in events_of(fp8) if e["kind"] == "start"]
    assert start["resumed_from"] == "checkpoints/step_000006" and start["device"]["fp8_head"] is False
    assert any(
        "trained its head in FP8, which cannot go on here (the CPU has no FP8)" in w
        for w in start["warnings"]
    )
    assert json.loads((fp8 / "checkpoints" / "step_000012" / "meta.json").read_text())["fp8_head"] is False


def test_a_checkpoint_trained_under_auto_resumes_under_the_setting_of_the_head_it_chose(
    tmp_path, finished_run, data_dir
):
    """`auto` pins nothing, so its checkpoint resumes under the true or false that names the head it
    trained (here the CPU's exact head: false), exactly (test_bad_input_is_one_line_and_damages_nothing:
    not under true)."""
    checkpoint = finished_run / "checkpoints" / "step_000006"
    assert json.loads((checkpoint / ckpt.META_NAME).read_text())["config"]["fp8_head"] == "auto"
    resumed = tmp_path / "resumed"
    write_run(resumed, tiny_config(data_dir, fp8_head=False))
    shutil.copytree(checkpoint, resumed / "checkpoints" / "step_000006")
    assert run(resumed / "config.json") == EXIT_DONE
    straight = losses(finished_run)
    assert all(loss == straight[step] for step, loss in losses(resumed).items())


def test_fp8_head_trains_close_to_the_exact_head(tmp_path, finished_run, data_dir):
    """The lm_head's matmuls in FP8 (torch._scaled_mm runs on the CPU too): the run's losses differ from
    the exact head's (it took effect) by little, and its validation, which multiplies the weights exactly,
    lands close to the exact run's."""
    run_dir = tmp_path / "fp8"
    assert run(write_run(run_dir, tiny_config(data_dir, fp8_head=True))) == EXIT_DONE
    start = events_of(run_dir)[0]
    assert start["config"]["fp8_head"] is True and any("fp8_head on the CPU" in w for w in start["warnings"])
    exact, fp8 = losses(finished_run), losses(run_dir)
    assert fp8[1] != exact[1] and fp8[1] == pytest.approx(exact[1], rel=0.01)
    assert fp8[12] < 0.9 * fp8[1]  # it learns
    exact_val, fp8_val = losses(finished_run, "val", "val_loss")[12], losses(run_dir, "val", "val_loss")[12]
    assert fp8_val == pytest.approx(exact_val, rel=0.03)


def test_fp8_head_on_shapes_it_cannot_take_says_so_and_trains_the_exact_head(tmp_path, data_dir):
    """6 sequences of 20 tokens make 120 rows, not a multiple of 16: the head multiplies exactly, and the
    start event says FP8 is off."""
    shape = dict(model={"sequence_len": 20}, train={"num_steps": 2, "total_batch_tokens": 240,
                 "device_batch_size": 6}, eval={"every_steps": None, "val_tokens": 240})  # fmt: skip
    exact, fp8 = tmp_path / "exact", tmp_path / "fp8"
    assert run(write_run(exact, tiny_config(data_dir, **shape))) == EXIT_DONE
    assert run(write_run(fp8, tiny_config(data_dir, fp8_head=True, **shape))) == EXIT_DONE
    warnings = events_of(fp8)[0]["warnings"]
    assert any("fp8_head: off" in w and "120 rows" in w for w in warnings), warnings
    assert losses(fp8) == losses(exact)


def test_fp8_head_off_for_its_shapes_gives_the_lm_head_its_weight_copy(tmp_path, data_dir):
    """The weight copies are made before the micro-batch is known, without the lm_head (which casts its
    own weight to FP8); when the shapes then turn the FP8 head off, the lm_head reads a bf16 copy like
    every other matrix."""
    shape = dict(model={"sequence_len": 20}, train={"num_steps": 2, "total_batch_tokens": 240,
                 "device_batch_size": 6}, eval={"every_steps": None, "val_tokens": 240})  # fmt: skip
    config = tiny_config(data_dir, fp8_head=True, dtype="bfloat16", **shape)
    config = RunConfig.from_json(write_run(tmp_path, config))
    trainer = Trainer(config, tmp_path, init_runtime(config))
    lm_head = trainer.model.lm_head.weight
    assert trainer.model.fp8_head and all(p is not lm_head for p in trainer.weight_copies.params)
    trainer.build(trainer.proposed_batch_size)
    assert not trainer.model.fp8_head and any(p is lm_head for p in trainer.weight_copies.params)


def test_non_finite_loss_ends_the_run_as_diverged(tmp_path, data_dir):
    huge = {"matrix_lr": 1e30, "embedding_lr": 1e30, "unembedding_lr": 1e30}
    assert run(write_run(tmp_path, tiny_config(data_dir, optim=huge))) == EXIT_DIVERGED
    text = (tmp_path / "events.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    events = events_of(tmp_path)
    for event in events:
        validate(event)
    last_step, end = events[-2], events[-1]
    assert last_step["kind"] == "step" and last_step["loss"] is None
    assert end["status"] == "diverged" and f"at step {last_step['step']}" in end["message"]
    assert ckpt.list_checkpoints(tmp_path) == []  # a diverged state is not worth keeping


def test_non_finite_weights_or_validation_end_the_run_as_diverged_without_a_checkpoint(tmp_path, data_dir):
    """Each step's loss is computed before its update, so an update that leaves non-finite weights shows
    first in the validation or at the checkpoint; neither may pass as a finished run."""
    huge = {"matrix_lr": 1e30, "embedding_lr": 1e30, "unembedding_lr": 1e30}
    schedule = {"cooldown_frac": 0.0}
    # (steps, eval.every_steps, checkpoint.every_steps, message); the weights turn non-finite in step 2,
    # whose loss (like step 1's) is finite.
    cases = {
        "final": (2, None, None, "validation loss is nan at step 2"),
        "checkpoint-mid-run": (4, None, 2, "non-finite weights after step 2"),
        "validation-mid-run": (4, 2, None, "validation loss is nan at step 2"),
    }
    for name, (num_steps, every_val, every_ckpt, message) in cases.items():
        run_dir = tmp_path / name
        config = tiny_config(
            data_dir,
            optim=huge,
            schedule=schedule,
            train={"num_steps": num_steps},
            eval={"every_steps": every_val},
            checkpoint={"every_steps": every_ckpt},
        )
        assert run(write_run(run_dir, config)) == EXIT_DIVERGED, name
        events = events_of(run_dir)
        for event in events:
            validate(event)
        assert all(e["loss"] is not None for e in events if e["kind"] == "step"), name
        end = events[-1]
        assert end["kind"] == "end" and end["status"] == "diverged" and end["message"] == message, end
        assert ckpt.list_checkpoints(run_dir) == [], name
        assert not any(e["kind"] == "checkpoint" for e in events), name


@pytest.mark.parametrize("token_id", [300, 60_000])  # inside the padded vocabulary (320), and past it
def test_a_token_id_outside_the_vocabulary_is_one_line_naming_the_shard(tmp_path, token_id, capsys):
    """A shard with a valid header whose tokens were damaged: every 16th token of the training split."""
    data = make_data_dir(tmp_path / "data")
    shard = data / "train_000000.bin"
    tokens = np.memmap(shard, dtype="<u2", mode="r+", offset=shards.HEADER_BYTES)
    tokens[::16] = token_id
    tokens.flush()
    del tokens
    capsys.readouterr()
    assert run(write_run(tmp_path / "run", tiny_config(data))) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {shard}: token id {token_id} at token "), err
    assert "is outside the vocabulary of 257 (bytes)" in err
    assert ckpt.list_checkpoints(tmp_path / "run") == []


def test_an_exception_mid_run_ends_it_with_an_error_event_and_exit_1(tmp_path, data_dir, monkeypatch, capsys):
    calls = []
    real_step = MuonAdamW.step

    def failing_step(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise RuntimeError("injected failure\nsecond line")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MuonAdamW, "step", failing_step)
    assert run(write_run(tmp_path, tiny_config(data_dir))) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: injected failure" in err  # unexpected: the whole traceback
    events = events_of(tmp_path)
    for event in events:
        validate(event)
    assert [e["kind"] for e in events] == ["start", "step", "step", "end"]
    end = events[-1]
    assert end["status"] == "error" and end["message"] == "RuntimeError: injected failure"  # one line
    assert end["step"] == 2 and end["tokens"] == 2 * 256 and end["val_loss"] is None
    assert ckpt.list_checkpoints(tmp_path) == []


def test_max_seconds_stops_with_a_checkpoint_and_the_run_resumes(tmp_path, data_dir):
    config = tiny_config(data_dir, train={"max_seconds": 1e-6})
    assert run(write_run(tmp_path, config)) == EXIT_STOPPED
    events = events_of(tmp_path)
    assert [e["kind"] for e in events] == ["start", "step", "checkpoint"]  # no `end`: resumable
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000001"]
    # max_seconds may change between sessions; everything that decides the trajectory may not.
    config["train"]["max_seconds"] = None
    assert run(write_run(tmp_path, config)) == EXIT_DONE
    events = events_of(tmp_path)
    assert [e["kind"] for e in events].count("start") == 2 and events[-1]["status"] == "done"
    assert sorted(losses(tmp_path)) == list(range(1, 13))


def test_a_finished_run_started_again_says_so_and_writes_nothing(tmp_path, finished_run, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = snapshot(run_dir)
    capsys.readouterr()
    assert run(run_dir / "config.json") == EXIT_DONE
    out, err = capsys.readouterr()
    assert out == f"{run_dir}: already done at step 12\n" and err == ""
    assert snapshot(run_dir) == before  # events.jsonl still ends with its one `end`


def test_a_run_that_died_before_its_end_event_gets_it_when_started_again(tmp_path, finished_run, capsys):
    """Killed between the final checkpoint and `end`: started again, it writes the `end` only."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join(lines[:-1]))
    assert run(run_dir / "config.json") == EXIT_DONE
    assert capsys.readouterr().out == f"{run_dir}: already done at step 12\n"
    original, now = events_of(finished_run), events_of(run_dir)
    assert [e["kind"] for e in now] == [e["kind"] for e in original]
    keys = ("status", "message", "step", "tokens", "flops", "val_loss", "val_bpb")
    assert {k: now[-1][k] for k in keys} == {k: original[-1][k] for k in keys}
    assert now[-1]["elapsed_s"] == original[-2]["elapsed_s"]  # the final checkpoint's


def test_mid_training_starts_from_the_pretrained_weights_with_masked_loss(tmp_path, finished_run):
    chat_data = make_data_dir(tmp_path / "chat", with_mask=True)
    config = tiny_config(chat_data, mode="mid-training", init_from=str(finished_run), train={"num_steps": 4})
    del config["model"]  # the shape comes from the checkpoint
    run_dir = tmp_path / "mid"
    assert run(write_run(run_dir, config)) == EXIT_DONE
    start = events_of(run_dir)[0]
    assert start["mode"] == "mid-training" and start["init_from"].endswith("step_000012")

    # The first step's loss, recomputed at the pretrained weights: the mean over unmasked targets only.
    init = ckpt.latest_checkpoint(finished_run)
    model = GPT(GPTConfig(**ckpt.read_meta(init)["model_config"]))
    model.load_state_dict(ckpt.load_model_state(init, "cpu"))
    loader = TokenLoader(chat_data, split="train", batch_size=4, seq_len=32, micro_batches=2)
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(2):  # grad_accum
            x, y = loader.next_batch()
            assert (y == -1).any()
            total += model(x, y, reduction="sum").item()
            count += int((y >= 0).sum())
    assert losses(run_dir)[1] == pytest.approx(total / count, rel=1e-5)
    assert losses(run_dir)[1] < 3.0  # far below ln(257) ≈ 5.5: the weights were loaded


def test_mid_training_data_may_add_chat_tokens_within_the_padded_vocabulary(tmp_path, finished_run):
    """gpt2 pretraining, gpt2+chat mid-training: two more ids, the same padded shape."""
    chat_tokenizer = byte_tokenizer().with_chat_tokens()
    assert chat_tokenizer.vocab_size == 259  # 257 + <|im_start|>, <|im_end|>; both pad to 320
    chat_data = make_data_dir(tmp_path / "chat", with_mask=True, tokenizer=chat_tokenizer)
    config = tiny_config(chat_data, mode="mid-training", init_from=str(finished_run), train={"num_steps": 2})
    del config["model"]
    run_dir = tmp_path / "mid"
    assert run(write_run(run_dir, config)) == EXIT_DONE
    final = ckpt.latest_checkpoint(run_dir)
    assert ckpt.read_meta(final)["model_config"]["vocab_size"] == 259


def other_byte_tokenizer():
    """Another tokenizer of the same 257 ids (another split pattern): a vocabulary size proves nothing."""
    from nanogpt.tokenizer import EOT, GPT4_PATTERN, Tokenizer

    base = byte_tokenizer()
    return Tokenizer(
        name="bytes", pattern=GPT4_PATTERN, mergeable_ranks=base.mergeable_ranks, special_tokens={EOT: 256}
    )


@pytest.mark.parametrize("chat_tokens", [False, True], ids=["same-vocab", "plus-chat-tokens"])
def test_mid_training_refuses_data_of_another_tokenizer(tmp_path, finished_run, capsys, chat_tokens):
    """Only the pretraining tokenizer itself, or it with the chat markers appended, may start from it."""
    tokenizer = other_byte_tokenizer().with_chat_tokens() if chat_tokens else other_byte_tokenizer()
    chat_data = make_data_dir(tmp_path / "chat", with_mask=True, tokenizer=tokenizer)
    config = tiny_config(chat_data, mode="mid-training", init_from=str(finished_run), train={"num_steps": 2})
    del config["model"]
    run_dir = tmp_path / "mid"
    assert run(write_run(run_dir, config)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{chat_data / 'manifest.json'}: tokenizer bytes" in err, err
    assert "step_000012/meta.json was trained with bytes" in err
    assert "mid-training data must use the pretraining run's tokenizer" in err
    assert not (run_dir / "events.jsonl").exists()


def test_a_tokenizer_or_validation_data_other_than_the_shards_is_refused(tmp_path, data_dir, capsys):
    other = other_byte_tokenizer().save(tmp_path / "other-tokenizer")
    config = tiny_config(data_dir, data={"tokenizer": str(other)})
    assert run(write_run(tmp_path / "a", config)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other}: tokenizer bytes" in err, err
    assert "is not the one the shards were made with, bytes" in err and str(data_dir / "manifest.json") in err
    val_data = make_data_dir(tmp_path / "val", tokenizer=other_byte_tokenizer())
    config = tiny_config(data_dir, data={"val_dir": str(val_data)})
    assert run(write_run(tmp_path / "b", config)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{val_data / 'manifest.json'}: validation data made with" in err, err
    assert not (tmp_path / "a" / "events.jsonl").exists() and not (tmp_path / "b" / "events.jsonl").exists()


def test_hparam_scaling_rules():
    config = tiny_config(Path("unused"), optim={"weight_decay": 0.2, "reference_batch_tokens": 64})
    from nanogpt.config import RunConfig

    parsed = RunConfig.from_dict(config)
    wide = GPTConfig(depth=24, aspect_ratio=64, head_dim=128, vocab_size=100)  # n_embd 1536 = 2 × 768
    h = effective_hparams(parsed, wide)
    assert h["width_lr_scale"] == pytest.approx(2**-0.5) and h["batch_lr_scale"] == pytest.approx(2.0)
    assert h["embedding_lr"] == pytest.approx(0.2 * 2**-0.5 * 2.0)
    assert h["matrix_lr"] == pytest.approx(0.02 * 2.0)  # Muon: no width factor here (the optimizer's own)
    assert h["weight_decay"] == pytest.approx(0.2 * (12 / 24) ** 2)
    plain = RunConfig.from_dict(tiny_config(Path("unused"), optim={"scale_hparams": False}))
    h = effective_hparams(plain, wide)
    assert h["embedding_lr"] == plain.optim.embedding_lr and h["weight_decay"] == plain.optim.weight_decay


def test_compile_auto_is_eager_on_the_cpu_blocks_for_short_gpu_runs_and_the_whole_model_for_long_ones():
    h100 = peak_flops("NVIDIA H100 80GB HBM3")

    def minutes(m: float) -> float:  # the FLOPs that AUTO_COMPILE_MFU of an H100 does in m minutes
        return m * 60 * AUTO_COMPILE_MFU * h100

    gpu = dict(device_type="cuda", peak_flops=h100, world_size=1)
    assert (
        resolve_compile("auto", device_type="cpu", peak_flops=None, world_size=1, total_flops=1e20) is False
    )
    assert resolve_compile("auto", total_flops=minutes(2), **gpu) == "blocks"
    assert resolve_compile("auto", total_flops=minutes(9.9), **gpu) == "blocks"
    assert resolve_compile("auto", total_flops=minutes(10.1), **gpu) is True
    # Eight GPUs share the work: a run of 40 GPU-minutes takes 5.
    assert resolve_compile("auto", total_flops=minutes(40), **{**gpu, "world_size": 8}) == "blocks"
    unknown = dict(device_type="cuda", peak_flops=None, world_size=1)
    assert resolve_compile("auto", total_flops=minutes(1000), **unknown) == "blocks"
    for setting in (True, False, "blocks"):  # a setting given is kept
        assert resolve_compile(setting, total_flops=minutes(1), **gpu) == setting


def test_compile_auto_runs_eagerly_on_the_cpu_and_the_start_event_says_so(tmp_path, data_dir, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called on the CPU under compile: auto")

    monkeypatch.setattr(torch, "compile", no_compile)
    run_dir = tmp_path / "auto"
    config = tiny_config(data_dir, compile="auto", train={"num_steps": 2}, eval={"every_steps": None})
    assert run(write_run(run_dir, config)) == EXIT_DONE
    start = events_of(run_dir)[0]
    assert start["config"]["compile"] == "auto" and start["device"]["compile"] is False


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Some Future GPU") is None


# ---------------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the file and the problem, nothing written or damaged.


def corrupt_config(run_dir, data_dir, config):
    (run_dir / "config.json").write_text('{"model": {"depth": 2},')
    return str(run_dir / "config.json"), "not valid JSON"


def unknown_key(run_dir, data_dir, config):
    config["optim"]["lrr"] = 1.0
    return str(run_dir / "config.json"), "unknown key 'optim.lrr'"


def changed_shape(run_dir, data_dir, config):
    config["model"]["depth"] = 3
    return "step_000012/meta.json", "model.depth: 2 in the checkpoint, 3 now"


def changed_dtype(run_dir, data_dir, config):
    config["dtype"] = "bfloat16"
    return "step_000012/meta.json", "the run's config changed since this checkpoint (dtype: 'auto' in the"


def changed_fp8_head(run_dir, data_dir, config):
    config["fp8_head"] = True
    return "step_000012/meta.json", "(fp8_head: False in the checkpoint, True now)"  # auto chose False


def other_world_size(run_dir, data_dir, config):
    meta_path = run_dir / "checkpoints" / "step_000012" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"world_size": 2, "rank_states": meta["rank_states"] * 2}))
    return "step_000012/meta.json", "written by 2 processes, this run has 1"


def bad_shard_header(run_dir, data_dir, config):
    shard = data_dir / "train_000000.bin"
    with open(shard, "r+b") as f:
        f.write(b"NOTTOKEN")
    return str(shard), "not a nanostudy token shard"


def too_few_tokens(run_dir, data_dir, config):
    make_data_dir(data_dir, train_tokens=100)  # one micro-batch needs 4 × 32 + 1 tokens
    return str(data_dir), "fewer than one step needs"


def data_of_another_tokenizer(run_dir, data_dir, config):
    make_data_dir(data_dir, tokenizer=other_byte_tokenizer())  # the same vocabulary size
    return "step_000012/meta.json was trained with bytes", "resume with the data the run was trained on"


def missing_data(run_dir, data_dir, config):
    shutil.rmtree(data_dir)
    return str(data_dir / "manifest.json"), "no manifest"


def manifest_not_utf8(run_dir, data_dir, config):
    (data_dir / "manifest.json").write_bytes(b'{"format_version": 1, "name": "\xff\xfe"}')
    return str(data_dir / "manifest.json"), "not valid UTF-8 JSON"


def optimizer_shard_of_another_shape(run_dir, data_dir, config):
    path = run_dir / "checkpoints" / "step_000012" / "optim_rank0.pt"
    state = torch.load(path, weights_only=True)
    shard = state["groups"][1]["shards"][0]  # the embedding's AdamW moments
    shard["exp_avg"] = shard["exp_avg"][:-1].clone()
    torch.save(state, path)
    return "step_000012/optim_rank0.pt: does not fit this run's optimizer", "exp_avg has shape"


def _meta_without(key):
    def breakage(run_dir, data_dir, config):
        meta_path = run_dir / "checkpoints" / "step_000012" / "meta.json"
        meta = json.loads(meta_path.read_text())
        del meta["rank_states"][0][key]
        meta_path.write_text(json.dumps(meta))
        return "step_000012/meta.json", f"rank_states[0] has no {key!r} state"

    breakage.__name__ = f"rank_state_without_{key}"
    return breakage


def _meta_edited(name, edit, problem):
    """A hand-damaged meta.json: `edit` changes the parsed file in place."""

    def breakage(run_dir, data_dir, config):
        meta_path = run_dir / "checkpoints" / "step_000012" / "meta.json"
        meta = json.loads(meta_path.read_text())
        edit(meta)
        meta_path.write_text(json.dumps(meta))
        return "step_000012/meta.json", problem

    breakage.__name__ = name
    return breakage


META_DAMAGE = [
    _meta_edited(
        "rng_torch_not_a_state",
        lambda m: m["rank_states"][0]["rng"].update(torch="AAAA"),
        "rank_states[0].rng.torch: not a torch generator state",
    ),
    _meta_edited(
        "rng_without_python",
        lambda m: m["rank_states"][0]["rng"].pop("python"),
        "rank_states[0].rng.python: missing",
    ),
    _meta_edited(
        "loader_without_epoch", lambda m: m["rank_states"][0]["loader"].pop("epoch"), "loader is damaged"
    ),
    _meta_edited("config_a_list", lambda m: m.update(config=[]), "config must be an object, got []"),
    _meta_edited("step_a_string", lambda m: m.update(step="6"), "step must be an integer, got '6'"),
    _meta_edited("step_negative", lambda m: m.update(step=-1), "step must be at least 0"),
    _meta_edited(
        "without_device_batch_size", lambda m: m.pop("device_batch_size"), "missing key 'device_batch_size'"
    ),
    _meta_edited("last_val_short", lambda m: m.update(last_val=[1.0]), "last_val must be [loss, bpb]"),
    _meta_edited(
        "tokenizer_hash_a_number",
        lambda m: m["tokenizer"].update(hash=5),
        "tokenizer.hash must be a string, got 5",
    ),
]


def model_of_another_shape(run_dir, data_dir, config):
    """meta.json says depth 2 width 32 (as configured), model.pt holds width 64 weights."""
    wider = GPT(GPTConfig(depth=2, aspect_ratio=32, head_dim=16, sequence_len=32, vocab_size=257))
    torch.save(wider.state_dict(), run_dir / "checkpoints" / "step_000012" / "model.pt")
    return "step_000012/model.pt: does not fit the model", "size mismatch"


def model_not_a_state_dict(run_dir, data_dir, config):
    torch.save(torch.zeros(3), run_dir / "checkpoints" / "step_000012" / "model.pt")
    return "step_000012/model.pt", "holds a Tensor, not a model's state_dict"


@pytest.mark.parametrize(
    "breakage",
    [
        corrupt_config,
        unknown_key,
        changed_shape,
        changed_dtype,
        changed_fp8_head,
        other_world_size,
        bad_shard_header,
        too_few_tokens,
        data_of_another_tokenizer,
        missing_data,
        manifest_not_utf8,
        optimizer_shard_of_another_shape,
        _meta_without("loader"),
        _meta_without("rng"),
        *META_DAMAGE,
        model_of_another_shape,
        model_not_a_state_dict,
    ],
    ids=lambda breakage: breakage.__name__,
)
def test_bad_input_is_one_line_and_damages_nothing(tmp_path, finished_run, data_dir, capsys, breakage):
    """A finished run directory and its data, broken one way; resuming it must fail cleanly."""
    run_dir, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(finished_run, run_dir)
    shutil.copytree(data_dir, data)
    config = tiny_config(data)
    write_run(run_dir, config)
    where, problem = breakage(run_dir, data, config)
    if breakage is not corrupt_config:
        write_run(run_dir, config)
    before = snapshot(run_dir)
    capsys.readouterr()
    assert run(run_dir / "config.json") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert where in err and problem in err, err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"total_batch_tokens": 300}, "300 is not a multiple of sequence_len × world_size = 32 × 1 = 32"),
        ({"device_batch_size": 3}, "device_batch_size: 3 does not divide the 8 sequences"),
    ],
)
def test_a_batch_that_does_not_split_is_refused(tmp_path, data_dir, capsys, train, expected):
    assert run(write_run(tmp_path, tiny_config(data_dir, train=train))) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'config.json'}: train.") and expected in err, err
    assert err.count("\n") == 1 and not (tmp_path / "events.jsonl").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"device": "cpu", "fused_loss": True}, "fused_loss: true needs a CUDA device"),
        ({"fused_loss": "yes"}, "fused_loss"),
    ],
    ids=["on-the-cpu", "not-a-choice"],
)
def test_a_fused_loss_that_cannot_run_is_refused(tmp_path, data_dir, capsys, monkeypatch, settings, expected):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert run(write_run(tmp_path, {**tiny_config(data_dir), **settings})) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'config.json'}: ") and expected in err, err
    assert err.count("\n") == 1 and not (tmp_path / "events.jsonl").exists()


def test_the_fused_loss_is_off_on_the_cpu_by_default_and_the_start_event_says_so(finished_run):
    start = next(e for e in events_of(finished_run) if e["kind"] == "start")
    assert start["config"]["fused_loss"] == "auto" and start["device"]["fused_loss"] is False


def test_a_checkpoint_of_another_shape_cannot_start_mid_training(tmp_path, finished_run, data_dir, capsys):
    config = tiny_config(data_dir, mode="mid-training", init_from=str(finished_run))
    config["model"]["aspect_ratio"] = 32
    assert run(write_run(tmp_path, config)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "step_000012/meta.json: checkpoint of another model shape" in err
    assert "aspect_ratio 16 in the checkpoint, 32 configured" in err and err.count("\n") == 1
    assert not (tmp_path / "events.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "nanogpt.train", "--config", str(tmp_path / "config.json")],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == EXIT_BAD_INPUT
    assert out.stderr == f"error: {tmp_path / 'config.json'}: config file not found\n"


# ---------------------------------------------------------------------------------------------------------
# Separate processes: SIGTERM, torchrun with two ranks, W&B.


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143_then_resume_matches_a_straight_run(tmp_path, data_dir):
    config = tiny_config(data_dir, train={"num_steps": 400}, eval={"every_steps": None}, log_every=1)
    config["checkpoint"] = {"every_steps": None, "keep_last": 2}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(write_run(straight, config)) == EXIT_DONE
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(write_run(stopped, config))]
    proc = subprocess.Popen(command, cwd=ROOT, env=SUBPROCESS_ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(e["kind"] == "step" for e in events_of(stopped)):
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read() if proc.poll() else "timeout"
        )
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_STOPPED, proc.stderr.read()
    events = events_of(stopped)
    assert "end" not in [e["kind"] for e in events]
    stopped_at = max(losses(stopped))
    assert stopped_at < 400 and events[-1]["kind"] == "checkpoint" and events[-1]["step"] == stopped_at
    assert events[-1]["stopping"] is True
    assert ckpt.latest_checkpoint(stopped).name == f"step_{stopped_at:06d}"

    resumed = subprocess.run(
        command, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == EXIT_DONE, resumed.stderr
    assert events_of(stopped)[-1]["status"] == "done"
    assert losses(stopped) == losses(straight)  # every step, before and after the stop, bit for bit


def blocked_on_flock(pid: int) -> bool:
    """Whether process `pid` waits for a flock (/proc/locks lists a blocked request as "-> FLOCK")."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("-> FLOCK" in line and line.split()[5] == str(pid) for line in lines)


def start_blocked_trainer(config_path: Path, lock: GpuLock) -> subprocess.Popen:
    """A trainer given `lock` (held by the test), once it waits for it."""
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(config_path)]
    env = {**SUBPROCESS_ENV, GPU_LOCKS_ENV: str(lock.path)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not blocked_on_flock(proc.pid):
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read() if proc.poll() else "timeout"
        )
        time.sleep(0.05)
    return proc


def test_a_second_trainer_on_a_run_directory_fails_fast_and_a_killed_one_leaves_no_lock(
    tmp_path, data_dir, capsys
):
    """The first trainer holds the run directory's lock from its set-up on (here it waits for a GPU lock
    the test holds); a second one exits 2 naming the directory and the holder, writing nothing. Killed
    with SIGKILL, the first leaves no lock: the next trainer trains."""
    config_path = write_run(tmp_path / "run", tiny_config(data_dir))
    gpu = GpuLock(tmp_path / "gpu0.lock")
    assert gpu.try_acquire()
    first = start_blocked_trainer(config_path, gpu)
    try:
        capsys.readouterr()
        assert run(config_path) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err == (
            f"error: {tmp_path / 'run'}: another trainer (pid {first.pid}) is training this run directory; "
            "wait for it to end, or stop it\n"
        )
        assert not (tmp_path / "run" / "events.jsonl").exists()
    finally:
        first.kill()
        first.wait(timeout=60)
    assert run(config_path) == EXIT_DONE
    assert [e["kind"] for e in events_of(tmp_path / "run")].count("start") == 1


def test_checkpoints_that_cannot_be_written_are_refused_before_any_step(
    tmp_path, finished_run, data_dir, capsys, monkeypatch
):
    """A read-only checkpoints/ (a mount, permissions) would fail the run at its first checkpoint, every
    step before it lost: one line and exit 2 at the start instead, nothing written."""
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, tiny_config(data_dir))
    checkpoints = run_dir / "checkpoints"
    shutil.copytree(finished_run / "checkpoints" / "step_000006", checkpoints / "step_000006")
    checkpoints.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse what a read-only directory would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != checkpoints and real_access(p, mode))
    try:
        capsys.readouterr()
        assert run(config_path) == EXIT_BAD_INPUT
    finally:
        checkpoints.chmod(0o755)
    err = capsys.readouterr().err
    assert err == f"error: {checkpoints}: cannot be written in (no permission, or a read-only filesystem)\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".trainer.lock", "checkpoints", "config.json"]


def test_a_run_directory_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path, data_dir, capsys, monkeypatch
):
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, tiny_config(data_dir))
    run_dir.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse what a read-only directory would
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if Path(path).parent == run_dir and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    try:
        capsys.readouterr()
        assert run(config_path) == EXIT_BAD_INPUT
    finally:
        run_dir.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir}: cannot write in the run directory (Permission denied") and (
        err.count("\n") == 1
    ), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_a_trainer_on_standby_sets_up_waits_for_the_gpu_lock_then_trains_as_if_alone(
    tmp_path, data_dir, finished_run
):
    """A trainer whose GPU lock another process holds sets up, takes a throwaway warm-up step and waits,
    writing nothing; once the lock is free it trains, and every loss and the final weights are bit for bit
    those of the same run without a lock."""
    lock = GpuLock(tmp_path / "locks" / "gpu0.lock")
    assert lock.try_acquire()
    run_dir = tmp_path / "standby"
    proc = start_blocked_trainer(write_run(run_dir, tiny_config(data_dir)), lock)
    assert not (run_dir / "events.jsonl").exists() and ckpt.latest_checkpoint(run_dir) is None
    time.sleep(0.5)
    lock.release()
    assert proc.wait(timeout=120) == EXIT_DONE, proc.stderr.read()

    start = events_of(run_dir)[0]
    assert (
        list(start["setup_s"])[-3:] == ["warm_up", "gpu_wait", "other"] and start["setup_s"]["gpu_wait"] > 0.4
    )
    assert "warm_up" not in events_of(finished_run)[0]["setup_s"]
    assert losses(run_dir) == losses(finished_run) and losses(run_dir, "val", "val_loss") == losses(
        finished_run, "val", "val_loss"
    )
    ours, theirs = (ckpt.load_model_state(ckpt.latest_checkpoint(d), "cpu") for d in (run_dir, finished_run))
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert lock.try_acquire()  # the trainer's exit let it go


@pytest.mark.parametrize(
    ("compile_", "graphs", "dtype"),
    [(True, 2, "float32"), ("blocks", 4, "float32"), (True, 2, "bfloat16"), ("blocks", 4, "bfloat16")],
)  # bfloat16: training steps read the weight copies, validation the parameters
def test_the_warm_up_on_standby_compiles_every_graph_the_run_then_uses(
    compile_, graphs, dtype, tmp_path, data_dir, monkeypatch
):
    """On standby, the throwaway step and validation forward compile what the run's steps and validations
    run: nothing compiles after the warm-up. (It once passed one tensor as both inputs and targets, so the
    compiled graph guarded on their being one object and the first real step recompiled: 6.5 s of the GPU's
    time per cell on an H100.)"""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counter, **kw))
    torch._dynamo.reset()
    run_dir = tmp_path / "standby"
    config = RunConfig.from_json(write_run(run_dir, tiny_config(data_dir, compile=compile_, dtype=dtype)))
    trainer = Trainer(config, run_dir, init_runtime(config), standby=True)
    assert (trainer.weight_copies is not None) == (dtype == "bfloat16")
    trainer.build(trainer.proposed_batch_size)
    compiled_by_warm_up = []
    warm_up = trainer._warm_up
    monkeypatch.setattr(
        trainer, "_warm_up", lambda: (warm_up(), compiled_by_warm_up.append(counter.frame_count))
    )
    assert trainer.train() == EXIT_DONE
    assert len(losses(run_dir, "val", "val_loss")) >= 2  # validations ran beside the steps
    # The whole model: one graph for the training step, one for validation (no_grad); its blocks: a block's
    # and the head's, for each. All built by the warm-up.
    assert compiled_by_warm_up == [graphs] and counter.frame_count == graphs


def test_the_gpu_lock_variable_names_one_file_per_local_rank(tmp_path):
    paths = [tmp_path / "gpu3.lock", tmp_path / "gpu5.lock"]
    environ = {GPU_LOCKS_ENV: os.pathsep.join(map(str, paths))}
    assert GpuLock.from_env(1, environ).path == paths[1]
    assert GpuLock.from_env(0, {}) is None
    with pytest.raises(ValueError, match="none for local rank 2"):
        GpuLock.from_env(2, environ)
    first, second = GpuLock(paths[0]), GpuLock(paths[0])
    assert first.try_acquire() and not second.try_acquire()
    first.release()
    assert second.try_acquire() and second.try_acquire()  # taking a held lock again is a no-op


def test_a_claim_on_the_whole_gpu_is_its_holders_and_ends_with_it(tmp_path):
    """The lock's holder may claim the whole GPU; another process sees the claim while the holder holds the
    lock, and the next holder starts with none (a dead holder's claim is void)."""
    path = tmp_path / "gpu0.lock"
    holder, other = GpuLock(path), GpuLock(path)
    assert holder.try_acquire() and not other.holder_claims_whole_gpu()
    holder.claim_whole_gpu()
    assert other.holder_claims_whole_gpu() and not holder.holder_claims_whole_gpu()
    with pytest.raises(AssertionError, match="only the lock's holder"):
        other.claim_whole_gpu()
    holder.release()
    assert other.try_acquire() and path.read_bytes() == b""
    assert not GpuLock(path).holder_claims_whole_gpu()


@pytest.mark.slow
def test_a_trainer_beside_one_that_claimed_the_whole_gpu_waits_before_it_builds_its_model(tmp_path, data_dir):
    """A trainer whose GPU's holder claimed the whole GPU (its model did not fit in half) puts nothing on
    the GPU until the lock is free: it waits before building its model, and does not warm up on standby."""
    lock = GpuLock(tmp_path / "locks" / "gpu0.lock")
    assert lock.try_acquire()
    lock.claim_whole_gpu()
    # Bad input is reported at once, not after the wait.
    bad = write_run(tmp_path / "bad", tiny_config(tmp_path / "no-such-data"))
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(bad)]
    env = {**SUBPROCESS_ENV, GPU_LOCKS_ENV: str(lock.path)}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == EXIT_BAD_INPUT and "no-such-data" in out.stderr, out.stderr
    run_dir = tmp_path / "run"
    proc = start_blocked_trainer(write_run(run_dir, tiny_config(data_dir)), lock)
    time.sleep(0.5)
    lock.release()
    assert proc.wait(timeout=120) == EXIT_DONE, proc.stderr.read()
    phases = list(events_of(run_dir)[0]["setup_s"])
    assert phases[:3] == ["runtime", "gpu_wait", "model"] and "warm_up" not in phases


def torchrun(config_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "nanogpt.train", "--config", str(config_path)]
    return subprocess.run(command, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)


# Micro-batches of 2 sequences: of the 8 sequences per step, 1 rank takes 4 micro-batches, 2 ranks 2 each and
# 4 ranks 1 each, so the runs below also cover gradient accumulation.
RANKS_CONFIG = {"train": {"device_batch_size": 2}}


@pytest.fixture(scope="module")
def two_ranks_run(tmp_path_factory, data_dir) -> Path:
    """The tiny run on 2 gloo ranks under torchrun, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("two-ranks")
    out = torchrun(write_run(run_dir, tiny_config(data_dir, **RANKS_CONFIG)))
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_two_ranks_train_shard_the_optimizer_and_resume_exactly(tmp_path, data_dir, two_ranks_run):
    config = tiny_config(data_dir, **RANKS_CONFIG)
    straight, resumed = two_ranks_run, tmp_path / "resumed"
    events = events_of(straight)
    start = events[0]
    assert start["world_size"] == 2 and start["device_batch_size"] == 2 and start["grad_accum"] == 2
    assert events[-1]["status"] == "done" and sorted(losses(straight)) == list(range(1, 13))
    assert [e["kind"] for e in events].count("start") == 1  # rank 0 alone writes events
    step_dir = straight / "checkpoints" / "step_000006"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "meta.json",
        "model.pt",
        "optim_rank0.pt",
        "optim_rank1.pt",
    ]
    shards = [torch.load(step_dir / f"optim_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [s["rank"] for s in shards] == [0, 1] and all(s["world_size"] == 2 for s in shards)
    loss = losses(straight)
    assert max(loss[s] for s in (10, 11, 12)) < loss[1] - 2.5

    write_run(resumed, config)
    shutil.copytree(step_dir, resumed / "checkpoints" / "step_000006")
    out = torchrun(resumed / "config.json")
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    assert losses(resumed) == {s: loss[s] for s in range(7, 13)}


@pytest.mark.slow
def test_one_two_and_four_ranks_follow_one_loss_curve_and_each_holds_its_share_of_the_state(
    tmp_path, data_dir, two_ranks_run
):
    """The same config (8 sequences per step) on 1 process and on 2 and 4 gloo ranks: every step reads the
    same tokens (nanogpt/data.py) from the same initial weights, so the runs differ only in the order of
    float32 sums (over micro-batches, and the ranks' reduce-scatter). Muon orthogonalizes in the run's
    dtype, float32 here, so that rounding is not amplified: the losses agree to 2e-6, about 8 float32 ulps
    at these losses (1.6-5.5; measured: at most 1.8e-7 over the 12 steps, 1e-7 for validation). Other
    tokens or weights move a step's loss by far more: the same run with another seed differs by 0.002-0.25
    per step (0.09 on average). With bf16 orthogonalization the same runs part by up to 2e-3 in 12 steps.
    Optimizer state per rank falls as 1/world_size: exactly at 2 ranks, within one matrix per stack of
    same-shape matrices at 4 (two (128, 32) matrices cannot be split four ways)."""
    config = tiny_config(data_dir, **RANKS_CONFIG)
    one, four = tmp_path / "one", tmp_path / "four"
    assert run(write_run(one, config)) == EXIT_DONE
    out = torchrun(write_run(four, config), nproc=4)
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    runs = {1: one, 2: two_ranks_run, 4: four}
    starts = {w: events_of(run_dir)[0] for w, run_dir in runs.items()}
    assert {w: (s["world_size"], s["device_batch_size"], s["grad_accum"]) for w, s in starts.items()} == {
        1: (1, 2, 4),
        2: (2, 2, 2),
        4: (4, 2, 1),
    }
    curve = losses(one)
    val = losses(one, "val", "val_loss")
    assert sorted(curve) == list(range(1, 13)) and sorted(val) == [6, 12]
    for world_size in (2, 4):
        other = losses(runs[world_size])
        assert sorted(other) == sorted(curve)
        worst = max(abs(other[s] - curve[s]) for s in curve)
        assert worst <= 2e-6, (world_size, {s: other[s] - curve[s] for s in curve})
        other_val = losses(runs[world_size], "val", "val_loss")
        assert max(abs(other_val[s] - val[s]) for s in val) <= 2e-6, (world_size, other_val, val)

    model = GPT(GPTConfig(depth=2, aspect_ratio=16, head_dim=16, sequence_len=32, vocab_size=257))
    muon_shapes = [tuple(p.shape) for p in model.param_groups()["matrix"]]
    (total,) = starts[1]["optim_state_bytes"]
    run_config = RunConfig.from_json(one / "config.json")
    optimizer = build_optimizer(model, run_config, effective_hparams(run_config, model.config))
    matrix_numel = sum(p.numel() for p in model.param_groups()["matrix"])
    other_numel = sum(p.numel() for p in model.parameters()) - matrix_numel
    # fp32: one momentum buffer per Muon matrix, two moments per AdamW element.
    assert total == optimizer.state_bytes() == 4 * matrix_numel + 8 * other_numel
    assert starts[2]["optim_state_bytes"] == [total // 2, total // 2]
    four_ranks = starts[4]["optim_state_bytes"]
    assert sum(four_ranks) == total  # no AdamW padding at these sizes: every byte is held exactly once
    one_matrix_per_stack = sum(4 * math.prod(shape) for shape in set(muon_shapes))
    assert total / 4 < max(four_ranks) <= total / 4 + one_matrix_per_stack, (four_ranks, total)


def wandb_records(path: Path):
    """The records of an offline run's `.wandb` file, as W&B's protobuf `Record`s. The file is a LevelDB
    log (what `wandb sync` uploads): a 7-byte header (":W&B", 0xBEE1, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_holds_every_step_and_val_metric(tmp_path, data_dir):
    config = tiny_config(data_dir, wandb={"mode": "offline", "project": "nanostudy-test", "name": "tiny"})
    wandb_dir = tmp_path / "wandb-root"
    wandb_dir.mkdir()
    env = {**SUBPROCESS_ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(write_run(tmp_path / "run", config))]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(wandb_dir.rglob("*"))
    (log_file,) = runs[0].glob("*.wandb")
    history: dict[int, dict] = {}
    summary: dict[str, object] = {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            history[row["_step"]] = row
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
        elif kind == "run":
            assert record.run.project == "nanostudy-test" and record.run.display_name == "tiny"
    events = events_of(tmp_path / "run")
    steps = [e for e in events if e["kind"] == "step"]
    vals = [e for e in events if e["kind"] == "val"]
    assert sorted(history) == [e["step"] for e in steps] == list(range(1, 13))
    for e in steps:
        row = history[e["step"]]
        for key in ("loss", "lr", "lr_frac", "tokens", "flops", "tok_per_s"):
            assert row[f"step/{key}"] == pytest.approx(e[key], rel=1e-12), (e["step"], key)
        assert "step/mfu" not in row  # null on the CPU: not logged
    assert [e["step"] for e in vals] == [6, 12]
    for e in vals:
        row = history[e["step"]]
        for key in ("val_loss", "val_bpb", "val_tokens"):
            assert row[f"val/{key}"] == pytest.approx(e[key], rel=1e-12), (e["step"], key)
    assert summary["status"] == "done"


# ---------------------------------------------------------------------------------------------------------
# On a GPU: bf16 autocast, torch.compile, the micro-batch probe, MFU.


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_run_with_compile_bf16_and_probed_batch(tmp_path, data_dir):
    config = tiny_config(
        data_dir,
        device="auto",
        compile=True,
        train={"num_steps": 20, "total_batch_tokens": 2048, "device_batch_size": "auto"},
    )
    assert run(write_run(tmp_path, config)) == EXIT_DONE
    events = events_of(tmp_path)
    start = events[0]
    assert start["device"]["type"] == "cuda" and start["device"]["dtype"] == "bfloat16"
    assert start["device_batch_size"] == 64 and start["grad_accum"] == 1  # a tiny model fits all 64 sequences
    # fp8_head: auto (the default) trains the fused FP8 head where there are FP8 tensor cores, and says so.
    has_fp8 = torch.cuda.get_device_capability() >= train_module.FP8_CAPABILITY
    assert start["config"]["fp8_head"] == "auto" and start["device"]["fused_loss"] is True
    assert start["device"]["fp8_head"] is has_fp8, start["warnings"]
    meta = json.loads((ckpt.latest_checkpoint(tmp_path) / ckpt.META_NAME).read_text())
    assert meta["fp8_head"] is has_fp8
    steps = [e for e in events if e["kind"] == "step"]
    if start["device"]["peak_flops"] is not None:
        assert all(0 < e["mfu"] < 1 for e in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] - 2 and events[-1]["status"] == "done"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", ["auto", 4], ids=["probed", "configured"])
def test_a_trainer_that_may_share_its_gpu_keeps_to_its_share_or_claims_the_whole_gpu(
    batch, tmp_path, data_dir, monkeypatch
):
    """With a GPU lock, a trainer's allocations are capped at SHARED_GPU_FRAC of the GPU, so the one on
    standby beside it fits; a model that does not fit there takes the lock, claims the whole GPU for the
    next trainer to see, and lifts its cap."""
    device = torch.device("cuda", 0)  # the trainer's (local rank 0)
    total = torch.cuda.get_device_properties(device).total_memory
    config = tiny_config(data_dir, device="auto", train={"device_batch_size": batch})
    config = RunConfig.from_json(write_run(tmp_path / "run", config))
    alone = Trainer(config, tmp_path / "run", init_runtime(config)).proposed_batch_size
    try:
        lock = GpuLock(tmp_path / "locks" / "gpu0.lock")
        trainer = Trainer(config, tmp_path / "run", init_runtime(config), gpu_lock=lock)
        assert trainer.gpu_share == train_module.SHARED_GPU_FRAC
        assert not [warning for warning in trainer.warnings if "GPU" in warning]
        assert trainer.proposed_batch_size == alone  # a tiny model fits its half as it fits the GPU
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device=device)
        assert not GpuLock(lock.path).holder_claims_whole_gpu()
        del trainer
        lock.release()

        # A share too small for one sequence beside the model's weights: the whole GPU.
        monkeypatch.setattr(train_module, "SHARED_GPU_FRAC", 1e-6)
        lock = GpuLock(tmp_path / "locks" / "gpu1.lock")
        trainer = Trainer(config, tmp_path / "run", init_runtime(config), gpu_lock=lock)
        assert trainer.gpu_share == 1.0 and trainer.proposed_batch_size == alone
        assert [warning for warning in trainer.warnings if "took the whole GPU" in warning]
        assert lock.held and GpuLock(lock.path).holder_claims_whole_gpu()
        torch.empty(int(0.6 * total), dtype=torch.uint8, device=device)  # no cap
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


def test_a_validation_split_smaller_than_one_micro_batch_is_read_in_smaller_batches(tmp_path):
    """The micro-batch is sized for training (on a GPU, by probing memory); a validation split smaller than
    one micro-batch is still evaluated, in as many whole sequences as it holds."""
    data = make_data_dir(tmp_path / "data", train_tokens=20_000, val_tokens=100)
    config = tiny_config(data, train={"num_steps": 2, "device_batch_size": 8}, eval={"val_tokens": 10_000})
    assert run(write_run(tmp_path / "run", config)) == EXIT_DONE  # 8 × 32 + 1 tokens > 100
    [val] = [event for event in events_of(tmp_path / "run") if event["kind"] == "val"]
    assert val["val_tokens"] == 3 * 32  # (100 - 1) // 32 whole sequences
    assert math.isfinite(val["val_loss"]) and math.isfinite(val["val_bpb"])
    # One sequence it cannot hold is still bad input, named.
    tiny = make_data_dir(tmp_path / "tiny", train_tokens=20_000, val_tokens=20)
    assert run(write_run(tmp_path / "run2", tiny_config(tiny))) == EXIT_BAD_INPUT


def test_a_profiled_window_reports_each_phase_and_leaves_the_trajectory_unchanged(
    tmp_path, finished_run, data_dir
):
    config = tiny_config(data_dir, profile={"start_step": 3, "num_steps": 2})
    assert run(write_run(tmp_path, config)) == EXIT_DONE
    assert losses(tmp_path) == losses(finished_run)  # exactly: profiling observes, it changes nothing
    summary = json.loads((tmp_path / "profile" / "summary.json").read_text())
    assert summary["steps"] == [4, 5] and summary["time_base"] == "host"
    grad_accum = events_of(tmp_path)[0]["grad_accum"]
    phases = summary["phases"]
    assert set(phases) == {"data", "forward_backward", "optimizer", "sync"}
    # Each micro-batch is read (data) before its forward and backward, the next while the last one runs.
    assert phases["forward_backward"]["count"] == phases["data"]["count"] == 2 * grad_accum
    assert all(phases[name]["count"] == 2 for name in ("optimizer", "sync"))
    assert phases["forward_backward"]["host_s"] > phases["data"]["host_s"] > 0
    # The phases happen inside the two steps' wall time.
    assert sum(p["host_s"] for p in phases.values()) <= sum(summary["step_s"]) * 1.05
    assert summary["categories"]["matmul"] > 0
    assert summary["top"] and all(row["self_s"] > 0 for row in summary["top"])
    text = (tmp_path / "profile" / "summary.txt").read_text()
    assert text.startswith("profiled steps 4-5 (2)") and "forward_backward" in text
    with gzip.open(tmp_path / "profile" / "trace.json.gz") as f:
        trace = json.load(f)
    assert any(e.get("name") == "nanostudy.optimizer" for e in trace["traceEvents"])


def test_a_profile_window_past_the_end_writes_what_it_saw_and_a_bad_one_is_refused(
    tmp_path, data_dir, capsys
):
    config = tiny_config(data_dir, profile={"start_step": 11, "num_steps": 5, "trace": False})
    assert run(write_run(tmp_path / "late", config)) == EXIT_DONE
    summary = json.loads((tmp_path / "late" / "profile" / "summary.json").read_text())
    assert summary["steps"] == [12]
    assert not (tmp_path / "late" / "profile" / "trace.json.gz").exists()
    config = tiny_config(data_dir, profile={"start_step": -1})
    assert run(write_run(tmp_path / "bad", config)) == EXIT_BAD_INPUT
    assert "profile.start_step: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "events.jsonl").exists()
