"""Sources: options and their validation, local files, python-source, hub datasets read from local files."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from data_fixtures import (
    GSM8K_DIR,
    gsm8k_folder,
    mmlu_folder,
    smoltalk_folder,
    write_jsonl,
    write_parquet,
    write_text_corpus,
)

from runner.data.chat import SMOLTALK_VAL_ROWS, interleave
from runner.data.sources import (
    SourceError,
    SourceSpec,
    check_source,
    fingerprint,
    iter_documents,
    parse_bytes,
    python_source_files,
)


def test_spec_from_dict_and_canonical_form():
    spec = SourceSpec.from_dict({"name": "python-source", "max_bytes": "20MB"})
    assert spec.max_bytes == 20_000_000
    mixture = SourceSpec.from_dict({"name": "task-mixture", "weights": {"gsm8k": 2, "mmlu": 0.5}})
    assert mixture.weights == (("gsm8k", 2.0), ("mmlu", 0.5)) and mixture.is_chat
    assert json.loads(json.dumps(mixture.to_dict()))["weights"] == {"gsm8k": 2.0, "mmlu": 0.5}
    assert SourceSpec.from_dict("fineweb-edu") == SourceSpec(name="fineweb-edu")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "wikipedia"}, "unknown source 'wikipedia'"),
        ({"name": "local"}, "paths: the local source needs"),
        ({"name": "python-source", "max_byte": 5}, "unknown option 'max_byte'"),
        ({"name": "python-source", "weights": {"gsm8k": 1}}, "only task-mixture"),
        ({"name": "task-mixture", "weights": {"wiki": 1}}, "unknown subset 'wiki'"),
        ({"name": "task-mixture", "weights": {"gsm8k": -1}}, "weights.gsm8k"),
        ({"name": "python-source", "max_bytes": "lots"}, "max_bytes: expected a size"),
        ({"name": "local", "paths": "x", "format": "html"}, "format"),
        ({"name": "fineweb-edu", "dataset": "a", "data_files": "b"}, "not both"),
        # `nanostudy prepare --set` passes JSON values as given (a study file's go through its own checks).
        ({"name": "python-source", "max_documents": "150"}, r"max_documents: expected an integer, got str"),
        ({"name": "python-source", "max_documents": True}, r"max_documents: expected an integer, got bool"),
        ({"name": "python-source", "max_documents": 150.5}, r"max_documents: expected an integer, got float"),
        ({"name": "python-source", "seed": -1}, r"seed: must be >= 0, got -1"),
        ({"name": "local", "paths": "x", "text_field": 3}, r"text_field: expected a string, got int \(3\)"),
        ({"name": "python-source", "format": "chat"}, "format: chat reads rows of local"),
        # Values of the wrong kind are named errors, not TypeErrors.
        ({"name": "local", "paths": 5}, r"paths: expected a glob or a list of globs, got 5"),
        ({"name": "local", "paths": None}, r"paths: expected a glob or a list of globs, got None"),
        ({"name": "local", "paths": "x", "seed": None}, r"seed: expected an integer, got NoneType"),
        ({"name": "local", "paths": "x", "text_field": None}, r"text_field: expected a string, got NoneType"),
        (
            {"name": "task-mixture", "weights": {"gsm8k": "abc"}},
            r"weights\.gsm8k: expected a number, got 'abc'",
        ),
        (
            {"name": "task-mixture", "weights": {"gsm8k": None}},
            r"weights\.gsm8k: expected a number, got None",
        ),
        ({"name": "task-mixture", "datasets": {"gsm8k": 5}}, r"datasets\.gsm8k: expected a string, got 5"),
    ],
)
def test_spec_errors_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        SourceSpec.from_dict(raw)


def test_a_whole_float_is_a_count():
    assert SourceSpec.from_dict({"name": "python-source", "max_documents": 4e1, "seed": 2.0}) == SourceSpec(
        name="python-source", max_documents=40, seed=2
    )


def test_parse_bytes_units():
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("2MiB") == 2 * 2**20
    assert parse_bytes(123) == 123
    with pytest.raises(ValueError, match="must be positive"):
        parse_bytes(0)
    assert parse_bytes(2.0e7) == 20_000_000 and parse_bytes("0.5kB") == 500
    for fractional in (1.5, 0.5, "1.5", "1.5B"):  # were 1 byte, or "must be positive"
        with pytest.raises(ValueError, match=r"max_bytes: a size in bytes must be a whole number"):
            parse_bytes(fractional)


def test_local_text_jsonl_parquet(tmp_path):
    texts = write_text_corpus(tmp_path / "txt", num_files=3)
    write_jsonl(tmp_path / "rows.jsonl", [{"body": "first"}, {"body": "second"}])
    write_parquet(tmp_path / "rows.parquet", [{"body": "third"}, {"body": "fourth"}])
    spec = SourceSpec(
        name="local", paths=(str(tmp_path / "txt" / "*.txt"), str(tmp_path / "rows.*")), text_field="body"
    )
    got = [d.text for d in iter_documents(spec)]
    assert got == [*texts, "first", "second", "third", "fourth"]
    assert [
        d.text
        for d in iter_documents(
            SourceSpec(name="local", paths=spec.paths, max_documents=2, text_field="body")
        )
    ] == texts[:2]


def test_blank_documents_are_skipped_by_every_source_and_count_toward_no_cap(tmp_path):
    # python-source skipped them already; a local or hub row of only whitespace became a document.
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "one"}, {"text": " \n\t "}, {"text": ""}, {"text": "two"}])
    spec = SourceSpec(name="local", paths=(str(tmp_path / "rows.jsonl"),), max_documents=2)
    assert [d.text for d in iter_documents(spec)] == ["one", "two"]


def test_local_errors_name_file_and_line(tmp_path):
    with pytest.raises(SourceError, match="matches no files"):
        check_source(SourceSpec(name="local", paths=(str(tmp_path / "*.txt"),)))
    write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, {"content": "no text field"}])
    with pytest.raises(SourceError, match=r"a\.jsonl:2: no field 'text'"):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "a.jsonl"),))))
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(SourceError, match=r"b\.jsonl:2: not a JSON object"):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "b.jsonl"),))))
    write_parquet(tmp_path / "c.parquet", [{"content": "x"}])
    with pytest.raises(
        SourceError, match=r"c\.parquet: no column 'text' \(columns: content\); set text_field$"
    ):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "c.parquet"),))))
    # With format chat the missing field is the messages: the option to set is messages_field.
    with pytest.raises(
        SourceError, match=r"a\.jsonl:1: no field 'messages' \(fields: text\); set messages_field$"
    ):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "a.jsonl"),), format="chat")))
    with pytest.raises(SourceError, match=r"c\.parquet: no column 'messages' .*; set messages_field$"):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "c.parquet"),), format="chat")))


def test_local_chat_format(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": messages}, {"messages": [{"role": "bot", "content": "x"}]}]
    )
    spec = SourceSpec(name="local", paths=(str(tmp_path / "chat.jsonl"),), format="chat")
    documents = iter_documents(spec)
    first = next(documents)
    assert [(m.role, m.content) for m in first.messages] == [("user", "hi"), ("assistant", "hello")]
    with pytest.raises(SourceError, match=r"chat\.jsonl:2: message 0: role"):
        next(documents)


def test_chat_format_refuses_a_text_file_among_its_paths(tmp_path):
    # A text file has no conversation: its tokens would carry no loss mask, and prepare failed at its first
    # shard with a mask shape error naming neither the file nor the option.
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    (tmp_path / "notes.txt").write_text("some notes")
    spec = SourceSpec(name="local", paths=(str(tmp_path / "*"),), format="chat")
    with pytest.raises(SourceError, match=r"notes\.txt: format chat reads conversations from \.jsonl"):
        check_source(spec)
    with pytest.raises(SourceError, match=r"notes\.txt: format chat"):
        list(iter_documents(spec))


def test_python_source_is_deterministic_deduplicated_and_capped():
    spec = SourceSpec(name="python-source", max_bytes=300_000)
    first = [d.text for d in iter_documents(spec)]
    assert first == [d.text for d in iter_documents(spec)]
    assert len(set(first)) == len(first)
    total = sum(len(t.encode()) for t in first)
    assert 300_000 <= total < 300_000 + max(len(t.encode()) for t in first)
    files = python_source_files()
    assert files == sorted(files) and any(f.endswith("/json/decoder.py") for f in files)


def test_fineweb_edu_from_local_parquet_files(tmp_path):
    rows = [{"text": f"doc {i}", "id": str(i), "score": 3.0} for i in range(5)]
    write_parquet(tmp_path / "sample" / "10BT" / "000_00000.parquet", rows[:3])
    write_parquet(tmp_path / "sample" / "10BT" / "001_00000.parquet", rows[3:])
    spec = SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "sample" / "10BT" / "*.parquet"))
    assert [d.text for d in iter_documents(spec)] == [r["text"] for r in rows]


def test_openwebtext_from_local_dataset_folder(tmp_path):
    write_jsonl(tmp_path / "owt" / "train.jsonl", [{"text": "one"}, {"text": "two"}])
    spec = SourceSpec(name="openwebtext", dataset=str(tmp_path / "owt"))
    assert [d.text for d in iter_documents(spec)] == ["one", "two"]
    with pytest.raises(SourceError, match="not an existing folder"):
        check_source(SourceSpec(name="openwebtext", dataset=str(tmp_path / "missing")))


def test_interleave_is_seeded_and_proportional():
    streams = lambda: [iter(["a"] * 600), iter(["b"] * 300), iter(["c"] * 100)]
    order = list(interleave(streams(), [600, 300, 100], seed=1))
    assert order == list(interleave(streams(), [600, 300, 100], seed=1))
    assert order != list(interleave(streams(), [600, 300, 100], seed=2))
    assert Counter(order) == {"a": 600, "b": 300, "c": 100}
    first_half = Counter(order[:500])  # any prefix holds the subsets in proportion
    assert 250 < first_half["a"] < 350 and 20 < first_half["c"] < 80


def test_task_mixture_from_local_folders(tmp_path):
    datasets = {
        "smoltalk": str(smoltalk_folder(tmp_path, num_train=30, num_test=8)),
        "mmlu": str(mmlu_folder(tmp_path, num_train=20, num_val=6)),
        "gsm8k": str(gsm8k_folder(tmp_path, num_train=12, num_test=5)),
    }
    spec = SourceSpec.from_dict(
        {"name": "task-mixture", "datasets": datasets, "weights": {"gsm8k": 2, "mmlu": 0.5}}
    )
    documents = list(iter_documents(spec))
    val = [d for d in documents if d.split == "val"]
    train = [d for d in documents if d.split == "train"]
    assert len(val) == 8 + 6 + 5 and len(train) == 30 + 10 + 24
    assert documents[: len(val)] == val  # validation first, so caps trim training data
    # MMLU rows: lettered choices in, one letter out.
    mmlu = [d for d in train if d.messages[0].content.startswith("What is")]
    assert len(mmlu) == 10
    assert "A. 0\nB. 1\nC. 2\nD. 3" in mmlu[0].messages[0].content
    assert [d.messages[1].content for d in mmlu[:4]] == ["A", "B", "C", "D"]
    # GSM8K rows keep the worked answer with its final "#### n"; weight 2 repeats each row.
    gsm8k = [d for d in train if "####" in d.messages[-1].content]
    assert len(gsm8k) == 24 and Counter(d.messages[0].content for d in gsm8k).most_common(1)[0][1] == 2
    assert all(d.messages[-1].role == "assistant" for d in documents)


@pytest.mark.skipif(not (GSM8K_DIR / "train.jsonl").is_file(), reason=f"GSM8K not found at {GSM8K_DIR}")
def test_real_gsm8k_rows_and_counts(tmp_path):
    datasets = {
        "gsm8k": str(GSM8K_DIR),
        "smoltalk": str(smoltalk_folder(tmp_path)),
        "mmlu": str(mmlu_folder(tmp_path)),
    }
    spec = SourceSpec.from_dict({"name": "task-mixture", "datasets": datasets})
    counts = Counter((d.split, "####" in d.messages[-1].content) for d in iter_documents(spec))
    assert counts[("train", True)] == 7_473 and counts[("val", True)] == 1_319
    assert SMOLTALK_VAL_ROWS == 5_000


def test_data_files_glob_picks_the_builder_from_the_files_matched(tmp_path):
    rows = [{"text": f"doc {i}"} for i in range(3)]
    write_parquet(tmp_path / "pq" / "part-0", rows)  # no extension on the glob: `dir/*` holds parquet
    write_parquet(tmp_path / "pq" / "part-1.parquet", rows)
    (tmp_path / "pq" / "part-0").rename(tmp_path / "pq" / "part-0.parquet")
    spec = SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "pq" / "*"))
    assert [d.text for d in iter_documents(spec)] == [r["text"] for r in rows] * 2
    write_jsonl(tmp_path / "pq" / "extra.jsonl", rows)
    with pytest.raises(SourceError, match="matches both parquet and jsonl"):
        check_source(spec)
    (tmp_path / "pq" / "notes.md").write_text("hello")
    with pytest.raises(SourceError, match=r"notes\.md, which is neither"):
        list(iter_documents(SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "pq" / "*.md"))))


def test_a_bad_row_under_a_data_files_glob_is_named_by_its_file_and_its_row_there(tmp_path):
    write_jsonl(tmp_path / "fw" / "part-0.jsonl", [{"text": "one"}, {"text": "two"}])
    write_jsonl(tmp_path / "fw" / "part-1.jsonl", [{"text": "three"}, {"body": "four"}])
    spec = SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "fw" / "*.jsonl"))
    with pytest.raises(SourceError, match=r"fw/part-1\.jsonl row 2: field 'text' is missing or null"):
        list(iter_documents(spec))
    write_jsonl(tmp_path / "fw" / "part-1.jsonl", [{"text": "three"}])
    assert [d.text for d in iter_documents(spec)] == ["one", "two", "three"]
    assert [d.where.rsplit("/", 1)[1] for d in iter_documents(spec)] == [
        "part-0.jsonl row 1",
        "part-0.jsonl row 2",
        "part-1.jsonl row 1",
    ]


def test_errors_while_streaming_name_the_source_and_the_option(tmp_path):
    write_parquet(tmp_path / "good" / "a.parquet", [{"text": "fine"}])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jsonl").write_bytes((tmp_path / "good" / "a.parquet").read_bytes())
    spec = SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "bad" / "*.jsonl"))
    with pytest.raises(
        SourceError, match=r"fineweb-edu: data_files '.*bad/\*\.jsonl': .*bad/a\.jsonl: reading row 1 failed"
    ) as e:
        list(iter_documents(spec))
    assert "check that the files are intact" in str(e.value) and "\n" not in str(e.value)
    # A task-mixture subset read from a local folder: the error names datasets.<subset>.
    datasets = {
        "smoltalk": str(smoltalk_folder(tmp_path)),
        "mmlu": str(mmlu_folder(tmp_path)),
        "gsm8k": str(gsm8k_folder(tmp_path)),
    }
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n{broken\n')
    with pytest.raises(SourceError, match=r"task-mixture: datasets\.gsm8k '.*gsm8k' \(test\): reading row"):
        list(iter_documents(SourceSpec.from_dict({"name": "task-mixture", "datasets": datasets})))


def test_check_source_names_missing_files_and_folders(tmp_path):
    with pytest.raises(SourceError, match=r"data_files: '.*nothing/\*\.parquet' matches no files"):
        check_source(SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "nothing" / "*.parquet")))
    datasets = {"gsm8k": str(tmp_path / "no-gsm8k"), "mmlu": str(mmlu_folder(tmp_path))}
    with pytest.raises(SourceError, match=r"datasets\.gsm8k: '.*no-gsm8k' is not an existing folder"):
        check_source(SourceSpec.from_dict({"name": "task-mixture", "datasets": datasets}))


def test_fingerprint_covers_local_files_of_every_source(tmp_path):
    """Adding, growing or touching a file the source reads changes the fingerprint (and so the data
    directory and any tokenizer trained on it); hub ids are fingerprinted by the spec alone."""
    write_parquet(tmp_path / "fw" / "000.parquet", [{"text": "one"}])
    owt = tmp_path / "owt"
    write_jsonl(owt / "train.jsonl", [{"text": "one"}])
    mixture = {
        "smoltalk": str(smoltalk_folder(tmp_path)),
        "mmlu": "cais/mmlu",  # a hub id: nothing local to fingerprint
        "gsm8k": str(gsm8k_folder(tmp_path)),
    }
    specs = {
        "data_files": SourceSpec(name="fineweb-edu", data_files=str(tmp_path / "fw" / "*.parquet")),
        "dataset": SourceSpec(name="openwebtext", dataset=str(owt)),
        "datasets": SourceSpec.from_dict({"name": "task-mixture", "datasets": mixture}),
    }
    before = {key: fingerprint(spec) for key, spec in specs.items()}
    assert all(before.values()) and fingerprint(SourceSpec(name="fineweb-edu")) == {}
    assert set(before["datasets"]) == {"smoltalk", "gsm8k"}
    write_parquet(tmp_path / "fw" / "001.parquet", [{"text": "two"}])
    write_jsonl(owt / "more" / "train-2.jsonl", [{"text": "two"}])
    (tmp_path / "gsm8k" / "test.jsonl").write_text((tmp_path / "gsm8k" / "test.jsonl").read_text() + "\n")
    after = {key: fingerprint(spec) for key, spec in specs.items()}
    assert all(after[key] != before[key] for key in specs), after
    assert after["datasets"]["smoltalk"] == before["datasets"]["smoltalk"]
    # Hidden files (a .git folder, datasets' caches) are not data.
    (owt / ".cache").mkdir()
    (owt / ".cache" / "lock").write_text("x")
    assert fingerprint(specs["dataset"]) == after["dataset"]


def test_hub_sources_pass_their_config_to_load_dataset(tmp_path, monkeypatch):
    """fineweb-edu streams sample-10BT unless told otherwise; `config` and `dataset` reach load_dataset."""
    import datasets

    calls = []

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return [{"text": f"row of {path}"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    folder = tmp_path / "owt"
    folder.mkdir()
    cases = [
        (SourceSpec(name="fineweb-edu"), ("HuggingFaceFW/fineweb-edu", "sample-10BT")),
        (
            SourceSpec(name="fineweb-edu", config="CC-MAIN-2024-10"),
            ("HuggingFaceFW/fineweb-edu", "CC-MAIN-2024-10"),
        ),
        (SourceSpec(name="openwebtext"), ("Skylion007/openwebtext", None)),
        (SourceSpec(name="openwebtext", dataset=str(folder)), (str(folder), None)),  # a folder: no default
        (
            SourceSpec(name="fineweb-edu", dataset=str(folder), config="sample-100BT"),
            (str(folder), "sample-100BT"),
        ),
    ]
    for spec, (path, config) in cases:
        calls.clear()
        assert [d.text for d in iter_documents(spec)] == [f"row of {path}"]
        assert calls == [(path, {"name": config, "split": "train", "streaming": True})], spec


def test_a_hub_stream_failing_midway_names_the_source(monkeypatch):
    import datasets

    def rows():
        yield {"text": "first"}
        raise ConnectionError("Read timed out")

    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: rows())
    documents = iter_documents(SourceSpec(name="fineweb-edu"))
    assert next(documents).text == "first"
    with pytest.raises(
        SourceError,
        match=r"fineweb-edu: HuggingFaceFW/fineweb-edu \(config sample-10BT\): "
        r"reading row 2 failed: ConnectionError: Read timed out; check the network",
    ):
        next(documents)


def test_an_unreachable_hub_subset_of_the_task_mixture_names_its_own_option(monkeypatch, tmp_path):
    """Offline, a task-mixture subset left at its hub id says to give `datasets: {subset: <folder>}`, not
    `dataset:`, which task-mixture refuses."""
    import datasets

    from runner.data.chat import iter_task_mixture

    def unreachable(path, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(SourceError) as caught:
        next(iter_task_mixture(SourceSpec(name="task-mixture")))
    message = str(caught.value)
    assert message.startswith("dataset 'HuggingFaceTB/smol-smoltalk' (config None, split test) could not be")
    assert "give `datasets: {smoltalk: <folder>}`" in message and "`dataset: <local folder>`" not in message


def test_task_mixture_caps_smoltalk_validation_at_5000_rows(tmp_path):
    datasets = {
        "smoltalk": str(smoltalk_folder(tmp_path, num_train=4, num_test=SMOLTALK_VAL_ROWS + 7)),
        "mmlu": str(mmlu_folder(tmp_path, num_train=3, num_val=2)),
        "gsm8k": str(gsm8k_folder(tmp_path, num_train=3, num_test=2)),
    }
    spec = SourceSpec.from_dict({"name": "task-mixture", "datasets": datasets})
    counts = Counter(
        (d.split, d.messages[0].content.split()[0]) for d in iter_documents(spec)
    )  # SmolTalk questions start with "Question"
    assert counts[("val", "Question")] == SMOLTALK_VAL_ROWS == 5_000
    assert counts[("train", "Question")] == 4  # the training split has no cap


def test_python_source_includes_site_packages():
    import sysconfig

    files = python_source_files()
    paths = {key: str(Path(value).resolve()) for key, value in sysconfig.get_paths().items()}
    assert any(f.startswith(paths["stdlib"] + os.sep) for f in files)
    # tiktoken, a dependency of nanostudy, is installed in site-packages (purelib or platlib).
    assert any(os.path.join(paths[key], "tiktoken", "core.py") in files for key in ("purelib", "platlib"))
