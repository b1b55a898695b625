"""The gauntlet's tasks and presets: what each task is, where its data lives, how it is prompted and scored.

The core tasks are the Mosaic Eval Gauntlet v0.3 (llm-foundry `scripts/eval/yamls/tasks_v0.3.yaml` and
`eval_gauntlet_v0.3.yaml`): their type, number of few-shot examples, random baseline, category, file and
delimiters are the gauntlet's. A centered score is (accuracy - baseline) / (1 - baseline); a category's
score is the mean of its tasks' centered scores, and core_average the mean of the five categories
(nanogpt/gauntlet/aggregate.py). No torch here: the trainer's config checks preset names with `resolve`.

    specs, max_examples = resolve("quick")       # the tasks of a preset and its default example cap
    resolve("arc_easy,copa")                       # a named list
"""

import difflib
from dataclasses import dataclass

MULTIPLE_CHOICE = "multiple_choice"
SCHEMA = "schema"
LANGUAGE_MODELING = "language_modeling"
GENERATION = "generation_task_with_answers"
CHAT_CHOICE = "chat_choice"  # a multiple-choice question in the chat template, answered with a letter
CHAT_GENERATION = "chat_generation"  # a question in the chat template, answered by generation
TASK_TYPES = (MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELING, GENERATION, CHAT_CHOICE, CHAT_GENERATION)
CHAT_TYPES = (CHAT_CHOICE, CHAT_GENERATION)

CATEGORIES = (
    "world_knowledge",
    "commonsense_reasoning",
    "language_understanding",
    "symbolic_problem_solving",
    "reading_comprehension",
)
CHAT_CATEGORY = "chat"  # ChatCORE: the chat tasks' own average, apart from core_average

ANSWER_DELIMITER = "\nAnswer: "  # the gauntlet's continuation delimiter for QA-style tasks
COT_DELIMITER = "The answer is "  # gsm8k and svamp: the answer follows the chain of thought


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSpec:
    """One task. Prompts are built as llm-foundry builds them (docs/evals.md has the exact rendering)."""

    name: str
    kind: str  # one of TASK_TYPES
    shots: int  # few-shot examples drawn from the task's own rows (never the example itself)
    baseline: float  # the accuracy of random guessing
    category: str  # one of CATEGORIES (core), CHAT_CATEGORY, or the bundle folder of an extra task
    file: str  # path inside the eval bundle
    core: bool = False  # part of core_average
    continuation_delimiter: str = " "  # between a question and its answer
    example_delimiter: str = "\n"  # between few-shot examples
    question_prelimiter: str = ""  # before each question (generation tasks)
    cot_delimiter: str = ""  # generation: the answer is the text after its last occurrence
    stop_strings: tuple[str, ...] = ()  # generation: the output ends at the first of these
    normalize: bool = False  # generation: compare SQuAD-normalized text (lower case, no punctuation/articles)
    max_new_tokens: int = 0  # generation: the most tokens generated per example

    def __post_init__(self) -> None:
        if self.kind not in TASK_TYPES:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is not one of {TASK_TYPES}")
        if self.shots < 0 or not 0.0 <= self.baseline < 1.0:
            raise ValueError(f"task {self.name}: shots must be >= 0 and baseline in [0, 1)")
        if self.kind in (GENERATION, CHAT_GENERATION) and self.max_new_tokens < 1:
            raise ValueError(f"task {self.name}: a generation task needs max_new_tokens >= 1")
        if self.core and self.category not in CATEGORIES:
            raise ValueError(f"task {self.name}: a core task's category must be one of {CATEGORIES}")

    @property
    def is_chat(self) -> bool:
        return self.kind in CHAT_TYPES


def _core(category: str, name: str, kind: str, shots: int, baseline: float, file: str = "", **more):
    """A core task; `file` is the file's name in the category's folder (default: the task's name)."""
    path = f"{category}/{file or name + '.jsonl'}"
    return TaskSpec(
        name=name, kind=kind, shots=shots, baseline=baseline, category=category, file=path, core=True, **more
    )


_WK, _CR, _LU, _SPS, _RC = CATEGORIES
_MC, _LM, _GEN = MULTIPLE_CHOICE, LANGUAGE_MODELING, GENERATION
_ANSWER = {"continuation_delimiter": ANSWER_DELIMITER}
# gsm8k and svamp: "Q... \n\nA: <reasoning> The answer is N.", cut at a blank line or a new question.
_COT = {"continuation_delimiter": "\n\nA:", "cot_delimiter": COT_DELIMITER}
_COT["stop_strings"] = ("\n\n", "Question:")
_COT_Q = {**_COT, "question_prelimiter": "Question: "}

# Gauntlet v0.3: 31 tasks (26 in the offline bundle), in the category order of its report.
CORE_TASKS: tuple[TaskSpec, ...] = (
    _core(_WK, "jeopardy", _LM, 3, 0.0, "jeopardy_all.jsonl", **_ANSWER),
    _core(_WK, "bigbench_qa_wikidata", _LM, 3, 0.0),
    _core(_WK, "arc_easy", _MC, 3, 0.25, **_ANSWER),
    _core(_WK, "arc_challenge", _MC, 3, 0.25, **_ANSWER),
    _core(_WK, "mmlu", _MC, 5, 0.25, **_ANSWER),
    # The answer is one line: stopping at the newline only saves time (a match is a prefix of the output).
    _core(_WK, "triviaqa_sm_sub", _GEN, 3, 0.0, normalize=True, stop_strings=("\n",), max_new_tokens=32),
    _core(_CR, "copa", _MC, 0, 0.5),
    _core(_CR, "siqa", _MC, 3, 0.5),
    _core(_CR, "commonsense_qa", _MC, 0, 0.25),
    _core(_CR, "piqa", _MC, 0, 0.5, **_ANSWER),
    _core(_CR, "openbook_qa", _MC, 10, 0.25),
    _core(_CR, "bigbench_strange_stories", _MC, 0, 0.5),
    _core(_CR, "bigbench_strategy_qa", _MC, 0, 0.5),
    _core(_LU, "lambada_openai", _LM, 0, 0.0),
    _core(_LU, "hellaswag", _MC, 0, 0.25),
    _core(_LU, "winograd", SCHEMA, 3, 0.5, "winograd_wsc.jsonl"),
    _core(_LU, "winogrande", SCHEMA, 5, 0.5),
    _core(_SPS, "bigbench_dyck_languages", _LM, 5, 0.0),
    _core(_SPS, "agi_eval_lsat_ar", _MC, 5, 0.25),
    _core(_SPS, "bigbench_operators", _LM, 3, 0.0),
    _core(_SPS, "simple_arithmetic_nospaces", _LM, 5, 0.0),
    _core(_SPS, "simple_arithmetic_withspaces", _LM, 5, 0.0),
    _core(_SPS, "bigbench_elementary_math_qa", _MC, 1, 0.25),
    # The file holds 8 worked examples before each question, hence 0 shots of our own.
    _core(_SPS, "gsm8k", _GEN, 0, 0.0, "gsm8k_prepended_8shot.jsonl", **_COT, max_new_tokens=256),
    _core(_SPS, "svamp", _GEN, 5, 0.0, **_COT_Q, max_new_tokens=128),
    _core(_RC, "squad", _LM, 3, 0.0),
    _core(_RC, "agi_eval_lsat_rc", _MC, 5, 0.25),
    _core(_RC, "agi_eval_lsat_lr", _MC, 5, 0.25),
    _core(_RC, "coqa", _LM, 0, 0.0),
    _core(_RC, "boolq", _MC, 0, 0.5, **_ANSWER),
    _core(_RC, "agi_eval_sat_en", _MC, 5, 0.25),
)


def _extra(category: str, name: str, kind: str, shots: int, baseline: float, **more):
    return TaskSpec(
        name=name,
        kind=kind,
        shots=shots,
        baseline=baseline,
        category=category,
        file=f"{category}/{name}.jsonl",
        **more,
    )


# Other tasks of the bundle in the same formats, by name only (never in core_average). Their settings are
# ours: 3 shots (0 where the rows are long), baseline 1 / number of choices (every row of each file has the
# same number).
EXTRA_TASKS: tuple[TaskSpec, ...] = (
    _extra(_CR, "bigbench_novel_concepts", _MC, 3, 0.25),
    _extra(_LU, "bigbench_conceptual_combinations", _MC, 3, 0.25),
    _extra(_LU, "bigbench_language_identification", _MC, 3, 0.25),
    _extra(_LU, "bigbench_conlang_translation", _LM, 0, 0.0),
    _extra(_RC, "bigbench_understanding_fables", _MC, 0, 0.25),
    _extra(_RC, "pubmed_qa_labeled", _LM, 0, 0.0),
    _extra(_SPS, "bigbench_cs_algorithms", _LM, 3, 0.0),
    _extra(_SPS, "bigbench_logical_deduction", _MC, 3, 0.25),
    _extra(_SPS, "bigbench_repeat_copy_logic", _LM, 3, 0.0),
    _extra(_SPS, "bigbench_simple_arithmetic", _LM, 3, 0.0),
    _extra(_SPS, "logi_qa", _MC, 0, 0.25, **_ANSWER),
    _extra(_SPS, "math_qa", _MC, 3, 0.25, **_ANSWER),
    _extra(_SPS, "agi_eval_sat_math", _GEN, 3, 0.0, **_COT_Q, max_new_tokens=256),
    _extra(_SPS, "aqua", _GEN, 3, 0.0, **_COT_Q, max_new_tokens=256),
    _extra(_WK, "bigbench_misconceptions", _MC, 3, 0.5),
    _extra(_WK, "bigbench_movie_recommendation", _MC, 3, 0.25),
)


def _chat(name: str, kind: str, baseline: float, file: str, **more) -> TaskSpec:
    category = CHAT_CATEGORY
    return TaskSpec(name=name, kind=kind, shots=0, baseline=baseline, category=category, file=file, **more)


# ChatCORE-style (nanochat `chat_eval`): for models after mid-training, in the chat template the mid-training
# data uses (runner/data/chat.py): a lettered question answered with the letter; GSM8K answered in words,
# its number after "####".
CHAT_TASKS: tuple[TaskSpec, ...] = (
    _chat("chat_arc_easy", CHAT_CHOICE, 0.25, "world_knowledge/arc_easy.jsonl"),
    _chat("chat_arc_challenge", CHAT_CHOICE, 0.25, "world_knowledge/arc_challenge.jsonl"),
    _chat("chat_mmlu", CHAT_CHOICE, 0.25, "world_knowledge/mmlu.jsonl"),
    _chat("chat_gsm8k", CHAT_GENERATION, 0.0, "symbolic_problem_solving/gsm8k.jsonl", max_new_tokens=256),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (*CORE_TASKS, *EXTRA_TASKS, *CHAT_TASKS)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    name: str
    tasks: tuple[str, ...]
    max_examples: int | None  # the default cap on examples per task; None: all of them
    description: str


# quick: one or two cheap tasks per category, 100 examples each, for use during training (minutes on a
# CPU for a small model, seconds on a GPU). Its core_average is an estimate of the core one, not the same.
PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="core",
            tasks=tuple(spec.name for spec in CORE_TASKS),
            max_examples=None,
            description="the Eval Gauntlet v0.3: 31 tasks in 5 categories, every example",
        ),
        Preset(
            name="quick",
            tasks=(
                "arc_easy",
                "jeopardy",
                "copa",
                "piqa",
                "lambada_openai",
                "winograd",
                "simple_arithmetic_nospaces",
                "bigbench_operators",
                "boolq",
            ),
            max_examples=100,
            description="9 core tasks (every category), 100 examples each: for use during training",
        ),
        Preset(
            name="chat",
            tasks=tuple(spec.name for spec in CHAT_TASKS),
            max_examples=None,
            description="ARC, MMLU and GSM8K in the chat template (ChatCORE-style), for mid-trained models",
        ),
    )
}


def resolve(preset: str) -> tuple[tuple[TaskSpec, ...], int | None]:
    """The tasks of a preset name ("core", "quick", "chat") or of a comma-separated list of task names,
    and the preset's default example cap (None for a list). ValueError names an unknown one."""
    if not isinstance(preset, str) or not preset.strip():
        raise ValueError("the preset must be a preset name or a comma-separated list of task names")
    if preset in PRESETS:
        found = PRESETS[preset]
        return tuple(TASKS[name] for name in found.tasks), found.max_examples
    names = [name.strip() for name in preset.split(",") if name.strip()]
    if not names:
        raise ValueError(f"the preset {preset!r} names no task; presets: {', '.join(PRESETS)}")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*PRESETS, *TASKS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; presets: {', '.join(PRESETS)}"
        raise ValueError(f"unknown task {unknown[0]!r}{hint}")
    if len(set(names)) != len(names):
        raise ValueError(f"a task is listed twice in {preset!r}")
    return tuple(TASKS[name] for name in names), None


def result_name(task: str, max_examples: int | None) -> str:
    """The name a task's score is stored under: the task's, with `@N` when only N examples per task were
    scored (quick's scores are not the full task's and must not share its row in the store)."""
    return task if max_examples is None else f"{task}@{max_examples}"


# Averages exist for the named presets only: a category's or core_average's value depends on which tasks it
# averages, so each preset's carry its name (core's none), and a list of task names gets per-task scores.
_AVERAGE_PREFIX = {"core": "", "quick": "quick/", "chat": ""}


def has_averages(preset: str) -> bool:
    return preset in _AVERAGE_PREFIX


def average_name(preset: str, average: str, max_examples: int | None) -> str:
    """The name an average is stored under: `core_average`, `category/world_knowledge` for core;
    `quick/core_average@100` for quick; `chatcore_average` for chat; `@N` as for a task."""
    return result_name(_AVERAGE_PREFIX[preset] + average, max_examples)
