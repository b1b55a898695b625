"""The plan: a study's grid expanded into cells, each with its complete trainer config and its numbers.

    plan = make_plan(study)  # or plan(study, data_dirs={"pretraining": dir, ...}, measured=...)

For every grid point (and, in mode `all`, its mid-training child) the planner builds the trainer's config
(`runner.study.cell_config`), then asks the model itself for N (`num_scaling_params()`) and FLOPs per
token (`estimate_flops()`), built on the meta device (no memory, no time), and the trainer for the number
of steps (`nanogpt.train.num_steps_for`), so the plan's D and C are the run's. Nothing here trains,
prepares or writes anything.

A cell's id is a hash of its resolved trainer config with the data's identity (its source, tokenizer and
preparation settings, never a path) in place of the data directory, and with the settings that cannot
change what a cell trains left out (`NOT_IN_ID`: paths, speed settings, and the eval gauntlet, which only
measures). So the id is the same before and after the data is prepared and on every machine, and editing
one axis of a study adds cells and keeps the others.
"""

import dataclasses
import hashlib
import json
import platform
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nanogpt.config import RunConfig
from nanogpt.shards import epochs_needed, read_manifest
from nanogpt.tokenizer import CHAT_SPECIALS, load_tokenizer
from runner.data.prepare import PrepareConfig, bpe_vocab_size
from runner.study import GAUNTLET_KEYS, PRETRAINING_TOKENIZER, Study, StudyError, cell_config
from store import CellState, Store, attempts_of, cells_of, list_studies, train_curve

ID_LENGTH = 12
MAX_TOKENS = float(2**63 - 1)  # a run's tokens are a 64-bit integer (the store's, the trainer's events)
GPT2_VOCAB_SIZE = 50_257  # GPT-2's 50,256 merges and <|endoftext|>, as tiktoken's "gpt2" encoding has them
UNPREPARED = "<prepared by the runner>"  # data.train_dir of a cell whose data is not prepared yet
# Trainer config keys that cannot change what a cell trains or measures (paths, and settings the trainer
# lets a resumed run change); the data's identity and the parent cell's id (mode mid-training: the
# checkpoint's identity) stand in for the paths.
NOT_IN_ID = (
    "data",
    "init_from",
    "train.max_seconds",
    "train.device_batch_size",
    "compile",
    "fused_loss",
    "fused_mlp",
    "weight_copies",
    "log_every",
    "checkpoint",
    "wandb",
    "profile",
    # The eval gauntlet measures a cell without changing what it trains: adding a preset to a finished
    # study does not retrain it (`nanostudy eval STUDY` scores its final checkpoints instead).
    *(f"eval.{key}" for key in GAUNTLET_KEYS),
)
# Trainer config keys added after studies existed, left out of the id at their default, so that the cells
# of an existing study keep their ids (and their results). fp8_head's default, "auto" (the FP8 head where
# the GPU has FP8 tensor cores), pins nothing, like fused_loss: its change to the losses is within a GPU's
# run-to-run noise (docs/training.md), and the report says which head each cell trained (the start event's
# device.fp8_head); the cells planned before it, at false, keep their ids under it. true and false pin the
# head, so each is in the id: a study that asks for one gets cells that trained with it.
ID_OMITTED_AT = {"fp8_head": ("auto",)}
# When the store has no measurement for this machine: rough training speeds, FLOP/s per device. A GPU at
# about 40% of an H100's dense bf16 peak; a laptop-class CPU core pair in float32 (what the quickstart's
# cells reach on the 2-core machine its comments describe). Only the ETA uses them.
DEFAULT_FLOPS_PER_S = {"cuda": 4.0e14, "cpu": 3.0e10}
# Per cell: process start, model build (torch.compile on a GPU), validation and the final checkpoint.
DEFAULT_OVERHEAD_S = {"cuda": 60.0, "cpu": 8.0}
DEFAULT_GPU_MEMORY_BYTES = 80 * 2**30
MEMORY_BUDGET_FRAC = 0.9  # of a GPU's memory, as the trainer's batch-size probe keeps 10% free


@dataclass(frozen=True, kw_only=True, slots=True)
class Throughput:
    """How fast this machine trains: FLOP/s per device, measured on finished cells (the store), by model
    shape (`model_shape`). A shape never measured takes the speed of the nearest depth measured with the
    same aspect ratio, head size and context (small models reach a smaller share of the peak, so a speed
    is never carried across those), else the default."""

    device_type: Literal["cuda", "cpu"]
    device_name: str
    memory_bytes: int | None = None  # per GPU; None: unknown (DEFAULT_GPU_MEMORY_BYTES)
    flops_per_s: Mapping[tuple[int, int, int, int], float] = dataclasses.field(default_factory=dict)

    def rate(self, shape: tuple[int, int, int, int]) -> tuple[float, bool]:
        """(FLOP/s per device, measured?) for a model shape."""
        if shape in self.flops_per_s:
            return self.flops_per_s[shape], True
        alike = [other for other in self.flops_per_s if other[1:] == shape[1:]]
        if alike:
            nearest = min(alike, key=lambda other: (abs(other[0] - shape[0]), other[0]))
            return self.flops_per_s[nearest], False
        return DEFAULT_FLOPS_PER_S[self.device_type], False


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedCell:
    id: str
    mode: Literal["pretraining", "mid-training"]
    parent_id: str | None  # the pretraining cell a mid-training cell starts from
    axes: Mapping[str, Any]  # depth, flops (the budget axis), seed, and any other swept axis
    config: Mapping[str, Any]  # the trainer's config; a mid-training child's init_from is filled at launch
    width: int  # n_embd
    num_params: int  # N: the model's num_scaling_params()
    flops_per_token: int  # the model's estimate_flops()
    num_steps: int
    num_tokens: int  # D = num_steps × total_batch_tokens
    flops: float  # C = flops_per_token × D
    gpus: int
    epochs: float | None  # passes over the training data; None until the data is prepared
    eta_s: float
    eta_measured: bool  # from the speed this machine reached on this very shape (else estimated)

    @property
    def tokens_per_param(self) -> float:
        return self.num_tokens / self.num_params

    @property
    def label(self) -> str:
        """'d8 1e+18 s0' and any other axis: how a cell reads in logs and tables."""
        extra = " ".join(f"{k}={v:g}" for k, v in self.axes.items() if k not in ("depth", "flops", "seed"))
        text = f"d{self.axes['depth']} {self.axes['flops']:.3g} s{self.axes['seed']}"
        return f"{text} {extra}".strip() + (" (mid)" if self.mode == "mid-training" else "")


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    study: Study
    cells: tuple[PlannedCell, ...]
    vocab_sizes: Mapping[str, int]  # per stage: the vocabulary the models were sized with
    prepared: Mapping[str, bool]  # per stage: whether its data directory was known
    device_type: Literal["cuda", "cpu"]
    warnings: tuple[str, ...]

    @property
    def total_flops(self) -> float:
        return sum(cell.flops for cell in self.cells)

    @property
    def device_hours(self) -> float:
        """GPU-hours (CPU-hours on the CPU) of the whole study, by the cells' ETAs."""
        return sum(cell.eta_s * cell.gpus for cell in self.cells) / 3600.0

    def to_dict(self) -> dict[str, Any]:
        cells = []
        for cell in self.cells:
            row = {f.name: getattr(cell, f.name) for f in dataclasses.fields(cell)}
            row["axes"], row["config"] = dict(cell.axes), dict(cell.config)
            row["tokens_per_param"] = cell.tokens_per_param
            cells.append(row)
        return {
            "study": self.study.name,
            "path": str(self.study.path),
            "mode": self.study.mode,
            "device_type": self.device_type,
            "vocab_sizes": dict(self.vocab_sizes),
            "prepared": dict(self.prepared),
            "cells": cells,
            "totals": {
                "cells": len(self.cells),
                "flops": self.total_flops,
                "device_hours": self.device_hours,
                "eta_s": sum(cell.eta_s for cell in self.cells),
            },
            "warnings": list(self.warnings),
        }


def plan(
    study: Study,
    *,
    data_dirs: Mapping[str, str | Path] | None = None,
    measured: Throughput | None = None,
) -> Plan:
    """Expand the study into cells. `data_dirs` maps a stage ("pretraining", "mid-training") to its prepared
    data directory (vocabulary and epochs from its manifest; else the tokenizer spec's vocabulary and no
    epochs). `measured` is this machine's speed (`measured_throughput`); None: rough defaults.

    Raises StudyError (at the study line responsible) for a model the trainer would refuse.
    """
    data_dirs = {stage: Path(d) for stage, d in (data_dirs or {}).items()}
    unknown = sorted(set(data_dirs) - {"pretraining", "mid-training"})
    if unknown:
        raise ValueError(f"data_dirs: unknown stage {unknown[0]!r}; stages are 'pretraining', 'mid-training'")
    device_type = measured.device_type if measured else _study_device(study)
    throughput = measured or Throughput(device_type=device_type, device_name="")
    planner = _Planner(study, data_dirs, throughput)
    cells: list[PlannedCell] = []
    if study.mode == "mid-training":
        for axes in study.grid.points():
            if (cell := planner.external_mid_training(axes)) is not None:
                cells.append(cell)
    else:
        for axes in study.grid.points():
            parent = planner.pretraining(axes)
            cells.append(parent)
            if study.mode == "all":
                cells.append(planner.child(parent))
    if planner.problems:
        raise StudyError(sorted(set(planner.problems)))
    warnings = [
        f"cell {cell.id} ({cell.label}): {cell.epochs:.2f} epochs of its data; it sees tokens more than once"
        for cell in cells
        if cell.epochs is not None and cell.epochs > 1
    ]
    warnings += planner.warnings
    return Plan(
        study=study,
        cells=tuple(cells),
        vocab_sizes=planner.vocab_sizes,
        prepared={stage: stage in data_dirs for stage in planner.vocab_sizes},
        device_type=device_type,
        warnings=tuple(warnings),
    )


def _study_device(study: Study) -> Literal["cuda", "cpu"]:
    return "cpu" if study.training.get("device") == "cpu" else "cuda"


# ---------------------------------------------------------------------------------------------------------
# Identity


def data_identity(config: PrepareConfig) -> dict[str, Any]:
    """What decides a data directory's tokens, without paths or machine facts: the source spec, the
    tokenizer (a spec, or a tokenizer directory's content hash) and the preparation settings."""
    tokenizer: Any = config.tokenizer
    if tokenizer != "gpt2" and tokenizer != PRETRAINING_TOKENIZER and not tokenizer.startswith("bpe:"):
        tokenizer = {"hash": load_tokenizer(tokenizer).hash}
    return {
        "source": config.source.to_dict(),
        "tokenizer": tokenizer,
        "shard_tokens": config.shard_tokens,
        "val_fraction": config.val_fraction,
        # Only a trained tokenizer depends on how much text it was trained on.
        "tokenizer_train_bytes": config.tokenizer_train_bytes
        if config.tokenizer.startswith("bpe:")
        else None,
    }


def cell_id(
    config: Mapping[str, Any],
    *,
    data: Mapping[str, Any],
    parent_id: str | None = None,
    init: str | None = None,
) -> str:
    """The short hash that names a cell: its config without NOT_IN_ID keys, its data identity, its parent
    (a cell of mode `all`) or the identity of the checkpoint it starts from (`init`: mode mid-training, whose
    init_from is a path and so not in the id)."""
    content = json.loads(json.dumps(config))  # a deep copy in JSON's types
    for key in NOT_IN_ID:
        *sections, last = key.split(".")
        inner = content
        for section in sections:
            inner = inner.get(section) or {}
        inner.pop(last, None)
    for key, values in ID_OMITTED_AT.items():
        if key in content and content[key] in values:
            del content[key]
    content = {"config": content, "data": data, "parent": parent_id}
    if init is not None:  # only then: the ids of the other cells stay what they were
        content["init"] = init
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def checkpoint_identity(meta: Mapping[str, Any]) -> str:
    """What tells a checkpoint from any other wherever it lies: a hash of its meta.json, written once with
    the checkpoint (the run's config, its step, data position and RNG states), never its path."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Vocabulary


def spec_vocab_size(tokenizer: str, *, chat: bool) -> int:
    """The vocabulary `nanostudy prepare` will produce for a tokenizer spec, before preparing: GPT-2's, a
    trained BPE's requested size (its chat markers are part of it), or a tokenizer directory's; chat data
    adds the two chat markers to a tokenizer that lacks them (runner.data.prepare.resolve_tokenizer)."""
    if tokenizer.startswith("bpe:"):
        return bpe_vocab_size(tokenizer)  # trained tokenizers carry the chat markers from the start
    if tokenizer == "gpt2":
        return GPT2_VOCAB_SIZE + (len(CHAT_SPECIALS) if chat else 0)
    loaded = load_tokenizer(tokenizer)
    return (loaded.with_chat_tokens() if chat else loaded).vocab_size


@dataclass(frozen=True, kw_only=True, slots=True)
class _ModelNumbers:
    n_embd: int
    padded_vocab_size: int
    num_scaling_params: int  # N
    flops_per_token: int
    num_params: int  # every parameter, the input embedding included (for the memory estimate)


class _Planner:
    def __init__(self, study: Study, data_dirs: Mapping[str, Path], throughput: Throughput):
        self.study = study
        self.data_dirs = data_dirs
        self.throughput = throughput
        self.vocab_sizes: dict[str, int] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._models: dict[tuple, _ModelNumbers | None] = {}
        self._data_ids = {}
        if study.data is not None:
            self._data_ids["pretraining"] = data_identity(study.data)
        if study.mid_training is not None:
            self._data_ids["mid-training"] = data_identity(study.mid_training.data)

    def _train_dir(self, stage: str) -> str:
        return str(self.data_dirs[stage]) if stage in self.data_dirs else UNPREPARED

    def _vocab_size(self, stage: str) -> int:
        if stage not in self.vocab_sizes:
            if stage in self.data_dirs:
                size = read_manifest(self.data_dirs[stage]).tokenizer.vocab_size
            elif stage == "pretraining":
                assert self.study.data is not None
                size = spec_vocab_size(self.study.data.tokenizer, chat=self.study.data.source.is_chat)
            else:
                mid = self.study.mid_training
                assert mid is not None
                chat = mid.data.source.is_chat
                if mid.data.tokenizer == PRETRAINING_TOKENIZER:
                    assert self.study.data is not None
                    size = spec_vocab_size(
                        self.study.data.tokenizer, chat=chat or self.study.data.source.is_chat
                    )
                else:
                    size = spec_vocab_size(mid.data.tokenizer, chat=chat)
            self.vocab_sizes[stage] = size
        return self.vocab_sizes[stage]

    def _model(self, model: Mapping[str, Any], vocab_size: int) -> "_ModelNumbers | None":
        """The model's own numbers, from the model built on the meta device (no memory, no time)."""
        cache_key = (tuple(sorted(model.items())), vocab_size)
        if cache_key not in self._models:
            import torch

            from nanogpt.model import GPT, GPTConfig

            try:
                gpt_config = GPTConfig(**model, vocab_size=vocab_size)
            except ValueError as e:
                # GPTConfig names the key: "GPTConfig.head_dim must be even ...".
                key = str(e).removeprefix("GPTConfig.").split(" ")[0]
                study_key = (
                    "grid.aspect_ratio" if key == "aspect_ratio" and self.study.grid.aspect_ratio else None
                )
                self.problems.append(self.study.problem(study_key or f"model.{key}", str(e)))
                self._models[cache_key] = None
                return None
            with torch.device("meta"):
                gpt = GPT(gpt_config)
            self._models[cache_key] = _ModelNumbers(
                n_embd=gpt_config.n_embd,
                padded_vocab_size=gpt_config.padded_vocab_size,
                num_scaling_params=gpt.num_scaling_params(),
                flops_per_token=gpt.estimate_flops(),
                num_params=sum(p.numel() for p in gpt.parameters()),
            )
        return self._models[cache_key]

    def pretraining(self, axes: Mapping[str, Any]) -> PlannedCell:
        config = cell_config(self.study, axes, mode="pretraining", train_dir=self._train_dir("pretraining"))
        ident = cell_id(config, data=self._data_ids["pretraining"])
        return self._cell(ident, "pretraining", None, axes, config, self._vocab_size("pretraining"))

    def child(self, parent: PlannedCell) -> PlannedCell:
        """The mid-training stage of a pretraining cell: same model, started from its final checkpoint."""
        config = cell_config(
            self.study, parent.axes, mode="mid-training", train_dir=self._train_dir("mid-training")
        )
        ident = cell_id(config, data=self._data_ids["mid-training"], parent_id=parent.id)
        return self._cell(
            ident, "mid-training", parent.id, parent.axes, config, self._vocab_size("mid-training")
        )

    def external_mid_training(self, axes: Mapping[str, Any]) -> PlannedCell | None:
        """Mode mid-training: every cell starts from the one checkpoint the study names."""
        from nanogpt.checkpoint import read_meta, resolve_checkpoint

        mid = self.study.mid_training
        assert mid is not None and mid.init_from is not None
        # The exact checkpoint, absolute: the cell's config (and so the store) records where it starts.
        checkpoint = resolve_checkpoint(Path(mid.init_from).expanduser()).resolve()
        meta = read_meta(checkpoint)
        model = {k: v for k, v in meta["model_config"].items() if k != "vocab_size"}
        # Planned without a depth, the config has no model section: the trainer takes the checkpoint's shape.
        config = cell_config(
            self.study,
            axes,
            mode="mid-training",
            train_dir=self._train_dir("mid-training"),
            init_from=str(checkpoint),
        )
        # The store files every cell under a depth and a budget: the checkpoint's, for a study like this:
        # the FLOPs it trained, else its tokens at its model's FLOPs per token.
        flops = meta.get("flops") or 0.0
        if not flops and meta.get("tokens"):
            numbers = self._model(model, meta["model_config"]["vocab_size"])
            flops = meta["tokens"] * numbers.flops_per_token if numbers is not None else 0.0
        if not flops:
            self.problems.append(
                self.study.problem(
                    "mid_training.init_from",
                    f"{checkpoint / 'meta.json'} records neither the FLOPs nor the tokens it trained (step "
                    f"{meta['step']}): the cells of a mid-training study are filed under that budget",
                )
            )
            return None
        axes = {"depth": model["depth"], "flops": float(flops), **axes}
        ident = cell_id(config, data=self._data_ids["mid-training"], init=checkpoint_identity(meta))
        vocab_size = (
            self._vocab_size("mid-training")
            if "mid-training" in self.data_dirs
            else meta["model_config"]["vocab_size"]
        )
        self.vocab_sizes.setdefault("mid-training", vocab_size)
        return self._cell(ident, "mid-training", None, axes, config, vocab_size, model=model)

    def _cell(
        self,
        ident: str,
        mode: Literal["pretraining", "mid-training"],
        parent_id: str | None,
        axes: Mapping[str, Any],
        config: dict[str, Any],
        vocab_size: int,
        *,
        model: Mapping[str, Any] | None = None,
    ) -> PlannedCell | None:
        from nanogpt.train import num_steps_for

        model = model if model is not None else config["model"]
        numbers = self._model(model, vocab_size)
        if numbers is None:
            return None
        config["wandb"]["name"] = f"{self.study.name}-{ident}"
        # RunConfig needs init_from for mid-training; the horizon does not depend on it.
        placeholder = "-" if mode == "mid-training" and not config["init_from"] else config["init_from"]
        checked = RunConfig.from_dict({**config, "init_from": placeholder})
        if mode == "pretraining" and not self._budget_fits(checked, numbers, model, axes):
            return None
        num_steps = num_steps_for(checked, numbers.flops_per_token)
        num_tokens = num_steps * checked.train.total_batch_tokens
        if mode == "mid-training" and not self._horizon_fits(checked, numbers, model, num_steps):
            return None  # pretraining: _budget_fits
        flops = float(numbers.flops_per_token) * num_tokens
        stage_dir = self.data_dirs.get(mode)
        epochs = epochs_needed(stage_dir, num_tokens) if stage_dir is not None else None
        gpus = self._gpus(model, numbers, checked.train.total_batch_tokens, ident)
        rate, measured = self.throughput.rate(model_shape(model))
        eta_s = flops / (rate * gpus) + DEFAULT_OVERHEAD_S[self.throughput.device_type]
        return PlannedCell(
            id=ident,
            mode=mode,
            parent_id=parent_id,
            axes=dict(axes),
            config=config,
            width=numbers.n_embd,
            num_params=numbers.num_scaling_params,
            flops_per_token=numbers.flops_per_token,
            num_steps=num_steps,
            num_tokens=num_tokens,
            flops=flops,
            gpus=gpus,
            epochs=epochs,
            eta_s=eta_s,
            eta_measured=measured,
        )

    def _budget_fits(
        self, checked: RunConfig, numbers: "_ModelNumbers", model: Mapping[str, Any], axes: Mapping[str, Any]
    ) -> bool:
        """A FLOP budget below one optimizer step would be rounded up to a whole step (the trainer trains at
        least one): that cell's C would not be its budget, so it is a problem at the budget's line."""
        train = checked.train
        if train.num_steps is not None or train.target_tokens is not None or train.target_flops is None:
            return True
        one_step_flops = float(numbers.flops_per_token) * train.total_batch_tokens
        tokens = train.target_flops / float(numbers.flops_per_token)
        if one_step_flops <= train.target_flops and tokens < MAX_TOKENS:
            return True
        grid = self.study.grid
        budget = axes.get("flops")
        key = (
            f"grid.flops[{grid.flops.index(budget)}]"
            if budget in grid.flops and not grid.depth_by_flops
            else "grid.flops"
        )
        if tokens >= MAX_TOKENS:
            problem = (
                f"budget {train.target_flops:.3g} FLOPs is {tokens:.3g} tokens at depth {model['depth']} "
                f"({numbers.flops_per_token:,} FLOPs per token), more than the {MAX_TOKENS:.3g} a run can "
                "count; a typo in the exponent?"
            )
        else:
            problem = (
                f"budget {train.target_flops:.3g} FLOPs is less than one optimizer step at depth "
                f"{model['depth']} ({train.total_batch_tokens:,} tokens × {numbers.flops_per_token:,} FLOPs "
                f"per token); the smallest budget for this depth is {one_step_flops:.3g} FLOPs"
            )
        self.problems.append(self.study.problem(key, problem))
        return False

    def _horizon_fits(
        self, checked: RunConfig, numbers: "_ModelNumbers", model: Mapping[str, Any], num_steps: int
    ) -> bool:
        """The mid-training horizon, as _budget_fits checks a budget: at most what a run can count, and (flops
        or tokens) at least one optimizer step, which the trainer would otherwise round up to a whole one."""
        train = checked.train
        horizon = next(k for k in ("flops", "tokens", "steps") if getattr(self.study.mid_training, k))
        num_tokens = num_steps * train.total_batch_tokens
        one_step_flops = float(numbers.flops_per_token) * train.total_batch_tokens
        if num_tokens >= MAX_TOKENS:
            problem = (
                f"{num_tokens:.3g} tokens ({num_steps:.3g} steps), more than the {MAX_TOKENS:.3g} a run can "
                "count; a typo in the exponent?"
            )
        elif (tokens := train.target_tokens) is not None and tokens < train.total_batch_tokens:
            problem = (
                f"{tokens:,} tokens is less than one optimizer step ({train.total_batch_tokens:,} tokens); "
                "give at least that many"
            )
        elif train.target_flops is not None and train.target_flops < one_step_flops:
            problem = (
                f"{train.target_flops:.3g} FLOPs is less than one optimizer step at depth {model['depth']} "
                f"({train.total_batch_tokens:,} tokens × {numbers.flops_per_token:,} FLOPs per token); the "
                f"smallest for this depth is {one_step_flops:.3g} FLOPs"
            )
        else:
            return True
        self.problems.append(self.study.problem(f"mid_training.{horizon}", problem))
        return False

    def _gpus(
        self, model: Mapping[str, Any], numbers: _ModelNumbers, total_batch_tokens: int, ident: str
    ) -> int:
        """gpus_per_cell (its entry for the model's depth when given per depth; on Slurm: nodes × processes
        per node), or for "auto" the fewest GPUs (1, 2, 4, 8) that split the batch into whole sequences and
        whose memory holds the model by memory_bytes_needed."""
        wanted = self.study.resources.gpus_per_cell
        if wanted != "auto" or self.study.resources.executor == "slurm":
            return self.study.resources.processes_for(model["depth"])
        if self.throughput.device_type == "cpu":
            return 1
        memory = self.throughput.memory_bytes or DEFAULT_GPU_MEMORY_BYTES
        seq_len = model["sequence_len"]
        options = [k for k in (1, 2, 4, 8) if total_batch_tokens % (seq_len * k) == 0]
        for num_gpus in options:
            if memory_bytes_needed(numbers, model, num_gpus) <= MEMORY_BUDGET_FRAC * memory:
                return num_gpus
        self.warnings.append(
            f"cell {ident}: by the memory estimate its model does not fit on {options[-1]} GPUs of "
            f"{memory / 2**30:.0f} GiB; planned on {options[-1]}"
        )
        return options[-1]


def model_shape(model: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(depth, aspect_ratio, head_dim, sequence_len): what a measured speed is filed under."""
    return (model["depth"], model["aspect_ratio"], model["head_dim"], model["sequence_len"])


def memory_bytes_needed(numbers: _ModelNumbers, model: Mapping[str, Any], num_gpus: int) -> float:
    """A rough upper bound of one GPU's memory when training with a micro-batch of one sequence:
    - float32 weights and gradients, 8 bytes per parameter on every GPU;
    - the optimizer state, at most 8 bytes per parameter (AdamW's two moments), sharded over the GPUs;
    - the activations of one sequence in bf16, 34·T·n_embd bytes per layer (Korthikanti et al. 2022,
      "Reducing Activation Recomputation", section 4.1, without the attention-matrix term that
      FlashAttention never stores);
    - the float32 logits, their softmax and gradient: 12·T·padded_vocab bytes.
    The trainer then picks the largest micro-batch that fits (`device_batch_size: auto`)."""
    seq_len = model["sequence_len"]
    weights_and_grads = 8.0 * numbers.num_params
    optimizer = 8.0 * numbers.num_params / num_gpus
    activations = 34.0 * seq_len * numbers.n_embd * model["depth"]
    logits = 12.0 * seq_len * numbers.padded_vocab_size
    return weights_and_grads + optimizer + activations + logits


# ---------------------------------------------------------------------------------------------------------
# Measured speed


def local_device(study: Study) -> Throughput:
    """This machine's device, as the trainer will name it in its `start` event (no measurements yet)."""
    if study.training.get("device") != "cpu":
        from runner.gpus import discover, load_nvml

        nvml = load_nvml()
        if nvml is not None:
            try:
                gpus = discover(nvml)
            except Exception:  # an NVML error of any kind: plan as without GPUs
                gpus = []
            if gpus:
                return Throughput(
                    device_type="cuda", device_name=gpus[0].name, memory_bytes=gpus[0].memory_total_bytes
                )
    return Throughput(device_type="cpu", device_name=platform.processor() or platform.machine())


def measured_throughput(store: Store, device: Throughput, *, max_cells: int = 200) -> Throughput:
    """`device` with the speeds that finished cells reached on a device of the same name: for each, the
    FLOPs of its last step over its training time, per process. Reads the `max_cells` most recently
    finished cells of every study in the store."""
    # By id: a cell that several studies share is one measurement.
    done = list(
        {
            cell.id: cell
            for study in list_studies(store)
            for cell in cells_of(store, study.id, states=[CellState.DONE])
        }.values()
    )
    done.sort(key=lambda cell: cell.finished_at or 0.0, reverse=True)
    rates: dict[tuple[int, int, int, int], list[float]] = {}
    for cell in done[:max_cells]:
        model = (cell.config or {}).get("model")
        starts = [a.start_event for a in attempts_of(store, cell.id) if a.start_event]
        if not model or not starts or (starts[-1].get("device") or {}).get("name") != device.device_name:
            continue
        last = train_curve(store, cell.id, after_step=max(cell.steps_total - 1, 0))
        if not last or not last[-1].elapsed_s or not last[-1].flops:
            continue
        processes = max(int(starts[-1].get("world_size") or 1), 1)
        rates.setdefault(model_shape(model), []).append(last[-1].flops / last[-1].elapsed_s / processes)
    return dataclasses.replace(
        device, flops_per_s={shape: statistics.median(r) for shape, r in rates.items()}
    )
