"""The trainer's one config file: `RUN_DIR/config.json`, parsed into frozen dataclasses.

Every key, its default and its meaning are documented in docs/training.md. Parsing is strict: an unknown key,
a value of the wrong type or out of range is a ValueError that names the file and the dotted key, e.g.
`run/config.json: unknown key 'optim.lrr'`. No torch here: the runner imports this module to write configs.

    config = RunConfig.from_json("runs/d12/config.json")
    Path("copy.json").write_text(config.to_json())  # RunConfig.from_json(...) == config
"""

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nanogpt.gauntlet.tasks import resolve as resolve_preset  # the task table: no torch

CONFIG_NAME = "config.json"
MODES = ("pretraining", "mid-training")
MAX_SEED = 2**63


def _check_positive_int(owner: object, *keys: str) -> None:
    for key in keys:
        value = getattr(owner, key)
        if value is not None and value < 1:
            raise ValueError(f"{key}: must be a positive integer, got {value!r}")


def _check_fraction(owner: object, *keys: str) -> None:
    for key in keys:
        value = getattr(owner, key)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{key}: must be in [0, 1], got {value!r}")


def _check_positive_float(owner: object, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = getattr(owner, key)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{key}: must be a finite number {bound}, got {value!r}")


def _magnitude(count: int) -> str:
    """A count too long to read in full: 1e+25 (~1e+400 past a float's range)."""
    try:
        return f"{count:.3g}"
    except OverflowError:
        return f"~1e+{len(str(count)) - 1}"


MAX_DEPTH = 4_096
MAX_WIDTH = 65_536  # n_embd: several times the widest models trained so far
MAX_SEQ = 1 << 24
# A run's tokens are a 64-bit integer (its events, the runner's store; runner.plan refuses the same): no real
# run comes near (2^63 tokens is 10^5 times the largest trained so far), so a horizon past it is a typo.
MAX_TOKENS = 2**63 - 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSection:
    """The model's shape; nanogpt.model.GPTConfig adds the tokenizer's vocab_size to it."""

    depth: int
    aspect_ratio: int = 64
    head_dim: int = 128
    sequence_len: int = 1024  # the training context, in tokens
    mlp: Literal["relu2", "gelu"] = "relu2"
    logit_softcap: float | None = 15.0

    def __post_init__(self) -> None:
        _check_positive_int(self, "depth", "aspect_ratio", "head_dim", "sequence_len")
        _check_positive_float(self, "logit_softcap")
        # Past these a value is a typo, not a model (and overflowed tensor sizes deep in torch).
        limits = {"depth": MAX_DEPTH, "head_dim": MAX_WIDTH, "sequence_len": MAX_SEQ}
        for key, most in limits.items():
            if getattr(self, key) > most:
                raise ValueError(f"{key}: at most {most:,}, got {getattr(self, key):,}")
        if (width := self.depth * self.aspect_ratio) > MAX_WIDTH:
            what = "depth × aspect_ratio, the model's width,"
            raise ValueError(f"aspect_ratio: {what} is {width:,}: more than {MAX_WIDTH:,}")


@dataclass(frozen=True, kw_only=True, slots=True)
class DataSection:
    train_dir: str  # a prepared data directory (manifest.json); its `train` split is trained on
    val_dir: str | None = None  # whose `val` split is evaluated; None: train_dir's
    tokenizer: str | None = None  # for bits-per-byte; None: the tokenizer the manifest names

    def __post_init__(self) -> None:
        if not self.train_dir:
            raise ValueError("train_dir: must not be empty")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainSection:
    """The horizon (exactly one of target_flops, target_tokens, num_steps) and the batch."""

    target_flops: float | None = None
    target_tokens: int | None = None
    num_steps: int | None = None
    total_batch_tokens: int = 524_288  # tokens per optimizer step, whatever the number of GPUs
    device_batch_size: int | Literal["auto"] = "auto"  # sequences per micro-batch per GPU
    max_seconds: float | None = None  # stop (checkpoint, exit 143, resumable) after this long

    def __post_init__(self) -> None:
        horizons = {"target_flops": self.target_flops, "target_tokens": self.target_tokens}
        horizons["num_steps"] = self.num_steps
        given = [key for key, value in horizons.items() if value is not None]
        if len(given) != 1:
            what = "none is set" if not given else f"{' and '.join(given)} are set"
            raise ValueError(f"target_flops/target_tokens/num_steps: give exactly one horizon; {what}")
        _check_positive_float(self, "target_flops", "max_seconds")
        _check_positive_int(self, "target_tokens", "num_steps", "total_batch_tokens")
        for key in ("target_tokens", "total_batch_tokens"):
            if (value := getattr(self, key)) is not None and value > MAX_TOKENS:
                raise ValueError(
                    f"{key}: {_magnitude(value)} is more than the 2^63 - 1 tokens a run can count; a typo in "
                    "the exponent?"
                )
        if self.num_steps is not None and (tokens := self.num_steps * self.total_batch_tokens) > MAX_TOKENS:
            raise ValueError(
                f"num_steps: {_magnitude(self.num_steps)} steps of {self.total_batch_tokens:,} tokens is "
                f"{_magnitude(tokens)} tokens, more than the 2^63 - 1 a run can count; a typo in the "
                "exponent?"
            )
        if self.device_batch_size != "auto":
            _check_positive_int(self, "device_batch_size")


@dataclass(frozen=True, kw_only=True, slots=True)
class OptimSection:
    """MuonAdamW hyperparameters, tuned at the reference shape (n_embd 768, depth 12) as nanochat's are.

    With scale_hparams, the AdamW learning rates are multiplied by (n_embd / 768)^-0.5 and the Muon weight
    decay by (12 / depth)^2; with reference_batch_tokens set, every learning rate is further multiplied by
    sqrt(total_batch_tokens / reference_batch_tokens). docs/training.md explains the rules and their sources.
    """

    matrix_lr: float = 0.02  # Muon, for the 2-D block matrices
    embedding_lr: float = 0.2  # AdamW, wte
    unembedding_lr: float = 0.004  # AdamW, lm_head
    scalar_lr: float = 0.5  # AdamW, vectors and scalars
    weight_decay: float = 0.0  # Muon's decoupled weight decay at depth 12
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    adam_eps: float = 1e-10
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85  # linearly warmed up to muon_momentum ...
    muon_momentum_warmup_steps: int = 300  # ... over this many steps (0: no warmup)
    muon_nesterov: bool = True
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    scale_hparams: bool = True
    reference_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        _check_positive_float(self, "matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr", "adam_eps")
        _check_positive_float(self, "weight_decay", allow_zero=True)
        for key in ("adam_beta1", "adam_beta2", "muon_momentum", "muon_momentum_start"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key}: must be in [0, 1), got {value!r}")
        if self.muon_momentum_warmup_steps < 0:
            warmup = self.muon_momentum_warmup_steps
            raise ValueError(f"muon_momentum_warmup_steps: must be >= 0, got {warmup}")
        _check_positive_int(self, "muon_ns_steps", "reference_batch_tokens")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleSection:
    """Learning-rate multiplier over the run: linear warmup, then cosine or warmup-stable-decay (WSD)."""

    kind: Literal["wsd", "cosine"] = "wsd"
    warmup_frac: float = 0.0  # of the total steps
    cooldown_frac: float = 0.2  # wsd only: the final fraction of steps decays linearly to final_lr_frac
    final_lr_frac: float = 0.0  # the multiplier at the last step

    def __post_init__(self) -> None:
        _check_fraction(self, "warmup_frac", "cooldown_frac", "final_lr_frac")
        if self.kind == "wsd" and self.warmup_frac + self.cooldown_frac > 1.0:
            raise ValueError(
                f"warmup_frac + cooldown_frac: must be <= 1, got {self.warmup_frac} + {self.cooldown_frac}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class EvalSection:
    """Validation loss, and the in-context benchmarks of the eval gauntlet (docs/evals.md)."""

    every_steps: int | None = 250  # validation every N steps; always after the last step; None: last only
    val_tokens: int = 10_485_760  # tokens per validation (rounded down to whole batches, at least one)
    preset: str | None = None  # the gauntlet's tasks: "core", "quick", "chat" or "task,task"; None: off
    bundle: str | None = None  # the eval data folder; None: $NANOSTUDY_EVAL_BUNDLE or ~/.cache/nanostudy/...
    gauntlet_every: int | None = None  # the gauntlet every N steps; always after the last; None: last only
    max_examples: int | None = None  # examples per task; None: the preset's default (quick: 100; else all)

    def __post_init__(self) -> None:
        _check_positive_int(self, "every_steps", "val_tokens", "gauntlet_every", "max_examples")
        if self.preset is None:
            return  # the other gauntlet keys wait for a preset (which a mid-training stage may set)
        try:
            resolve_preset(self.preset)
        except ValueError as e:
            raise ValueError(f"preset: {e}") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointSection:
    every_steps: int | None = None  # a checkpoint every N steps; always after the last step; None: last only
    keep_last: int = 2  # older step directories are deleted; the newest (the final one) is always kept

    def __post_init__(self) -> None:
        _check_positive_int(self, "every_steps", "keep_last")


@dataclass(frozen=True, kw_only=True, slots=True)
class WandbSection:
    mode: Literal["disabled", "online", "offline"] = "disabled"
    project: str = "nanostudy"
    name: str | None = None  # the run's display name; None: the run directory's name
    entity: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileSection:
    """torch.profiler over `num_steps` steps after the first `start_step` (nanogpt/profiling.py)."""

    start_step: int | None = None  # None: no profile
    num_steps: int = 3
    trace: bool = True  # also write the Chrome trace (trace.json.gz)

    def __post_init__(self) -> None:
        if self.start_step is not None and self.start_step < 0:
            raise ValueError(f"start_step: must be >= 0, got {self.start_step!r}")
        _check_positive_int(self, "num_steps")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    model: ModelSection | None = None  # required for pretraining; mid-training reads it from init_from
    data: DataSection
    train: TrainSection
    mode: Literal["pretraining", "mid-training"] = "pretraining"
    init_from: str | None = None  # mid-training: a checkpoint directory, or a run directory (its latest)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 autocast on cuda, fp32 on cpu
    # torch.compile: true compiles the whole model, "blocks" one block (which every block runs) and the head
    # (nanogpt.model.compile_blocks: compiles in a fraction of the time), false runs eagerly; "auto" picks
    # one from the device and the run's length (nanogpt.train.resolve_compile).
    compile: bool | Literal["blocks", "auto"] = "auto"
    # The lm_head's matmuls in FP8 during training steps (with the fused loss nanogpt.fused_loss's
    # FusedFP8HeadLoss, else nanogpt.model.FP8Linear); evaluation and generation stay in the autocast
    # dtype. "auto": on for CUDA runs on GPUs with FP8 tensor cores (compute capability 8.9+) that train
    # with the fused loss, decided at a run's first start (nanogpt.train.resolve_head); 7.7-8.6% more
    # tokens/s at depth 12 on an H100, at a loss change within the GPU's run-to-run noise
    # (docs/training.md). auto pins nothing (a cell's id is the same as before it existed); true pins FP8
    # (an error on a GPU without it), false the autocast dtype.
    fp8_head: bool | Literal["auto"] = "auto"
    # The training loss and its gradient in one Triton kernel (nanogpt.fused_loss): the same loss, 3% more
    # tokens/s at depth 12 on an H100. "auto": on for CUDA runs when triton imports and the kernel passes
    # its self-test; true: required (an error elsewhere); false: the compiled loss of GPT.head.
    fused_loss: bool | Literal["auto"] = "auto"
    # The ReLU² MLP's activation inside its matmuls' Triton kernels (nanogpt.fused_mlp) during training
    # steps: the same function, 1.8% more tokens/s at depth 12 on an H100. "auto": on for CUDA runs of a
    # ReLU² model when triton imports and the kernels pass their self-test; true: required (an error
    # elsewhere); false: the compiled MLP.
    fused_mlp: bool | Literal["auto"] = "auto"
    # The nn.Linear weights cast to the autocast dtype once per step (nanogpt.weight_copies) rather than by
    # autocast in every micro-batch: the same numbers, bit for bit. "auto": on whenever training runs in
    # bfloat16; true: the same, an error for float32 runs; false: autocast's casts.
    weight_copies: bool | Literal["auto"] = "auto"
    log_every: int = 1  # a `step` event every N steps (and after the last)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    profile: ProfileSection = field(default_factory=ProfileSection)

    def __post_init__(self) -> None:
        _check_positive_int(self, "log_every")
        if not 0 <= self.seed < MAX_SEED:  # torch.manual_seed takes at most 64 bits
            raise ValueError(f"seed: must be an integer in [0, 2^63), got {self.seed}")
        if self.mode == "pretraining":
            if self.model is None:
                raise ValueError("model: required for pretraining")
            if self.init_from is not None:
                raise ValueError("init_from: only for mid-training (pretraining starts from scratch)")
        elif self.init_from is None:
            raise ValueError("init_from: mid-training needs the checkpoint to start from")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the config atomically (temp file then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = CONFIG_NAME) -> "RunConfig":
        """Build from parsed JSON; every problem is `ValueError("<source>: <key>: <problem>")`."""
        try:
            return _build(cls, raw, "")
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"{path}: config file not found") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read the config ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except RecursionError:  # json's decoder recurses once per level of nesting
            raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
        except ValueError as e:  # an integer past Python's limit on digits (sys.get_int_max_str_digits)
            raise ValueError(f"{path}: not valid JSON ({str(e).split(':')[0]})") from None
        return cls.from_dict(raw, source=str(path))


# ---------------------------------------------------------------------------------------------------------
# JSON → dataclasses, checking each value against the field's type hint.


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, "an object")


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return _convert(options[0], value, key)
        for option in options:
            try:
                return _convert(option, value, key)
            except ValueError:
                continue
        raise ValueError(f"{key}: expected {' or '.join(map(_describe, options))}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices or isinstance(value, bool):
            raise ValueError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{key}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {_type_name(value)} ({value!r})")
        return value
    if hint is int:
        # JSON has one number type; 1e6 parses as a float but is a fine count.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {_type_name(value)} ({value!r})")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {_type_name(value)} ({value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {_type_name(value)} ({value!r})")
        return value
    raise AssertionError(f"no JSON conversion for the type {hint!r} of {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "top level"
        raise ValueError(f"{where}: expected an object, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else f"; known here: {', '.join(fields)}"
        raise ValueError(f"unknown key {prefix + unknown[0]!r}{hint}")
    missing = [
        name
        for name, f in fields.items()
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"missing key {prefix + missing[0]!r}")
    kwargs = {name: _convert(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        # Section validators name the key within their section; add the section's path.
        raise ValueError(f"{prefix}{e}") from None
