"""runner/serve.py over real HTTP on 127.0.0.1: the OpenAI-compatible API (JSON and server-sent events,
through http.client and through the official `openai` client), the page, and every bad request answered
with a 4xx and OpenAI's error object while the server stays up."""

import http.client
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import torch
from chat_fixtures import CONTEXT, REPLY, chat_checkpoints

from nanogpt.chat_engine import ChatEngine, messages_from_json
from runner.serve import MAX_BODY_BYTES, ChatServer

HI = [{"role": "user", "content": "the cat sees a book."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ChatServer]:
    torch.set_num_threads(1)
    runs = chat_checkpoints(tmp_path_factory)
    server = ChatServer("127.0.0.1", 0)
    server.engine = ChatEngine.load(runs.chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def connect(server: ChatServer) -> http.client.HTTPConnection:
    host, port = server.server_address[:2]
    return http.client.HTTPConnection(host, port, timeout=60)


def call(server, method: str, path: str, body=None, *, headers=None, connection=None):
    """(status, headers, parsed JSON or text) of one request."""
    conn = connection or connect(server)
    if isinstance(body, dict | list):
        body = json.dumps(body)
    headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else headers or {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read().decode()
    kind = response.getheader("Content-Type", "")
    return response.status, response, json.loads(data) if kind.startswith("application/json") else data


def sse_events(text: str) -> list:
    events = [block.removeprefix("data: ") for block in text.split("\n\n") if block]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def test_models(server):
    status, _, body = call(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "chat-run/step_000060" and model["owned_by"] == "nanostudy"
    assert (model["mode"], model["context_tokens"]) == ("chat", CONTEXT)
    status, _, one = call(server, "GET", "/v1/models/chat-run/step_000060")
    assert status == 200 and one == model
    status, _, error = call(server, "GET", "/v1/models/gpt-4")
    assert status == 404 and error["error"]["code"] == "model_not_found"


def test_a_completion(server):
    request = {"model": "anything", "messages": HI, "seed": 0, "max_completion_tokens": 50}
    status, response, body = call(server, "POST", "/v1/chat/completions", request)
    assert status == 200 and response.getheader("Content-Length")
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "chat-run/step_000060" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"] == {"role": "assistant", "content": REPLY}
    assert choice["finish_reason"] == "stop"
    prompt_tokens = len(server.engine.prompt_tokens(messages_from_json(HI)))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(REPLY) + 1,
        "total_tokens": prompt_tokens + len(REPLY) + 1,
    }
    _, _, cut = call(server, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 3, "seed": 0})
    assert (
        cut["choices"][0]["message"]["content"] == REPLY[:3]
        and cut["choices"][0]["finish_reason"] == "length"
    )
    _, _, stopped = call(
        server, "POST", "/v1/chat/completions", {"messages": HI, "stop": ["ball"], "seed": 0}
    )
    assert (
        stopped["choices"][0]["message"]["content"] == "the "
        and stopped["choices"][0]["finish_reason"] == "stop"
    )


def test_a_streamed_completion(server):
    request = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}, "seed": 0}
    status, response, text = call(server, "POST", "/v1/chat/completions", request)
    assert status == 200
    assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert response.getheader("Transfer-Encoding") == "chunked"
    events = sse_events(text)
    assert len({e["id"] for e in events}) == 1 and {e["object"] for e in events} == {"chat.completion.chunk"}
    first, *content, last, usage = events
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
    ]
    assert len(content) == len(REPLY)  # one byte per token, one chunk each
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == REPLY
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(REPLY) + 1
    # Without stream_options there is no usage chunk.
    _, _, text = call(server, "POST", "/v1/chat/completions", {"messages": HI, "stream": True, "seed": 0})
    assert sse_events(text)[-1]["choices"][0]["finish_reason"] == "stop"


def test_keep_alive_and_several_clients_at_once(server):
    conn = connect(server)
    for _ in range(3):  # one connection, several requests
        status, _, body = call(
            server, "POST", "/v1/chat/completions", {"messages": HI, "seed": 0}, connection=conn
        )
        assert status == 200 and body["choices"][0]["message"]["content"] == REPLY
    results = []

    def client(stream: bool) -> None:
        _, _, body = call(
            server, "POST", "/v1/chat/completions", {"messages": HI, "stream": stream, "seed": 1}
        )
        results.append(
            body
            if not stream
            else "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(body))
        )

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    texts = [r if isinstance(r, str) else r["choices"][0]["message"]["content"] for r in results]
    assert texts == [REPLY] * 4


def test_a_client_that_leaves_mid_reply(server):
    host, port = server.server_address[:2]
    raw = socket.create_connection((host, port))
    body = json.dumps({"messages": HI, "stream": True}).encode()
    raw.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert raw.recv(64).startswith(b"HTTP/1.1 200")
    raw.close()
    status, _, done = call(server, "POST", "/v1/chat/completions", {"messages": HI, "seed": 0})
    assert status == 200 and done["choices"][0]["message"]["content"] == REPLY


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "message"),
    [
        ("{not json", 400, None, "invalid_json", "the body is not valid JSON"),
        ([1, 2], 400, None, None, "the body must be a JSON object, got list"),
        ({"messages": HI, "temprature": 1}, 400, "temprature", "unknown_parameter", "unknown parameter"),
        ({"messages": HI, "logit_bias": {"50": 5}}, 400, "logit_bias", "invalid_value", "only {} (or null)"),
        ({"messages": HI, "presence_penalty": 0.5}, 400, "presence_penalty", "invalid_value", "only 0"),
        ({"messages": HI, "logprobs": True}, 400, "logprobs", "invalid_value", "only false"),
        ({"messages": HI, "logprobs": 0}, 400, "logprobs", "invalid_value", "only false"),
        (
            {"messages": HI, "response_format": {"type": "json_object"}},
            400,
            "response_format",
            "invalid_value",
            "only",
        ),
        ({"messages": HI, "user": 7}, 400, "user", "invalid_value", "must be a string"),
        (
            {"messages": HI, "tool_choice": "auto"},
            400,
            "tool_choice",
            "unknown_parameter",
            "unknown parameter",
        ),
        ({}, 400, "messages", "invalid_value", "messages: must be a non-empty list"),
        ({"messages": "hi"}, 400, "messages", "invalid_value", "messages: must be"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages[0].role",
            "invalid_value",
            "must be one of",
        ),
        ({"messages": [{"role": "user"}]}, 400, "messages[0].content", "invalid_value", "must be a string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content[0]",
            "invalid_value",
            "only text parts",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            400,
            "messages[0].tool_calls",
            "invalid_value",
            "unknown field",
        ),
        ({"messages": HI, "n": 2}, 400, "n", "invalid_value", "only n = 1"),
        ({"messages": HI, "model": 5}, 400, "model", "invalid_value", "must be a string"),
        ({"messages": HI, "stream": "yes"}, 400, "stream", "invalid_value", "true or false"),
        (
            {"messages": HI, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
            "invalid_value",
            "only allowed with stream",
        ),
        ({"messages": HI, "temperature": "hot"}, 400, "temperature", "invalid_value", "temperature: must be"),
        ({"messages": HI, "temperature": 3}, 400, "temperature", "invalid_value", "in [0, 2]"),
        ({"messages": HI, "top_p": 0}, 400, "top_p", "invalid_value", "in (0, 1]"),
        ({"messages": HI, "top_k": -1}, 400, "top_k", "invalid_value", "positive integer"),
        ({"messages": HI, "max_tokens": 0}, 400, "max_tokens", "invalid_value", "positive integer"),
        (
            {"messages": HI, "max_tokens": 10**12},
            400,
            "max_tokens",
            "invalid_value",
            "more than the model's context",
        ),
        (
            {"messages": HI, "max_completion_tokens": 10**12},
            400,
            "max_completion_tokens",
            "invalid_value",
            "context",
        ),
        (
            {"messages": HI, "max_tokens": 5, "max_completion_tokens": 6},
            400,
            "max_completion_tokens",
            "invalid_value",
            "disagree",
        ),
        ({"messages": HI, "stop": 5}, 400, "stop", "invalid_value", "string or a list"),
        ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value", "at most 4"),
        ({"messages": HI, "seed": 1.5}, 400, "seed", "invalid_value", "integer"),
        (
            {"messages": [{"role": "user", "content": "a" * 500}]},
            400,
            "messages",
            "context_length_exceeded",
            "more than the model's context of 128 tokens",
        ),
    ],
)
def test_bad_requests_get_400_and_the_server_stays_up(server, body, status, param, code, message):
    got, _, error = call(server, "POST", "/v1/chat/completions", body)
    assert got == status, error
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)
    assert message in error["error"]["message"]
    assert call(server, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200


def test_fields_at_their_neutral_values_are_accepted_and_change_nothing(server):
    """Clients such as LangChain's send presence_penalty: 0 and the like on every request."""
    plain = call(server, "POST", "/v1/chat/completions", {"messages": HI, "seed": 0})
    neutral = {
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logprobs": False,
        "top_logprobs": None,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "parallel_tool_calls": True,
        "tools": [],
        "user": "someone",
        "store": False,
        "metadata": {"k": "v"},
    }
    status, _, reply = call(server, "POST", "/v1/chat/completions", {"messages": HI, "seed": 0} | neutral)
    assert (status, plain[0]) == (200, 200), reply
    assert reply["choices"] == plain[2]["choices"] and reply["choices"][0]["message"]["content"] == REPLY


def test_bad_http_gets_4xx(server):
    def error_of(method, path, body=None, headers=None):
        status, _, data = call(server, method, path, body, headers=headers)
        return status, data["error"]["code"]

    assert error_of("GET", "/nowhere") == (404, "not_found")
    assert error_of("POST", "/v1/completions", {"prompt": "x"}) == (404, "not_found")
    assert error_of("DELETE", "/v1/models") == (405, "method_not_allowed")
    assert error_of(
        "POST", "/v1/chat/completions", json.dumps({"messages": HI}), {"Content-Type": "text/plain"}
    ) == (
        415,
        "unsupported_media_type",
    )
    # No Content-Length, and a body too large to read: refused, and the connection closed.
    conn = connect(server)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and json.loads(response.read())["error"]["code"] == "length_required"
    conn = connect(server)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Connection") == "close"
    assert call(server, "GET", "/v1/models")[0] == 200


def test_the_page(server):
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    assert "<title>nanostudy chat</title>" in page and "/v1/chat/completions" in page


def test_the_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["chat-run/step_000060"]
    completion = client.chat.completions.create(
        model="nanostudy", messages=HI, seed=0, temperature=0.5, top_p=0.9
    )
    assert completion.choices[0].message.content == REPLY and completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == len(REPLY) + 1
    stream = client.chat.completions.create(
        model="nanostudy",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"top_k": 5},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens > len(REPLY)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="nanostudy", messages=HI, n=3)
    assert error.value.status_code == 400 and error.value.param == "n"


def test_a_deep_body_a_huge_number_or_a_lone_surrogate_gets_400_and_the_server_stays_up(server):
    status, _, error = call(server, "POST", "/v1/chat/completions", "[" * 100_000 + "]" * 100_000)
    assert status == 400 and error["error"]["code"] == "invalid_json", error
    assert "nested too deeply" in error["error"]["message"]
    # Python refuses to read an integer of over 4300 digits (a ValueError, not a JSONDecodeError).
    status, _, error = call(server, "POST", "/v1/chat/completions", '{"max_tokens": 1' + "0" * 5000 + "}")
    assert status == 400 and error["error"]["code"] == "invalid_json", error
    assert "4300 digits" in error["error"]["message"]
    body = '{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'  # errors name the key
    status, _, error = call(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and error["error"]["param"] == "\ud800", error
    body = '{"messages": [{"role": "user", "content": "hi", "\\udfff": 1}]}'
    status, _, error = call(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and "\udfff" in error["error"]["message"], error
    assert call(server, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200


def test_a_model_id_with_its_slash_percent_encoded(server):
    # The openai package quotes the id in the path: GET /v1/models/chat-run%2Fstep_000060.
    status, _, one = call(server, "GET", "/v1/models/chat-run%2Fstep_000060")
    assert status == 200 and one["id"] == "chat-run/step_000060", one
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert client.models.retrieve("chat-run/step_000060").id == "chat-run/step_000060"


def test_a_request_the_checks_did_not_foresee_still_gets_an_error_object(server):
    # A role that is a list once broke the role check (unhashable); whatever the status, the client gets
    # OpenAI's error object, not a dropped connection, and the server goes on.
    status, _, error = call(server, "POST", "/v1/chat/completions", {"messages": [{"role": ["user"]}]})
    assert status in (400, 500) and set(error["error"]) == {"message", "type", "param", "code"}, error
    assert call(server, "POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200


def test_requests_the_http_layer_refuses_get_an_error_object_too(server):
    """Refused before any handler runs: answered in JSON like every other error, unknown methods with 405."""

    def raw(request: bytes) -> tuple[int, dict]:
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.getheader("Content-Type") == "application/json"
            return response.status, json.loads(response.read())["error"]

    status, error = raw(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, error["code"]) == (405, "method_not_allowed"), error
    status, error = raw(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, error["code"]) == (414, "request_uri_too_long"), error
    status, error = raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert (status, error["code"]) == (431, "request_header_fields_too_large"), error
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert call(server, "GET", "/v1/models")[0] == 200


def test_a_get_with_a_body_leaves_the_connection_in_step(server):
    # The body is read and dropped (a chunked one closes the connection): the next request on the
    # connection is answered as itself, not after the body taken for a request line.
    conn = connect(server)
    status, _, body = call(
        server, "GET", "/v1/models", body="hello", headers={"Content-Length": "5"}, connection=conn
    )
    assert status == 200 and body["object"] == "list"
    status, _, body = call(server, "GET", "/v1/models", connection=conn)
    assert status == 200 and body["object"] == "list", body
    conn = connect(server)
    conn.putrequest("GET", "/v1/models")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders(b"5\r\nhello\r\n0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Connection") == "close"


def test_a_stream_to_an_http_1_0_client_is_not_chunked(server):
    # HTTP/1.0 has no chunked encoding: the events come as they are, and the connection closes after them.
    host, port = server.server_address[:2]
    body = json.dumps({"messages": HI, "stream": True, "seed": 0}).encode()
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, text = data.decode().partition("\r\n\r\n")
    assert "Transfer-Encoding" not in head and "Connection: close" in head, head
    events = sse_events(text)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == REPLY
