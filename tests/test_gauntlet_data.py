"""The gauntlet's data: the task table against the bundle's README, every real file parses, prompts are built
exactly and deterministically, malformed rows are named by file and line and skip their task, and the
bundle is fetched from a URL (file:// here: these machines have no network)."""

import json
import re
import zipfile

import pytest
from gauntlet_fixtures import REAL_BUNDLE, TINY_TASKS, write_bundle
from trainer_fixtures import byte_tokenizer

from nanogpt.gauntlet.bundle import BundleError, fetch_bundle, has_file
from nanogpt.gauntlet.data import (
    ChoiceText,
    GenerationText,
    TaskDataError,
    TaskUnavailable,
    build_items,
    chat_choice_prompt,
    fewshot_indices,
    load_task,
    render,
    select_examples,
)
from nanogpt.gauntlet.evaluate import prepare
from nanogpt.gauntlet.tasks import (
    ANSWER_DELIMITER,
    CORE_TASKS,
    PRESETS,
    TASKS,
    average_name,
    has_averages,
    resolve,
    result_name,
)

needs_real_bundle = pytest.mark.skipif(
    not (REAL_BUNDLE / "README.md").is_file(),
    reason=f"the offline eval bundle is not at {REAL_BUNDLE} (set NANOSTUDY_SHARED to the folder holding it)",
)
KINDS = {"mc": "multiple_choice", "lm": "language_modeling"}


# --- the task table --------------------------------------------------------------------------------------


@needs_real_bundle
def test_the_task_table_states_the_gauntlet_facts_the_bundle_readme_lists():
    readme = (REAL_BUNDLE / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert len(rows) == 26
    for line in rows:
        name, kind, shots, baseline, category, file = (cell.strip() for cell in line.strip("|").split("|"))
        spec = TASKS[name]
        assert spec.core and spec.kind == kind and spec.category == category, name
        assert spec.shots == int(shots.split()[0]) and spec.baseline == float(baseline), name
        assert spec.file == file.split()[0], name
        if 'delimiter "\\nAnswer: "' in file:
            assert spec.continuation_delimiter == ANSWER_DELIMITER, name
        if "(normalize)" in file:
            assert spec.normalize, name
        if 'cot delimiter "The answer is "' in file or "as gsm8k" in file:
            assert spec.cot_delimiter == "The answer is " and spec.stop_strings == ("\n\n", "Question:"), name
    missing = re.search(r"Missing here but part of v0.3: (.*?)\.\n", readme, re.S).group(1)
    for name, kind, shots, baseline, category in re.findall(
        r"(\w+) \((\w+), (\d+), ([\d.]+), (\w+)\)", missing
    ):
        spec = TASKS[name]
        assert (spec.kind, spec.shots, spec.baseline, spec.category) == (
            KINDS[kind],
            int(shots),
            float(baseline),
            category,
        )
    assert len(CORE_TASKS) == 31 and len(PRESETS["core"].tasks) == 31


@needs_real_bundle
def test_every_file_of_the_real_bundle_that_a_task_names_parses():
    tokenizer = byte_tokenizer().with_chat_tokens()
    present = [spec for spec in TASKS.values() if has_file(REAL_BUNDLE, spec)]
    assert len(present) >= 26 + 16 + 3  # the core tasks here, the extras and three chat tasks
    for spec in present:
        loaded = load_task(spec, REAL_BUNDLE)  # raises on any malformed row
        assert loaded.rows, spec.name
        build_items(loaded, tokenizer, max_examples=3)  # a few rendered and tokenized
    for name in ("hellaswag", "mmlu", "squad", "coqa", "bigbench_elementary_math_qa"):
        with pytest.raises(TaskUnavailable):
            load_task(TASKS[name], REAL_BUNDLE)


def test_presets_and_named_lists_resolve_and_unknown_names_are_refused():
    specs, cap = resolve("quick")
    assert cap == 100 and {s.category for s in specs} >= {"world_knowledge", "reading_comprehension"}
    assert {s.category for s in specs if s.core} == {s.category for s in CORE_TASKS}
    specs, cap = resolve("arc_easy, copa")
    assert [s.name for s in specs] == ["arc_easy", "copa"] and cap is None
    assert [s.name for s in resolve("chat")[0]] == [
        "chat_arc_easy",
        "chat_arc_challenge",
        "chat_mmlu",
        "chat_gsm8k",
    ]
    with pytest.raises(ValueError, match="did you mean 'arc_easy'"):
        resolve("arc_esay")
    with pytest.raises(ValueError, match="twice"):
        resolve("copa,copa")
    with pytest.raises(ValueError, match="names no task"):
        resolve(" , ")  # was an empty list: "nothing scored", and success
    assert result_name("copa", None) == "copa" and result_name("copa", 100) == "copa@100"
    assert average_name("core", "core_average", None) == "core_average"
    assert average_name("core", "category/world_knowledge", 50) == "category/world_knowledge@50"
    assert average_name("quick", "core_average", 100) == "quick/core_average@100"
    assert average_name("chat", "chatcore_average", None) == "chatcore_average"
    assert not has_averages("arc_easy,copa") and has_averages("quick")


# --- few-shot prompts ------------------------------------------------------------------------------------


def test_few_shot_examples_are_the_tasks_own_other_rows_fixed_by_the_seed():
    first = [fewshot_indices(50, 5, i, seed=0, task="arc_easy") for i in range(50)]
    assert first == [fewshot_indices(50, 5, i, seed=0, task="arc_easy") for i in range(50)]
    assert all(i not in shots and len(set(shots)) == 5 for i, shots in enumerate(first))
    assert first != [fewshot_indices(50, 5, i, seed=1, task="arc_easy") for i in range(50)]
    assert first != [fewshot_indices(50, 5, i, seed=0, task="copa") for i in range(50)]
    assert fewshot_indices(3, 5, 1, seed=0, task="t") in ([0, 2], [2, 0])  # fewer rows than shots: all others
    subset = select_examples(1000, 10, seed=0, task="lambada_openai")
    assert subset == sorted(subset) and len(set(subset)) == 10
    assert subset == select_examples(1000, 10, seed=0, task="lambada_openai")
    assert select_examples(5, 10, seed=0, task="x") == [0, 1, 2, 3, 4]


def test_a_row_asking_the_same_question_is_never_a_shot_of_it(tmp_path):
    # simple_arithmetic, SIQA and ARC repeat a few questions: such a twin drawn as a shot gave the answer.
    rows = [{"context": "1+1=", "continuation": "2"}] * 2 + [
        {"context": f"{i}+0=", "continuation": str(i)} for i in range(3, 9)
    ]
    bundle = write_bundle(tmp_path, {"simple_arithmetic_nospaces": rows})
    items = build_items(load_task(TASKS["simple_arithmetic_nospaces"], bundle), byte_tokenizer())
    for item in items[:2]:
        prompt = bytes(item.contexts[0][1:]).decode()
        assert prompt.endswith("\n1+1=") and prompt.count("1+1=") == 1, prompt
        assert prompt.count("\n") == 5  # still 5 shots, of the other questions
    assert fewshot_indices(4, 5, 0, seed=0, task="t", same=[0, 2]) in ([1, 3], [3, 1])
    # Without twins the draws are what they were (the docs' arc_easy example keeps its shots).
    assert [fewshot_indices(50, 5, i, seed=0, task="a", same=[i]) for i in range(50)] == [
        fewshot_indices(50, 5, i, seed=0, task="a") for i in range(50)
    ]


def test_prompts_are_rendered_as_the_gauntlet_joins_them():
    rows = [{"query": f"Question: q{i}?", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(4)]
    shots = fewshot_indices(4, 3, 0, seed=0, task="arc_easy")
    text = render(TASKS["arc_easy"], rows, 0, shots)
    prefix = "".join(f"Question: q{i}?\nAnswer: {rows[i]['choices'][i % 2]}\n" for i in shots)
    assert text == ChoiceText(
        contexts=(prefix + "Question: q0?\nAnswer: ",) * 2, continuations=("a0", "b0"), gold=0
    )
    svamp = [{"context": f"c{i}", "chain_of_thought": f"( {i} + 1 )", "answer": str(i + 1)} for i in range(3)]
    text = render(TASKS["svamp"], svamp, 2, [1, 0])
    expected = "Question: c1\n\nA: ( 1 + 1 ) The answer is 2\nQuestion: c0\n\nA: ( 0 + 1 ) The answer is 1\n"
    assert text == GenerationText(prompt=expected + "Question: c2\n\nA:", answers=("3",))
    schema = [{"context_options": ["x said", "y said"], "continuation": "so.", "gold": 1}]
    text = render(TASKS["winograd"], schema * 2, 0, [1])
    assert text.contexts == ("y said so.\nx said ", "y said so.\ny said ") and text.gold == 1


def test_items_start_with_end_of_text_and_a_contexts_trailing_space_goes_to_its_continuation(tmp_path):
    tokenizer = byte_tokenizer()
    bundle = write_bundle(tmp_path, {"copa": TINY_TASKS["copa"]})
    items = build_items(load_task(TASKS["copa"], bundle), tokenizer)
    first = items[0]
    assert first.contexts[0] == (tokenizer.eot_id, *b"the cat sees")
    assert first.continuations == (tuple(b" the ball."), tuple(b" a dog."))
    assert first.contexts[0] is first.contexts[1]  # one encoding of the shared context


def test_a_fields_own_surrounding_whitespace_is_stripped_as_llm_foundry_does(tmp_path):
    # simple_arithmetic_withspaces' continuations start with a space, PIQA's queries end with a newline,
    # Jeopardy has answers ending in one: with the delimiter's space they made "=  2" and "\n\nAnswer:".
    tokenizer = byte_tokenizer()
    arithmetic = [{"context": "1 + 1 =", "continuation": " 2"}, {"context": "2 + 2 =", "continuation": " 4 "}]
    piqa = [{"query": "Question: dresser\n", "choices": ["a b", "c"], "gold": 0}]
    bundle = write_bundle(tmp_path, {"simple_arithmetic_withspaces": arithmetic, "piqa": piqa})
    items = build_items(load_task(TASKS["simple_arithmetic_withspaces"], bundle), tokenizer)
    assert items[0].contexts == ((tokenizer.eot_id, *b"2 + 2 = 4\n1 + 1 ="),)
    assert items[0].continuations == (tuple(b" 2"),) and items[1].continuations == (tuple(b" 4"),)
    (item,) = build_items(load_task(TASKS["piqa"], bundle), tokenizer)
    assert item.contexts[0] == (tokenizer.eot_id, *b"Question: dresser\nAnswer:")


def test_the_chat_prompt_is_the_one_mid_training_asks_mmlu_questions_with():
    from runner.data.chat import mmlu_messages

    question, choices = "What is 2 mod 4?", ["0", "1", "2", "3"]
    user, _ = mmlu_messages({"question": question, "choices": choices, "answer": 2}, where="x")
    assert chat_choice_prompt(f"Question: {question}", choices) == user.content


# --- bad input -------------------------------------------------------------------------------------------


def test_malformed_rows_are_named_by_file_and_line_and_their_task_is_skipped(tmp_path):
    good = TINY_TASKS["copa"][0]
    bad_rows = [
        good,
        {"query": "q", "choices": ["a", "b"]},  # line 2: no gold
        {"query": "q", "choices": ["a", "b"], "gold": 2},  # line 3: out of range
        "{not json",  # line 4
        {"query": "q", "choices": ["a"], "gold": 0},  # line 5: one choice
        {"query": "q", "choices": ["a", "b"], "gold": True},  # line 6: a boolean is not an index
        good,
    ]
    bundle = write_bundle(tmp_path, {"copa": bad_rows, "lambada_openai": TINY_TASKS["lambada_openai"]})
    with pytest.raises(TaskDataError) as caught:
        load_task(TASKS["copa"], bundle)
    path = bundle / "commonsense_reasoning" / "copa.jsonl"
    assert caught.value.problems == (
        f"{path}:2: missing field 'gold'",
        f"{path}:3: gold 2 is out of range for 2 choices",
        f"{path}:4: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:5: field 'choices' must be a list of at least 2 strings",
        f"{path}:6: field 'gold' must be an integer, got true",
    )
    gauntlet = prepare("copa,lambada_openai", bundle, byte_tokenizer())
    assert [task.spec.name for task in gauntlet.tasks] == ["lambada_openai"]  # copa is not scored at all
    assert f"{path}:2: missing field 'gold'" in gauntlet.skipped["copa"]
    assert any(f"{path}:3" in warning for warning in gauntlet.warnings)


def test_a_byte_that_is_not_utf8_is_named_at_its_line_and_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / TASKS["copa"].file
    path.parent.mkdir(parents=True)
    good = json.dumps(TINY_TASKS["copa"][0]).encode()
    path.write_bytes(good + b"\n" + good.replace(b"cat", b"c\xfft") + b"\n")
    with pytest.raises(TaskDataError) as caught:
        load_task(TASKS["copa"], tmp_path)
    assert caught.value.problems == (f"{path}:2: not UTF-8 (byte 0xff at column 17)",)
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good + b"\n")  # as some editors save it
    assert load_task(TASKS["copa"], tmp_path).rows == (TINY_TASKS["copa"][0],) * 2


@pytest.mark.parametrize(
    ("kind_task", "row", "problem"),
    [
        ("winograd", {"context_options": ["a", "b"], "gold": 0}, "missing field 'continuation'"),
        (
            "lambada_openai",
            {"context": "a", "continuation": 3},
            "field 'continuation' must be a string, got 3",
        ),
        ("lambada_openai", {"context": "a", "continuation": " "}, "field 'continuation' is empty"),
        ("svamp", {"context": "a"}, "missing field 'answer'"),
        (
            "triviaqa_sm_sub",
            {"context": "a", "answer": "b", "aliases": "c"},
            "'aliases' must be a list of strings",
        ),
        ("copa", ["a"], "a row must be a JSON object, got list"),
    ],
)
def test_each_kind_checks_its_fields(tmp_path, kind_task, row, problem):
    bundle = write_bundle(tmp_path, {kind_task: [row]})
    with pytest.raises(TaskDataError, match=re.escape(problem)):
        load_task(TASKS[kind_task], bundle)


def test_a_missing_file_is_unavailable_and_a_missing_bundle_an_error(tmp_path):
    bundle = write_bundle(tmp_path / "b", {"copa": TINY_TASKS["copa"]})
    gauntlet = prepare("copa,hellaswag", bundle, byte_tokenizer())
    assert gauntlet.unavailable == {"hellaswag"} and "not in the eval bundle" in gauntlet.skipped["hellaswag"]
    with pytest.raises(BundleError, match="no eval bundle here"):
        prepare("copa", tmp_path / "nowhere", byte_tokenizer())


# --- fetching the bundle ---------------------------------------------------------------------------------


def test_the_bundle_is_fetched_file_by_file_from_a_base_url(tmp_path):
    source = write_bundle(
        tmp_path / "remote", {"copa": TINY_TASKS["copa"], "winograd": TINY_TASKS["winograd"]}
    )
    local = write_bundle(tmp_path / "local", {"winograd": TINY_TASKS["winograd"]})
    specs = [TASKS[name] for name in ("copa", "winograd", "hellaswag")]
    report = fetch_bundle(local, specs, source=source.as_uri())
    assert report.fetched == ["commonsense_reasoning/copa.jsonl"]
    assert report.present == ["language_understanding/winograd_wsc.jsonl"]
    assert [line.split(":")[0] for line in report.failed] == ["language_understanding/hellaswag.jsonl"]
    assert (local / TASKS["copa"].file).read_text() == (source / TASKS["copa"].file).read_text()
    # No connection: one failure stands for every file, without trying each.
    report = fetch_bundle(tmp_path / "other", specs, source="http://127.0.0.1:9/data/", timeout_s=5)
    assert report.fetched == [] and len(report.failed) == 3 and "not fetched" in report.failed[0]


def test_the_bundle_is_fetched_from_a_zip_archive_laid_out_as_nanochats(tmp_path):
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        for name in ("copa", "lambada_openai"):
            rows = "".join(json.dumps(row) + "\n" for row in TINY_TASKS[name])
            zf.writestr(f"eval_bundle/eval_data/{TASKS[name].file}", rows)
    local = tmp_path / "local"
    report = fetch_bundle(
        local, [TASKS["copa"], TASKS["lambada_openai"], TASKS["mmlu"]], source=archive.as_uri()
    )
    assert sorted(report.fetched) == [
        "commonsense_reasoning/copa.jsonl",
        "language_understanding/lambada_openai.jsonl",
    ]
    assert report.failed == [f"world_knowledge/mmlu.jsonl: not in {archive.as_uri()}"]
    assert load_task(TASKS["copa"], local).rows == tuple(TINY_TASKS["copa"])
    assert [p.name for p in local.iterdir() if p.name.startswith(".")] == []  # the download is cleaned up
