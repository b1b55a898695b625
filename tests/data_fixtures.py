"""Small corpora in the real datasets' schemas, written by the data tests (no network needed)."""

import json
import os
from pathlib import Path

SHARED = Path(os.environ.get("NANOSTUDY_SHARED") or Path(__file__).resolve().parents[2] / "shared")
GSM8K_DIR = SHARED / "gsm8k"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
]


def sentence(i: int, length: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(length)) + f" {i}."


def chat_rows(num_rows: int) -> list[dict]:
    """Two-turn conversations (a sentence, and the next one as the reply) in the `messages` format."""
    return [
        {
            "messages": [
                {"role": "user", "content": sentence(i)},
                {"role": "assistant", "content": sentence(i + 1)},
            ]
        }
        for i in range(num_rows)
    ]


def write_text_corpus(directory: Path, num_files: int = 40, sentences_per_file: int = 30) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    texts = []
    for f in range(num_files):
        text = "\n".join(sentence(f * 100 + s) for s in range(sentences_per_file))
        (directory / f"doc_{f:03d}.txt").write_text(text)
        texts.append(text)
    return texts


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def smoltalk_folder(root: Path, num_train: int = 30, num_test: int = 8) -> Path:
    def conversation(i):
        return {
            "messages": [
                {"role": "user", "content": f"Question {i}: {sentence(i, 6)}?"},
                {"role": "assistant", "content": f"Answer {i}: {sentence(i + 1, 8)}"},
            ]
        }

    folder = root / "smoltalk"
    write_parquet(
        folder / "data" / "train-00000-of-00001.parquet", [conversation(i) for i in range(num_train)]
    )
    write_parquet(
        folder / "data" / "test-00000-of-00001.parquet", [conversation(-i) for i in range(1, num_test + 1)]
    )
    return folder


MMLU_CARD = """---
configs:
- config_name: auxiliary_train
  data_files:
  - split: train
    path: auxiliary_train/train-*.parquet
- config_name: all
  data_files:
  - split: validation
    path: all/validation-*.parquet
---
# MMLU, laid out as on the hub
"""


def mmlu_folder(root: Path, num_train: int = 20, num_val: int = 6) -> Path:
    folder = root / "mmlu"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(MMLU_CARD)

    def row(i):
        return {
            "question": f"What is {i} mod 4?",
            "subject": "math",
            "choices": ["0", "1", "2", "3"],
            "answer": i % 4,
        }

    # cais/mmlu nests each auxiliary_train row under a `train` column.
    write_parquet(
        folder / "auxiliary_train" / "train-00000.parquet", [{"train": row(i)} for i in range(num_train)]
    )
    write_parquet(folder / "all" / "validation-00000.parquet", [row(i) for i in range(num_val)])
    return folder


def gsm8k_folder(root: Path, num_train: int = 12, num_test: int = 5) -> Path:
    """A copy of the first rows of the real GSM8K files when present, else rows in the same schema."""
    folder = root / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        real = GSM8K_DIR / f"{split}.jsonl"
        if real.is_file():
            lines = real.read_text().splitlines()[:count]
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        else:
            write_jsonl(
                folder / f"{split}.jsonl",
                [{"question": f"{i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(count)],
            )
    return folder
