"""What `fp8_head` costs in loss: the same training run with the bf16 head and with the FP8 head (the same
model, data, seed, steps and schedule), its validation losses side by side; one run of each per seed.

    python -m benchmarks.fp8_head_quality --tokenizer ../shared/tokenizers/gpt2 --out fp8q/ --json fp8q.json
    python -m benchmarks.fp8_head_quality --data-dir DIR --steps 400 --seeds 0,1 \
        --heads bf16,bf16-rerun,fp8 --out fp8q/

`--heads`: bf16 (`fp8_head: false`, the reference), fp8 (`fp8_head: true`), bf16-rerun (the bf16
run again, as it is: on a GPU, whose kernels may sum in a different order each run, what any small change
to the arithmetic does to the losses by itself; on the CPU the same losses). With several seeds, each
head's mean change over them is printed beside the bf16 head's own range from seed to seed.

Data: a prepared data directory (`--data-dir`), else the machine's own Python source prepared with
`--tokenizer` (`--max-bytes` of it; under `--data-root`). Each run is `python -m nanogpt.train` in a
process of its own, under `--out` (its config.json and events.jsonl stay there). Validation runs on the
exact head in both (evaluation multiplies the weights as they are), so the validation losses compare the
weights each head trained. Also printed: the mean training loss of the last 20 steps and tokens/s.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from nanogpt.events import read_events

ROOT = Path(__file__).resolve().parents[1]


def prepared_data(args: argparse.Namespace) -> Path:
    """The data directory: `--data-dir`, else Python source prepared with `--tokenizer`."""
    if args.data_dir is not None:
        return args.data_dir
    from runner.data.prepare import PrepareConfig, prepare

    config = PrepareConfig.from_dict(
        {"source": {"name": "python-source", "max_bytes": args.max_bytes}, "tokenizer": args.tokenizer}
    )
    return prepare(config, root=args.data_root, progress=False).data_dir


HEADS = ("bf16", "bf16-rerun", "fp8")


def train(args: argparse.Namespace, data_dir: Path, seed: int, head: str) -> list[dict]:
    """One run of the trainer with the head `head` (one of HEADS): its events."""
    run_dir = args.out / f"seed{seed}-{head}-head"
    if run_dir.exists():
        raise SystemExit(f"{run_dir}: already exists; give --out a new directory")
    run_dir.mkdir(parents=True)
    model = {"depth": args.depth, "sequence_len": args.sequence_len}
    model |= {key: getattr(args, key) for key in ("aspect_ratio", "head_dim") if getattr(args, key)}
    config = {
        "model": model,
        "data": {"train_dir": str(data_dir)},
        "train": {
            "num_steps": args.steps,
            "total_batch_tokens": args.total_batch,
            "device_batch_size": "auto",
        },
        "eval": {"every_steps": args.eval_every, "val_tokens": args.val_tokens},
        "seed": seed,
        "device": args.device,
        "fp8_head": head == "fp8",
    }
    if args.compile is not None:
        config["compile"] = {"true": True, "false": False}.get(args.compile, args.compile)
    (run_dir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(run_dir / "config.json")]
    done = subprocess.run(command, cwd=ROOT)
    events, _ = read_events(run_dir / "events.jsonl")
    last = events[-1] if events else "no events"
    if done.returncode != 0 or not events or last.get("status") != "done":
        raise SystemExit(f"{run_dir}: the run did not finish (exit {done.returncode}): {last}")
    return events


def summary(events: list[dict]) -> dict:
    steps = [e for e in events if e["kind"] == "step"]
    tail = [e["loss"] for e in steps[-20:]]
    speeds = [e["tok_per_s"] for e in steps[-20:] if e.get("tok_per_s")]
    return {
        "val": {e["step"]: e["val_loss"] for e in events if e["kind"] == "val"},
        "train_loss_last_20": sum(tail) / len(tail),
        "tok_per_s": sum(speeds) / len(speeds) if speeds else None,
    }


def over_seeds(runs: list[dict], heads: list[str]) -> dict:
    """At each validation step: each head's mean change from the bf16 head's loss (its own seed's), and the
    bf16 head's range over the seeds, the scale a change must clear to be more than the luck of a seed."""
    table = {}
    for step in runs[0]["bf16_head"]["val"]:
        expected = [run["bf16_head"]["val"][step] for run in runs]
        row = {"bf16_range": max(expected) - min(expected)}
        for head in heads[1:]:
            changes = [run[f"{head}_head"]["val"][step] - run["bf16_head"]["val"][step] for run in runs]
            row[head] = sum(changes) / len(changes)
        table[step] = row
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="a prepared data directory")
    parser.add_argument("--tokenizer", default="../shared/tokenizers/gpt2", help="without --data-dir")
    parser.add_argument("--max-bytes", default="120MB", help="of Python source, without --data-dir")
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/nanostudy-fp8-quality-data"))
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--aspect-ratio", type=int)
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--total-batch", type=int, default=262_144, help="tokens a step")
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--val-tokens", type=int, default=1_048_576)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed one run of each head")
    parser.add_argument("--heads", default="bf16,fp8", help=f"comma-separated, of {', '.join(HEADS)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", help="the trainer's compile setting (default: its own)")
    parser.add_argument("--out", type=Path, help="a directory for the runs (new); required")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out: required (a new directory for the runs)")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    heads = args.heads.split(",")
    if heads[0] != "bf16" or len(set(heads)) != len(heads) or not set(heads) <= set(HEADS):
        parser.error(
            f"--heads: bf16 first (the reference), then others of {', '.join(HEADS)}: {args.heads!r}"
        )
    data_dir = prepared_data(args)
    runs = []
    for seed in seeds:
        results = {head: summary(train(args, data_dir, seed, head)) for head in heads}
        runs.append({"seed": seed, **{f"{head}_head": result for head, result in results.items()}})
        print(f"seed {seed}: validation loss by step, and each head's change from the bf16 head's")
        for step, expected in results["bf16"]["val"].items():
            cells = [f"bf16 {expected:.4f}"]
            for head in heads[1:]:
                got = results[head]["val"][step]
                cells.append(f"{head} {got:.4f} ({got - expected:+.4f}, {got / expected - 1:+.2%})")
            print(f"{'':8} step {step:>6}: " + "; ".join(cells))
        for head, run in results.items():
            speed = f"{run['tok_per_s']:,.0f} tokens/s" if run["tok_per_s"] else "no speed"
            loss = run["train_loss_last_20"]
            print(f"{'':8} {head} head: training loss of the last 20 steps {loss:.4f}; {speed}")
    result = {"data_dir": str(data_dir), "config": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    if len(runs) > 1:
        result["over_seeds"] = over_seeds(runs, heads)
        print(f"over {len(runs)} seeds: each head's mean change from the bf16 head's validation loss")
        for step, row in result["over_seeds"].items():
            cells = [f"bf16's range from seed to seed {row['bf16_range']:.4f}"]
            cells += [f"{head} {row[head]:+.4f}" for head in heads[1:]]
            print(f"{'':8} step {step:>6}: " + "; ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
