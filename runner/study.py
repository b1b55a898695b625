"""Study files: YAML in, a validated `Study` out, or every problem at once.

    study = load("studies/isoflop.yaml")  # StudyError: one `path:LINE: key: message` line per problem

docs/study-files.md documents every key. The training settings are checked key by key with the trainer's
own config classes (nanogpt.config), so a study accepts exactly what the trainer accepts and says so in the
trainer's words, at the line of the study that holds the value; the data sections are checked by the data
preparation's own `PrepareConfig`. Then the trainer config of every cell is built and checked as a whole,
so a study that loads is one whose every cell the trainer will accept.

Numbers such as `1e18` read as numbers (YAML 1.1 wants `1.0e+18`), and a key given twice is an error.
"""

import copy
import dataclasses
import difflib
import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nanogpt.config import (
    CheckpointSection,
    EvalSection,
    ModelSection,
    OptimSection,
    RunConfig,
    ScheduleSection,
    TrainSection,
    WandbSection,
)
from nanogpt.shards import ShardError, read_manifest
from runner.data.prepare import PrepareConfig
from runner.data.sources import SourceSpec, matching_files, parse_bytes
from runner.slurm.settings import SlurmSettings, parse_settings

MODES = ("pretraining", "mid-training", "all")
EXECUTORS = ("local", "slurm")
# The axes a grid may sweep, in the order cells are listed (budget first: one isoflop curve after another).
AXES = ("flops", "depth", "aspect_ratio", "lr_multiplier", "seed")
# Every learning rate of the optimizer: the `lr_multiplier` axis multiplies each of them.
LR_KEYS = ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")
# The mid-training data's tokenizer in mode `all`: the one the pretraining data was tokenized with, known
# once that data is prepared (`mid_training_data`). Any other tokenizer would give the pretrained weights
# token ids they never saw.
PRETRAINING_TOKENIZER = "pretraining"
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "mode",
    "data",
    "grid",
    "model",
    "train",
    "optim",
    "schedule",
    "eval",
    "checkpoint",
    "mid_training",
    "resources",
    "retry",
    "wandb",
)
# Study `train` keys that are top-level keys of the trainer's config.
_TRAIN_TOP_LEVEL = (
    "device", "dtype", "compile", "fp8_head", "fused_loss", "fused_mlp", "weight_copies", "log_every"
)  # fmt: skip
_HORIZON_KEYS = ("target_flops", "target_tokens", "num_steps")
# The eval gauntlet's keys of the trainer's `eval` section: they decide what a cell measures, not what it
# trains, so they stay out of the cell id (runner.plan.NOT_IN_ID) and the runner applies the study's current
# values at each launch.
GAUNTLET_KEYS = ("preset", "bundle", "gauntlet_every", "max_examples")
# Keys people reach for in the wrong place, and where they belong.
_MOVED = {
    "seed": "grid.seed",
    "depth": "grid.depth",
    "flops": "grid.flops",
    "tokenizer": "data.tokenizer",
    "source": "data.source",
    "model.depth": "grid.depth",
    "train.target_flops": "grid.flops (mid-training: mid_training.flops)",
    "train.target_tokens": "mid_training.tokens (pretraining budgets are grid.flops)",
    "train.num_steps": "mid_training.steps (pretraining budgets are grid.flops)",
    "train.seed": "grid.seed",
    "wandb.name": "nowhere: each cell's run is named after the study and the cell id",
    "init_from": "mid_training.init_from",
    "mid_training.train.target_flops": "mid_training.flops",
    "mid_training.train.target_tokens": "mid_training.tokens",
    "mid_training.train.num_steps": "mid_training.steps",
}
_MID_HORIZONS = {"flops": "target_flops", "tokens": "target_tokens", "steps": "num_steps"}
_MID_OVERRIDABLE = ("train", "optim", "schedule", "eval", "checkpoint")


class StudyError(ValueError):
    """Everything wrong with a study file: `problems` holds one `path:LINE: key: message` line each."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# The trainer config sections a study sets directly, and the keys each accepts (the trainer's own fields,
# so a key the trainer gains is a key studies accept).
def _run_sections() -> dict[str, tuple[str, ...]]:
    return {
        "model": tuple(k for k in _field_names(ModelSection) if k != "depth"),
        "train": tuple(k for k in _field_names(TrainSection) if k not in _HORIZON_KEYS) + _TRAIN_TOP_LEVEL,
        "optim": _field_names(OptimSection),
        "schedule": _field_names(ScheduleSection),
        "eval": _field_names(EvalSection),
        "checkpoint": _field_names(CheckpointSection),
        "wandb": tuple(k for k in _field_names(WandbSection) if k != "name"),
    }


# ---------------------------------------------------------------------------------------------------------
# The parsed study


@dataclass(frozen=True, kw_only=True, slots=True)
class Grid:
    """The swept axes. Empty `aspect_ratio` / `lr_multiplier`: not swept (model.aspect_ratio, 1).

    `depth_by_flops` (grid.depth written as a mapping budget → depths): each budget trains only its own
    depths, so that a study can centre every isoflop curve on its expected optimum and leave out the cells
    its data cannot feed; `depth` is then every depth of any budget."""

    depth: tuple[int, ...] = ()
    flops: tuple[float, ...] = ()
    seed: tuple[int, ...] = (0,)
    aspect_ratio: tuple[int, ...] = ()
    lr_multiplier: tuple[float, ...] = ()
    depth_by_flops: tuple[tuple[float, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        for axis in AXES:
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise ValueError(f"grid.{axis}: duplicate values in {values}")
        if not self.seed:
            raise ValueError("grid.seed: needs at least one seed")

    def points(self) -> list[dict[str, Any]]:
        """Every combination, budget by budget, as axis -> value (only the axes the study sweeps, plus
        `seed` always and `depth`/`flops` when given)."""
        axes = [axis for axis in AXES if getattr(self, axis)]
        points = [
            dict(zip(axes, values, strict=True))
            for values in itertools.product(*(getattr(self, a) for a in axes))
        ]
        if not self.depth_by_flops:
            return points
        depths = dict(self.depth_by_flops)
        return [p for p in points if p["depth"] in depths.get(p["flops"], ())]


@dataclass(frozen=True, kw_only=True, slots=True)
class MidTraining:
    """The mid-training stage: its data, its horizon (exactly one of flops, tokens, steps) and the trainer
    settings it changes. `data.tokenizer` is PRETRAINING_TOKENIZER in mode `all` (resolve it with
    `mid_training_data`)."""

    data: PrepareConfig
    flops: float | None = None
    tokens: int | None = None
    steps: int | None = None
    init_from: str | None = (
        None  # mode mid-training: the checkpoint (or run directory) every cell starts from
    )
    overrides: Mapping[str, Any] = field(
        default_factory=dict
    )  # a partial trainer config, merged over the study's

    def __post_init__(self) -> None:
        given = [key for key in _MID_HORIZONS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"mid_training: give exactly one of flops, tokens, steps (got {given or 'none'})"
            )

    @property
    def horizon(self) -> dict[str, Any]:
        """The trainer's `train` horizon key and value."""
        return {_MID_HORIZONS[k]: getattr(self, k) for k in _MID_HORIZONS if getattr(self, k) is not None}


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalSettings:
    """The study's eval gauntlet settings (its `eval` section's gauntlet keys, which are the trainer's own
    `eval.*` keys; docs/evals.md). `nanostudy eval STUDY` defaults to them."""

    preset: str | None = None  # "core", "quick", "chat" or a comma-separated list of task names
    bundle: str | None = None  # the folder of the tasks' data, as the study file gives it
    gauntlet_every: int | None = None  # steps between gauntlet runs; None: after the last step only
    max_examples: int | None = None  # examples per task; None: the preset's default


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    executor: Literal["local", "slurm"] = "local"
    # "auto": 1, or more when the model's memory needs them; or per depth, ((depth, gpus), ...) sorted
    gpus_per_cell: int | Literal["auto"] | tuple[tuple[int, int], ...] = 1
    max_parallel: int | None = None  # cells at once; None: as many as the GPUs allow
    # local GPUs: a GPU's next cell sets up (imports, model, compile) while its current one trains
    overlap_startup: bool = True
    slurm: SlurmSettings = field(default_factory=SlurmSettings)  # executor slurm: runner/slurm/settings.py

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"resources.executor: must be one of {EXECUTORS}, got {self.executor!r}")
        gpus = self.gpus_per_cell
        per_depth_ok = isinstance(gpus, tuple) and all(
            isinstance(pair, tuple) and len(pair) == 2 and all(_is_int(n, minimum=1) for n in pair)
            for pair in gpus
        )
        if gpus != "auto" and not per_depth_ok and not _is_int(gpus, minimum=1):
            raise ValueError(
                "resources.gpus_per_cell: must be a positive integer, 'auto' or a mapping depth → GPUs, "
                f"got {gpus!r}"
            )
        if self.max_parallel is not None and not _is_int(self.max_parallel, minimum=1):
            raise ValueError(f"resources.max_parallel: must be a positive integer, got {self.max_parallel!r}")
        if not isinstance(self.overlap_startup, bool):
            raise ValueError(
                f"resources.overlap_startup: must be true or false, got {self.overlap_startup!r}"
            )

    @property
    def processes_per_cell(self) -> int:
        """The trainer's world size of every cell, where it does not depend on the depth."""
        if isinstance(self.gpus_per_cell, tuple) and self.executor != "slurm":
            raise ValueError("resources.gpus_per_cell is given per depth: ask processes_for(depth)")
        return self.processes_for(0)

    def processes_for(self, depth: int) -> int:
        """The trainer's world size for a cell of this depth: gpus_per_cell here (its entry for the depth
        when given per depth; 'auto' counts 1 until the planner decides), or a Slurm job's nodes ×
        processes per node."""
        if self.executor == "slurm":
            return self.slurm.processes_per_cell
        if isinstance(self.gpus_per_cell, tuple):
            return dict(self.gpus_per_cell)[depth]
        return self.gpus_per_cell if self.gpus_per_cell != "auto" else 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Retry:
    max_attempts: int = 2  # tries per cell, the first included; a failed cell resumes from its checkpoint
    rerun_diverged: bool = False  # retry diverged cells like failed ones

    def __post_init__(self) -> None:
        if not _is_int(self.max_attempts, minimum=1):
            raise ValueError(f"retry.max_attempts: must be an integer >= 1, got {self.max_attempts!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Study:
    path: Path
    name: str
    mode: Literal["pretraining", "mid-training", "all"]
    description: str | None = None
    data: PrepareConfig | None  # the pretraining data; None in mode mid-training
    grid: Grid
    # The trainer config every cell shares, as a partial RunConfig dict (only what the study sets; the
    # grid, the data directory and the horizon are added per cell by `cell_config`).
    training: Mapping[str, Any]
    mid_training: MidTraining | None
    eval: EvalSettings
    resources: Resources
    retry: Retry
    wandb: WandbSection
    lines: Mapping[str, int]  # dotted study key -> its line, to report problems found after loading

    def where(self, key: str) -> str:
        """`path:LINE` of a study key (or of the nearest section that holds it)."""
        return f"{self.path}:{_nearest_line(self.lines, key)}"

    def problem(self, key: str, message: str) -> str:
        return f"{self.where(key)}: {key}: {message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the store's record of the study."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "name": self.name,
            "mode": self.mode,
            "description": self.description,
            "data": _prepare_dict(self.data) if self.data else None,
            "grid": {
                **{axis: list(getattr(self.grid, axis)) for axis in AXES},
                # Which depths each budget trains, when not every one (grid.depth as a mapping).
                "depth_by_flops": [[flops, list(depths)] for flops, depths in self.grid.depth_by_flops],
            },
            "training": copy.deepcopy(dict(self.training)),
            "eval": dataclasses.asdict(self.eval),
            "resources": {**dataclasses.asdict(self.resources), "slurm": self.resources.slurm.to_dict()},
            "retry": dataclasses.asdict(self.retry),
            "wandb": dataclasses.asdict(self.wandb),
            "mid_training": None,
        }
        if self.mid_training is not None:
            mid = self.mid_training
            out["mid_training"] = {
                "data": _prepare_dict(mid.data),
                **{key: getattr(mid, key) for key in (*_MID_HORIZONS, "init_from")},
                "overrides": copy.deepcopy(dict(mid.overrides)),
            }
        return out


def _prepare_dict(config: PrepareConfig) -> dict[str, Any]:
    return {
        "source": config.source.to_dict(),
        "tokenizer": config.tokenizer,
        "shard_tokens": config.shard_tokens,
        "val_fraction": config.val_fraction,
        "tokenizer_train_bytes": config.tokenizer_train_bytes,
    }


def mid_training_data(
    study: Study, *, pretraining_data_dir: str | os.PathLike | None = None
) -> PrepareConfig:
    """The mid-training data to prepare, its tokenizer resolved: in mode `all`, the tokenizer directory of
    the prepared pretraining data (so both stages share token ids)."""
    assert study.mid_training is not None, "the study has no mid-training stage"
    config = study.mid_training.data
    if config.tokenizer != PRETRAINING_TOKENIZER:
        return config
    if pretraining_data_dir is None:
        raise ValueError("mid-training data: needs the prepared pretraining data directory for its tokenizer")
    tokenizer_dir = read_manifest(pretraining_data_dir).tokenizer_dir
    return dataclasses.replace(config, tokenizer=str(tokenizer_dir))


# ---------------------------------------------------------------------------------------------------------
# Cell configs (no torch: the planner adds the model's numbers)


def cell_config(
    study: Study,
    axes: Mapping[str, Any],
    *,
    mode: Literal["pretraining", "mid-training"],
    train_dir: str,
    init_from: str | None = None,
) -> dict[str, Any]:
    """The trainer's complete config (every default filled in) for one grid point of the study.

    `mode` "mid-training" gives the mid-training stage of that point: the study's settings with the
    mid-training overrides on top, its horizon, and `init_from` (None: the runner fills in the parent's
    final checkpoint). Raises ValueError (the trainer's message) if the trainer would refuse it.
    """
    raw = copy.deepcopy(dict(study.training))
    mid = study.mid_training
    if mode == "mid-training":
        assert mid is not None, "the study has no mid-training stage"
        raw = _merged(raw, mid.overrides)
    if "depth" in axes:
        raw["model"] = {**raw.get("model", {}), "depth": axes["depth"]}
        if "aspect_ratio" in axes:
            raw["model"]["aspect_ratio"] = axes["aspect_ratio"]
    else:
        raw.pop("model", None)  # mode mid-training: the shape is the checkpoint's
    raw["data"] = {"train_dir": train_dir}
    horizon = {"target_flops": float(axes["flops"])} if mode == "pretraining" else mid.horizon
    raw["train"] = {**raw.get("train", {}), **horizon}
    raw["mode"] = mode
    raw["seed"] = axes["seed"]
    # RunConfig refuses mid-training without init_from; the runner fills it in at launch.
    raw["init_from"] = init_from if mode == "pretraining" or init_from else "<the parent's final checkpoint>"
    config = RunConfig.from_dict(raw, source="").to_dict()
    multiplier = axes.get("lr_multiplier", 1.0)
    for key in LR_KEYS:
        config["optim"][key] *= multiplier
    config["init_from"] = init_from
    config["wandb"]["name"] = None  # the planner names the run after the cell
    if config["eval"]["preset"] is not None:
        config["eval"]["bundle"] = str(bundle_dir(study.path, config["eval"]["bundle"]))
    return config


def bundle_dir(study_path: str | os.PathLike, bundle: str | None) -> Path:
    """The eval bundle folder a study's cells read: `bundle` relative to the study file's folder, or the
    default ($NANOSTUDY_EVAL_BUNDLE, else ~/.cache/nanostudy/eval_bundle), made absolute."""
    from nanogpt.gauntlet.bundle import resolve_bundle  # no torch, but not the runner's import-time set

    if bundle is None:
        return resolve_bundle(None).resolve()
    path = Path(bundle).expanduser()
    return (path if path.is_absolute() else Path(study_path).resolve().parent / path).resolve()


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


# ---------------------------------------------------------------------------------------------------------
# YAML with line numbers


def _exponent_float_loader() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        """YAML 1.1 reads `1e18` as a string (its floats need a dot and a signed exponent); here numbers with
        an exponent are floats, as in YAML 1.2 and JSON."""

    first = list("-+0123456789")  # the characters a number may start with
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), first
    )
    # YAML 1.1 reads 12:00:00 as the base-60 number 43200 (12 hours as 30 days of Slurm minutes); YAML 1.2
    # has no base 60: such a value stays the text it is. Checked before the int and float resolvers.
    Loader.add_implicit_resolver("tag:yaml.org,2002:str", SEXAGESIMAL, first)
    for char in first:
        resolvers = Loader.yaml_implicit_resolvers[char]
        resolvers.insert(0, resolvers.pop())
    return Loader


SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


MERGE_TAG = "tag:yaml.org,2002:merge"  # YAML's `<<` key


class _Document:
    """The study file's values with the line of every key and list item, and the problems found so far."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[str, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.root: Any = None
        self.unreadable = False  # a YAML syntax error: nothing past it can be checked
        self._open: set[int] = set()  # the mappings and lists being read: an alias to one is recursive
        loader = _exponent_float_loader()(text)
        try:
            node = loader.get_single_node()
            self.root = self._value(node, "", loader) if node is not None else None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            self.problems.append((line, f"{path}:{line}: YAML: {e.problem or e.context}"))
            self.unreadable = True
        finally:
            loader.dispose()

    def _value(self, node: yaml.Node, key: str, loader: yaml.SafeLoader) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_object(node, deep=True)
        if id(node) in self._open:  # an alias inside its own anchor: `a: &x {b: *x}`
            self.add(key, "an alias to the mapping or list that contains it")
            return None
        self._open.add(id(node))
        try:
            return (
                self._mapping(node, key, loader)
                if isinstance(node, yaml.MappingNode)
                else [self._item(item, f"{key}[{index}]", loader) for index, item in enumerate(node.value)]
            )
        finally:
            self._open.discard(id(node))

    def _item(self, node: yaml.Node, key: str, loader: yaml.SafeLoader) -> Any:
        self.lines[key] = node.start_mark.line + 1
        return self._value(node, key, loader)

    def _mapping(self, node: yaml.MappingNode, key: str, loader: yaml.SafeLoader) -> dict[str, Any]:
        # `<<: *defaults` or `<<: [*a, *b]`, as YAML defines the merge: the mapping's own keys win, then
        # the merged mappings in order (PyYAML's own flatten_mapping lets a later one win for most names,
        # and rewrites the node, which an alias to it visits again).
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merge_line = None
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                where, line = (f"{key}.<<" if key else "<<"), key_node.start_mark.line + 1
                if merge_line is not None:  # like any key: the first is kept; `<<: [*a, *b]` merges both
                    self.add(where, f"given twice (first at line {merge_line})", line=line)
                    continue
                merge_line = line
                for name, pair in self._merge_sources(value_node, where):
                    merged.setdefault(name, pair)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = f"{key}.{name}" if key else name
            line = key_node.start_mark.line + 1
            if name in out:
                # Reported, and the first value kept, so the rest of the file is still checked.
                self.add(child, f"given twice (first at line {self.lines[child]})", line=line)
                continue
            self.lines[child] = line
            out[name] = self._value(value_node, child, loader)
        for name, (key_node, value_node) in merged.items():
            if name not in out:
                child = f"{key}.{name}" if key else name
                self.lines[child] = key_node.start_mark.line + 1
                out[name] = self._value(value_node, child, loader)
        return out

    def _merge_sources(self, value: yaml.Node, key: str) -> list[tuple[str, tuple[yaml.Node, yaml.Node]]]:
        """The (name, (key node, value node)) pairs a `<<` brings, first the one that wins: each mapping's
        own keys before what its own `<<` brings, and the mappings of a list in order."""
        pairs = []
        for source in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            if not isinstance(source, yaml.MappingNode):
                self.add(key, "expected a mapping, or a list of mappings, to merge")
                continue
            if id(source) in self._open:
                self.add(key, "merges a mapping that contains it")
                continue
            self._open.add(id(source))
            try:
                for key_node, value_node in source.value:
                    if key_node.tag != MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                        pairs.append((str(key_node.value), (key_node, value_node)))
                for key_node, value_node in source.value:
                    if key_node.tag == MERGE_TAG:
                        pairs += self._merge_sources(value_node, key)
            finally:
                self._open.discard(id(source))
        return pairs

    def line(self, key: str) -> int:
        return _nearest_line(self.lines, key)

    def add(self, key: str, message: str, *, line: int | None = None) -> None:
        line = self.line(key) if line is None else line
        self.problems.append((line, f"{self.path}:{line}: {key}: {message}"))


def _nearest_line(lines: Mapping[str, int], key: str) -> int:
    """The line of `key`, else of the nearest enclosing key that the file has (1 if none)."""
    while key:
        if key in lines:
            return lines[key]
        key = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key) if re.search(r"[.\[]", key) else ""
    return 1


# ---------------------------------------------------------------------------------------------------------
# Checks of single values


def _is_int(value: Any, *, minimum: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _as_int(doc: _Document, key: str, value: Any, *, minimum: int) -> int | None:
    """An integer (1e6 written as a float counts) >= minimum, or None after recording the problem."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        doc.add(key, f"expected an integer, got {_kind(value)} ({value!r})")
        return None
    if value < minimum:
        doc.add(key, f"must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {value}")
        return None
    return value


def _as_number(doc: _Document, key: str, value: Any, *, positive: bool = True) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        doc.add(key, f"expected a number, got {_kind(value)} ({value!r})")
        return None
    if not math.isfinite(value) or (positive and value <= 0):
        doc.add(key, f"must be a positive number, got {value:g}")
        return None
    return float(value)


def _as_str(doc: _Document, key: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        doc.add(key, f"expected a non-empty string, got {_kind(value)} ({value!r})")
        return None
    return value


def _as_name(doc: _Document, value: Any) -> str | None:
    """The study's name, which is also the folder of its run directories (runs/<name>/): one folder name, so
    that they stay in runs/."""
    name = _as_str(doc, "name", value)
    if name is not None and (name in (".", "..") or "/" in name):
        doc.add("name", f"{name!r} is not one folder name, which runs/<name>/ needs: no '/', and not . or ..")
        return None
    return name


def _as_mapping(doc: _Document, key: str, value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        doc.add(key, f"expected a mapping of keys to values, got {_kind(value)} ({value!r})")
        return None
    return value


def _unknown_keys(doc: _Document, prefix: str, raw: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    """Record every key of `raw` not in `known` (with a did-you-mean); returns the known ones present."""
    known = list(known)
    present = []
    for key in raw:
        full = f"{prefix}.{key}" if prefix else key
        if key in known:
            present.append(key)
        elif full in _MOVED:
            doc.add(full, f"not a key here; it belongs in {_MOVED[full]}")
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            doc.add(full, f"unknown key ({hint})")
    return present


# ---------------------------------------------------------------------------------------------------------
# Sections


def _parse_axis(doc: _Document, axis: str, raw: Any) -> tuple:
    key = f"grid.{axis}"
    values = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) and not raw:
        doc.add(key, "empty; give at least one value")
        return ()
    parsed: list[Any] = []
    first_line: dict[Any, int] = {}
    for index, value in enumerate(values):
        item = f"{key}[{index}]" if isinstance(raw, list) else key
        if axis in ("flops", "lr_multiplier"):
            number = _as_number(doc, item, value)
        else:
            number = _as_int(doc, item, value, minimum=0 if axis == "seed" else 1)
        if number is None:
            continue
        if number in first_line:
            doc.add(
                key, f"duplicate value {value!r} (also at line {first_line[number]})", line=doc.line(item)
            )
            continue
        first_line[number] = doc.line(item)
        parsed.append(number)
    return tuple(parsed)


def _parse_grid(doc: _Document, raw: Any, mode: str) -> Grid:
    required = () if mode == "mid-training" else ("depth", "flops")
    if raw is None:
        if required:
            doc.add("grid", f"missing; mode {mode} needs grid.depth and grid.flops")
        return Grid()
    raw = _as_mapping(doc, "grid", raw)
    if raw is None:
        return Grid()
    axes: dict[str, tuple] = {}
    depth_by_budget = None
    for axis in _unknown_keys(doc, "grid", raw, AXES):
        if mode == "mid-training" and axis in ("depth", "flops", "aspect_ratio"):
            doc.add(
                f"grid.{axis}", "mode mid-training takes the model from mid_training.init_from; remove it"
            )
            continue
        if axis == "depth" and isinstance(raw[axis], dict):
            depth_by_budget = raw[axis]
            continue
        axes[axis] = _parse_axis(doc, axis, raw[axis])
    for axis in required:
        if axis not in raw:
            doc.add("grid", f"missing grid.{axis}")
    if not axes.get("seed", (0,)):
        axes.pop("seed")  # reported already; keep the default so the other checks go on
    if depth_by_budget is not None:
        by_flops = _parse_depth_by_budget(doc, depth_by_budget, axes.get("flops", ()))
        axes["depth_by_flops"] = by_flops
        axes["depth"] = tuple(sorted({d for _, depths in by_flops for d in depths}))
    return Grid(**axes)


def _parse_depth_by_budget(
    doc: _Document, raw: Mapping[str, Any], budgets: tuple[float, ...]
) -> tuple[tuple[float, tuple[int, ...]], ...]:
    """grid.depth as `{budget: [depths]}`: one key per budget of grid.flops, each a list of depths."""
    found: dict[float, tuple[int, ...]] = {}
    listed = ", ".join(map(_budget, budgets))
    for key, value in raw.items():
        item = f"grid.depth.{key}"
        try:
            budget = float(key)
        except ValueError:
            doc.add(item, f"{key!r} is not a FLOP budget; the keys of grid.depth are budgets of grid.flops")
            continue
        if budget not in budgets:
            doc.add(item, f"budget {key} is not one of grid.flops ({listed})")
            continue
        if budget in found:
            doc.add(item, f"budget {_budget(budget)} is given twice")
            continue
        found[budget] = _parse_axis(doc, f"depth.{key}", value)
    missing = [b for b in budgets if b not in found]
    if missing and budgets:
        doc.add("grid.depth", f"no depths for budget {', '.join(map(_budget, missing))}; give each its own")
    return tuple((b, found[b]) for b in budgets if found.get(b))


def _budget(flops: float) -> str:
    """1e+18 → '1e18', 1.5e+16 → '1.5e16': as a study file writes a budget."""
    return f"{flops:.4g}".replace("e+0", "e").replace("e+", "e")


def _parse_tokenizer(doc: _Document, key: str, value: Any, *, inherit: bool) -> str | None:
    """'gpt2', 'bpe:<n>', a tokenizer directory, or (mid-training data in mode all) 'pretraining'."""
    spec = _as_str(doc, key, value)
    if spec is None:
        return None
    if spec == PRETRAINING_TOKENIZER and inherit:
        return spec
    if spec == "gpt2" or spec.startswith("bpe:"):
        return spec  # bpe:<n> is checked by PrepareConfig
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.name == "gpt2.tiktoken"):
        return spec
    doc.add(key, f"{spec!r} is neither 'gpt2', 'bpe:<vocab size>' nor an existing tokenizer directory")
    return None


# The type each source option takes (SourceSpec validates values; this catches wrong types with a line).
_SOURCE_OPTION_KINDS = {
    "name": "str",
    "config": "str",
    "dataset": "str",
    "data_files": "str",
    "paths": "paths",
    "text_field": "str",
    "format": "str",
    "messages_field": "str",
    "weights": "mapping",
    "datasets": "mapping",
    "seed": "int",
    "max_documents": "int",
    "max_bytes": "size",
}


def _parse_source(doc: _Document, key: str, raw: Any) -> dict[str, Any] | str | None:
    if isinstance(raw, str):
        return raw
    raw = _as_mapping(doc, key, raw)
    if raw is None:
        return None
    out: dict[str, Any] = {}
    ok = True
    for option in _unknown_keys(doc, key, raw, _field_names(SourceSpec)):
        value, where = raw[option], f"{key}.{option}"
        kind = _SOURCE_OPTION_KINDS.get(option)
        if value is None and option not in ("name", "paths"):
            out[option] = None
            continue
        if kind == "str":
            value = _as_str(doc, where, value)
        elif kind == "int":
            value = _as_int(doc, where, value, minimum=0 if option == "seed" else 1)
        elif kind == "mapping":
            value = _as_mapping(doc, where, value)
        elif kind == "paths":
            paths = value if isinstance(value, list) else [value]
            if not paths or not all(isinstance(p, str) and p for p in paths):
                doc.add(where, f"expected a path or a list of paths, got {value!r}")
                value = None
            else:
                listed = isinstance(value, list)
                for index, pattern in enumerate(paths):
                    if not matching_files(pattern):
                        at = f"{where}[{index}]" if listed else where
                        doc.add(
                            at, f"{pattern!r} matches no files{_from_cwd(pattern)}; check the path or glob"
                        )
                        value = None
        elif kind == "size":
            value = _size(doc, where, value)
        ok = ok and value is not None
        out[option] = value
    if "name" not in raw:
        doc.add(key, "missing 'name' (fineweb-edu, openwebtext, task-mixture, local, python-source)")
        return None
    return out if ok else None


def _from_cwd(pattern: str) -> str:
    relative = not Path(os.path.expanduser(pattern)).is_absolute()
    return f" (relative paths are read from the current directory, {os.getcwd()})" if relative else ""


def _size(doc: _Document, key: str, value: Any) -> int | None:
    """A byte count: an integer or a string such as 20MB or 1.5GiB."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return parse_bytes(value, key=key)
    except ValueError as e:
        doc.add(key, str(e).removeprefix(f"{key}: "))
        return None


def _parse_data(doc: _Document, key: str, raw: Any, *, mid_training: bool) -> PrepareConfig | None:
    raw = _as_mapping(doc, key, raw)
    if raw is None:
        return None
    values: dict[str, Any] = {}
    ok = True
    for name in _unknown_keys(doc, key, raw, _field_names(PrepareConfig)):
        where = f"{key}.{name}"
        if name == "source":
            value = _parse_source(doc, where, raw[name])
        elif name == "tokenizer":
            value = _parse_tokenizer(doc, where, raw[name], inherit=mid_training)
        elif name == "shard_tokens":
            value = _as_int(doc, where, raw[name], minimum=1)
        elif name == "val_fraction":
            value = _as_number(doc, where, raw[name], positive=False)
        elif name == "tokenizer_train_bytes":
            value = _size(doc, where, raw[name])
        else:  # a PrepareConfig field this module does not know yet: PrepareConfig checks it
            value = raw[name]
        ok = ok and value is not None
        values[name] = value
    if "source" not in raw:
        doc.add(key, "missing 'source' (a source name, or a mapping with 'name' and options)")
        ok = False
    if "tokenizer" not in raw and not mid_training:
        doc.add(key, "missing 'tokenizer' (gpt2, bpe:<vocab size> or a tokenizer directory)")
        ok = False
    if not ok:
        return None
    values.setdefault("tokenizer", PRETRAINING_TOKENIZER)
    try:
        return PrepareConfig.from_dict(values)
    except ValueError as e:
        # PrepareConfig and SourceSpec name the key first: `max_bytes: ...`, `config/dataset/data_files: ...`.
        head, _, message = str(e).partition(": ")
        doc.add(_data_key(key, head, raw), message or str(e))
        return None


def _data_key(prefix: str, head: str, raw: Mapping[str, Any]) -> str:
    """The study key a PrepareConfig/SourceSpec message names (`data`, `source`, `paths`, `weights.mmlu`)."""
    source = raw.get("source")
    candidates = [name.strip() for name in re.split(r"[/,]", head)]
    if head in ("data", "source"):
        return f"{prefix}.source" if head == "source" else prefix
    for name in candidates:
        top = name.split(".")[0]
        if top in raw:
            return f"{prefix}.{name}"
        if isinstance(source, dict) and top in source:
            return f"{prefix}.source.{name}"
    return f"{prefix}.source.{candidates[0]}" if isinstance(source, dict) else f"{prefix}.source"


_PROBE_SOURCE = "probe"


def _probe(raw_overrides: Mapping[str, Any]) -> tuple[str, str] | None:
    """Whether RunConfig accepts a minimal config with these (nested) values: None, or the dotted key and
    the message of the first thing it refuses."""
    raw = _merged(
        {"model": {"depth": 1}, "data": {"train_dir": "-"}, "train": {"num_steps": 1}}, raw_overrides
    )
    try:
        RunConfig.from_dict(raw, source=_PROBE_SOURCE)
    except ValueError as e:
        text = str(e).removeprefix(f"{_PROBE_SOURCE}: ")
        key, sep, message = text.partition(": ")
        return (key, message) if sep else ("", text)
    return None


def _resolved(raw_overrides: Mapping[str, Any]) -> dict[str, Any]:
    raw = _merged(
        {"model": {"depth": 1}, "data": {"train_dir": "-"}, "train": {"num_steps": 1}}, raw_overrides
    )
    return RunConfig.from_dict(raw).to_dict()


def _config_path(section: str, key: str) -> tuple[str, ...]:
    """Where a study section's key lives in the trainer config."""
    if section == "train" and key in _TRAIN_TOP_LEVEL:
        return (key,)
    return (section, key)


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        out = {part: out}
    return out


def _parse_run_sections(
    doc: _Document, raw: Mapping[str, Any], prefix: str, sections: Iterable[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The trainer settings of the given study sections, checked key by key by RunConfig itself.

    Returns the partial trainer config (values as RunConfig converts them) and, for each trainer key set,
    the study key it came from. Refused keys are left out, so later checks do not report them again.
    """
    allowed = _run_sections()
    config: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section in sections:
        if section not in raw:
            continue
        where = f"{prefix}{section}"
        values = _as_mapping(doc, where, raw[section])
        if values is None:
            continue
        accepted: dict[str, Any] = {}
        for key in _unknown_keys(doc, where, values, allowed[section]):
            path = _config_path(section, key)
            problem = _probe(_nested(path, values[key]))
            if problem is not None:
                # A rule with a default (warmup_frac + the default cooldown_frac): name both, as below.
                names_more = problem[0].startswith(".".join(path) + " ")
                rest = problem[0].removeprefix(".".join(path)).strip() if names_more else ""
                doc.add(f"{where}.{key}", f"{key} {rest}: {problem[1]}" if rest else problem[1])
                continue
            resolved = _resolved(_nested(path, values[key]))
            for part in path:
                resolved = resolved[part]
            accepted[key] = resolved
            config = _merged(config, _nested(path, resolved))
            origin[".".join(path)] = f"{where}.{key}"
        # Rules between keys of the section (warmup_frac + cooldown_frac <= 1, ...).
        problem = _probe(config)
        if problem is not None and accepted:
            key, message = problem
            config_key = next((c for c in origin if _names(key, c)), None)
            study_key = origin[config_key] if config_key else where
            # A rule between keys names them all ("warmup_frac + cooldown_frac"): keep that in the message.
            rest = key.removeprefix(config_key or "").strip()
            doc.add(study_key, f"{study_key.rsplit('.', 1)[-1]} {rest}: {message}" if rest else message)
            for key in accepted:
                config_key = ".".join(_config_path(section, key))
                origin.pop(config_key, None)
                config = _without(config, _config_path(section, key))
    return config, origin


def _names(message_key: str, config_key: str) -> bool:
    """Whether a message's key part (`schedule.warmup_frac + cooldown_frac`) starts with config_key."""
    return message_key == config_key or message_key.startswith((config_key + " ", config_key + "."))


def _without(config: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    inner = out
    for part in path[:-1]:
        inner = inner.get(part, {})
    inner.pop(path[-1], None)
    return {k: v for k, v in out.items() if v != {}}


def _parse_resources(doc: _Document, raw: Any, *, executor: str | None = None) -> Resources:
    """The `resources` section; `executor` (`nanostudy run --executor`) overrides the study's."""
    raw = _as_mapping(doc, "resources", raw) if raw is not None else {}
    if raw is None:
        return Resources()
    values: dict[str, Any] = {}
    known = ("executor", "gpus_per_cell", "max_parallel", "overlap_startup", "slurm")
    for key in _unknown_keys(doc, "resources", raw, known):
        value, where = raw[key], f"resources.{key}"
        if key == "executor":
            if value not in EXECUTORS:
                doc.add(where, f"must be one of {', '.join(EXECUTORS)}, got {value!r}")
                continue
        elif key == "gpus_per_cell":
            if isinstance(value, dict):
                value = _parse_gpus_per_depth(doc, value)
                if value is None:
                    continue
            elif value != "auto":
                value = _as_int(doc, where, value, minimum=1)
                if value is None:
                    continue
        elif key == "max_parallel":
            if value is not None and (value := _as_int(doc, where, value, minimum=1)) is None:
                continue
        elif key == "overlap_startup" and not isinstance(value, bool):
            doc.add(where, f"must be true or false, got {value!r}")
            continue
        elif key == "slurm":
            _as_mapping(doc, where, value if value is not None else {})
            continue  # parsed below, once gpus_per_cell (the default GPUs per node) is known
        values[key] = value
    if executor is not None:
        values["executor"] = executor
    gpus = values.get("gpus_per_cell", 1)
    slurm, problems = parse_settings(
        raw.get("slurm") if isinstance(raw.get("slurm"), dict) else {},
        default_gpus_per_node=gpus if isinstance(gpus, int) else 1,
    )
    for key, message in problems:
        doc.add(f"resources.slurm.{key}", message)
    return Resources(**values, slurm=slurm)


def _parse_gpus_per_depth(doc: _Document, raw: dict) -> tuple[tuple[int, int], ...] | None:
    """resources.gpus_per_cell as `{depth: gpus}` (a study mixing one-GPU and many-GPU cells)."""
    pairs = []
    for key, value in raw.items():
        where = f"resources.gpus_per_cell.{key}"
        if not str(key).isdigit() or int(key) < 1:  # the YAML loader gives mapping keys as strings
            doc.add(where, f"{key!r} is not a depth; the keys of gpus_per_cell are depths of grid.depth")
            continue
        if int(key) in dict(pairs):  # `6:` and `06:` are two keys of YAML, one depth
            doc.add(where, f"depth {int(key)} is given twice")
            continue
        gpus = _as_int(doc, where, value, minimum=1)
        if gpus is not None:
            pairs.append((int(key), gpus))
    if len(pairs) != len(raw):
        return None
    if not pairs:
        doc.add("resources.gpus_per_cell", "empty; give the GPUs of every depth of grid.depth")
        return None
    return tuple(sorted(pairs))


def _check_gpus_per_depth(doc: _Document, study: "Study") -> None:
    """A per-depth gpus_per_cell names exactly the depths of the grid, and only for the local executor."""
    gpus = study.resources.gpus_per_cell
    if not isinstance(gpus, tuple):
        return
    if study.resources.executor == "slurm":
        doc.add(
            "resources.gpus_per_cell",
            "GPUs per depth are for the local executor; on Slurm a cell's processes are slurm.nodes × "
            "gpus_per_node",
        )
        return
    given, grid = {depth for depth, _ in gpus}, set(study.grid.depth)
    if study.mode != "mid-training" and grid - given:
        missing = ", ".join(map(str, sorted(grid - given)))
        doc.add("resources.gpus_per_cell", f"no GPUs for depth {missing} of grid.depth; give every depth")
    if study.mode != "mid-training" and given - grid:
        extra = ", ".join(map(str, sorted(given - grid)))
        doc.add("resources.gpus_per_cell", f"depth {extra} is not in grid.depth")
    if study.mode == "mid-training":
        doc.add("resources.gpus_per_cell", "GPUs per depth need grid.depth; mode mid-training has none")


def _parse_retry(doc: _Document, raw: Any) -> Retry:
    raw = _as_mapping(doc, "retry", raw) if raw is not None else {}
    if raw is None:
        return Retry()
    values: dict[str, Any] = {}
    for key in _unknown_keys(doc, "retry", raw, ("max_attempts", "rerun_diverged")):
        where = f"retry.{key}"
        if key == "max_attempts":
            if (value := _as_int(doc, where, raw[key], minimum=1)) is not None:
                values[key] = value
        elif isinstance(raw[key], bool):
            values[key] = raw[key]
        else:
            doc.add(where, f"expected true or false, got {_kind(raw[key])} ({raw[key]!r})")
    return Retry(**values)


def _parse_mid_training(doc: _Document, raw: Any, mode: str) -> tuple[MidTraining | None, dict[str, str]]:
    """The `mid_training` section; its trainer-setting overrides are checked like the study's own."""
    if raw is None:
        if mode != "pretraining":
            doc.add("mode", f"mode {mode} needs a mid_training section (its data and horizon)")
        return None, {}
    if mode == "pretraining":
        doc.add(
            "mid_training", "mode is pretraining; set mode: all (or mid-training), or remove this section"
        )
        return None, {}
    raw = _as_mapping(doc, "mid_training", raw)
    if raw is None:
        return None, {}
    known = ("data", *_MID_HORIZONS, "init_from", *_MID_OVERRIDABLE)
    present = _unknown_keys(doc, "mid_training", raw, known)
    overrides, origin = _parse_run_sections(doc, raw, "mid_training.", _MID_OVERRIDABLE)
    horizons = {}
    for key in _MID_HORIZONS:
        if key in present:
            where = f"mid_training.{key}"
            value = (
                _as_number(doc, where, raw[key])
                if key == "flops"
                else _as_int(doc, where, raw[key], minimum=1)
            )
            if value is not None:
                horizons[key] = value
    given = [key for key in _MID_HORIZONS if key in present]
    if len(given) != 1:
        which = "none is given" if not given else f"{' and '.join(given)} are given"
        doc.add("mid_training", f"give exactly one horizon: flops, tokens or steps; {which}")
    init_from = None
    if "init_from" in present:
        if mode == "all":
            doc.add(
                "mid_training.init_from",
                "mode all starts each cell from its own pretraining checkpoint; remove it",
            )
        else:
            init_from = _checkpoint_path(doc, raw["init_from"])
    elif mode == "mid-training":
        doc.add(
            "mid_training",
            "mode mid-training needs init_from: the checkpoint (or run directory) to start from",
        )
    data = None
    if "data" not in present:
        doc.add("mid_training", "missing 'data': the mid-training mixture (source and options)")
    else:
        data = _parse_data(doc, "mid_training.data", raw["data"], mid_training=True)
        data = _settle_mid_tokenizer(doc, data, mode, init_from, raw["data"])
    if (
        data is None
        or len(horizons) != 1
        or len(given) != 1
        or (mode == "mid-training" and init_from is None)
    ):
        return None, origin
    return MidTraining(data=data, init_from=init_from, overrides=overrides, **horizons), origin


def _checkpoint_path(doc: _Document, value: Any) -> str | None:
    """A checkpoint directory, a run directory or its checkpoints/ holding one (as the trainer reads it)."""
    path = _as_str(doc, "mid_training.init_from", value)
    if path is None:
        return None
    from nanogpt.checkpoint import CheckpointError, read_meta, resolve_checkpoint

    try:
        read_meta(resolve_checkpoint(Path(path).expanduser()))
    except CheckpointError as e:
        doc.add("mid_training.init_from", str(e))
        return None
    return path


def _settle_mid_tokenizer(
    doc: _Document, data: PrepareConfig | None, mode: str, init_from: str | None, raw: Any
) -> PrepareConfig | None:
    """Mode all: the pretraining tokenizer, always. Mode mid-training: the given one, else the tokenizer of
    the data the checkpoint was trained on."""
    if data is None:
        return None
    given = isinstance(raw, dict) and "tokenizer" in raw
    if mode == "all":
        if given and data.tokenizer != PRETRAINING_TOKENIZER:
            doc.add(
                "mid_training.data.tokenizer",
                "mode all tokenizes the mid-training data with the pretraining tokenizer; remove this key",
            )
            return None
        return data
    if data.tokenizer != PRETRAINING_TOKENIZER:
        return data
    if init_from is None:
        return None
    from nanogpt.checkpoint import read_meta, resolve_checkpoint

    meta = read_meta(resolve_checkpoint(Path(init_from).expanduser()))
    train_dir = meta.get("config", {}).get("data", {}).get("train_dir")
    try:
        tokenizer_dir = read_manifest(train_dir).tokenizer_dir
    except (ShardError, TypeError, OSError) as e:
        doc.add(
            "mid_training.data",
            f"no tokenizer given, and that of the checkpoint's data ({train_dir}) cannot be read ({e}); "
            "set mid_training.data.tokenizer",
        )
        return None
    return dataclasses.replace(data, tokenizer=str(tokenizer_dir))


# ---------------------------------------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike, *, executor: str | None = None) -> Study:
    """Parse and check a study file; raises StudyError with every problem found. `executor` overrides
    resources.executor (`nanostudy run --executor slurm`)."""
    return parse(_read(Path(path)), path=path, executor=executor)


def _read(path: Path) -> str:
    """The study file's text; StudyError when it is missing or unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise StudyError([f"{path}: no such study file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError([f"{path}: cannot be read ({e})"]) from None


def study_bundle(path: str | os.PathLike) -> Path:
    """The eval bundle folder a study file names (`eval.bundle`, as `bundle_dir` resolves it), without
    checking the rest, as `study_name`: what `nanostudy eval` of an edited study needs. A missing or
    malformed `eval.bundle` is the default bundle; the trainer's own checks name it at `run`."""
    doc = _Document(Path(path), _read(Path(path)))
    section = doc.root.get("eval") if isinstance(doc.root, dict) else None
    bundle = section.get("bundle") if isinstance(section, dict) else None
    return bundle_dir(path, bundle if isinstance(bundle, str) else None)


def study_name(path: str | os.PathLike) -> str:
    """The name of the study a file declares (its `name`, else the file's stem) without checking the rest:
    what `status` and `cancel` need, which must work after the file was edited (a typo, a new grid) or
    names data that is not here (a relative path, another directory). StudyError for a file that cannot be
    read as YAML or whose `name` is not a non-empty string."""
    path = Path(path)
    doc = _Document(path, _read(path))
    if doc.unreadable:
        raise StudyError([message for _, message in doc.problems])
    if not isinstance(doc.root, dict):
        raise StudyError([f"{path}:1: study: expected a mapping of keys (name, mode, data, grid, ...)"])
    if "name" not in doc.root:
        return path.stem
    name = _as_name(doc, doc.root["name"])
    if name is None:
        raise StudyError([message for _, message in doc.problems])
    return name


def parse(text: str, *, path: str | os.PathLike = "<study>", executor: str | None = None) -> Study:
    """`load` for a study given as text (`path` names it in the problems)."""
    doc = _Document(Path(path), text)
    if doc.unreadable:
        raise StudyError([message for _, message in doc.problems])
    raw = doc.root
    if not isinstance(raw, dict):
        line = 1
        raise StudyError([f"{path}:{line}: study: expected a mapping of keys (name, mode, data, grid, ...)"])
    _unknown_keys(doc, "", raw, TOP_LEVEL_KEYS)

    name = _as_name(doc, raw["name"]) if "name" in raw else Path(path).stem
    description = (
        _as_str(doc, "description", raw["description"]) if raw.get("description") is not None else None
    )
    mode = raw.get("mode", "pretraining")
    if mode not in MODES:
        doc.add("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        mode = "pretraining"

    data = None
    if "data" in raw:
        if mode == "mid-training":
            doc.add("data", "mode mid-training trains on mid_training.data only; remove this section")
        else:
            data = _parse_data(doc, "data", raw["data"], mid_training=False)
    elif mode != "mid-training":
        doc.add("data", f"missing; mode {mode} needs the pretraining data (source and tokenizer)")
    grid = _parse_grid(doc, raw.get("grid"), mode)
    if mode == "mid-training" and "model" in raw:
        doc.add("model", "mode mid-training takes the model from mid_training.init_from; remove this section")
    sections = [s for s in _run_sections() if not (s == "model" and mode == "mid-training")]
    training, origin = _parse_run_sections(doc, raw, "", sections)
    if grid.aspect_ratio and isinstance(raw.get("model"), dict) and "aspect_ratio" in raw["model"]:
        doc.add("model.aspect_ratio", "also swept by grid.aspect_ratio; keep one of them")
    wandb = WandbSection(**training.get("wandb", {}))
    mid_training, mid_origin = _parse_mid_training(doc, raw.get("mid_training"), mode)

    study = Study(
        path=Path(path),
        name=name or Path(path).stem,
        mode=mode,
        description=description,
        data=data,
        grid=grid,
        training=training,
        mid_training=mid_training,
        eval=EvalSettings(**{key: training.get("eval", {}).get(key) for key in GAUNTLET_KEYS}),
        resources=_parse_resources(doc, raw.get("resources"), executor=executor),
        retry=_parse_retry(doc, raw.get("retry")),
        wandb=wandb,
        lines=dict(doc.lines),
    )
    if not doc.problems:
        _check_gpus_per_depth(doc, study)
    if not doc.problems:
        _check_cells(doc, study, origin, mid_origin)
    if doc.problems:
        raise StudyError([message for _, message in sorted(doc.problems, key=lambda p: p[0])])
    return study


def _check_cells(doc: _Document, study: Study, origin: dict[str, str], mid_origin: dict[str, str]) -> None:
    """Build every cell's trainer config and check it as the trainer will; each distinct problem once, at the
    study key that caused it."""
    seen: set[str] = set()
    stages = {"pretraining": ["pretraining"], "all": ["pretraining", "mid-training"]}
    for axes in study.grid.points():
        for stage in stages.get(study.mode, ["mid-training"]):
            init_from = study.mid_training.init_from if study.mid_training else None
            try:
                config = cell_config(study, axes, mode=stage, train_dir="-", init_from=init_from)
            except ValueError as e:
                key, _, message = str(e).removeprefix(": ").partition(": ")
                problem = (_study_key(key, stage, origin, mid_origin), message)
            else:
                problem = _batch_problem(config, study, stage, origin, mid_origin)
            if problem is not None and problem not in seen:
                seen.add(problem)
                doc.add(*problem)


def _study_key(config_key: str, stage: str, origin: Mapping[str, str], mid_origin: Mapping[str, str]) -> str:
    """The study key that set a trainer config key (for a problem found in a built cell config)."""
    axes = {"model.depth": "grid.depth", "model.aspect_ratio": "grid.aspect_ratio", "seed": "grid.seed"}
    horizon = {"train.target_flops": "grid.flops"} if stage == "pretraining" else {}
    if stage == "mid-training":
        horizon = {f"train.{v}": f"mid_training.{k}" for k, v in _MID_HORIZONS.items()}
    for table in (mid_origin if stage == "mid-training" else {}, origin, axes, horizon):
        for config_key_set, study_key in table.items():
            if config_key == config_key_set or config_key.startswith(config_key_set + "."):
                return study_key
    section = config_key.split(".")[0]
    return section if section in _run_sections() else "grid"


def _world_size_name(study: Study) -> str:
    if study.resources.executor == "slurm":
        return "slurm.nodes × processes per node"
    return "gpus_per_cell"


def _batch_problem(
    config: Mapping[str, Any],
    study: Study,
    stage: str,
    origin: Mapping[str, str],
    mid_origin: Mapping[str, str],
) -> tuple[str, str] | None:
    """The batch rules the trainer applies at start (nanogpt.train.sequences_per_rank / grad_accum_for):
    total_batch_tokens splits into whole sequences on each GPU, and device_batch_size divides those."""
    model = config["model"] or _checkpoint_model(study)  # mode mid-training: the checkpoint's shape
    gpus = study.resources.processes_for(model["depth"])
    total, seq_len = config["train"]["total_batch_tokens"], model["sequence_len"]
    batch_key = _study_key("train.total_batch_tokens", stage, origin, mid_origin)
    if batch_key == "train" and "model.sequence_len" in origin:
        batch_key = origin["model.sequence_len"]
    if total % (seq_len * gpus):
        seq_name = "sequence_len" if config["model"] else "the checkpoint's sequence_len"
        return batch_key, (
            f"{total:,} tokens per step is not a multiple of {seq_name} × {_world_size_name(study)} "
            f"= {seq_len} × {gpus}"
        )
    sequences, micro = total // (seq_len * gpus), config["train"]["device_batch_size"]
    if micro != "auto" and sequences % micro:
        return _study_key("train.device_batch_size", stage, origin, mid_origin), (
            f"{micro} does not divide the {sequences} sequences per GPU and step "
            "(total_batch_tokens / (sequence_len × gpus))"
        )
    return None


def _checkpoint_model(study: Study) -> dict[str, Any]:
    """The model config of the checkpoint a mode mid-training study starts from (read when it loaded)."""
    from nanogpt.checkpoint import read_meta, resolve_checkpoint

    assert study.mid_training is not None and study.mid_training.init_from is not None
    return read_meta(resolve_checkpoint(Path(study.mid_training.init_from).expanduser()))["model_config"]
