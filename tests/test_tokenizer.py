"""Tokenizers: real GPT-2 files offline, saved tokenizers, chat rendering, byte lengths, clear errors."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tiktoken.registry

from nanogpt.tokenizer import (
    EOT,
    GPT2_PATTERN,
    IM_END,
    IM_START,
    ChatMessage,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

SHARED = Path(os.environ.get("NANOSTUDY_SHARED") or Path(__file__).resolve().parents[2] / "shared")
GPT2_DIR = SHARED / "tokenizers" / "gpt2"
needs_gpt2 = pytest.mark.skipif(
    not (GPT2_DIR / "gpt2.tiktoken").is_file(),
    reason=f"GPT-2 vocabulary not found at {GPT2_DIR} (set NANOSTUDY_SHARED to the shared data folder)",
)


def tiny_tokenizer() -> Tokenizer:
    """Bytes plus two merges: enough to test everything that does not depend on GPT-2's ranks."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    ranks[b"abc"] = 257
    return Tokenizer(name="tiny", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 258})


@needs_gpt2
def test_gpt2_from_shared_files():
    tokenizer = load_tokenizer(GPT2_DIR)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert (tokenizer.vocab_size, tokenizer.eot_id, tokenizer.name) == (50257, 50256, "gpt2")
    assert tokenizer.decode([15496, 995]) == "Hello world"
    assert load_tokenizer(GPT2_DIR / "gpt2.tiktoken").hash == tokenizer.hash


@needs_gpt2
def test_gpt2_through_tiktoken_cache(tmp_path, monkeypatch):
    # tiktoken's own cache layout: the original files under the sha1 of their download address.
    (tmp_path / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee").write_bytes((GPT2_DIR / "vocab.bpe").read_bytes())
    (tmp_path / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6").write_bytes(
        (GPT2_DIR / "encoder.json").read_bytes()
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NANOSTUDY_GPT2_DIR", raising=False)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    tokenizer = load_tokenizer("gpt2")
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.hash == load_tokenizer(GPT2_DIR).hash


@needs_gpt2
@pytest.mark.parametrize(
    "files",
    [
        {
            "6d1cbeee0f20b3d9449abfede4726ed8212e3aee": "vocab.bpe",
            "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6": "encoder.json",
        },
        {"0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4": "gpt2.tiktoken"},  # tiktoken's r50k_base cache file
        {"vocab.bpe": "vocab.bpe", "encoder.json": "encoder.json"},  # GPT-2's original release
    ],
    ids=["tiktoken-cache-gpt2", "tiktoken-cache-r50k", "original-files"],
)
def test_gpt2_from_a_directory_of_its_files_in_any_layout(tmp_path, monkeypatch, files):
    for name, original in files.items():
        (tmp_path / name).write_bytes((GPT2_DIR / original).read_bytes())
    expected = load_tokenizer(GPT2_DIR)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.hash == expected.hash and tokenizer.encode("Hello world") == [15496, 995]
    monkeypatch.setenv("NANOSTUDY_GPT2_DIR", str(tmp_path))
    assert load_tokenizer("gpt2").hash == expected.hash


def test_gpt2_dir_variable_without_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSTUDY_GPT2_DIR", str(tmp_path))
    with pytest.raises(TokenizerError, match=r"NANOSTUDY_GPT2_DIR=.*holds none of GPT-2's files"):
        load_tokenizer("gpt2")


def test_gpt2_offline_without_files_says_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache, and no network here
    monkeypatch.delenv("NANOSTUDY_GPT2_DIR", raising=False)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # tiktoken keeps loaded encodings per process
    try:
        load_tokenizer("gpt2")
    except TokenizerError as e:
        message = str(e)
    else:
        pytest.skip("tiktoken reached the network, so the offline error cannot be exercised here")
    # Every way to provide the files: a directory (any layout), NANOSTUDY_GPT2_DIR, TIKTOKEN_CACHE_DIR.
    for way in ["gpt2.tiktoken", "vocab.bpe + encoder.json", "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"]:
        assert way in message
    assert "NANOSTUDY_GPT2_DIR" in message and "TIKTOKEN_CACHE_DIR" in message and "\n" not in message


def test_unknown_spec(tmp_path):
    with pytest.raises(TokenizerError, match="neither 'gpt2' nor an existing directory"):
        load_tokenizer("gpt3")
    with pytest.raises(TokenizerError, match=r"holds neither .* nor GPT-2's files; for GPT-2, give"):
        load_tokenizer(tmp_path)


def test_text_that_looks_special_is_ordinary():
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode(f"x{EOT}y")
    assert tokenizer.eot_id not in ids
    assert tokenizer.decode(ids) == f"x{EOT}y"


def test_token_bytes():
    tokenizer = tiny_tokenizer()
    table = tokenizer.token_bytes()
    assert table.dtype == np.int32 and len(table) == tokenizer.vocab_size == 259
    assert (table[:256] == 1).all() and table[256] == 2 and table[257] == 3 and table[258] == 0
    text = "abc abcab ümlaut"
    assert table[tokenizer.encode(text)].sum() == len(text.encode())


def test_save_load_round_trip_and_tamper(tmp_path):
    tokenizer = tiny_tokenizer().with_chat_tokens()
    tokenizer.save(tmp_path, extra={"trained_on": "unit test"})
    loaded = load_tokenizer(tmp_path)
    assert loaded.hash == tokenizer.hash and loaded.vocab_size == tokenizer.vocab_size == 261
    assert loaded.metadata["trained_on"] == "unit test"
    assert loaded.encode("abcabc") == tokenizer.encode("abcabc") == [257, 257]
    lines = (tmp_path / "tokenizer.tiktoken").read_text().splitlines()
    (tmp_path / "tokenizer.tiktoken").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path)


def test_hash_depends_on_ranks_and_specials():
    base = tiny_tokenizer()
    assert base.with_chat_tokens().hash != base.hash
    ranks = dict(base.mergeable_ranks)
    ranks[b"abc"], ranks[b"ab"] = 256, 257
    swapped = Tokenizer(name="tiny", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 258})
    assert swapped.hash != base.hash


def _edited(tmp_path: Path, **changes) -> Path:
    """A saved tiny tokenizer whose tokenizer.json has `changes` (None: the key removed)."""
    import json

    tiny_tokenizer().save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    meta.update(changes)
    meta = {key: value for key, value in meta.items() if value is not None}
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    return tmp_path / "tokenizer.json"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"special_tokens": ["<|endoftext|>"]}, r"special_tokens: must map each special token to its id"),
        ({"special_tokens": {EOT: "x"}}, r"special_tokens: must map each special token to its id"),
        ({"name": 7}, r"name: must be a string"),
        ({"pattern": "(?<bad"}, r"pattern: not a valid regular expression"),
        # The id of byte 5's token: the hash (removed) would have caught the edit; the ids must not.
        ({"special_tokens": {EOT: 5}, "hash": None}, r"special token ids \['<\|endoftext\|>'\] collide"),
    ],
)
def test_a_malformed_tokenizer_json_is_one_error_naming_the_file(tmp_path, changes, message):
    path = _edited(tmp_path, **changes)
    with pytest.raises(TokenizerError, match=rf"^{re.escape(str(path))}: (tokenizer tiny: )?{message}"):
        load_tokenizer(tmp_path)


def test_a_binary_or_non_object_tokenizer_json_is_named(tmp_path):
    path = _edited(tmp_path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(TokenizerError, match=rf"^{re.escape(str(path))}: not valid JSON"):
        load_tokenizer(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(TokenizerError, match=rf"^{re.escape(str(path))}: not a JSON object"):
        load_tokenizer(tmp_path)


def test_special_ids_must_not_collide_with_ranks_or_each_other():
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(TokenizerError, match=r"special token ids \['<\|endoftext\|>'\] collide"):
        Tokenizer(name="t", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 255})
    with pytest.raises(TokenizerError, match="share an id"):
        Tokenizer(
            name="t", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 256, IM_END: 256}
        )


def test_missing_bytes_refused():
    ranks = {bytes([b]): b for b in range(255)}
    with pytest.raises(TokenizerError, match="single bytes have no token"):
        Tokenizer(name="t", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 255})


def test_chat_rendering_and_mask():
    tokenizer = tiny_tokenizer().with_chat_tokens()
    start, end = tokenizer.special(IM_START), tokenizer.special(IM_END)
    assert (start, end) == (259, 260)
    messages = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="abc")]
    ids, mask = tokenizer.encode_chat(messages)
    assert len(ids) == len(mask)
    assert ids[0] == tokenizer.eot_id and ids.count(start) == 2 and ids.count(end) == 2
    assert tokenizer.decode([i for i in ids if i < 256 or i in (256, 257)]) == "user\nhi\nassistant\nabc\n"
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained == [257, end]  # "abc" and the closing marker, nothing of the user turn
    prompt = tokenizer.encode_chat_prompt(messages[:1])
    assert prompt[-1 - len(tokenizer.encode("assistant\n"))] == start


def test_chat_needs_chat_tokens():
    with pytest.raises(TokenizerError, match="with_chat_tokens"):
        tiny_tokenizer().encode_chat([ChatMessage(role="user", content="x")])
    with pytest.raises(ValueError, match="role"):
        ChatMessage(role="robot", content="x")


def test_pickles_for_worker_processes():
    import pickle

    tokenizer = tiny_tokenizer()
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.hash == tokenizer.hash and clone.encode("abcab") == tokenizer.encode("abcab")


def test_encode_array_handles_lone_surrogates_as_encode_does():
    tokenizer = tiny_tokenizer()
    for text in ["\ud800", "a\udfffb abc", "ok \ud83d\ude00 pair"]:
        array = tokenizer.encode_array(text)
        assert array.dtype == np.uint32 and array.tolist() == tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode_array("x\ud800y")) == "x\ufffdy"


def test_without_chat_tokens_undoes_with_chat_tokens():
    base = tiny_tokenizer()
    chat = base.with_chat_tokens()
    assert chat.without_chat_tokens().hash == base.hash and chat.without_chat_tokens().name == "tiny"
    assert base.without_chat_tokens() is base
