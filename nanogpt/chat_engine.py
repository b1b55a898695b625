"""A checkpoint loaded for conversation: the model, its tokenizer, the chat template, streamed text.

    engine = ChatEngine.load("runs/isoflop/ab12cd34ef56")   # a run directory, its checkpoints/ or a step_*
    for delta in engine.stream([ChatMessage(role="user", content="Hi!")], Sampling(max_tokens=100)):
        print(delta.text, end="")

The TUI's chat subprocess (`python -m nanogpt.chat`), `nanostudy chat` and `nanostudy serve` all run this
one engine. A mid-trained model (its checkpoint's config has mode "mid-training" and its tokenizer the chat
markers) gets the conversation in the format mid-training taught it,
`<|im_start|>role\\ncontent<|im_end|>\\n` per message and then `<|im_start|>assistant\\n`, and its reply ends
at `<|im_end|>`. A base model continues the text of the messages (joined by blank lines) after an
end-of-text, as every training document starts, and its reply ends at end-of-text.

On a GPU the weights are cast to bf16 once (parameters only: the rotary tables stay float32, as under the
trainer's autocast) and decoding replays a CUDA graph per batch size (`nanogpt.engine.Decoder`); on the CPU
everything is float32 and eager.
"""

from __future__ import annotations

import codecs
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanogpt import checkpoint as ckpt
from nanogpt.engine import Decoder, generate
from nanogpt.model import GPT, GPTConfig
from nanogpt.shards import ShardError, read_manifest
from nanogpt.tokenizer import EOT, IM_END, IM_START, ChatMessage, Tokenizer, TokenizerError, load_tokenizer

MAX_TEMPERATURE = 2.0  # OpenAI's bound; past it sampling is close to uniform noise anyway
MAX_STOP_STRINGS = 4  # OpenAI's bound


class EngineError(ValueError):
    """A checkpoint that cannot be loaded for chat; the message starts with the offending path."""


class PromptTooLongError(ValueError):
    """The conversation does not fit the model's context."""


class RequestError(ValueError):
    """A field of a request that is wrong; `param` names it (the message starts with it too)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


class SamplingError(RequestError):
    """A sampling setting out of range."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Sampling:
    """How to sample a reply. max_tokens None: until a stop, or the context is full."""

    max_tokens: int | None = None
    temperature: float = 0.9
    top_k: int | None = 200
    top_p: float | None = None
    stop: tuple[str, ...] = ()  # strings that end the reply (not included in it)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise SamplingError("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise SamplingError("temperature", f"must be a number in [0, 2], got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise SamplingError("top_k", f"must be a positive integer, got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise SamplingError("top_p", f"must be a number in (0, 1], got {self.top_p!r}")
        stop = self.stop
        if (
            not isinstance(stop, tuple)
            or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise SamplingError("stop", f"must be at most 4 non-empty strings, got {stop!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise SamplingError("seed", f"must be an integer in [0, 2^63), got {self.seed!r}")


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_KEYS = {"role", "content", "name"}


def messages_from_json(value: Any, *, param: str = "messages") -> list[ChatMessage]:
    """Messages as JSON gives them, `[{"role": ..., "content": ...}, ...]`, checked: role system, user or
    assistant ("developer" is OpenAI's newer name for system); content a string or a list of text parts
    (`{"type": "text", "text": ...}`); "name" is allowed and ignored. RequestError names the bad field."""
    if not isinstance(value, list) or not value:
        raise RequestError(param, "must be a non-empty list of {role, content} objects")
    messages = []
    for i, raw in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(raw, dict):
            raise RequestError(where, "must be an object with role and content")
        unknown = sorted(set(raw) - MESSAGE_KEYS)
        if unknown:
            raise RequestError(f"{where}.{unknown[0]}", "unknown field (a message has role, content, name)")
        role = raw.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
            raise RequestError(f"{where}.role", f"must be one of system, user, assistant; got {role!r}")
        messages.append(
            ChatMessage(role=ROLES[role], content=_content(raw.get("content"), f"{where}.content"))
        )
    return messages


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise RequestError(f"{where}[{j}]", "only text parts are supported: {type: text, text: ...}")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(where, f"must be a string or a list of text parts, got {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of conversation `index` of the batch. `finish_reason` is None while the reply goes on, and
    on its last delta "stop" (a stop token or stop string) or "length" (max_tokens, or the context full)."""

    index: int
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int  # sampled so far, a stop token included


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatEngine:
    """One model and its tokenizer, ready to reply. Not thread-safe: one generation at a time."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        *,
        chat: bool,
        name: str,
        checkpoint_dir: Path | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, the model "
                f"{model.config.vocab_size}"
            )
        if chat and not tokenizer.has_chat_tokens:
            raise ValueError(f"tokenizer {tokenizer.name} has no chat tokens ({IM_START}, {IM_END})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat = chat
        self.name = name
        self.checkpoint_dir = checkpoint_dir
        self.device = model.lm_head.weight.device
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        specials = (IM_START, IM_END, EOT) if chat else (EOT,)
        self.stop_ids = frozenset(tokenizer.special(s) for s in specials)
        self._decoders: dict[int, Decoder | None] = {}

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        tokenizer: str | None = None,
        cuda_graphs: bool | None = None,
    ) -> ChatEngine:
        """The newest checkpoint under `path` (a step directory, a run directory or its checkpoints/), on
        `device` ("auto": CUDA when there is one). The tokenizer is the training data's (from the
        checkpoint's config), or `tokenizer` (a spec for load_tokenizer); either way it must be the one the
        checkpoint was trained with (compared by hash). Raises EngineError (CheckpointError for a missing
        or damaged checkpoint), both ValueErrors that name the path."""
        checkpoint_dir = ckpt.resolve_checkpoint(path)
        meta = ckpt.read_meta(checkpoint_dir)
        meta_path = checkpoint_dir / ckpt.META_NAME
        try:
            config = GPTConfig(**meta["model_config"])
        except (TypeError, ValueError) as e:
            raise EngineError(f"{meta_path}: model_config is not a model this code builds ({e})") from None
        chosen = _checkpoint_tokenizer(meta_path, meta, tokenizer)
        if chosen.vocab_size != config.vocab_size:
            raise EngineError(
                f"{meta_path}: the model has {config.vocab_size} token ids, tokenizer {chosen.name} "
                f"{chosen.vocab_size}"
            )
        torch_device = _pick_device(device)
        with torch.device("meta"):
            model = GPT(config)
        model.to_empty(device=torch_device)
        model.init_weights()  # the rotary tables; the weights come next
        state = ckpt.load_model_state(checkpoint_dir, torch_device)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = (str(e).splitlines()[1:2] or [str(e)])[0].strip()
            raise EngineError(
                f"{checkpoint_dir / ckpt.MODEL_NAME}: does not fit the model of {meta_path} ({first})"
            ) from None
        if torch_device.type == "cuda":
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
        mode = (meta.get("config") or {}).get("mode")
        run_dir = checkpoint_dir.parent.parent if checkpoint_dir.parent.name == ckpt.CHECKPOINTS_DIR else None
        name = f"{run_dir.name}/{checkpoint_dir.name}" if run_dir else checkpoint_dir.name
        return cls(
            model,
            chosen,
            chat=mode == "mid-training" and chosen.has_chat_tokens,
            name=name,
            checkpoint_dir=checkpoint_dir,
            cuda_graphs=cuda_graphs,
        )

    @property
    def context_tokens(self) -> int:
        return self.model.config.sequence_len

    @property
    def mode(self) -> str:
        return "chat" if self.chat else "base"

    def describe(self) -> dict[str, Any]:
        """What the protocol's `ready` event and the server's model entry say about the model."""
        return {
            "model": self.name,
            "mode": self.mode,
            "checkpoint": None if self.checkpoint_dir is None else str(self.checkpoint_dir),
            "context_tokens": self.context_tokens,
            "num_params": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "dtype": str(self.model.lm_head.weight.dtype).removeprefix("torch."),
        }

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The token ids the model sees for a conversation (see the module docstring)."""
        if not messages:
            raise ValueError("messages: at least one message is needed")
        if self.chat:
            ids = self.tokenizer.encode_chat_prompt(list(messages))
        else:
            ids = [self.tokenizer.eot_id, *self.tokenizer.encode("\n\n".join(m.content for m in messages))]
        if len(ids) > self.context_tokens:
            raise PromptTooLongError(
                f"the conversation is {len(ids)} tokens, more than the model's context of "
                f"{self.context_tokens} tokens"
            )
        return ids

    def check_sampling(self, sampling: Sampling) -> None:
        """SamplingError where the settings cannot work with this model (what Sampling checks alone cannot
        know): a max_tokens beyond the context."""
        if sampling.max_tokens is not None and sampling.max_tokens > self.context_tokens:
            raise SamplingError(
                "max_tokens",
                f"{sampling.max_tokens} is more than the model's context of {self.context_tokens} tokens",
            )

    def stream(self, messages: Sequence[ChatMessage], sampling: Sampling = Sampling()) -> Iterator[Delta]:
        """The reply to one conversation, as it is sampled. Bad input raises here, at the call."""
        return self.stream_batch([messages], sampling)

    def stream_batch(
        self, conversations: Sequence[Sequence[ChatMessage]], sampling: Sampling = Sampling()
    ) -> Iterator[Delta]:
        """Replies to several conversations, decoded together; each Delta says whose it is. Bad input
        raises here, at the call; closing the iterator stops the generation."""
        if not conversations:
            raise ValueError("conversations: at least one is needed")
        prompts = [self.prompt_tokens(messages) for messages in conversations]
        self.check_sampling(sampling)
        # Room left in the context: the last sampled token is never fed back, hence the + 1.
        room = self.context_tokens - max(len(p) for p in prompts) + 1
        max_new = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        return self._stream(prompts, max_new, sampling)

    def complete(self, messages: Sequence[ChatMessage], sampling: Sampling = Sampling()) -> Completion:
        """The whole reply to one conversation."""
        parts: list[str] = []
        for delta in self.stream(messages, sampling):
            parts.append(delta.text)
            if delta.finish_reason is not None:
                return Completion(
                    "".join(parts), delta.finish_reason, delta.prompt_tokens, delta.completion_tokens
                )
        raise AssertionError("a stream ends with a finish_reason")

    def _stream(self, prompts: list[list[int]], max_new: int, sampling: Sampling) -> Iterator[Delta]:
        texts = [_ReplyText(self.tokenizer, sampling.stop) for _ in prompts]
        counts = [0] * len(prompts)
        finished = [False] * len(prompts)
        steps = generate(
            self.model,
            prompts,
            max_new_tokens=max_new,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            stop_tokens=self.stop_ids,
            seed=sampling.seed,
            decoder=self._decoder(len(prompts)),
        )
        try:
            for step in steps:
                for i, token in enumerate(step):
                    if token is None or finished[i]:
                        continue
                    counts[i] += 1
                    if token in self.stop_ids:
                        text, reason = texts[i].finish(), "stop"
                    else:
                        text = texts[i].add(token)
                        reason = "stop" if texts[i].stopped else "length" if counts[i] == max_new else None
                        if reason == "length":
                            text += texts[i].finish()
                            reason = "stop" if texts[i].stopped else reason
                    finished[i] = reason is not None
                    if text or reason:
                        yield Delta(i, text, reason, len(prompts[i]), counts[i])
                if all(finished):
                    return
        finally:
            steps.close()

    def _decoder(self, batch_size: int) -> Decoder | None:
        """The CUDA-graph decoder for this batch size, captured on first use; None: eager decoding."""
        if not self.cuda_graphs:
            return None
        if batch_size not in self._decoders:
            try:
                self._decoders[batch_size] = Decoder(self.model, batch_size, cuda_graph=True)
            except Exception as e:  # a driver or kernel that cannot be captured: decode eagerly instead
                print(
                    f"nanogpt.chat_engine: no CUDA graph ({type(e).__name__}: {e}); decoding eagerly",
                    file=sys.stderr,
                )
                self._decoders[batch_size] = None
        return self._decoders[batch_size]


class _ReplyText:
    """A reply's token ids turned into text as they come: UTF-8 decoded incrementally (a character split
    over tokens waits for its last byte), and cut at the first stop string. Text that could be the start
    of a stop string is held back until the string is ruled out."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._text = ""
        self._sent = 0  # characters of _text already returned
        self.stopped = False  # a stop string was found

    def add(self, token_id: int) -> str:
        self._text += self._utf8.decode(self._tokenizer.decode_token_bytes(token_id))
        return self._release(final=False)

    def finish(self) -> str:
        self._text += self._utf8.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self._text)
        hits = [i for s in self._stop if (i := self._text.find(s, self._sent)) >= 0]
        if hits:
            end = min(hits)
            self.stopped = True
        elif not final:
            end -= max(
                (n for s in self._stop for n in range(1, len(s)) if self._text.endswith(s[:n])), default=0
            )
            end = max(end, self._sent)
        out = self._text[self._sent : end]
        self._sent = end
        return out


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as e:
        raise EngineError(f"device {device!r}: {e}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r}: CUDA is not available here; use --device cpu")
    if chosen.type not in ("cuda", "cpu"):
        raise EngineError(f"device {device!r}: choose auto, cpu or cuda[:N]")
    return chosen


def _checkpoint_tokenizer(meta_path: Path, meta: dict, spec: str | None) -> Tokenizer:
    """The tokenizer the checkpoint was trained with: `spec`, or the one its config names, or its training
    data's; checked against the name and hash meta.json records."""
    saved = meta.get("tokenizer") or {}
    if spec is None:
        data = (meta.get("config") or {}).get("data") or {}
        spec = data.get("tokenizer")
        if not spec:
            train_dir = data.get("train_dir")
            if not train_dir:
                raise EngineError(f"{meta_path}: names no training data to take the tokenizer from; give one")
            try:
                spec = str(read_manifest(train_dir).tokenizer_dir)
            except (ShardError, OSError, ValueError) as e:
                raise EngineError(
                    f"{meta_path}: the tokenizer comes from the training data, which cannot be read ({e}); "
                    "give the tokenizer (--tokenizer)"
                ) from None
    try:
        tokenizer = load_tokenizer(spec)
    except (TokenizerError, OSError) as e:
        raise EngineError(f"{meta_path}: cannot load the tokenizer: {e}") from None
    if saved.get("hash") and tokenizer.hash != saved["hash"]:
        raise EngineError(
            f"{meta_path}: trained with tokenizer {saved.get('name')} ({str(saved['hash'])[:12]}), but "
            f"{spec} holds {tokenizer.name} ({tokenizer.hash[:12]})"
        )
    return tokenizer
