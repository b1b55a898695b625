"""One gauntlet run: prepare a preset's tasks once, score a model on them, turn the results into events.

    gauntlet = prepare("core", bundle_dir, tokenizer)          # read, validate, build prompts, tokenize
    result = run_gauntlet(model, gauntlet, tokenizer)           # every rank calls it when sharded
    for event in result.events(): writer.write("eval", step=step, **event)

Sharding: with world_size > 1 each rank scores every world_size-th example of each task, and one
all-reduce of the per-example results gives every rank the whole picture (the default process group).
Tasks whose file is missing are reported as unavailable; tasks with malformed rows as skipped, with the
rows named; neither is scored, and the averages say which tasks they lack. Averages (categories,
core_average, chatcore_average) come with the named presets only (tasks.average_name).
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nanogpt import checkpoint as ckpt
from nanogpt.gauntlet.aggregate import AggregateScore, TaskScore, aggregate
from nanogpt.gauntlet.bundle import check_bundle
from nanogpt.gauntlet.data import (
    ChoiceItem,
    GenerationItem,
    TaskDataError,
    TaskUnavailable,
    build_items,
    is_correct,
    load_task,
)
from nanogpt.gauntlet.scoring import (
    DEFAULT_BATCH_TOKENS,
    MAX_GENERATION_ROWS,
    PAD_MULTIPLE,
    Request,
    generate_greedy,
    prompt_room,
    score_requests,
)
from nanogpt.gauntlet.tasks import (
    CHAT_CATEGORY,
    CHAT_CHOICE,
    LANGUAGE_MODELING,
    MULTIPLE_CHOICE,
    SCHEMA,
    TaskSpec,
    average_name,
    has_averages,
    resolve,
    result_name,
)
from nanogpt.model import GPT, GPTConfig
from nanogpt.shards import ShardError, read_manifest
from nanogpt.tokenizer import IM_END, Tokenizer, load_tokenizer

# Per example, summed over ranks: scored (fits the context), right, right by the summed log-likelihood,
# context truncated on the left.
_RESULT_COLUMNS = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedTask:
    spec: TaskSpec
    items: tuple[ChoiceItem | GenerationItem, ...]
    num_rows: int  # rows in the task's file


@dataclass(frozen=True, kw_only=True, slots=True)
class Gauntlet:
    """A preset's tasks, ready to score (tokenized for one tokenizer)."""

    preset: str
    max_examples: int | None  # per task; None: all
    bundle_dir: Path
    tasks: tuple[PreparedTask, ...]
    skipped: dict[str, str]  # task -> why it cannot be scored (unavailable file, malformed rows)
    unavailable: frozenset[str]  # the skipped tasks whose file is missing
    specs: tuple[TaskSpec, ...]  # every task of the preset, scored or not

    @property
    def warnings(self) -> list[str]:
        """One line per task that will not be scored, and why."""
        return [f"eval gauntlet: {name} is not scored: {why}" for name, why in self.skipped.items()]


def prepare(
    preset: str,
    bundle_dir: str | Path,
    tokenizer: Tokenizer,
    *,
    max_examples: int | None = None,
    seed: int = 0,
) -> Gauntlet:
    """Load and tokenize the preset's tasks from the bundle. `max_examples` None: the preset's default.
    BundleError when the bundle folder does not exist; a missing or malformed task file is only skipped."""
    specs, preset_max = resolve(preset)
    max_examples = preset_max if max_examples is None else max_examples
    bundle_dir = Path(bundle_dir)
    check_bundle(bundle_dir)
    tasks, skipped, unavailable = [], {}, set()
    for spec in specs:
        try:
            loaded = load_task(spec, bundle_dir)
            items = build_items(loaded, tokenizer, seed=seed, max_examples=max_examples)
        except TaskUnavailable as e:
            skipped[spec.name] = f"unavailable ({e})"
            unavailable.add(spec.name)
            continue
        except TaskDataError as e:
            skipped[spec.name] = f"malformed rows: {e}"
            continue
        tasks.append(PreparedTask(spec=spec, items=tuple(items), num_rows=len(loaded.rows)))
    return Gauntlet(
        preset=preset,
        max_examples=max_examples,
        bundle_dir=bundle_dir,
        tasks=tuple(tasks),
        skipped=skipped,
        unavailable=frozenset(unavailable),
        specs=specs,
    )


@dataclass(kw_only=True, slots=True)
class GauntletResult:
    preset: str
    max_examples: int | None
    scores: list[TaskScore]
    aggregates: list[AggregateScore]
    skipped: dict[str, str]
    specs: tuple[TaskSpec, ...]
    seconds: dict[str, float] = field(default_factory=dict)  # per task, and "total"

    def events(self) -> list[dict[str, Any]]:
        """The `eval` events' fields (task, score, metrics) without the step: one per task of the preset
        (score null for a task not scored, with why), then the averages. A score is centered; `stderr` in
        metrics is the score's standard error."""
        cap = self.max_examples
        base = {"preset": self.preset, "max_examples": cap}
        out = []
        by_name = {score.name: score for score in self.scores}
        for spec in self.specs:
            info = {**base, "category": spec.category, "kind": spec.kind, "shots": spec.shots}
            info["baseline"] = spec.baseline
            score = by_name.get(spec.name)
            if score is None:
                out.append(
                    {
                        "task": result_name(spec.name, cap),
                        "score": None,
                        "metrics": {**info, "skipped": self.skipped.get(spec.name, "not run")},
                    }
                )
                continue
            metrics = {
                **info,
                "accuracy": score.accuracy,
                "accuracy_stderr": score.stderr,
                "centered": score.centered,
                "stderr": score.centered_stderr,
                "num_examples": score.num_examples,
                "seconds": self.seconds.get(spec.name),
                **score.extra,
            }
            out.append({"task": result_name(spec.name, cap), "score": score.centered, "metrics": metrics})
        for result in self.aggregates:
            metrics = {
                **base,
                "centered": result.score,
                "stderr": result.stderr,
                "stderr_bootstrap": result.stderr_bootstrap,
                "parts": list(result.parts),
                "missing": list(result.missing),
                "seconds": self.seconds.get("total"),
            }
            name = average_name(self.preset, result.name, cap)
            out.append({"task": name, "score": result.score, "metrics": metrics})
        return out

    def table(self) -> str:
        """A plain-text summary: one line per task and average."""
        lines = [f"{'task':<34} {'n':>6} {'accuracy':>9} {'centered':>9} {'± stderr':>9}"]
        for score in self.scores:
            lines.append(
                f"{score.name:<34} {score.num_examples:>6} {score.accuracy:>9.4f} {score.centered:>9.4f} "
                f"{score.centered_stderr:>9.4f}"
            )
        for name, why in self.skipped.items():
            lines.append(
                f"{name:<34} {'-':>6} {'-':>9} {'-':>9} {'-':>9}  ({why.split(' (')[0].split(':')[0]})"
            )
        for result in self.aggregates:
            name = average_name(self.preset, result.name, self.max_examples)
            lines.append(f"{name:<34} {'':>6} {'':>9} {result.score:>9.4f} {result.stderr:>9.4f}")
        return "\n".join(lines)


def run_gauntlet(
    model: torch.nn.Module,
    gauntlet: Gauntlet,
    tokenizer: Tokenizer,
    *,
    rank: int = 0,
    world_size: int = 1,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    num_resamples: int = 1000,
    on_task: Callable[[str, float], None] | None = None,
) -> GauntletResult:
    """Score the model on every prepared task (this rank's share of each when world_size > 1; every rank
    must call it) and aggregate. The model is put in eval mode for the run and restored after.
    `on_task(name, seconds)` is called as each task's scoring ends (progress for a long preset)."""
    was_training = model.training
    model.eval()
    t_start = time.time()
    seconds: dict[str, float] = {}
    local = []
    try:
        for task in gauntlet.tasks:
            t0 = time.time()
            mine = [k for k in range(len(task.items)) if k % world_size == rank]
            results = np.zeros((len(task.items), _RESULT_COLUMNS))
            items = [task.items[k] for k in mine]
            results[mine] = score_items(model, task.spec, items, tokenizer, max_batch_tokens=max_batch_tokens)
            local.append(results)
            seconds[task.spec.name] = time.time() - t0
            if on_task is not None:
                on_task(task.spec.name, seconds[task.spec.name])
    finally:
        model.train(was_training)
    scores = []
    for task, results in zip(gauntlet.tasks, _all_reduce_results(local, world_size), strict=True):
        scored = results[:, 0] > 0
        more = {"num_unscored": int((~scored).sum()), "num_truncated": int(results[:, 3].sum())}
        if task.spec.kind in (MULTIPLE_CHOICE, SCHEMA, CHAT_CHOICE):
            more["accuracy_sum"] = float(results[scored, 2].mean()) if scored.any() else math.nan
        scores.append(
            TaskScore(
                name=task.spec.name,
                category=task.spec.category,
                baseline=task.spec.baseline,
                core=task.spec.core,
                correct=results[scored, 1] > 0,
                extra=more,
            )
        )
    skipped = dict(gauntlet.skipped)
    skipped |= {s.name: "no example fits the model's context" for s in scores if s.num_examples == 0}
    scores = [score for score in scores if score.num_examples > 0]
    missing: dict[str, list[str]] = {}
    for spec in gauntlet.specs:
        if spec.name in skipped and (spec.core or spec.category == CHAT_CATEGORY):
            missing.setdefault(spec.category, []).append(spec.name)
    averages = has_averages(gauntlet.preset)
    seconds["total"] = time.time() - t_start
    return GauntletResult(
        preset=gauntlet.preset,
        max_examples=gauntlet.max_examples,
        scores=scores,
        aggregates=aggregate(scores, missing=missing, num_resamples=num_resamples) if averages else [],
        skipped=skipped,
        specs=gauntlet.specs,
        seconds=seconds,
    )


def score_items(
    model: torch.nn.Module,
    spec: TaskSpec,
    items: Sequence[ChoiceItem | GenerationItem],
    tokenizer: Tokenizer,
    *,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pad_multiple: int = PAD_MULTIPLE,
    max_generation_rows: int = MAX_GENERATION_ROWS,
) -> np.ndarray:
    """The results of some of a task's items, one row each: (scored, right, right by the summed
    log-likelihood, context truncated). The batching arguments change the speed, never the decisions
    (benchmarks/eval_throughput.py scores one example at a time with max_batch_tokens=1, pad_multiple=1,
    max_generation_rows=1)."""
    results = np.zeros((len(items), _RESULT_COLUMNS))
    if not items:
        return results
    if isinstance(items[0], GenerationItem):
        stop_tokens = [tokenizer.eot_id]
        if spec.is_chat:
            stop_tokens.append(tokenizer.special(IM_END))
        outputs = generate_greedy(
            model,
            [item.prompt for item in items],
            max_new_tokens=spec.max_new_tokens,
            decode=tokenizer.decode,
            stop_strings=spec.stop_strings,
            stop_tokens=stop_tokens,
            max_rows=max_generation_rows,
        )
        room = prompt_room(model.config.sequence_len, spec.max_new_tokens)
        for row, (item, output) in enumerate(zip(items, outputs, strict=True)):
            text = tokenizer.decode([t for t in output if t not in stop_tokens])
            right = is_correct(spec, text, item.answers)
            results[row] = (1.0, float(right), float(right), float(len(item.prompt) > room))
        return results
    requests = [
        Request(context=context, continuation=continuation)
        for item in items
        for context, continuation in zip(item.contexts, item.continuations, strict=True)
    ]
    scored = score_requests(model, requests, max_batch_tokens=max_batch_tokens, pad_multiple=pad_multiple)
    position = 0
    for row, item in enumerate(items):
        options = scored[position : position + len(item.contexts)]
        position += len(item.contexts)
        if any(option is None for option in options):
            continue  # an option does not fit the context: the example cannot be scored
        if spec.kind == LANGUAGE_MODELING:
            right = right_sum = options[0].greedy
        else:
            # The gauntlet's rule: the option with the highest mean log-probability per token; the summed
            # log-likelihood's choice is kept as accuracy_sum.
            right = _argmax([o.logprob / o.num_tokens for o in options]) == item.gold
            right_sum = _argmax([o.logprob for o in options]) == item.gold
        truncated = any(option.truncated for option in options)
        results[row] = (1.0, float(right), float(right_sum), float(truncated))
    return results


# ---------------------------------------------------------------------------------------------------------
# A finished checkpoint


def load_for_eval(
    checkpoint: str | Path, device: torch.device | str
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model of a checkpoint (a step directory, a run directory or its `checkpoints/`: the newest) on
    `device`, in eval mode; the tokenizer it was trained with (its config's `data.tokenizer`, else the one
    its training data's manifest names, checked against the checkpoint's by hash; "gpt2" when the data is
    gone and the checkpoint says gpt2); and its meta.json. CheckpointError/TokenizerError/ShardError name
    the file that is wrong."""
    directory = ckpt.resolve_checkpoint(checkpoint)
    meta = ckpt.read_meta(directory)
    saved = meta.get("tokenizer") or {}
    data = (meta.get("config") or {}).get("data") or {}
    spec = data.get("tokenizer")
    if spec is None:
        try:
            spec = read_manifest(data.get("train_dir") or "").tokenizer_dir
        except ShardError:
            if saved.get("name") != "gpt2":
                raise
            spec = "gpt2"
    tokenizer = load_tokenizer(spec)
    if saved.get("hash") not in (None, tokenizer.hash):
        raise ckpt.CheckpointError(
            f"{directory / ckpt.META_NAME}: trained with tokenizer {saved.get('name')} "
            f"({saved['hash'][:12]}), but {spec} is {tokenizer.name} ({tokenizer.hash[:12]})"
        )
    try:
        config = GPTConfig(**meta["model_config"])
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{directory / ckpt.META_NAME}: bad model_config ({e})") from None
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # the rotary buffers; the weights come from the checkpoint
    try:
        model.load_state_dict(ckpt.load_model_state(directory, device), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        where = directory / ckpt.MODEL_NAME
        raise ckpt.CheckpointError(f"{where}: does not fit the model ({first})") from None
    model.eval()
    return model, tokenizer, meta


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def _all_reduce_results(results: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """Sum the per-example results over the ranks (each rank filled in its own rows, zeros elsewhere)."""
    if world_size == 1 or not results:
        return results
    flat = torch.from_numpy(np.concatenate([r.ravel() for r in results]))
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat)
    flat = flat.cpu().numpy()
    out, start = [], 0
    for r in results:
        out.append(flat[start : start + r.size].reshape(r.shape))
        start += r.size
    return out
