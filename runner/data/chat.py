"""The mid-training task mixture: SmolTalk, MMLU auxiliary_train and GSM8K as chat conversations.

Train: SmolTalk train (460,000) + MMLU auxiliary_train (99,842) + GSM8K main/train (7,473), each scaled by
its weight. Validation: the first 5,000 of SmolTalk test + MMLU all/validation (1,531) + GSM8K main/test
(1,319). Each split's subsets are interleaved in a seeded random order, so any prefix of the stream holds
the subsets in proportion. Rows become conversations:
- SmolTalk: its `messages` list of {role, content}, as is.
- MMLU: user = the question, the lettered choices and an instruction; assistant = the letter.
- GSM8K: user = the question; assistant = the worked answer verbatim, ending in `#### <number>` (the form
  GSM8K's evaluation parses).
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nanogpt.tokenizer import ChatMessage
from runner.data.sources import Document, SourceError, SourceSpec, iter_rows, load_hub_dataset

LETTERS = "ABCDEFGHIJ"
SMOLTALK_VAL_ROWS = 5_000


@dataclass(frozen=True, kw_only=True, slots=True)
class SubsetSplit:
    subset: str
    hub_id: str
    config: str | None
    split: str
    max_rows: int | None = None


TRAIN_SUBSETS = (
    SubsetSplit(subset="smoltalk", hub_id="HuggingFaceTB/smol-smoltalk", config=None, split="train"),
    SubsetSplit(subset="mmlu", hub_id="cais/mmlu", config="auxiliary_train", split="train"),
    SubsetSplit(subset="gsm8k", hub_id="openai/gsm8k", config="main", split="train"),
)
VAL_SUBSETS = (
    SubsetSplit(
        subset="smoltalk",
        hub_id="HuggingFaceTB/smol-smoltalk",
        config=None,
        split="test",
        max_rows=SMOLTALK_VAL_ROWS,
    ),
    SubsetSplit(subset="mmlu", hub_id="cais/mmlu", config="all", split="validation"),
    SubsetSplit(subset="gsm8k", hub_id="openai/gsm8k", config="main", split="test"),
)


def messages_from_rows(rows, *, where: str) -> tuple[ChatMessage, ...]:
    """A list of {role, content} mappings → messages; a clear error for anything else."""
    if not isinstance(rows, list | tuple) or not rows:
        raise SourceError(f"{where}: messages must be a non-empty list of {{role, content}}")
    messages = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "role" not in row or "content" not in row:
            raise SourceError(f"{where}: message {i} is not a {{role, content}} mapping")
        try:
            messages.append(ChatMessage(role=row["role"], content=row["content"]))
        except ValueError as e:
            raise SourceError(f"{where}: message {i}: {e}") from None
    return tuple(messages)


def mmlu_messages(row: dict, *, where: str) -> tuple[ChatMessage, ...]:
    if isinstance(row.get("train"), dict):
        row = row["train"]  # cais/mmlu's auxiliary_train nests each row under a `train` column
    try:
        question, choices, answer = row["question"], list(row["choices"]), int(row["answer"])
    except (KeyError, TypeError, ValueError):
        raise SourceError(f"{where}: an MMLU row needs question, choices and an integer answer") from None
    if not 0 <= answer < len(choices) <= len(LETTERS):
        raise SourceError(f"{where}: MMLU answer {answer} does not index its {len(choices)} choices")
    lettered = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    prompt = f"{question}\n\n{lettered}\n\nAnswer with the letter of the correct choice."
    return (ChatMessage(role="user", content=prompt), ChatMessage(role="assistant", content=LETTERS[answer]))


def gsm8k_messages(row: dict, *, where: str) -> tuple[ChatMessage, ...]:
    if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise SourceError(f"{where}: a GSM8K row needs question and answer strings")
    return (
        ChatMessage(role="user", content=row["question"]),
        ChatMessage(role="assistant", content=row["answer"]),
    )


def smoltalk_messages(row: dict, *, where: str) -> tuple[ChatMessage, ...]:
    if "messages" not in row:
        raise SourceError(f"{where}: a SmolTalk row needs a messages list")
    return messages_from_rows(row["messages"], where=where)


CONVERTERS = {"smoltalk": smoltalk_messages, "mmlu": mmlu_messages, "gsm8k": gsm8k_messages}


def _config_for(path: str, config: str | None) -> str | None:
    """A local folder override uses the config only where its dataset card declares it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return config
    card = folder / "README.md"
    if config and card.is_file() and f"config_name: {config}" in card.read_text(errors="replace"):
        return config
    return None


def _rows(part: SubsetSplit, override: str | None):
    path = override or part.hub_id
    if override is not None:
        advice = f"Check the folder given as datasets.{part.subset}"
    else:
        advice = (
            "Without access to the Hugging Face hub, download it elsewhere and give "
            f"`datasets: {{{part.subset}: <folder>}}` (its validation split is read whatever its weight)"
        )
    return load_hub_dataset(path, config=_config_for(path, part.config), split=part.split, advice=advice)


def _read(dataset, part: SubsetSplit, override: str | None) -> Iterator[dict]:
    """The split's rows, with an error naming the subset and its option should the files fail to read."""
    if override is not None:
        where = f"task-mixture: datasets.{part.subset} {override!r} ({part.split})"
        advice = "check the folder's files"
    else:
        where = f"task-mixture: {part.subset} {part.hub_id} ({part.split})"
        advice = (
            f"check the network, or download it elsewhere and give `datasets: {{{part.subset}: <folder>}}`"
        )
    return iter_rows(dataset, where=where, advice=advice)


def _count_rows(dataset, part: SubsetSplit, override: str | None = None) -> int:
    splits = getattr(dataset.info, "splits", None) or {}
    if part.split in splits and splits[part.split].num_examples:
        count = splits[part.split].num_examples
    else:  # local files carry no split sizes: count them (one cheap extra pass)
        count = sum(1 for _ in _read(dataset, part, override))
    return count if part.max_rows is None else min(count, part.max_rows)


def _take(dataset, part: SubsetSplit, num_rows: int, override: str | None) -> Iterator[Document]:
    """`num_rows` conversations: whole passes over the subset, then a prefix (weights above 1 repeat rows)."""
    convert, taken = CONVERTERS[part.subset], 0
    where = f"{override or part.hub_id} {part.split}"
    while taken < num_rows:
        taken_before = taken
        for number, row in enumerate(_read(dataset, part, override), start=1):
            if taken == num_rows or (part.max_rows is not None and number > part.max_rows):
                break
            row_where = f"{where} row {number}"
            yield Document(messages=convert(row, where=row_where), split=None, where=row_where)
            taken += 1
        if taken == taken_before:
            raise SourceError(f"task-mixture: {where} produced no rows on a second pass")


def interleave(streams: list[Iterator], counts: list[int], *, seed: int) -> Iterator:
    """A uniformly random interleaving of the streams: each next item comes from stream i with probability
    (items left in i) / (items left in all), which needs only the counts, never the items in memory."""
    rng = random.Random(seed)
    left = list(counts)
    total = sum(left)
    while total > 0:
        pick = rng.randrange(total)
        chosen = 0
        while pick >= left[chosen]:
            pick -= left[chosen]
            chosen += 1
        left[chosen] -= 1
        total -= 1
        yield next(streams[chosen])


def _split_stream(parts: Iterable[SubsetSplit], spec: SourceSpec, *, split: str) -> Iterator[Document]:
    overrides, weights = dict(spec.datasets), dict(spec.weights)
    streams, counts = [], []
    for part in parts:
        weight = weights.get(part.subset, 1.0) if split == "train" else 1.0
        override = overrides.get(part.subset)
        dataset = _rows(part, override)
        rows = _count_rows(dataset, part, override)
        if rows == 0:
            raise SourceError(f"task-mixture: {part.subset} ({part.hub_id} {part.split}) has no rows")
        num_rows = round(weight * rows)
        streams.append(_take(dataset, part, num_rows, override))
        counts.append(num_rows)
    for document in interleave(streams, counts, seed=spec.seed):
        yield Document(messages=document.messages, split=split, where=document.where)


def iter_task_mixture(spec: SourceSpec) -> Iterator[Document]:
    # Validation first: it is small, and a max_documents / max_bytes cap then trims training data only.
    yield from _split_stream(VAL_SUBSETS, spec, split="val")
    yield from _split_stream(TRAIN_SUBSETS, spec, split="train")
