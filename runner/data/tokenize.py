"""Multiprocess tokenization: documents in, per-split token arrays (and loss masks) out, in input order.

Kept apart from prepare.py so worker processes import only this light module (tiktoken, numpy).
"""

import contextlib
import hashlib
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from nanogpt.tokenizer import Tokenizer
from runner.data.sources import Document, SourceError

CHUNK_DOCUMENTS = 512
CHUNK_BYTES = 1 << 20  # big enough to amortise inter-process traffic, small enough to keep workers even


def is_validation(document: Document, val_fraction: float) -> bool:
    """Held out by content hash: deterministic, and duplicates always land on the same side."""
    if document.split is not None:
        return document.split == "val"
    digest = hashlib.sha256(document.content_key()).digest()
    return int.from_bytes(digest[:8], "little") < val_fraction * 2**64


@dataclass(frozen=True, slots=True)
class ChunkTokens:
    """One chunk's tokens per split; masks are None unless the documents are conversations."""

    train_tokens: np.ndarray
    train_mask: np.ndarray | None
    val_tokens: np.ndarray
    val_mask: np.ndarray | None
    num_documents: int
    num_bytes: int


def tokenize_chunk(tokenizer: Tokenizer, documents: list[Document], val_fraction: float) -> ChunkTokens:
    """Each document becomes [end-of-text, its tokens...]; conversations also get their loss mask."""
    ids: dict[bool, list[np.ndarray]] = {False: [], True: []}
    masks: dict[bool, list[np.ndarray]] = {False: [], True: []}
    with_mask = documents[0].messages is not None if documents else False
    eot = np.array([tokenizer.eot_id], dtype=np.uint32)
    num_bytes = 0
    for document in documents:
        val = is_validation(document, val_fraction)
        num_bytes += document.num_bytes
        try:
            if document.messages is not None:
                doc_ids, doc_mask = tokenizer.encode_chat(list(document.messages))
                ids[val].append(np.array(doc_ids, dtype=np.uint32))
                masks[val].append(np.array(doc_mask, dtype=np.uint8))
            else:
                # Arrays straight from tiktoken: Python lists would cost a third of the encoding time.
                ids[val] += [eot, tokenizer.encode_array(document.text)]
        except Exception as e:  # in a worker process: say which document, or the user cannot find it
            raise SourceError(
                f"{document.where or 'a document'}: could not be tokenized with {tokenizer.name} "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from None

    def join(arrays: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)

    return ChunkTokens(
        train_tokens=join(ids[False], np.uint32),
        train_mask=join(masks[False], np.uint8) if with_mask else None,
        val_tokens=join(ids[True], np.uint32),
        val_mask=join(masks[True], np.uint8) if with_mask else None,
        num_documents=len(documents),
        num_bytes=num_bytes,
    )


def chunked(documents: Iterable[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for document in documents:
        chunk.append(document)
        size += document.num_bytes
        if len(chunk) >= CHUNK_DOCUMENTS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_worker_tokenizer: Tokenizer | None = None
_worker_val_fraction = 0.0


def _init_worker(tokenizer: Tokenizer, val_fraction: float) -> None:
    global _worker_tokenizer, _worker_val_fraction
    _worker_tokenizer, _worker_val_fraction = tokenizer, val_fraction


@contextlib.contextmanager
def _worker_signals() -> Iterator[None]:
    """The parent alone handles an interrupt (Ctrl-C reaches the whole process group; the command's SIGTERM
    handler would be inherited by the fork) and then terminates the pool: workers are forked ignoring
    SIGINT and dying quietly on SIGTERM, with no KeyboardInterrupt traceback of their own and no window
    before an initializer in which a handler could keep one alive through the pool's terminate()."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _work(documents: list[Document]) -> ChunkTokens:
    assert _worker_tokenizer is not None, "worker used before its initializer ran"
    return tokenize_chunk(_worker_tokenizer, documents, _worker_val_fraction)


def default_num_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class TokenizePool:
    """`imap(chunks)` yields ChunkTokens in input order; one worker means no subprocesses at all."""

    def __init__(self, tokenizer: Tokenizer, *, val_fraction: float, num_workers: int | None = None):
        self.tokenizer = tokenizer
        self.val_fraction = val_fraction
        self.num_workers = num_workers or default_num_workers()
        self._pool = None
        if self.num_workers > 1:
            # fork where there is one: workers start at once and callers need no `if __name__ == "__main__"`
            # guard. Create the pool before any threads (progress bars) exist.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with _worker_signals():
                self._pool = context.Pool(
                    self.num_workers, initializer=_init_worker, initargs=(tokenizer, val_fraction)
                )

    def imap(self, chunks: Iterable[list[Document]]) -> Iterator[ChunkTokens]:
        if self._pool is None:
            for chunk in chunks:
                yield tokenize_chunk(self.tokenizer, chunk, self.val_fraction)
        else:
            # Pool.imap would read the whole (possibly huge) source ahead into memory; keep a bounded window
            # of chunks in flight instead, collected in submission order.
            in_flight: deque = deque()
            for chunk in chunks:
                in_flight.append(self._pool.apply_async(_work, (chunk,)))
                if len(in_flight) >= 2 * self.num_workers:
                    yield in_flight.popleft().get()
            while in_flight:
                yield in_flight.popleft().get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "TokenizePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
