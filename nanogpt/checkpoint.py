"""Checkpoints: atomic, complete (model, every rank's optimizer shard, data position, RNG) and loadable with
`torch.load(weights_only=True)`.

    RUN_DIR/checkpoints/
        step_000500/
            model.pt            the model's state_dict (rank 0; the weights are identical on every rank)
            optim_rank0.pt      each rank's optimizer shard (MuonAdamW keeps 1/world_size of the state)
            optim_rank1.pt
            meta.json           step, configs, counters, and per rank the data loader state and RNG state
        step_001000/ ...
        LATEST              "step_001000": a pointer for other tools, written last

A checkpoint is written into `.tmp-step_XXXXXX/` and renamed into place once every file is on disk, so a
`step_*` directory is always complete; a crash leaves at most a temp directory, removed by the next save.
Resume takes the newest `step_*` directory (the listing, not LATEST, is the truth: a crash between the
rename and the pointer loses nothing).
"""

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "LATEST"
META_NAME = "meta.json"
MODEL_NAME = "model.pt"
FORMAT_VERSION = 1
RANK_STATE_KEYS = ("loader", "rng")  # what every rank's entry in meta.json's rank_states holds
RESUME_KEYS = ("config", "device_batch_size")  # what a resume needs beside what every reader does
# meta.json's keys that must have a type when present: (types, in words).
META_TYPES = {
    "step": ((int,), "an integer"),
    "world_size": ((int,), "an integer"),
    "model_config": ((dict,), "an object"),
    "config": ((dict,), "an object"),
    "tokenizer": ((dict, type(None)), "an object"),
    "device_batch_size": ((int,), "an integer"),
    "total_steps": ((int,), "an integer"),
    "grad_accum": ((int,), "an integer"),
    "fp8_head": ((bool,), "true or false"),
    "tokens": ((int,), "an integer"),
    "flops": ((int, float), "a number"),
    "elapsed_s": ((int, float), "a number"),
    "last_val": ((list,), "a list"),
    "stopping": ((bool,), "true or false"),
}
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message starts with the offending path."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a lost mount); the message starts with its
    directory. Not a CheckpointError: the input was fine, and the run may have trained for hours."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def optim_name(rank: int) -> str:
    return f"optim_rank{rank}.pt"


# ---------------------------------------------------------------------------------------------------------
# RNG state, as JSON


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _uint32_b64(values) -> str:
    return _b64(np.asarray(values, dtype="<u4").tobytes())


def _b64_uint32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u4")


def _b64_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch CPU and (if initialised) CUDA generator states, JSON-able
    (the generators' words as base64, so meta.json stays readable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, _uint32_b64(internal), gauss],
        "numpy": [kind, _uint32_b64(keys), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _b64(torch.cuda.get_rng_state().cpu().numpy().tobytes())
    return state


def _decode_rng_state(state: Any) -> tuple[tuple, tuple, torch.Tensor, torch.Tensor | None]:
    """rng_state()'s JSON as the generators take it, each tried on a fresh generator of its kind (the
    process's own are left alone); ValueError naming the part that is damaged."""
    if not isinstance(state, dict):
        raise ValueError(f"must be an object, got {type(state).__name__}")
    part = "python"
    try:
        version, internal, gauss = state["python"]
        python = (version, tuple(int(x) for x in _b64_uint32(internal)), gauss)
        random.Random().setstate(python)
        part = "numpy"
        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy = (kind, _b64_uint32(keys).copy(), pos, has_gauss, cached)
        np.random.RandomState().set_state(numpy)
        part = "torch"
        cpu = _b64_tensor(state["torch"])
        torch.Generator().set_state(cpu)
        part = "cuda"
        # Only decoded: checking it against a CUDA generator would initialise CUDA in whoever reads this.
        cuda = None if state.get("cuda") is None else _b64_tensor(state["cuda"])
    except KeyError:
        raise ValueError(f"{part}: missing") from None
    except Exception as e:  # a wrong type, length or value: TypeError, ValueError, RuntimeError, ...
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{part}: not a {part} generator state ({detail})") from None
    return python, numpy, cpu, cuda


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore rng_state()'s generators; ValueError, the generators untouched, when any part is damaged."""
    python, numpy, cpu, cuda = _decode_rng_state(state)
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state(cuda)
        except RuntimeError as e:
            raise ValueError(f"cuda: not a cuda generator state ({str(e).strip()[:200]})") from None


# ---------------------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written file left beside the real one
        raise


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    meta: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    keep_last: int | None = None,
) -> Path:
    """Write step `step`'s checkpoint; every rank calls this (it is collective) with its own optimizer
    shard and `rank_state` (JSON-able: the data loader's position, the RNG states). Rank 0's `model_state`
    and `meta` are written; `meta` gains `rank_states` (one per rank), `world_size` and `format_version`.

    If the step's directory already exists (a run resumed from it stopped again before its next step),
    it is kept as it is: resume is exact, so it holds this very state. Returns the directory.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}"
    exists = [final.is_dir()]
    if _distributed():
        dist.broadcast_object_list(exists, src=0)
    if exists[0]:
        return final
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        _save_torch(optim_state, tmp / optim_name(rank))
        rank_states = [rank_state]
        if _distributed():
            rank_states = [None] * world_size
            dist.all_gather_object(rank_states, rank_state)
        if rank == 0:
            _save_torch(model_state, tmp / MODEL_NAME)
            full_meta = {**meta, "format_version": FORMAT_VERSION, "step": step, "world_size": world_size}
            full_meta["rank_states"] = rank_states
            _write_text_atomic(tmp / META_NAME, json.dumps(full_meta, indent=1) + "\n")
        _barrier()  # every optimizer shard is on disk
        if rank == 0:
            _fsync_dir(tmp)
            os.rename(tmp, final)
    except OSError as e:
        if rank == 0:  # what was written of it would only hold on to the space a full disk lacks
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"{final}: cannot be written ({e.strerror or e})") from None
    if rank == 0:
        try:
            _fsync_dir(root)
            _write_text_atomic(root / LATEST_NAME, final.name + "\n")
        except OSError as e:  # the checkpoint itself is whole: a resume finds it without LATEST
            raise CheckpointWriteError(
                f"{root / LATEST_NAME}: cannot be written ({e.strerror or e})"
            ) from None
        if keep_last is not None:
            prune_checkpoints(run_dir, keep_last)
    _barrier()
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete checkpoint directories, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and temp directories left by a crash. Each is
    renamed to a temp name before it is deleted, so that a crash while deleting leaves no `step_*`
    directory with some of its files gone."""
    assert keep_last >= 1
    root = Path(run_dir) / CHECKPOINTS_DIR
    for old in list_checkpoints(run_dir)[:-keep_last]:
        doomed = root / f".tmp-{old.name}"
        shutil.rmtree(doomed, ignore_errors=True)
        os.rename(old, doomed)
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Reading


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's newest checkpoint directory, or None if it has none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a path to one, to a run directory or to its `checkpoints/` (the newest)."""
    path = Path(path)
    if (path / META_NAME).is_file():
        return path
    found = latest_checkpoint(path.parent if path.name == CHECKPOINTS_DIR else path)
    if found is not None:
        return found
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    raise CheckpointError(f"{path}: holds no checkpoint ({META_NAME} or {CHECKPOINTS_DIR}/step_*)")


def read_meta(checkpoint_dir: str | os.PathLike, *, resume: bool = False) -> dict[str, Any]:
    """meta.json, checked: the keys every reader needs, and the type and shape of every key the trainer
    reads (`resume`: also those a resume needs), so that a damaged file is a CheckpointError naming it."""
    path = Path(checkpoint_dir) / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; not a checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:  # no permission, an I/O error on a network filesystem
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this code reads {FORMAT_VERSION}")
    required = ("step", "world_size", "model_config", "rank_states", *(RESUME_KEYS if resume else ()))
    for key in required:
        if key not in meta:
            raise CheckpointError(f"{path}: missing key {key!r}")
    for key, (kinds, what) in META_TYPES.items():
        if key in meta and not _is_a(meta[key], kinds):
            raise CheckpointError(f"{path}: {key} must be {what}, got {meta[key]!r}"[:300])
    for key, least in (("step", 0), ("world_size", 1), ("device_batch_size", 1)):
        if key in meta and meta[key] < least:
            raise CheckpointError(f"{path}: {key} must be at least {least}, got {meta[key]!r}")
    last_val = meta.get("last_val", [None, None])
    if len(last_val) != 2 or not all(v is None or _is_a(v, (int, float)) for v in last_val):
        raise CheckpointError(f"{path}: last_val must be [loss, bpb], numbers or null, got {last_val!r}")
    tokenizer = meta.get("tokenizer") or {}
    for key in ("name", "hash"):
        if not _is_a(tokenizer.get(key), (str, type(None))):
            raise CheckpointError(f"{path}: tokenizer.{key} must be a string, got {tokenizer[key]!r}")
    world_size, rank_states = meta["world_size"], meta["rank_states"]
    if not isinstance(rank_states, list) or len(rank_states) != world_size:
        raise CheckpointError(f"{path}: rank_states must list one entry per rank ({world_size!r} ranks)")
    for rank, state in enumerate(rank_states):
        for key in RANK_STATE_KEYS:
            if not isinstance(state, dict) or not isinstance(state.get(key), dict):
                raise CheckpointError(f"{path}: rank_states[{rank}] has no {key!r} state")
        try:
            _decode_rng_state(state["rng"])
        except ValueError as e:
            raise CheckpointError(f"{path}: rank_states[{rank}].rng.{e}") from None
    return meta


def _is_a(value: Any, kinds: tuple[type, ...]) -> bool:
    """isinstance, where a JSON true/false is no number."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _load_torch(path: Path, device: torch.device | str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for a damaged file
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e)[:200]})") from None


def load_model_state(checkpoint_dir: str | os.PathLike, device: torch.device | str) -> dict:
    """model.pt's state_dict; CheckpointError when the file holds anything else (a bare tensor, a list)."""
    path = Path(checkpoint_dir) / MODEL_NAME
    state = _load_torch(path, device)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a model's state_dict")
    return state


def load_optim_state(checkpoint_dir: str | os.PathLike, rank: int, device: torch.device | str) -> dict:
    return _load_torch(Path(checkpoint_dir) / optim_name(rank), device)
