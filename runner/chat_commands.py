"""`nanostudy chat` and `nanostudy serve`: talk to a model on the command line, or serve it over HTTP.

    nanostudy chat  CHECKPOINT|STUDY [--db URL] [--device auto] [--temperature 0.9] [--max-tokens N] ...
    nanostudy serve CHECKPOINT|STUDY [--db URL] [--host 127.0.0.1] [--port 8003] [--device auto]

CHECKPOINT is a checkpoint directory (step_*), a run directory or its checkpoints/ (the newest). STUDY is a
study file (or a study's name with --db): its best checkpoint from the store, by the rule the TUI uses
(`runner.api.best_checkpoint`). Both load the model in this process (nanogpt.chat_engine).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import sys
import time
from pathlib import Path

from runner.api import UnknownStudyError, best_checkpoint, open_study
from store import StoreNotFoundError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class TargetError(ValueError):
    """CHECKPOINT|STUDY names nothing to load."""


def resolve_target(target: str, db: str | None = None) -> tuple[Path, str]:
    """(what to load, a line saying where it comes from): a checkpoint or run directory as it is, or a
    study's best checkpoint."""
    path = Path(target)
    if path.is_dir():
        return path, f"checkpoint {path}"
    if not path.is_file() and db is None:
        raise TargetError(
            f"{target}: neither a checkpoint directory, a run directory nor a study file (a study's name "
            "needs --db)"
        )
    try:
        store, name = open_study(target, db)
    except (StoreNotFoundError, UnknownStudyError, ValueError) as error:
        raise TargetError(str(error)) from None
    with store:
        try:
            best = best_checkpoint(store, name)
        except UnknownStudyError as error:
            raise TargetError(str(error)) from None
    if best is None:
        raise TargetError(f"study {name!r} has no finished cell with a final checkpoint yet")
    score = "?" if best.val_bpb is None else f"{best.val_bpb:.4f}"
    return best.path, (
        f"study {name}: cell {best.cell_id} ({best.mode}, depth {best.depth}, {best.flops:.1e} FLOPs, "
        f"val bpb {score}), step {best.step}"
    )


def _load_engine(args, command: str):
    """The engine for args.target, or None after printing why not."""
    try:
        path, origin = resolve_target(args.target, args.db)
    except TargetError as error:
        print(f"nanostudy {command}: error: {error}", file=sys.stderr)
        return None
    print(f"loading {origin}", file=sys.stderr)
    from nanogpt.chat_engine import ChatEngine

    try:
        return ChatEngine.load(path, device=args.device, tokenizer=args.tokenizer)
    except ValueError as error:  # EngineError, CheckpointError
        print(f"nanostudy {command}: error: {error}", file=sys.stderr)
        return None


# --- nanostudy chat --------------------------------------------------------------------------------

CHAT_HELP = "/reset starts over, /quit (or Ctrl-D) leaves; Ctrl-C stops a reply"


def _cmd_chat(args) -> int:
    engine = _load_engine(args, "chat")
    if engine is None:
        return EXIT_BAD_INPUT
    from nanogpt.chat_engine import PromptTooLongError, RequestError, Sampling
    from nanogpt.tokenizer import ChatMessage

    try:
        sampling = Sampling(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        engine.check_sampling(sampling)  # here, not at the first message
    except RequestError as error:
        print(f"nanostudy chat: error: --{error.param.replace('_', '-')}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    info = engine.describe()
    what = "chat model" if engine.chat else "base model: each line you type is continued as text"
    print(f"{info['model']} ({what}; context {info['context_tokens']} tokens; {info['device']})")
    print(CHAT_HELP)
    system = [ChatMessage(role="system", content=args.system)] if args.system and engine.chat else []
    history: list[ChatMessage] = []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return EXIT_OK
        command = line.strip()
        if command in ("/quit", "/exit"):
            return EXIT_OK
        if command == "/reset":
            history = []
            print("(a new conversation)")
            continue
        if not command:
            continue
        user = ChatMessage(role="user", content=line)
        messages = [*system, *history, user] if engine.chat else [user]
        try:
            deltas = engine.stream(messages, sampling)
        except PromptTooLongError as error:
            print(f"({error}; /reset starts over)")
            continue
        reply, finish_reason = _print_reply(deltas)
        if engine.chat:
            history += [user, ChatMessage(role="assistant", content=reply)]
        if finish_reason != "stop":
            print(f"({'stopped' if finish_reason is None else 'cut at max tokens or the context end'})")


def _print_reply(deltas) -> tuple[str, str | None]:
    """Stream a reply to stdout; (its text, its finish reason, None when stopped with Ctrl-C)."""
    print("model> ", end="", flush=True)
    parts: list[str] = []
    finish_reason = None
    try:
        for delta in deltas:
            parts.append(delta.text)
            print(delta.text, end="", flush=True)
            finish_reason = delta.finish_reason
    except KeyboardInterrupt:
        finish_reason = None
    finally:
        deltas.close()
        print()
    return "".join(parts), finish_reason


# --- nanostudy serve -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cmd_serve(args) -> int:
    from runner.serve import ChatServer

    if not 0 <= args.port <= 65535:
        print(f"nanostudy serve: error: --port {args.port}: must be in 0..65535", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not is_loopback(args.host):
        print(
            f"nanostudy serve: warning: listening on {args.host}: this server has no authentication; "
            "anyone who can reach this address can use the model",
            file=sys.stderr,
        )
    # Bind before loading the model: a taken port is reported at once. Never anything more: whoever
    # holds the port keeps it.
    try:
        server = ChatServer(args.host, args.port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            print(f"port {args.port} is in use (by another process); choose --port", file=sys.stderr)
        else:
            print(
                f"nanostudy serve: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr
            )
        return EXIT_BAD_INPUT
    with server:
        engine = _load_engine(args, "serve")
        if engine is None:
            return EXIT_BAD_INPUT
        server.engine = engine
        print(
            f"serving {engine.name} ({engine.mode} model) at {server.url}/ (web chat); OpenAI API at "
            f"{server.url}/v1; Ctrl-C stops",
            flush=True,
        )
        started = time.monotonic()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print(f"stopped after {time.monotonic() - started:.0f} s", file=sys.stderr)
    return EXIT_OK


# --- parsers ---------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="CHECKPOINT|STUDY", help="a checkpoint or run directory, or a study file"
    )
    parser.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    parser.add_argument("--tokenizer", help="the tokenizer, when the training data it came with is gone")


def register(subparsers) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="talk to a model on the command line (a checkpoint, or a study's best)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(chat)
    chat.add_argument("--temperature", type=float, default=0.9, help="0 is greedy (default 0.9)")
    chat.add_argument("--top-k", type=int, default=200, dest="top_k", help="default 200")
    chat.add_argument("--top-p", type=float, dest="top_p", help="nucleus sampling (default: off)")
    chat.add_argument("--max-tokens", type=int, dest="max_tokens", help="per reply (default: the context)")
    chat.add_argument("--seed", type=int, help="the same seed gives the same replies")
    chat.add_argument("--system", help="a system message that opens the conversation (chat models)")
    chat.set_defaults(func=_cmd_chat)

    serve = subparsers.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API and a web chat page for a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8003, help="default 8003; 0 picks a free one")
    serve.set_defaults(func=_cmd_serve)
