"""prepare: shards that decode back to the corpus, held-out validation, idempotence, exact resumption,
chat masks, trained BPE tokenizers that tiktoken encodes exactly as Hugging Face does, and clear errors."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import GPT2_DIR, sentence, write_jsonl, write_text_corpus

from nanogpt.data import TokenLoader
from nanogpt.shards import ShardError, open_shard, read_manifest, verify_shards
from nanogpt.tokenizer import IM_END, IM_START, load_tokenizer
from runner.data.bpe import _byte_decoder, hf_to_ranks, train_bpe, train_hf_bpe
from runner.data.prepare import PrepareConfig, prepare
from runner.data.sources import Document, SourceError, SourceSpec, iter_documents
from runner.data.tokenize import is_validation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return directory, write_text_corpus(directory, num_files=60, sentences_per_file=25)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_bpe(corpus[1], vocab_size=300).save(directory)
    return directory


def local_config(corpus, tokenizer_dir, **overrides) -> PrepareConfig:
    source = SourceSpec(name="local", paths=(str(corpus[0] / "*.txt"),))
    values = {"source": source, "tokenizer": str(tokenizer_dir), "shard_tokens": 3_000, "val_fraction": 0.1}
    return PrepareConfig(**(values | overrides))


def split_documents(data_dir, split) -> list[str]:
    manifest = read_manifest(data_dir)
    tokenizer = load_tokenizer(manifest.tokenizer_dir)
    stream = np.concatenate([open_shard(p)[0] for p in manifest.shard_paths(split)])
    cuts = np.flatnonzero(stream == tokenizer.eot_id)
    assert cuts[0] == 0  # every document starts with end-of-text
    return [tokenizer.decode(part[1:]) for part in np.split(stream, cuts[1:])]


def test_prepare_round_trips_the_corpus(tmp_path, corpus, tokenizer_dir):
    result = prepare(local_config(corpus, tokenizer_dir), root=tmp_path, num_workers=1, progress=False)
    assert result.status == "prepared"
    manifest = result.manifest
    verify_shards(manifest)
    assert len(manifest.shards("train")) > 3
    assert all(s.num_tokens == 3_000 for s in manifest.shards("train")[:-1])
    train, val = split_documents(result.data_dir, "train"), split_documents(result.data_dir, "val")
    texts = corpus[1]
    assert sorted(train + val) == sorted(texts)
    assert not set(train) & set(val)
    assert val == [t for t in texts if is_validation(Document(text=t), 0.1)]
    assert 0 < len(val) < len(texts) / 4
    # The loader reads it, and the tokenizer recorded beside the shards is the one used.
    loader = TokenLoader(result.data_dir, split="train", batch_size=2, seq_len=32)
    x, y = loader.next_batch()
    assert x.shape == (2, 32) and int(y.min()) >= 0
    assert (
        load_tokenizer(manifest.tokenizer_dir).hash
        == load_tokenizer(tokenizer_dir).hash
        == manifest.tokenizer.hash
    )


def test_second_prepare_does_nothing(tmp_path, corpus, tokenizer_dir):
    config = local_config(corpus, tokenizer_dir)
    first = prepare(config, root=tmp_path, num_workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.data_dir.iterdir()}
    second = prepare(config, root=tmp_path, num_workers=1, progress=False)
    assert second.status == "already prepared" and second.data_dir == first.data_dir
    assert {p.name: p.stat().st_mtime_ns for p in second.data_dir.iterdir()} == stamps
    # Different inputs, different directory.
    other = prepare(
        local_config(corpus, tokenizer_dir, shard_tokens=5_000), root=tmp_path, num_workers=1, progress=False
    )
    assert other.data_dir != first.data_dir


def _shard_bytes(data_dir):
    return {p.name: p.read_bytes() for p in sorted(data_dir.glob("*.bin"))} | {
        "manifest": json.loads((data_dir / "manifest.json").read_text())
    }


def test_interrupted_prepare_resumes_to_identical_shards(tmp_path, corpus, tokenizer_dir, monkeypatch):
    monkeypatch.setattr("runner.data.tokenize.CHUNK_DOCUMENTS", 3)  # many checkpoints in a small corpus
    config = local_config(corpus, tokenizer_dir)
    whole = prepare(config, root=tmp_path / "a", num_workers=1, progress=False)
    first = prepare(config, root=tmp_path / "b", num_workers=1, progress=False, stop_after_shards=2)
    assert first.status == "interrupted" and not (first.data_dir / "manifest.json").exists()
    second = prepare(config, root=tmp_path / "b", num_workers=1, progress=False, stop_after_shards=1)
    assert second.status == "interrupted"
    state = json.loads((second.data_dir / ".prepare" / "state.json").read_text())
    assert len(state["splits"]["train"]) + len(state["splits"]["val"]) >= 3
    third = prepare(config, root=tmp_path / "b", num_workers=1, progress=False)
    assert third.status == "prepared" and not (third.data_dir / ".prepare").exists()
    assert _shard_bytes(third.data_dir) == _shard_bytes(whole.data_dir)


def test_a_shard_left_half_written_is_removed_on_resumption(tmp_path, corpus, tokenizer_dir):
    config = local_config(corpus, tokenizer_dir)
    first = prepare(config, root=tmp_path, num_workers=1, progress=False, stop_after_shards=1)
    partial = first.data_dir / ".train_000001.bin.tmp-12345"  # as a run killed inside write_shard leaves it
    partial.write_bytes(b"NSTOKENS" + bytes(1000))
    again = prepare(config, root=tmp_path, num_workers=1, progress=False)
    assert again.status == "prepared" and not partial.exists()
    verify_shards(again.manifest)


def test_a_lost_carry_file_restarts_the_preparation(tmp_path, corpus, tokenizer_dir, monkeypatch, capsys):
    monkeypatch.setattr("runner.data.tokenize.CHUNK_DOCUMENTS", 3)
    config = local_config(corpus, tokenizer_dir)
    whole = prepare(config, root=tmp_path / "a", num_workers=1, progress=False)
    first = prepare(config, root=tmp_path / "b", num_workers=1, progress=False, stop_after_shards=2)
    (carry,) = (first.data_dir / ".prepare").glob("carry-*.npz")
    carry.unlink()
    again = prepare(config, root=tmp_path / "b", num_workers=1, progress=False)
    assert f"{carry} is missing or unreadable" in capsys.readouterr().err
    assert again.status == "prepared" and _shard_bytes(again.data_dir) == _shard_bytes(whole.data_dir)


def test_a_lost_shard_of_an_interrupted_preparation_restarts_it(
    tmp_path, corpus, tokenizer_dir, monkeypatch, capsys
):
    monkeypatch.setattr("runner.data.tokenize.CHUNK_DOCUMENTS", 3)
    config = local_config(corpus, tokenizer_dir)
    whole = prepare(config, root=tmp_path / "a", num_workers=1, progress=False)
    first = prepare(config, root=tmp_path / "b", num_workers=1, progress=False, stop_after_shards=2)
    (first.data_dir / "train_000000.bin").unlink()
    again = prepare(config, root=tmp_path / "b", num_workers=1, progress=False)
    assert "train_000000.bin: shard file is missing; preparing" in capsys.readouterr().err
    assert again.status == "prepared" and _shard_bytes(again.data_dir) == _shard_bytes(whole.data_dir)


def test_a_damaged_prepared_directory_says_how_to_prepare_it_again(tmp_path, corpus, tokenizer_dir):
    # prepare finds the manifest and does nothing more, so "prepare again" alone would repeat the error
    config = local_config(corpus, tokenizer_dir)
    whole = prepare(config, root=tmp_path, num_workers=1, progress=False)
    reference = _shard_bytes(whole.data_dir)
    (whole.data_dir / "train_000001.bin").unlink()
    with pytest.raises(ShardError, match=r"but missing; delete (.*) and prepare again") as info:
        prepare(config, root=tmp_path, num_workers=1, progress=False)
    shutil.rmtree(re.search(r"delete (.*) and prepare again", str(info.value)).group(1))
    again = prepare(config, root=tmp_path, num_workers=1, progress=False)
    assert again.status == "prepared" and _shard_bytes(again.data_dir) == reference


def test_worker_processes_give_the_same_bytes(tmp_path, corpus, tokenizer_dir, monkeypatch):
    monkeypatch.setattr("runner.data.tokenize.CHUNK_DOCUMENTS", 3)  # give both workers chunks
    config = local_config(corpus, tokenizer_dir)
    one = prepare(config, root=tmp_path / "one", num_workers=1, progress=False)
    two = prepare(config, root=tmp_path / "two", num_workers=2, progress=False)
    assert _shard_bytes(one.data_dir) == _shard_bytes(two.data_dir)


def test_state_of_another_preparation_is_refused(tmp_path, corpus, tokenizer_dir):
    config = local_config(corpus, tokenizer_dir)
    result = prepare(config, root=tmp_path, num_workers=1, progress=False, stop_after_shards=1)
    state_path = result.data_dir / ".prepare" / "state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps(state | {"identity": "something else"}))
    with pytest.raises(ShardError, match="different preparation"):
        prepare(config, root=tmp_path, num_workers=1, progress=False)


def test_empty_corpus_and_empty_validation(tmp_path, tokenizer_dir):
    (tmp_path / "empty.jsonl").write_text("")
    source = SourceSpec(name="local", paths=(str(tmp_path / "empty.jsonl"),))
    with pytest.raises(SourceError, match="local: empty corpus: it produced no documents"):
        prepare(PrepareConfig(source=source, tokenizer=str(tokenizer_dir)), root=tmp_path, progress=False)
    # Documents without text are skipped, so a corpus of them is empty too (not shards of end-of-text).
    write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}] * 50)
    source = SourceSpec(name="local", paths=(str(tmp_path / "blank.jsonl"),))
    assert list(iter_documents(source)) == []
    for tokenizer in (str(tokenizer_dir), "bpe:300"):
        with pytest.raises(SourceError, match="empty corpus"):
            prepare(PrepareConfig(source=source, tokenizer=tokenizer), root=tmp_path, progress=False)
    assert not (tmp_path / "tokenizers").exists() or not list((tmp_path / "tokenizers").iterdir())
    write_jsonl(tmp_path / "one.jsonl", [{"text": "a single short document"}])
    source = SourceSpec(name="local", paths=(str(tmp_path / "one.jsonl"),))
    with pytest.raises(SourceError, match="the val split is empty"):
        prepare(PrepareConfig(source=source, tokenizer=str(tokenizer_dir)), root=tmp_path, progress=False)


def test_bad_config_values():
    source = SourceSpec(name="python-source")
    with pytest.raises(ValueError, match="bpe:<vocab size>"):
        PrepareConfig(source=source, tokenizer="bpe:big")
    with pytest.raises(ValueError, match="val_fraction"):
        PrepareConfig(source=source, tokenizer="gpt2", val_fraction=1.5)
    with pytest.raises(ValueError, match="val_fraction: 0 would leave the validation split of python-source"):
        PrepareConfig(source=source, tokenizer="gpt2", val_fraction=0)
    # task-mixture brings its own validation split, so it needs no fraction.
    PrepareConfig(source=SourceSpec(name="task-mixture"), tokenizer="gpt2", val_fraction=0)
    with pytest.raises(ValueError, match="unknown key 'shards'"):
        PrepareConfig.from_dict({"source": "python-source", "tokenizer": "gpt2", "shards": 3})


def test_cli_prepare_names_a_bad_value_of_the_study_file_it_reads(tmp_path, capsys):
    # `prepare STUDY --flag` reads the study's data section itself: its values of the wrong kind and a file
    # that is not YAML were TypeError / AttributeError / YAMLError tracebacks.
    study, root = tmp_path / "study.yaml", ["--root", str(tmp_path / "data"), "--quiet"]
    for data, message in (
        (
            "{source: python-source, tokenizer: gpt2, val_fraction: abc}",
            "val_fraction: expected a number, got str",
        ),
        (
            "{source: python-source, tokenizer: gpt2, shard_tokens: abc}",
            "shard_tokens: expected a number, got str",
        ),
        (
            "{source: python-source, tokenizer: [1]}",
            "tokenizer: expected gpt2, bpe:<vocab size> or a directory",
        ),
        ("[", "study.yaml: not a readable YAML study file"),
    ):
        study.write_text(f"data: {data}\n")
        flag = ["--val-fraction", "0.1"] if "val_fraction" not in data else ["--shard-tokens", "100"]
        assert _cli(["prepare", str(study), *flag, *root]) == 2
        assert message in capsys.readouterr().err


def test_chat_data_has_assistant_only_mask(tmp_path, tokenizer_dir):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {i}"},
                {"role": "assistant", "content": f"number {i}"},
            ]
        }
        for i in range(200)
    ]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    source = SourceSpec(name="local", paths=(str(tmp_path / "chat.jsonl"),), format="chat")
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), shard_tokens=2_000, val_fraction=0.2)
    result = prepare(config, root=tmp_path, num_workers=1, progress=False)
    manifest = result.manifest
    assert manifest.has_mask and {IM_START, IM_END} <= set(manifest.tokenizer.special_tokens)
    tokenizer = load_tokenizer(manifest.tokenizer_dir)
    tokens, mask = open_shard(manifest.shard_paths("train")[0])
    trained_text = tokenizer.decode(tokens[mask == 1][:40])
    assert "number" in trained_text and "say" not in trained_text and "user" not in trained_text
    loader = TokenLoader(result.data_dir, split="val", batch_size=1, seq_len=64)
    _, y = loader.next_batch()
    val_tokens, val_mask = open_shard(manifest.shard_paths("val")[0])
    expected = torch.from_numpy(val_tokens[1:65].astype(np.int64))
    expected[torch.from_numpy(val_mask[1:65] == 0)] = -1
    assert torch.equal(y[0], expected) and (y == -1).any() and (y >= 0).any()


def test_chat_data_with_nothing_to_train_on_is_refused(tmp_path, tokenizer_dir):
    # Without an assistant turn every token is masked out: a trainer would "train" on nothing.
    def chat(i: int, *, answered: bool) -> dict:
        answer = [{"role": "assistant", "content": f"number {i}"}] if answered else []
        return {"messages": [{"role": "user", "content": f"say {i}"}, *answer]}

    write_jsonl(tmp_path / "asked.jsonl", [chat(i, answered=False) for i in range(100)])
    source = SourceSpec(name="local", paths=(str(tmp_path / "asked.jsonl"),), format="chat")
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), val_fraction=0.2)
    with pytest.raises(
        SourceError, match=r"source local: the train split has no assistant tokens to train on"
    ):
        prepare(config, root=tmp_path / "a", num_workers=1, progress=False)
    # Answered only where a chat lands in the training split: the validation loss would have nothing to score.
    answered, asked = ([chat(i, answered=a) for i in range(100)] for a in (True, False))
    rows = [row for row, val in zip(answered, _held_out(tmp_path, answered), strict=True) if not val]
    rows += [row for row, val in zip(asked, _held_out(tmp_path, asked), strict=True) if val]
    write_jsonl(tmp_path / "half.jsonl", rows)
    source = SourceSpec(name="local", paths=(str(tmp_path / "half.jsonl"),), format="chat")
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), val_fraction=0.2)
    with pytest.raises(SourceError, match=r"the val split has no assistant tokens to train on"):
        prepare(config, root=tmp_path / "b", num_workers=1, progress=False)


def _held_out(tmp_path: Path, rows: list[dict]) -> list[bool]:
    """Whether each chat lands in the validation split (val_fraction 0.2)."""
    write_jsonl(tmp_path / "rows.jsonl", rows)
    source = SourceSpec(name="local", paths=(str(tmp_path / "rows.jsonl"),), format="chat")
    return [is_validation(doc, 0.2) for doc in iter_documents(source)]


def test_bpe_tiktoken_matches_huggingface_and_covers_every_byte():
    texts = [d.text for d in iter_documents(SourceSpec(name="python-source", max_bytes=600_000))]
    train, held_out = texts[:-20], texts[-20:]
    hf = train_hf_bpe(train, num_merged_vocab=1_021)
    tokenizer = train_bpe(train, vocab_size=1_024)
    assert tokenizer.vocab_size == 1_024 and len(tokenizer.mergeable_ranks) == 1_021
    assert hf_to_ranks(hf) == tokenizer.mergeable_ranks
    decoder = _byte_decoder()
    vocab = {i: bytes(decoder[c] for c in s) for s, i in hf.get_vocab().items()}
    samples = [
        *held_out,
        "Ünïcödé ✓ 日本語 \x00\x7f tabs\tand\r\nnewlines 1234567",
        "def f(x):\n    return x ** 2\n",
    ]
    for text in samples:
        hf_ids = [tokenizer.mergeable_ranks[vocab[i]] for i in hf.encode(text).ids]
        assert tokenizer.encode(text) == hf_ids
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert all(bytes([b]) in tokenizer.mergeable_ranks for b in range(256))


def test_prepare_python_source_with_trained_bpe(tmp_path):
    source = SourceSpec(name="python-source", max_bytes=400_000)
    config = PrepareConfig(source=source, tokenizer="bpe:512", shard_tokens=50_000, val_fraction=0.3)
    result = prepare(config, root=tmp_path, num_workers=1, progress=False)
    manifest = result.manifest
    assert manifest.tokenizer.vocab_size == 512 and manifest.tokenizer.name == "bpe512"
    assert (tmp_path / "tokenizers").is_dir() and len(list((tmp_path / "tokenizers").iterdir())) == 1
    tokenizer = load_tokenizer(manifest.tokenizer_dir)
    assert tokenizer.has_chat_tokens  # trained tokenizers reserve the chat markers from the start
    prepared = split_documents(result.data_dir, "train") + split_documents(result.data_dir, "val")
    assert sorted(prepared) == sorted(d.text for d in iter_documents(source))
    assert sum(len(d.encode()) for d in prepared) >= 400_000
    # A second preparation reuses the trained tokenizer and the data.
    assert prepare(config, root=tmp_path, num_workers=1, progress=False).status == "already prepared"


def _cli(argv: list[str]) -> int:
    import argparse

    from runner.data.commands import register

    parser = argparse.ArgumentParser(prog="nanostudy")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_study_file_and_errors(tmp_path, corpus, tokenizer_dir, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: demo\n"
        "data:\n"
        f"  source: {{name: local, paths: ['{corpus[0]}/*.txt']}}\n"
        f"  tokenizer: {tokenizer_dir}\n"
        "  val_fraction: 0.1\n"
        "grid: {depth: [1], flops: [1e9]}\n"
    )
    root = ["--root", str(tmp_path / "data"), "--quiet", "--workers", "1"]
    assert _cli(["prepare", str(study), *root]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("prepared: ")
    assert _cli(["prepare", str(study), *root]) == 0
    assert capsys.readouterr().out.startswith("already prepared: ")
    # Mode all: both stages, the mid-training data with the pretraining tokenizer plus the chat markers.
    chats = tmp_path / "chats.jsonl"
    turns = [
        [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
        for i in range(40)
    ]
    chats.write_text("".join(json.dumps({"messages": turn}) + "\n" for turn in turns))
    source = f"{{name: local, paths: '{chats}', format: chat}}"
    mid = f"mid_training:\n  data: {{source: {source}, val_fraction: 0.2}}\n"
    study.write_text(study.read_text().replace("name: demo", "name: demo\nmode: all") + mid + "  steps: 3\n")
    assert _cli(["prepare", str(study), *root]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("already prepared: ") and lines[1].startswith("prepared: ")
    manifest = json.loads((Path(lines[1].split(": ", 1)[1]) / "manifest.json").read_text())
    assert manifest["has_mask"] and "<|im_start|>" in manifest["tokenizer"]["special_tokens"]
    # A study with a problem is reported with its line, and nothing is prepared.
    study.write_text(study.read_text().replace("flops: [1e9]", "flops: [-1]"))
    assert _cli(["prepare", str(study), *root]) == 2
    assert f"{study}:" in capsys.readouterr().err
    assert _cli(["prepare", "--source", "wikipedia", *root]) == 2
    assert "unknown source 'wikipedia'" in capsys.readouterr().err
    assert _cli(["prepare", "--source", "local", "--set", f"paths={tmp_path}/nothing/*.txt", *root]) == 2
    assert "matches no files" in capsys.readouterr().err


def test_cli_tokenizer_train(tmp_path, corpus, capsys):
    out = tmp_path / "tok"
    argv = [
        "tokenizer",
        "train",
        "--source",
        "local",
        "--set",
        f"paths={corpus[0]}/*.txt",
        "--vocab-size",
        "300",
    ]
    assert _cli([*argv, "--out", str(out), "--quiet"]) == 0
    assert "trained bpe300" in capsys.readouterr().out
    tokenizer = load_tokenizer(out)
    assert tokenizer.vocab_size <= 300 and tokenizer.metadata["trained_on"]["name"] == "local"


def test_cli_names_a_root_or_out_that_cannot_be_written(tmp_path, corpus, tokenizer_dir, capsys):
    (tmp_path / "file").write_text("")
    paths = f"paths={corpus[0]}/*.txt"
    argv = ["prepare", "--source", "local", "--set", paths, "--tokenizer", str(tokenizer_dir), "--quiet"]
    argv += ["--root", str(tmp_path / "file" / "data")]
    assert _cli(argv) == 2
    assert (
        capsys.readouterr().err == f"nanostudy prepare: error: {tmp_path}/file/data/.locks: Not a directory\n"
    )
    argv = ["tokenizer", "train", "--source", "local", "--set", paths, "--vocab-size", "300", "--quiet"]
    assert _cli([*argv, "--out", str(tmp_path / "file" / "tok")]) == 2
    assert capsys.readouterr().err.endswith(
        f"nanostudy tokenizer: error: {tmp_path}/file/tok: Not a directory\n"
    )


def test_cli_workers_must_be_at_least_one(tmp_path, capsys):
    # 0 meant every core, silently; a negative count was multiprocessing's error, naming no flag.
    for count in ("0", "-2"):
        with pytest.raises(SystemExit) as exited:
            _cli(["prepare", "--source", "python-source", "--root", str(tmp_path), "--workers", count])
        assert exited.value.code == 2
        assert f"argument --workers: must be at least 1, got {count}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_tokenizer_train_refuses_to_learn_from_nothing(tmp_path, corpus, capsys):
    # As prepare does: no training text (an empty file, everything held out) saved a single-byte tokenizer.
    (tmp_path / "empty.txt").write_text("")
    argv = ["tokenizer", "train", "--source", "local", "--vocab-size", "300", "--quiet"]
    empty = [*argv, "--set", f"paths={tmp_path}/empty.txt", "--out", str(tmp_path / "a")]
    assert _cli(empty) == 2
    assert "empty corpus" in capsys.readouterr().err and not (tmp_path / "a").exists()
    held_out = [
        *argv,
        "--set",
        f"paths={corpus[0]}/*.txt",
        "--val-fraction",
        "1",
        "--out",
        str(tmp_path / "b"),
    ]
    assert _cli(held_out) == 2
    assert "--val-fraction: must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_prepare_task_mixture_keeps_its_own_validation_split(tmp_path, tokenizer_dir):
    from data_fixtures import gsm8k_folder, mmlu_folder, smoltalk_folder

    datasets = {
        "smoltalk": str(smoltalk_folder(tmp_path, num_train=30, num_test=8)),
        "mmlu": str(mmlu_folder(tmp_path, num_train=20, num_val=6)),
        "gsm8k": str(gsm8k_folder(tmp_path, num_train=12, num_test=5)),
    }
    source = SourceSpec.from_dict({"name": "task-mixture", "datasets": datasets})
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), shard_tokens=100_000)
    manifest = prepare(config, root=tmp_path / "data", num_workers=1, progress=False).manifest
    assert manifest.has_mask and manifest.source["documents"] == 30 + 20 + 12 + 8 + 6 + 5
    tokenizer = load_tokenizer(manifest.tokenizer_dir)
    val_tokens, _ = open_shard(manifest.shard_paths("val")[0])
    assert int((val_tokens == tokenizer.eot_id).sum()) == 8 + 6 + 5  # one end-of-text per conversation
    train_tokens, train_mask = open_shard(manifest.shard_paths("train")[0])
    answers = tokenizer.decode(train_tokens[train_mask == 1])
    assert "####" in answers and "Answer with the letter" not in answers


def test_adding_a_file_to_a_data_files_glob_prepares_again(tmp_path):
    """Neither the data directory nor the trained tokenizer may be reused once the files have changed."""
    from data_fixtures import sentence, write_parquet

    files = tmp_path / "fw"
    write_parquet(files / "000.parquet", [{"text": sentence(i, 30)} for i in range(40)])
    source = SourceSpec(name="fineweb-edu", data_files=str(files / "*.parquet"))
    config = PrepareConfig(source=source, tokenizer="bpe:300", shard_tokens=100_000, val_fraction=0.1)
    first = prepare(config, root=tmp_path / "data", num_workers=1, progress=False)
    assert prepare(config, root=tmp_path / "data", num_workers=1, progress=False).status == "already prepared"
    write_parquet(files / "001.parquet", [{"text": f"a new file {sentence(i, 30)}"} for i in range(40)])
    second = prepare(config, root=tmp_path / "data", num_workers=1, progress=False)
    assert second.status == "prepared" and second.data_dir != first.data_dir
    assert second.manifest.source["documents"] == 80 and first.manifest.source["documents"] == 40
    assert len(list((tmp_path / "data" / "tokenizers").iterdir())) == 2
    assert second.manifest.tokenizer.hash != first.manifest.tokenizer.hash


def test_lone_surrogates_prepare_and_errors_name_the_file(tmp_path, tokenizer_dir, monkeypatch):
    # json.dumps writes "\ud800" as the escape `\ud800`, which parses back to a lone surrogate: it must
    # tokenize (as U+FFFD, as encode() does), not crash.
    write_jsonl(
        tmp_path / "rows.jsonl", [{"text": f"document {i} with \ud800 a lone surrogate"} for i in range(30)]
    )
    assert "\\ud800" in (tmp_path / "rows.jsonl").read_text()
    source = SourceSpec(name="local", paths=(str(tmp_path / "rows.jsonl"),))
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), val_fraction=0.2)
    result = prepare(config, root=tmp_path / "data", num_workers=2, progress=False)
    assert "\ufffd a lone surrogate" in split_documents(result.data_dir, "train")[0]
    # Whatever fails while tokenizing, even in a worker process, the error names the file and line.
    from nanogpt.tokenizer import Tokenizer

    def broken(self, text):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(Tokenizer, "encode_array", broken)
    with pytest.raises(SourceError, match=r"rows\.jsonl:1: could not be tokenized .*tokenizer exploded"):
        prepare(config, root=tmp_path / "other", num_workers=1, progress=False)


def test_lone_surrogates_train_a_bpe_tokenizer(tmp_path):
    # `tokenizers` refuses text that is not UTF-8: training failed with a UnicodeEncodeError naming nothing.
    write_jsonl(
        tmp_path / "rows.jsonl", [{"text": f"{sentence(i)} with \ud800 a lone surrogate"} for i in range(30)]
    )
    source = SourceSpec(name="local", paths=(str(tmp_path / "rows.jsonl"),))
    config = PrepareConfig(source=source, tokenizer="bpe:300", val_fraction=0.2)
    result = prepare(config, root=tmp_path / "data", num_workers=1, progress=False)
    assert "with \ufffd a lone surrogate" in split_documents(result.data_dir, "train")[0]


def test_unreadable_local_files_are_named(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match=r"latin1\.jsonl:2: not UTF-8"):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "latin1.jsonl"),))))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match=r"broken\.parquet: not a readable parquet file"):
        list(iter_documents(SourceSpec(name="local", paths=(str(tmp_path / "broken.parquet"),))))


def test_progress_bar_shows_megabytes_and_documents_per_second(tmp_path, corpus, tokenizer_dir, capsys):
    prepare(local_config(corpus, tokenizer_dir), root=tmp_path, num_workers=1, progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("prepare local: 100%"), final
    assert re.search(r"\d+\.\d\d MB/s, [\d,]+ docs/s, \d+ shards\]$", final), final


@pytest.mark.skipif(
    not (GPT2_DIR / "gpt2.tiktoken").is_file(),
    reason=f"GPT-2 vocabulary not found at {GPT2_DIR} (set NANOSTUDY_SHARED to the shared data folder)",
)
def test_chat_data_with_gpt2_gets_the_chat_ids_after_its_vocabulary(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]}
        for i in range(40)
    ]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    source = SourceSpec(name="local", paths=(str(tmp_path / "chat.jsonl"),), format="chat")
    config = PrepareConfig(source=source, tokenizer=str(GPT2_DIR), val_fraction=0.2)
    manifest = prepare(config, root=tmp_path / "data", num_workers=1, progress=False).manifest
    info = manifest.tokenizer
    assert (info.name, info.vocab_size, info.eot_id) == ("gpt2+chat", 50_259, 50_256)
    assert info.special_tokens == {"<|endoftext|>": 50_256, IM_START: 50_257, IM_END: 50_258}
    assert manifest.data_dir.name.startswith("local-gpt2-chat-")
    tokenizer = load_tokenizer(manifest.tokenizer_dir)
    assert (
        tokenizer.hash == info.hash and tokenizer.without_chat_tokens().hash == load_tokenizer(GPT2_DIR).hash
    )
    tokens, mask = open_shard(manifest.shard_paths("train")[0])
    assert tokens.dtype == np.uint16  # 50,259 ids fit in 16 bits
    num_documents = int((tokens == 50_256).sum())
    assert int((tokens == 50_257).sum()) == int((tokens == 50_258).sum()) == 2 * num_documents > 0
    assert set(tokens[mask == 1].tolist()) - set(range(50_256)) == {50_258}  # the assistant's closing marker


def test_two_processes_preparing_the_same_data_at_once_both_succeed(tmp_path, tokenizer_dir):
    # Many chunks of documents and small shards: each process saves its resumable state many times.
    write_jsonl(tmp_path / "docs.jsonl", [{"text": sentence(i, length=20)} for i in range(40_000)])
    command = [
        sys.executable, "-m", "runner.cli", "prepare", "--source", "local",
        "--set", f"paths={tmp_path / 'docs.jsonl'}", "--tokenizer", str(tokenizer_dir),
        "--shard-tokens", "1000", "--val-fraction", "0.1", "--root", str(tmp_path / "data"),
        "--quiet", "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    [data_dir] = (tmp_path / "data").glob("local-*")
    assert not (data_dir / ".prepare").exists()
    # One prepared the data while the other waited for it, then found it ready.
    waited = [err for _, err in outputs if "waiting for another process preparing" in err]
    assert len(waited) <= 1 and (not waited or f"{data_dir} (pid " in waited[0])
    source = SourceSpec(name="local", paths=(str(tmp_path / "docs.jsonl"),))
    config = PrepareConfig(source=source, tokenizer=str(tokenizer_dir), shard_tokens=1000, val_fraction=0.1)
    alone = prepare(config, root=tmp_path / "alone", num_workers=1, progress=False).data_dir
    assert alone.name == data_dir.name
    shards = sorted(p.name for p in data_dir.glob("*.bin"))
    assert len(shards) > 10 and shards == sorted(p.name for p in alone.glob("*.bin"))
    assert all((data_dir / name).read_bytes() == (alone / name).read_bytes() for name in shards)


WORKER_SIGNALS = """
import os, signal, sys
from nanogpt.tokenizer import load_tokenizer
from runner.data.tokenize import TokenizePool

def handlers(_):
    wanted = (signal.SIG_IGN, signal.SIG_DFL)
    return (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == wanted

signal.signal(signal.SIGTERM, lambda *_: None)  # a handler that keeps a process alive (runner.cli's raises)
with TokenizePool(load_tokenizer(sys.argv[1]), val_fraction=0.1, num_workers=2) as pool:
    print(all(pool._pool.map(handlers, range(16), chunksize=1)))
"""


def test_tokenizer_workers_leave_interrupts_to_the_parent(tokenizer_dir):
    """Ctrl-C reaches the whole process group and the command's SIGTERM handler (runner.cli) would be
    inherited by the fork: each worker raised its own KeyboardInterrupt traceback, and a handler that
    returns kept a worker alive through the pool's terminate(). Workers are forked ignoring SIGINT and
    dying on SIGTERM; the pool closes (in a subprocess, so that a hang fails in seconds)."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER_SIGNALS, str(tokenizer_dir)], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
