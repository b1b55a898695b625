"""Tokenization throughput: nanostudy's multiprocess path against plain single-process tiktoken, one run.

Both encode the same in-memory text (the python-source corpus). The reference is a loop of tiktoken's
`encode_ordinary` in this process; ours is `runner.data.tokenize.TokenizePool`, exactly what `nanostudy
prepare` runs (chunking, worker processes, validation hashing, numpy arrays back to the parent). Target:
ours ≥ 0.9 × cores × the single-process rate.

    python benchmarks/tokenize_throughput.py --tokenizer /path/to/gpt2_dir --max-bytes 50MB
"""

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nanogpt.tokenizer import load_tokenizer
from runner.data.sources import Document, SourceSpec, iter_documents, parse_bytes
from runner.data.tokenize import TokenizePool, chunked, default_num_workers

TARGET = 0.9

# Set before the ceiling's pool forks, so its workers inherit the text instead of receiving it.
_ceiling_texts: list[str] = []
_ceiling_encoding = None


def _ceiling_work(args: tuple[int, int]) -> int:
    part, num_parts = args
    return sum(len(_ceiling_encoding.encode_ordinary(t)) for t in _ceiling_texts[part::num_parts])


def ceiling_pool(encoding, texts: list[str], num_workers: int):
    """N independent tiktoken processes on pre-split text, with no pipeline at all: what the hardware
    gives N busy cores (turbo clocks fall and hyperthreads share a core as more of them work)."""
    global _ceiling_texts, _ceiling_encoding
    _ceiling_texts, _ceiling_encoding = texts, encoding
    return multiprocessing.get_context("fork").Pool(num_workers)


def default_tokenizer() -> str:
    shared = Path(os.environ.get("NANOSTUDY_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    gpt2_dir = shared / "tokenizers" / "gpt2"
    return str(gpt2_dir) if (gpt2_dir / "gpt2.tiktoken").is_file() else "gpt2"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default=default_tokenizer(), help="gpt2 or a tokenizer directory")
    parser.add_argument("--max-bytes", default="50MB", help="python-source text to encode")
    parser.add_argument("--workers", type=int, default=default_num_workers(), help="worker processes (cores)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timings for each side")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer)
    documents = list(iter_documents(SourceSpec(name="python-source", max_bytes=parse_bytes(args.max_bytes))))
    texts = [d.text for d in documents]
    num_bytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts):,} python-source files, {num_bytes / 1e6:.1f} MB; tokenizer {tokenizer.name}")

    encoding = tokenizer._encoding  # the bare tiktoken Encoding: the reference does nothing else

    def single() -> int:
        return sum(len(encoding.encode_ordinary(t)) for t in texts)

    def multi(pool: TokenizePool) -> int:
        return sum(len(c.train_tokens) + len(c.val_tokens) for c in pool.imap(chunked(documents)))

    # Alternate the two sides and keep each one's best time, so load from other processes on a shared
    # machine biases neither.
    single_times, multi_times, ceiling_times = [], [], []
    parts = [(i, args.workers) for i in range(args.workers)]
    with (
        ceiling_pool(encoding, texts, args.workers) as ceiling,
        TokenizePool(tokenizer, val_fraction=0.01, num_workers=args.workers) as pool,
    ):
        list(pool.imap(chunked([Document(text="warm up the workers")] * args.workers)))
        ceiling.map(len, parts)
        for _ in range(args.repeats):
            single_tokens = _timed(single, single_times)
            multi_tokens = _timed(lambda: multi(pool), multi_times)
            ceiling_tokens = _timed(
                lambda: sum(ceiling.map(_ceiling_work, parts, chunksize=1)), ceiling_times
            )
    assert ceiling_tokens == single_tokens
    single_s, multi_s, ceiling_s = min(single_times), min(multi_times), min(ceiling_times)
    # Ours adds one end-of-text token per document; the rest must be the same tokens.
    assert multi_tokens == single_tokens + len(texts), (multi_tokens, single_tokens)

    single_rate = num_bytes / single_s / 1e6
    multi_rate = num_bytes / multi_s / 1e6
    ratio = multi_rate / (args.workers * single_rate)
    print(
        f"single-process tiktoken: {single_rate:6.2f} MB/s ({single_tokens / single_s / 1e6:.2f} M tokens/s)"
    )
    ceiling_rate = num_bytes / ceiling_s / 1e6
    per_core = multi_rate / args.workers
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"nanostudy, {args.workers} workers:    {multi_rate:6.2f} MB/s = {per_core:.2f} MB/s per core")
    print(f"ratio to {args.workers} × single: {ratio:.2f} (target ≥ {TARGET}) {verdict}")
    print(
        f"ceiling ({args.workers} bare tiktoken processes, text pre-split): {ceiling_rate:6.2f} MB/s "
        f"= {ceiling_rate / (args.workers * single_rate):.2f} × {args.workers} × single; "
        f"nanostudy reaches {multi_rate / ceiling_rate:.2f} of it"
    )
    return 0


def _timed(func, times: list[float]) -> int:
    start = time.perf_counter()
    result = func()
    times.append(time.perf_counter() - start)
    return result


if __name__ == "__main__":
    sys.exit(main())
