"""What `fp8_head` costs in loss: the same training run with the bf16 head and with the FP8 head (the same
model, data, seed, steps and schedule), its validation losses side by side; one run of each per seed.

    python -m benchmarks.fp8_head_quality --tokenizer ../shared/tokenizers/gpt2 --out fp8q/ --json fp8q.json
    python -m benchmarks.fp8_head_quality --data-dir DIR --steps 400 --seeds 0,1 --out fp8q/

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


def train(args: argparse.Namespace, data_dir: Path, seed: int, fp8: bool) -> list[dict]:
    """One run of the trainer with `fp8_head: fp8`: its events."""
    run_dir = args.out / f"seed{seed}-{'fp8' if fp8 else 'bf16'}-head"
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
        "fp8_head": fp8,
    }
    if args.compile is not None:
        config["compile"] = {"true": True, "false": False}.get(args.compile, args.compile)
    (run_dir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "nanogpt.train", "--config", str(run_dir / "config.json")]
    done = subprocess.run(command, cwd=ROOT)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    if done.returncode != 0 or events[-1].get("status") != "done":
        raise SystemExit(f"{run_dir}: the run did not finish (exit {done.returncode}): {events[-1]}")
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
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed one pair of runs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", help="the trainer's compile setting (default: its own)")
    parser.add_argument("--out", type=Path, required=True, help="a directory for the runs (new)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    data_dir = prepared_data(args)
    runs = []
    for seed in seeds:
        bf16, fp8 = (summary(train(args, data_dir, seed, fp8)) for fp8 in (False, True))
        runs.append({"seed": seed, "bf16_head": bf16, "fp8_head": fp8})
        print(f"seed {seed}: {'step':>6} {'val, bf16 head':>15} {'val, FP8 head':>14} {'FP8 - bf16':>11}")
        for step, expected in bf16["val"].items():
            got = fp8["val"][step]
            change = f"{got - expected:+11.4f} ({got / expected - 1:+.2%})"
            print(f"{'':8} {step:>6} {expected:15.4f} {got:14.4f} {change}")
        for name, run in (("bf16 head", bf16), ("FP8 head", fp8)):
            speed = f"{run['tok_per_s']:,.0f} tokens/s" if run["tok_per_s"] else "no speed"
            print(
                f"{'':8} {name}: training loss of the last 20 steps {run['train_loss_last_20']:.4f}; {speed}"
            )
    result = {"data_dir": str(data_dir), "config": {k: str(v) for k, v in vars(args).items()}, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
