"""nanogpt.chat_engine on checkpoints the real trainer wrote (tests/chat_fixtures.py): loading, the chat
template and raw continuation, determinism, KV-cached replies equal to full recompute, stop tokens and
strings, batches, lengths, and every way a checkpoint or a request can be bad."""

import json
import shutil

import pytest
import torch
from chat_fixtures import CONTEXT, REPLY
from trainer_fixtures import byte_tokenizer

from nanogpt import checkpoint as ckpt
from nanogpt.chat_engine import (
    ChatEngine,
    EngineError,
    PromptTooLongError,
    Sampling,
    SamplingError,
    _ReplyText,
)
from nanogpt.tokenizer import ChatMessage

USER = [ChatMessage(role="user", content="the cat sees a book.")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(chat_runs) -> ChatEngine:
    return ChatEngine.load(chat_runs.base)


@pytest.fixture(scope="module")
def chat(chat_runs) -> ChatEngine:
    return ChatEngine.load(chat_runs.chat, device="cpu")


def test_mode_comes_from_the_checkpoint(base, chat, chat_runs):
    assert (base.mode, chat.mode) == ("base", "chat")
    info = chat.describe()
    assert info["model"] == "chat-run/step_000060"
    assert info["checkpoint"] == str(chat_runs.chat / "checkpoints" / "step_000060")
    assert (info["context_tokens"], info["device"], info["dtype"]) == (CONTEXT, "cpu", "float32")
    assert not chat.cuda_graphs  # on the CPU decoding is eager
    tokenizer = chat.tokenizer
    # The chat template mid-training used, then the assistant's turn opened.
    assert chat.prompt_tokens(USER) == tokenizer.encode_chat_prompt(USER)
    assert tokenizer.decode(chat.prompt_tokens(USER)) == (
        "<|endoftext|><|im_start|>user\nthe cat sees a book.<|im_end|>\n<|im_start|>assistant\n"
    )
    # A base model continues the messages' text, after end-of-text as every training document starts.
    two = [*USER, ChatMessage(role="assistant", content="Yes")]
    assert base.prompt_tokens(two) == [
        base.tokenizer.eot_id,
        *base.tokenizer.encode("the cat sees a book.\n\nYes"),
    ]


def test_the_mid_trained_model_replies_and_stops_at_im_end(chat):
    for seed in (0, 1):
        reply = chat.complete(USER, Sampling(seed=seed))
        assert (reply.text, reply.finish_reason) == (REPLY, "stop")
        assert reply.completion_tokens == len(REPLY) + 1  # bytes, then <|im_end|>
        assert reply.prompt_tokens == len(chat.prompt_tokens(USER))


def test_same_seed_same_reply(base):
    sample = lambda seed: base.complete(USER, Sampling(seed=seed, max_tokens=40, temperature=1.0)).text
    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first


@torch.no_grad()
def test_cached_reply_equals_full_recompute(base):
    tokens = base.prompt_tokens(USER)
    reply = base.complete(USER, Sampling(temperature=0.0, max_tokens=30))
    for _ in range(30):
        logits = base.model(torch.tensor([tokens]))[0, -1, : base.model.config.vocab_size]
        tokens.append(int(logits.argmax()))
    expected = base.tokenizer.decode(tokens[-30:])
    assert (reply.text, reply.finish_reason, reply.completion_tokens) == (expected, "length", 30)


def test_streamed_deltas_add_up_to_the_reply(base):
    sampling = Sampling(seed=1, max_tokens=25)
    deltas = list(base.stream(USER, sampling))
    assert all(d.finish_reason is None for d in deltas[:-1]) and deltas[-1].finish_reason == "length"
    assert len(deltas) > 5 and [d.completion_tokens for d in deltas] == sorted(
        d.completion_tokens for d in deltas
    )
    assert "".join(d.text for d in deltas) == base.complete(USER, sampling).text


def test_a_stop_string_cuts_the_reply(base):
    full = base.complete(USER, Sampling(temperature=0.0, max_tokens=40)).text
    stop = full[10:13]
    cut = full.index(stop)
    deltas = list(base.stream(USER, Sampling(temperature=0.0, max_tokens=40, stop=("zzz", stop))))
    assert "".join(d.text for d in deltas) == full[:cut]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].completion_tokens < 40


def test_a_batch_replies_to_each_conversation(base, chat):
    other = [ChatMessage(role="user", content="one bird wants some bread and a book.")]
    greedy = Sampling(temperature=0.0, max_tokens=12)
    deltas = list(base.stream_batch([USER, other], greedy))
    for index, messages in enumerate([USER, other]):
        mine = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in mine) == base.complete(messages, greedy).text
        assert mine[-1].finish_reason == "length"
    # Rows end on their own: the chat model's replies stop at <|im_end|>.
    finished = [d for d in chat.stream_batch([USER, other, USER], Sampling(seed=0)) if d.finish_reason]
    assert sorted(d.index for d in finished) == [0, 1, 2] and {d.finish_reason for d in finished} == {"stop"}


def test_the_reply_ends_when_the_context_is_full(base):
    long = [ChatMessage(role="user", content="a" * (CONTEXT - 5))]  # + end-of-text: 4 positions left
    reply = base.complete(long, Sampling(seed=0))
    assert (reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == ("length", CONTEXT - 4, 5)


def test_bad_requests_raise_before_anything_runs(base):
    with pytest.raises(
        PromptTooLongError, match=f"is {CONTEXT + 1} tokens, more than the model's context of {CONTEXT}"
    ):
        base.stream([ChatMessage(role="user", content="a" * CONTEXT)])
    with pytest.raises(SamplingError, match="max_tokens: 1000000 is more than the model's context") as error:
        base.stream(USER, Sampling(max_tokens=1_000_000))
    assert error.value.param == "max_tokens"
    with pytest.raises(ValueError, match="at least one message"):
        base.stream([])
    for field, value in [
        ("max_tokens", 0),
        ("max_tokens", True),
        ("temperature", -1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_k", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("stop", ("",)),
        ("stop", ("a", "b", "c", "d", "e")),
        ("seed", -1),
        ("seed", "1"),
    ]:
        with pytest.raises(SamplingError, match=f"^{field}: ") as error:
            Sampling(**{field: value})
        assert error.value.param == field


def test_reply_text_waits_for_whole_characters_and_stop_strings():
    tokenizer = byte_tokenizer()
    text = _ReplyText(tokenizer, stop=("END",))
    out = [text.add(b) for b in "é·E".encode()]  # 2 + 2 bytes, then a possible start of END
    assert out == ["", "é", "", "·", ""]
    assert text.add(ord("x")) == "Ex"  # ruled out: released
    out = [text.add(b) for b in b"EN"] + [text.add(ord("D")), text.add(ord("!"))]
    assert out == ["", "", "", ""] and text.stopped
    held = _ReplyText(tokenizer, stop=("END",))
    assert [held.add(b) for b in b"aEN"] == ["a", "", ""]
    assert held.finish() == "EN"  # the reply ended: what was held back is text
    broken = _ReplyText(tokenizer, stop=())
    assert broken.add(0xC3) == "" and broken.finish() == "\ufffd"  # a cut character: replaced, not lost


# --- checkpoints that cannot be loaded --------------------------------------------------------------


def test_a_missing_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint or run directory"):
        ChatEngine.load(tmp_path / "nowhere")
    with pytest.raises(ckpt.CheckpointError, match="holds no checkpoint"):
        ChatEngine.load(tmp_path)


def _copy_checkpoint(chat_runs, tmp_path):
    step = ckpt.latest_checkpoint(chat_runs.chat)
    copy = tmp_path / "checkpoints" / step.name
    shutil.copytree(step, copy)
    return copy


def _edit_meta(directory, edit):
    path = directory / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_a_checkpoint_of_another_shape(chat_runs, tmp_path):
    copy = _copy_checkpoint(chat_runs, tmp_path)
    _edit_meta(copy, lambda meta: meta["model_config"].update(depth=3))
    with pytest.raises(EngineError, match=r"model.pt: does not fit the model of .*meta.json \(Missing key"):
        ChatEngine.load(tmp_path)
    _edit_meta(copy, lambda meta: meta["model_config"].update(depth=2, mlp="swiglu"))
    with pytest.raises(EngineError, match="model_config is not a model this code builds"):
        ChatEngine.load(copy)
    (copy / "model.pt").write_bytes(b"not a torch file")
    _edit_meta(copy, lambda meta: meta["model_config"].update(mlp="relu2"))
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt: cannot be loaded"):
        ChatEngine.load(copy)
    torch.save(torch.zeros(3), copy / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt: holds a Tensor, not a model's state_dict"):
        ChatEngine.load(copy)


def test_the_tokenizer_must_be_the_one_it_was_trained_with(chat_runs, tmp_path, chat):
    copy = _copy_checkpoint(chat_runs, tmp_path)
    _edit_meta(copy, lambda meta: meta["config"]["data"].update(train_dir=str(tmp_path / "gone")))
    with pytest.raises(EngineError, match=r"the training data, which cannot be read .*give the tokenizer"):
        ChatEngine.load(copy)
    chat.tokenizer.save(tmp_path / "tok")
    assert ChatEngine.load(copy, tokenizer=str(tmp_path / "tok")).mode == "chat"
    byte_tokenizer().save(tmp_path / "bytes")  # no chat tokens: another hash
    with pytest.raises(EngineError, match=r"trained with tokenizer bytes\+chat .* holds bytes"):
        ChatEngine.load(copy, tokenizer=str(tmp_path / "bytes"))
    with pytest.raises(EngineError, match="device 'meta': choose auto, cpu or cuda"):
        ChatEngine.load(copy, tokenizer=str(tmp_path / "tok"), device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="device 'cuda': CUDA is not available here"):
            ChatEngine.load(copy, tokenizer=str(tmp_path / "tok"), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_in_bf16_with_cuda_graphs(chat_runs, chat):
    gpu = ChatEngine.load(chat_runs.chat, device="cuda")
    assert gpu.describe()["dtype"] == "bfloat16" and gpu.cuda_graphs
    reply = gpu.complete(USER, Sampling(seed=0))
    assert (reply.text, reply.finish_reason) == (REPLY, "stop")
    assert gpu._decoders[1] is not None and gpu._decoders[1].captured
    greedy = Sampling(temperature=0.0, max_tokens=20)
    batch = list(gpu.stream_batch([USER, USER], greedy))
    assert {d.index for d in batch} == {0, 1}
