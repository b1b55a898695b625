"""A task's data: its JSONL rows, validated; few-shot prompts built from them; tokenized items to score.

Rows follow the gauntlet's formats (one JSON object per line):
- multiple_choice (and chat_choice): {"query", "choices": [...], "gold": i}
- schema: {"context_options": [...], "continuation", "gold": i}
- language_modeling: {"context", "continuation"}
- generation_task_with_answers (and chat_generation): {"context", "answer", "aliases"?, "chain_of_thought"?}

A malformed row (not JSON, a missing or mistyped field, a gold index out of range) is reported as
`file:line: problem` and makes the whole task unscorable (`TaskDataError`): a task is scored on all its
rows or not at all, never on a silently thinned or wrongly read set.

Prompts (docs/evals.md shows examples). Each example gets `shots` other rows of the same task as
examples, drawn by a generator seeded with (seed, task, row), so an example's prompt is the same whichever
examples run with it, on whichever rank. Pieces are joined as llm-foundry joins them:
`shot + example_delimiter + ... + question + continuation_delimiter + answer`. No torch here.
"""

import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogpt.gauntlet.tasks import (
    CHAT_CHOICE,
    CHAT_GENERATION,
    GENERATION,
    LANGUAGE_MODELING,
    MULTIPLE_CHOICE,
    SCHEMA,
    TaskSpec,
)
from nanogpt.tokenizer import ChatMessage, Tokenizer

LETTERS = string.ascii_uppercase[:10]  # chat_choice answers: as runner/data/chat.py's MMLU conversations
_PUNCTUATION = frozenset(string.punctuation)
MAX_PROBLEMS_SHOWN = 5


class TaskUnavailable(Exception):
    """The task's file is not in the bundle (e.g. HellaSwag and MMLU in the offline copy)."""


class TaskDataError(ValueError):
    """Malformed rows; `problems` holds one `file:line: problem` each. The task is skipped."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        shown = list(self.problems[:MAX_PROBLEMS_SHOWN])
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"(and {len(self.problems) - MAX_PROBLEMS_SHOWN} more malformed rows)")
        super().__init__("; ".join(shown))


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadedTask:
    spec: TaskSpec
    path: Path
    rows: tuple[dict[str, Any], ...]  # every row, validated
    lines: tuple[int, ...]  # each row's line in the file (1-based)


def task_path(spec: TaskSpec, bundle_dir: str | Path) -> Path:
    """Where the task's file is: `bundle/<category>/<file>`, or under `bundle/eval_data/` (the layout of
    nanochat's eval_bundle.zip)."""
    bundle_dir = Path(bundle_dir)
    direct = bundle_dir / spec.file
    nested = bundle_dir / "eval_data" / spec.file
    return nested if not direct.is_file() and nested.is_file() else direct


def load_task(spec: TaskSpec, bundle_dir: str | Path) -> LoadedTask:
    """Read and validate every row; TaskUnavailable without the file, TaskDataError naming each bad row."""
    path = task_path(spec, bundle_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaskUnavailable(f"{path}: not in the eval bundle") from None
    except OSError as e:
        raise TaskDataError([f"{path}: cannot read ({e})"]) from None
    rows, lines, problems = [], [], []
    # Lines end at "\n" only: str.splitlines() also breaks at U+0085 and U+2028, which occur inside
    # JSON strings (a TriviaQA question holds a U+0085). Each line is decoded apart, so that a byte that is
    # not UTF-8 is reported at its line; utf-8-sig drops the byte-order mark some editors write first.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{number}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
            continue
        if not line.strip():
            continue  # a blank line (a trailing newline) is not a row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        problem = row_problem(spec.kind, row)
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
            continue
        # As llm-foundry's `strip_data`: a string field's surrounding whitespace is the data's noise
        # (simple_arithmetic_withspaces' " -734", PIQA's "dresser\n"); the delimiters say where spaces go.
        rows.append({key: value.strip() if isinstance(value, str) else value for key, value in row.items()})
        lines.append(number)
    if not rows and not problems:
        problems.append(f"{path}: holds no rows")
    if problems:
        raise TaskDataError(problems)
    return LoadedTask(spec=spec, path=path, rows=tuple(rows), lines=tuple(lines))


def row_problem(kind: str, row: Any) -> str | None:
    """What is wrong with one row of a task of this kind, or None."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, got {type(row).__name__}"
    if kind in (MULTIPLE_CHOICE, CHAT_CHOICE):
        options_key, fields = "choices", {"query": str}
    elif kind == SCHEMA:
        options_key, fields = "context_options", {"continuation": str}
    elif kind == LANGUAGE_MODELING:
        options_key, fields = None, {"context": str, "continuation": str}
    else:
        options_key, fields = None, {"context": str, "answer": str}
    for key, expected in fields.items():
        if key not in row:
            return f"missing field {key!r}"
        if not isinstance(row[key], expected):
            return f"field {key!r} must be a string, got {json.dumps(row[key])[:60]}"
    if kind == LANGUAGE_MODELING and not row["continuation"].strip():
        return "field 'continuation' is empty: nothing to score"
    if kind in (GENERATION, CHAT_GENERATION):
        if not row["answer"].strip():
            return "field 'answer' is empty"
        aliases = row.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            return "field 'aliases' must be a list of strings"
        if not isinstance(row.get("chain_of_thought", ""), str):
            return "field 'chain_of_thought' must be a string"
    if options_key is None:
        return None
    if options_key not in row:
        return f"missing field {options_key!r}"
    options = row[options_key]
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        return f"field {options_key!r} must be a list of at least 2 strings"
    if kind == CHAT_CHOICE and len(options) > len(LETTERS):
        return f"field {options_key!r}: at most {len(LETTERS)} choices can be lettered, got {len(options)}"
    if "gold" not in row:
        return "missing field 'gold'"
    gold = row["gold"]
    if not isinstance(gold, int) or isinstance(gold, bool):
        return f"field 'gold' must be an integer, got {json.dumps(gold)[:60]}"
    if not 0 <= gold < len(options):
        return f"gold {gold} is out of range for {len(options)} {options_key}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Which examples, with which shots


def select_examples(num_rows: int, max_examples: int | None, *, seed: int, task: str) -> list[int]:
    """The rows to score: all, or `max_examples` of them drawn once with a fixed seed, in file order."""
    if max_examples is None or max_examples >= num_rows:
        return list(range(num_rows))
    return sorted(random.Random(f"{seed}/{task}/subset").sample(range(num_rows), max_examples))


def fewshot_indices(
    num_rows: int, shots: int, index: int, *, seed: int, task: str, same: Sequence[int] = ()
) -> list[int]:
    """`shots` rows other than `index` and the rows `same` (those asking the same question: a shot must not
    hand over the answer), all of the others when there are fewer; the same for a given seed, task and row
    whatever else is evaluated."""
    excluded = sorted({index, *same})
    shots = min(shots, num_rows - len(excluded))
    if shots <= 0:
        return []
    drawn = random.Random(f"{seed}/{task}/{index}").sample(range(num_rows - len(excluded)), shots)
    out = []
    for i in drawn:  # the i-th row that is not excluded
        for skipped in excluded:
            i += i >= skipped
        out.append(i)
    return out


def _question(kind: str, row: dict[str, Any]) -> str:
    """What a row asks, to find the rows that ask the same (simple_arithmetic and SIQA repeat some)."""
    if kind in (MULTIPLE_CHOICE, CHAT_CHOICE):
        return row["query"]
    if kind == SCHEMA:
        return json.dumps([row["context_options"], row["continuation"]])
    return row["context"]


# ---------------------------------------------------------------------------------------------------------
# Text: what the model reads


@dataclass(frozen=True, kw_only=True, slots=True)
class ChoiceText:
    """Options scored by the log-likelihood of each continuation after its context (a language-modeling
    task has one option, scored by whether greedy decoding reproduces it)."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationText:
    prompt: str
    answers: tuple[str, ...]  # the answer and its aliases


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatText:
    """A user message; chat_choice scores the letters as the assistant's first token, chat_generation
    generates the reply."""

    user: str
    letters: tuple[str, ...] = ()
    gold: int = 0
    answers: tuple[str, ...] = ()


def render(spec: TaskSpec, rows: Sequence[dict[str, Any]], index: int, shots: Sequence[int]):
    """The text of example `index` with the rows `shots` as its few-shot examples."""
    row = rows[index]
    cd = spec.continuation_delimiter
    prefix = "".join(_shot(spec, rows[i]) + spec.example_delimiter for i in shots)
    if spec.kind == MULTIPLE_CHOICE:
        context = f"{prefix}{row['query']}{cd}"
        return ChoiceText(
            contexts=(context,) * len(row["choices"]), continuations=tuple(row["choices"]), gold=row["gold"]
        )
    if spec.kind == SCHEMA:
        contexts = tuple(f"{prefix}{option}{cd}" for option in row["context_options"])
        return ChoiceText(
            contexts=contexts, continuations=(row["continuation"],) * len(contexts), gold=row["gold"]
        )
    if spec.kind == LANGUAGE_MODELING:
        return ChoiceText(
            contexts=(f"{prefix}{row['context']}{cd}",), continuations=(row["continuation"],), gold=0
        )
    if spec.kind == CHAT_CHOICE:
        letters = LETTERS[: len(row["choices"])]
        return ChatText(
            user=chat_choice_prompt(row["query"], row["choices"]), letters=tuple(letters), gold=row["gold"]
        )
    answers = (row["answer"], *row.get("aliases", ()))
    if spec.kind == GENERATION:
        # The model continues after the delimiter: a trailing space is left for it to produce (GPT-2 style
        # tokenizers put the space in front of the next word).
        prompt = f"{prefix}{spec.question_prelimiter}{row['context']}{cd}".rstrip(" ")
        return GenerationText(prompt=prompt, answers=answers)
    return ChatText(user=row["context"], answers=answers)


def _shot(spec: TaskSpec, row: dict[str, Any]) -> str:
    """A solved example."""
    cd = spec.continuation_delimiter
    if spec.kind == MULTIPLE_CHOICE:
        return f"{row['query']}{cd}{row['choices'][row['gold']]}"
    if spec.kind == SCHEMA:
        return f"{row['context_options'][row['gold']]}{cd}{row['continuation']}"
    if spec.kind == LANGUAGE_MODELING:
        return f"{row['context']}{cd}{row['continuation']}"
    answer = row["answer"]
    if spec.cot_delimiter and row.get("chain_of_thought"):
        answer = f"{row['chain_of_thought'].strip()} {spec.cot_delimiter}{answer}"
    joint = cd if cd[-1:].isspace() else cd + " "
    return f"{spec.question_prelimiter}{row['context']}{joint}{answer}"


def chat_choice_prompt(question: str, choices: Sequence[str]) -> str:
    """The user message of a lettered question, exactly as the mid-training data asks MMLU questions
    (runner/data/chat.py, `mmlu_messages`), so that a mid-trained model meets the format it learned."""
    question = question.removeprefix("Question: ").strip()
    lettered = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question}\n\n{lettered}\n\nAnswer with the letter of the correct choice."


# ---------------------------------------------------------------------------------------------------------
# Tokens: what the model scores


@dataclass(frozen=True, kw_only=True, slots=True)
class ChoiceItem:
    """One example: for each option the context tokens and the continuation tokens that are scored."""

    index: int  # the row's index in the task's rows
    contexts: tuple[tuple[int, ...], ...]
    continuations: tuple[tuple[int, ...], ...]
    gold: int


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationItem:
    index: int
    prompt: tuple[int, ...]
    answers: tuple[str, ...]


def build_items(
    task: LoadedTask, tokenizer: Tokenizer, *, seed: int = 0, max_examples: int | None = None
) -> list[ChoiceItem | GenerationItem]:
    """The tokenized examples of a task (all, or `max_examples` chosen with the seed).

    Every sequence starts with the end-of-text token, as every document does in training. A context's
    trailing spaces move to the front of its continuation before encoding (" Paris", not " " + "Paris"),
    which is how BPE tokenizers split running text.
    """
    spec, rows = task.spec, task.rows
    if spec.is_chat and not tokenizer.has_chat_tokens:
        raise TaskUnavailable(f"{spec.name}: the model's tokenizer {tokenizer.name} has no chat tokens")
    bos = (tokenizer.eot_id,)
    items: list[ChoiceItem | GenerationItem] = []
    asked: dict[str, list[int]] = {}  # question -> its rows
    for i, row in enumerate(rows):
        asked.setdefault(_question(spec.kind, row), []).append(i)
    for index in select_examples(len(rows), max_examples, seed=seed, task=spec.name):
        same = asked[_question(spec.kind, rows[index])]
        shots = fewshot_indices(len(rows), spec.shots, index, seed=seed, task=spec.name, same=same)
        text = render(spec, rows, index, shots)
        if isinstance(text, ChoiceText):
            contexts, continuations, encoded = [], [], {}
            for context, continuation in zip(text.contexts, text.continuations, strict=True):
                stripped = context.rstrip(" ")
                if stripped not in encoded:  # a multiple-choice item's options share one context
                    encoded[stripped] = bos + tuple(tokenizer.encode(stripped))
                contexts.append(encoded[stripped])
                continuations.append(tuple(tokenizer.encode(context[len(stripped) :] + continuation)))
            items.append(
                ChoiceItem(
                    index=index, contexts=tuple(contexts), continuations=tuple(continuations), gold=text.gold
                )
            )
        elif isinstance(text, GenerationText):
            items.append(
                GenerationItem(
                    index=index, prompt=bos + tuple(tokenizer.encode(text.prompt)), answers=text.answers
                )
            )
        else:
            prompt = tuple(tokenizer.encode_chat_prompt([ChatMessage(role="user", content=text.user)]))
            if spec.kind == CHAT_GENERATION:
                items.append(GenerationItem(index=index, prompt=prompt, answers=text.answers))
            else:
                letters = tuple(tuple(tokenizer.encode(letter)) for letter in text.letters)
                items.append(
                    ChoiceItem(
                        index=index, contexts=(prompt,) * len(letters), continuations=letters, gold=text.gold
                    )
                )
    return items


# ---------------------------------------------------------------------------------------------------------
# Generated text -> right or wrong


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def final_answer(spec: TaskSpec, output: str) -> str:
    """The part of a generation that is the answer: cut at the first stop string, then (chain-of-thought
    tasks) the text after the last cot delimiter."""
    cut = min((i for s in spec.stop_strings if (i := output.find(s)) >= 0), default=len(output))
    output = output[:cut]
    if spec.cot_delimiter and spec.cot_delimiter in output:
        output = output.rsplit(spec.cot_delimiter, 1)[-1]
    return output


def is_correct(spec: TaskSpec, output: str, answers: Sequence[str]) -> bool:
    """Whether a generation answers right. Generation tasks: the answer (normalized when the task says so,
    else stripped) starts with one of the labels at a word boundary, so "18." matches 18 but "180" and
    "18.5" do not (llm-foundry's plain `startswith` would accept them). chat_generation (GSM8K): the
    number after the last "####" (the mid-training data's form), else after "The answer is", else the last
    number, equals the answer's."""
    if spec.kind == CHAT_GENERATION:
        got, want = _number(output), _number(answers[0], last=False)
        return got is not None and got == want
    answer = final_answer(spec, output)
    clean = normalize_answer if spec.normalize else str.strip
    got = clean(answer)
    return any(_starts_with_word(got, want) for label in answers if (want := clean(label)))


# A number's own continuation: "1.5" or "1,000" does not answer 1 ("1.0" and "1." do).
_MORE_DIGITS = re.compile(r"[.,]\d*[1-9]|,\d")


def _starts_with_word(text: str, label: str) -> bool:
    """`text` starts with `label`, followed by nothing, or by neither a letter nor a digit, nor (after a
    number) the rest of a longer number."""
    if not text.startswith(label):
        return False
    rest = text[len(label) :]
    if not rest:
        return True
    return not rest[0].isalnum() and not (label[-1].isdigit() and _MORE_DIGITS.match(rest))


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str, *, last: bool = True) -> float | None:
    for marker in ("####", "The answer is"):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
            last = False
            break
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float((found[-1] if last else found[0]).replace(",", ""))
    except ValueError:
        return None
