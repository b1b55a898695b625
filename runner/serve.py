"""The local chat server: an OpenAI-compatible HTTP API and a web chat page, over one ChatEngine.

    GET  /                       the web chat page (runner/static/chat.html)
    GET  /v1/models              the one model served
    POST /v1/chat/completions    OpenAI's chat completions: JSON, or server-sent events with "stream": true

The standard library's ThreadingHTTPServer: one thread per connection, HTTP/1.1 keep-alive, streamed
replies in chunked transfer encoding. The engine runs one generation at a time (a lock; later requests
wait their turn). Every bad request is answered with a 4xx and OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`, and the server goes on; so does a failed generation
(a 500) and a client that goes away mid-reply (its generation stops). docs/chat.md has the fields.

The server has no authentication: it listens on 127.0.0.1 unless told otherwise. It never touches a
process that holds its port; binding fails and the command says so.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote

from nanogpt.events import utf8_json

MAX_BODY_BYTES = 1 << 20
SOCKET_TIMEOUT_S = 120.0  # a client that neither reads nor sends for this long is dropped
CHAT_KEYS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "n",
}
# OpenAI fields this server does not implement, with the values that ask for nothing (some clients send
# them on every request): accepted at these values, ignored; any other value is a 400 naming the field.
NEUTRAL_VALUES = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "parallel_tool_calls": (True, False),  # without tools, either asks for nothing
    "tools": ([],),
}
# The caller's bookkeeping, with no effect on the reply: accepted when of the right type, ignored.
IGNORED_KEYS = {"user": (str, "a string"), "store": (bool, "true or false"), "metadata": (dict, "an object")}


class ApiError(Exception):
    """An error answered with OpenAI's error object."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ChatServer(ThreadingHTTPServer):
    """Binds at construction (OSError when the port is taken); set `engine` before serve_forever()."""

    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.engine = None
        self.generation_lock = threading.Lock()
        self.created = int(time.time())
        self.page = (resources.files("runner") / "static" / "chat.html").read_bytes()
        super().__init__((host, port), ChatHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nanostudy"
    timeout = SOCKET_TIMEOUT_S
    server: ChatServer

    # --- routing ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        # Decoded: the openai package sends a model id with a slash as /v1/models/run%2Fstep_000060.
        path = unquote(self.path.split("?", 1)[0])
        self._drain()  # a body GET does not use; left unread, it would be taken for the next request
        engine = self.server.engine
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8", page=True)
        elif path == "/v1/models":
            self._json(HTTPStatus.OK, {"object": "list", "data": [self._model_entry()]})
        elif path == f"/v1/models/{engine.name}":
            self._json(HTTPStatus.OK, self._model_entry())
        elif path.startswith("/v1/models/"):
            self._error(
                ApiError(
                    HTTPStatus.NOT_FOUND,
                    f"no model {path[11:]!r}; this server has {engine.name!r}",
                    param="model",
                    code="model_not_found",
                )
            )
        else:
            self._error(ApiError(HTTPStatus.NOT_FOUND, f"no such page: GET {path}", code="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path != "/v1/chat/completions":
                self._drain()
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}", code="not_found")
            request = self._read_json()
            self._chat_completion(request)
        except ApiError as error:
            self._error(error)
        except Exception as e:  # a failure no check foresaw: still an error object, and the server goes on
            traceback.print_exc()
            self.close_connection = True
            self._error(
                ApiError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"the request failed: {type(e).__name__}: {e}",
                    kind="server_error",
                )
            )

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._error(
            ApiError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{self.command} is not supported here",
                code="method_not_allowed",
            )
        )

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own refusals (a URL or header line too long, a malformed request line, a method
        with no do_ handler) as OpenAI's error object too, not its HTML page."""
        self.close_connection = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # its answer to an unknown method (TRACE, CONNECT, ...)
            self._not_allowed()
            return
        status = HTTPStatus(code)
        self._error(ApiError(status, message or status.phrase, code=status.name.lower()))

    # --- chat completions -------------------------------------------------------------------------

    def _chat_completion(self, request: Any) -> None:
        from nanogpt.chat_engine import PromptTooLongError, RequestError

        chat = parse_chat_request(request)
        engine = self.server.engine
        with self.server.generation_lock:
            try:
                deltas = engine.stream(chat.messages, chat.sampling)
            except PromptTooLongError as e:
                raise ApiError(
                    HTTPStatus.BAD_REQUEST, str(e), param="messages", code="context_length_exceeded"
                ) from None
            except RequestError as e:
                param = chat.max_tokens_param if e.param == "max_tokens" else e.param
                raise ApiError(HTTPStatus.BAD_REQUEST, str(e), param=param, code="invalid_value") from None
            reply = _Reply(engine.name)
            try:
                if chat.stream:
                    self._stream(reply, deltas, chat.include_usage)
                else:
                    self._complete(reply, deltas)
            finally:
                deltas.close()

    def _complete(self, reply: _Reply, deltas) -> None:
        try:
            for delta in deltas:
                reply.add(delta)
        except Exception as e:  # the model failed: a 500, and the server goes on
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"generation failed: {type(e).__name__}: {e}",
                kind="server_error",
            ) from None
        self._json(HTTPStatus.OK, reply.completion())

    def _stream(self, reply: _Reply, deltas, include_usage: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        # HTTP/1.0 has no chunked encoding (RFC 9112, 6.1): its client reads the events until the close.
        self._chunked = self.request_version != "HTTP/1.0"
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        try:
            self._event(reply.chunk({"role": "assistant", "content": ""}, None))
            try:
                for delta in deltas:
                    reply.add(delta)
                    if delta.text:
                        self._event(reply.chunk({"content": delta.text}, None))
                    if delta.finish_reason is not None:
                        self._event(reply.chunk({}, delta.finish_reason))
                if include_usage:
                    self._event({**reply.chunk({}, None), "choices": [], "usage": reply.usage()})
            except OSError:
                raise
            except Exception as e:  # the model failed after the headers: an error event ends the stream
                error = ApiError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"generation failed: {type(e).__name__}: {e}",
                    kind="server_error",
                )
                self._event(error.body())
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")
        except OSError:  # the client went away (BrokenPipeError, ConnectionResetError, a timeout)
            self.close_connection = True

    def _event(self, data: dict[str, Any]) -> None:
        self._write_chunk(b"data: " + utf8_json(data).encode() + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self._chunked else data)
        self.wfile.flush()

    def _model_entry(self) -> dict[str, Any]:
        info = self.server.engine.describe()
        return {
            "id": info["model"],
            "object": "model",
            "created": self.server.created,
            "owned_by": "nanostudy",
            "mode": info["mode"],
            "context_tokens": info["context_tokens"],
        }

    # --- reading and writing ----------------------------------------------------------------------

    def _read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(
                HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length", code="length_required"
            )
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise ApiError(
                HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", code="length_required"
            ) from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted",
                code="body_too_large",
            )
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Also what keeps other web pages out: a browser sends application/json across origins only
            # after a CORS preflight, which this server does not grant.
            raise ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json, got {content_type or 'none'!r}",
                code="unsupported_media_type",
            )
        try:
            return json.loads(body)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {e}", code="invalid_json"
            ) from None
        except RecursionError:  # json's decoder recurses once per level of nesting
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "the body is not valid JSON: nested too deeply", code="invalid_json"
            ) from None

    def _drain(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            length = -1
        if 0 <= length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _json(self, status: HTTPStatus, data: dict[str, Any]) -> None:
        self._send(status, utf8_json(data).encode(), "application/json")

    def _error(self, error: ApiError) -> None:
        self._json(error.status, error.body())

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, page: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if page:
                # The page is self-contained: no script, style or request may come from anywhere else.
                self.send_header(
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src 'self' data:",
                )
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class _Reply:
    """One chat completion's identity and counts, and its OpenAI objects."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = self.completion_tokens = 0

    def add(self, delta) -> None:
        self.parts.append(delta.text)
        self.prompt_tokens, self.completion_tokens = delta.prompt_tokens, delta.completion_tokens
        self.finish_reason = delta.finish_reason or self.finish_reason

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def completion(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.parts)},
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: list  # of ChatMessage
    sampling: Any  # nanogpt.chat_engine.Sampling
    stream: bool
    include_usage: bool
    max_tokens_param: str  # which of max_tokens and max_completion_tokens the request used


def _same_json(value: Any, neutral: Any) -> bool:
    """Whether a JSON value is `neutral`, with JSON's types: 0 and 0.0 alike, but false is not 0."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return type(value) in (int, float, dict, list) and value == neutral


def parse_chat_request(request: Any) -> ChatRequest:
    """A chat completion request's body, checked; ApiError (400) naming the field for anything unknown,
    mistyped or out of range."""
    from nanogpt.chat_engine import RequestError, Sampling, messages_from_json

    if not isinstance(request, dict):
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"the body must be a JSON object, got {type(request).__name__}"
        )
    unknown = sorted(set(request) - CHAT_KEYS - set(NEUTRAL_VALUES) - set(IGNORED_KEYS))
    if unknown:
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            f"unknown parameter: {unknown[0]} (this server takes {', '.join(sorted(CHAT_KEYS))})",
            param=unknown[0],
            code="unknown_parameter",
        )
    get = lambda key: request.get(key)
    max_tokens, max_completion_tokens = get("max_tokens"), get("max_completion_tokens")
    max_tokens_param = "max_tokens" if max_completion_tokens is None else "max_completion_tokens"
    try:
        if get("model") is not None and not isinstance(get("model"), str):
            raise RequestError("model", "must be a string")
        messages = messages_from_json(get("messages"))
        for key, neutral in NEUTRAL_VALUES.items():
            value = get(key)
            if value is not None and not any(_same_json(value, ok) for ok in neutral):
                shown = " or ".join(json.dumps(ok) for ok in neutral)
                raise RequestError(key, f"is not supported here; only {shown} (or null) is accepted")
        for key, (kind, described) in IGNORED_KEYS.items():
            if get(key) is not None and not isinstance(get(key), kind):
                raise RequestError(key, f"must be {described}, got {get(key)!r}")
        if get("n") not in (None, 1):
            raise RequestError("n", f"only n = 1 is supported, got {get('n')!r}")
        stream = get("stream")
        if stream not in (None, True, False):
            raise RequestError("stream", f"must be true or false, got {stream!r}")
        options = get("stream_options")
        if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
            raise RequestError("stream_options", "must be an object with include_usage only")
        include_usage = bool((options or {}).get("include_usage"))
        if options is not None and not stream:
            raise RequestError("stream_options", "is only allowed with stream: true")
        if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
            raise RequestError("max_tokens", "max_tokens and max_completion_tokens disagree; send one")
        stop = get("stop")
        if isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, list):
            stop = tuple(stop)
        elif stop is not None:
            raise RequestError("stop", f"must be a string or a list of strings, got {stop!r}")
        settings = {
            "max_tokens": max_completion_tokens if max_completion_tokens is not None else max_tokens,
            "temperature": get("temperature"),
            "top_p": get("top_p"),
            "top_k": get("top_k"),
            "stop": stop,
            "seed": get("seed"),
        }
        sampling = Sampling(**{k: v for k, v in settings.items() if v is not None})
    except RequestError as e:
        param = max_tokens_param if e.param == "max_tokens" else e.param
        raise ApiError(HTTPStatus.BAD_REQUEST, str(e), param=param, code="invalid_value") from None
    return ChatRequest(messages, sampling, bool(stream), include_usage, max_tokens_param)
