"""The web chat page in a real headless Chromium (Debian's `chromium`, driven by Playwright), against the
server on 127.0.0.1 with the mid-trained test model: type a message, watch the reply stream in, go on with
the conversation, stop a reply, see errors and carry on. Nothing is fetched from anywhere but the server,
and the page logs nothing to the console. Skipped, saying why, where Chromium cannot be installed."""

import threading
import time

import pytest
import torch
from browser_fixtures import headless_chromium
from chat_fixtures import REPLY, chat_checkpoints

from nanogpt.chat_engine import ChatEngine
from runner.serve import ChatServer

DELTA_DELAY_S = 0.08  # between streamed pieces, so that the page is seen mid-reply


class SlowEngine:
    """The engine, with a pause between streamed pieces (the tiny model answers in milliseconds)."""

    def __init__(self, engine: ChatEngine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def stream(self, messages, sampling):
        deltas = self._engine.stream(messages, sampling)  # raises at the call, as the engine does

        def slowly():
            try:
                for delta in deltas:
                    time.sleep(DELTA_DELAY_S)
                    yield delta
            finally:
                deltas.close()

        return slowly()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    runs = chat_checkpoints(tmp_path_factory)
    server = ChatServer("127.0.0.1", 0)
    server.engine = SlowEngine(ChatEngine.load(runs.chat))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as browser:
        yield browser


LAST_REPLY = "[...document.querySelectorAll('.msg.assistant')].at(-1)"


def wait_until(page, expression: str, timeout_s: float = 30.0):
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function evaluates its
    predicate with eval(), which the page's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout_s
    while not (value := page.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.01)
    return value


def _send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_type_a_message_and_see_the_reply_stream_in(browser, server):
    page = browser.new_page()
    console, blocked = [], []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))

    def only_the_server(route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(server.url + "/")
    wait_until(page, "document.getElementById('model').textContent.includes('chat-run/step_000060')")
    assert "chat model" in page.inner_text("#model")

    _send(page, "the cat sees a book.")
    assert page.inner_text(".msg.user") == "the cat sees a book."
    # Mid-reply: some of the text is there, the reply is not done, and Send waits.
    wait_until(page, f"(r => r && r.textContent.length > 0 && !r.dataset.done)({LAST_REPLY})")
    partial = page.evaluate(f"{LAST_REPLY}.textContent")
    assert 0 < len(partial) < len(REPLY) and REPLY.startswith(partial)
    assert page.is_disabled("#send")
    wait_until(page, f"{LAST_REPLY}.dataset.done === 'true'")
    reply = page.locator(".msg.assistant").last
    assert reply.inner_text() == REPLY
    assert reply.get_attribute("data-finish") == "stop"
    assert int(reply.get_attribute("data-chunks")) == len(REPLY)  # one streamed piece per token
    assert page.is_enabled("#send")

    # The conversation goes on.
    _send(page, "and the dog?")
    wait_until(page, f"document.querySelectorAll('.msg.assistant').length === 2 && {LAST_REPLY}.dataset.done")
    assert page.locator(".msg.assistant").last.inner_text() == REPLY

    # Stop a reply halfway.
    _send(page, "one more")
    wait_until(page, f"(r => r && r.textContent.length > 1 && !r.dataset.done)({LAST_REPLY})")
    page.click("#stop")
    wait_until(page, f"{LAST_REPLY}.dataset.done === 'true'")
    stopped = page.locator(".msg.assistant").last
    assert stopped.get_attribute("data-finish") == "stopped" and len(stopped.inner_text()) < len(REPLY)

    # Requests the server refuses: the error is shown, the conversation is as it was, and the next works.
    _send(page, "a long one")
    page.wait_for_selector(".msg.error")
    assert "more than the model's context of 128 tokens" in page.locator(".msg.error").last.inner_text()
    page.click("summary")
    page.click("#new")
    assert page.locator(".msg").count() == 0
    page.fill("#max-tokens", "100000")
    _send(page, "the cat sees a book.")
    page.wait_for_selector(".msg.error")
    assert "max_tokens: 100000 is more than the model's context" in page.inner_text(".msg.error")
    page.fill("#max-tokens", "50")
    _send(page, "the cat sees a book.")
    wait_until(page, f"(r => r && r.dataset.done === 'true')({LAST_REPLY})")
    assert page.locator(".msg.assistant").last.inner_text() == REPLY

    # Chromium itself logs each refused request; the page logs nothing.
    assert (
        console
        == ["error: Failed to load resource: the server responded with a status of 400 (Bad Request)"] * 2
    )
    assert blocked == []
    page.close()


LOG = "[...document.getElementById('log').children].map(e => `${e.className}: ${e.textContent}`)"


def test_new_chat_mid_reply_starts_an_empty_conversation(browser, server):
    """New chat while a reply streams: the stopped reply stays behind with its conversation; the new one
    starts empty (no partial reply, no note that it stopped) and its first request holds its message alone."""
    page = browser.new_page()
    sent = []
    page.on("request", lambda request: request.method == "POST" and sent.append(request.post_data_json))
    page.goto(server.url + "/")
    wait_until(page, "document.getElementById('model').textContent.includes('chat model')")

    _send(page, "the cat sees a book.")
    wait_until(page, f"(r => r && r.textContent.length > 1 && !r.dataset.done)({LAST_REPLY})")
    page.click("summary")
    page.click("#new")
    wait_until(page, "!document.getElementById('send').disabled")
    assert page.evaluate(LOG) == []

    _send(page, "hello")
    wait_until(page, f"(r => r && r.dataset.done === 'true')({LAST_REPLY})")
    assert [body["messages"] for body in sent] == [
        [{"role": "user", "content": "the cat sees a book."}],
        [{"role": "user", "content": "hello"}],
    ]
    assert page.evaluate(LOG) == ["msg user: hello", f"msg assistant: {REPLY}"]
    page.close()
