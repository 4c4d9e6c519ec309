"""The real runner with a message plane: @message dispatch, push_message and ctx.bus from entries."""

import time

import pytest

from fake_message_plane import FakeMessagePlane
from fake_supervisor import FakeSupervisor

PLUGIN_CODE = '''
from plugin.sdk import NekoPluginBase, message, plugin_entry


class Chat(NekoPluginBase):
    @message(id="from_chat", source="chat")
    def from_chat(self, text, sender, ts, message):
        self.report_status({"got": "from_chat", "text": text, "sender": sender, "ts": ts, "from": message["plugin_id"],
                            "handler": self.ctx.handler_ctx})

    @message(id="anything")
    async def anything(self, text, **kwargs):
        self.report_status({"got": "anything", "text": text, "source": kwargs["source"], "handler": self.ctx.handler_ctx})

    @message(id="own", source="self-echo")
    def own(self, message_id, content):
        self.report_status({"got": "own", "message_id": message_id, "content": content})

    @message(id="broken", source="boom")
    def broken(self, **_):
        raise ValueError("handler failure is only logged")

    @plugin_entry(id="push")
    def push(self, source, content, fast=False, **_):
        return self.ctx.push_message(source, "text", content=content, fast_mode=fast)

    @plugin_entry(id="read")
    def read(self, source=None, **_):
        return [r.content for r in self.ctx.bus.messages.get(source=source)]
'''


@pytest.fixture
def running(tmp_path):
    plugin_dir = tmp_path / "root" / "chat"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text('[plugin]\nid = "chat"\nentry = "plugins.chat:Chat"\n')
    (plugin_dir / "__init__.py").write_text(PLUGIN_CODE)
    plane = FakeMessagePlane()
    sup = FakeSupervisor(plugin_dir, "chat", "plugins.chat:Chat")
    sup.start(**plane.env())
    sup.handshake()
    yield sup, plane
    sup.close()
    plane.close()


def status(sup, got, timeout=10.0, **match):
    return sup.wait_for(
        lambda e: e.kind == "status" and e.body["status"].get("got") == got and all(e.body["status"].get(k) == v for k, v in match.items()),
        timeout,
    ).body["status"]


def publish_until(sup, plane, payload, got, attempts=50):
    """The runner subscribes after startup; publications before that are lost, so retry."""
    for _ in range(attempts):
        plane.publish("messages", "all", payload)
        try:
            return status(sup, got, timeout=0.2)
        except AssertionError:
            continue
    raise AssertionError(f"no {got} status; runner output:\n{sup.stderr()}")


def test_message_handlers_receive_pushed_messages(running):
    sup, plane = running
    other = {"type": "MESSAGE_PUSH", "message_id": "o-1", "plugin_id": "other", "source": "chat", "message_type": "text",
             "content": "hello", "priority": 0, "metadata": {}, "time": 1700000000.0}
    got = publish_until(sup, plane, other, "from_chat")
    assert got == {"got": "from_chat", "text": "hello", "sender": "chat", "ts": "2023-11-14T22:13:20Z", "from": "other",
                   "handler": "message.from_chat"}
    anything = status(sup, "anything", source="chat")
    assert anything["text"] == "hello" and anything["handler"] == "message.anything"

    # The plugin's own push reaches the handler that names its source, not the catch-all one.
    r = sup.call("push", {"source": "self-echo", "content": "mine"})
    assert r["ok"] and r["data"]["submitted"] is True and r["data"]["reason"] is None
    own = status(sup, "own")
    assert own == {"got": "own", "message_id": r["data"]["message_id"], "content": "mine"}
    r = sup.call("push", {"source": "self-echo", "content": "fast", "fast": True})
    assert r["data"]["message_id"] == "chat:1"
    assert status(sup, "own", content="fast")["message_id"] == "chat:1"
    with pytest.raises(AssertionError):
        status(sup, "anything", timeout=0.5, source="self-echo")

    # A failing handler is logged; the plugin keeps serving.
    plane.publish("messages", "all", {"message_id": "b-1", "plugin_id": "other", "source": "boom", "content": "x"})
    deadline = time.monotonic() + 5
    while "message.broken failed" not in sup.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "message.broken failed: ValueError: handler failure is only logged" in sup.stderr()

    # ctx.bus reads from an entry (a worker thread of the runner).
    r = sup.call("read", {"source": "self-echo"})
    assert r["ok"] and r["data"] == ["fast", "mine"]
    assert [p["content"] for p in plane.pushed_payloads()] == ["mine", "fast"]

    sup.send("stop", {"grace_ms": 2000})
    assert sup.proc.wait(timeout=10) == 0


def test_message_handlers_without_a_message_plane(tmp_path):
    plugin_dir = tmp_path / "root" / "chat"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text('[plugin]\nid = "chat"\nentry = "plugins.chat:Chat"\n')
    (plugin_dir / "__init__.py").write_text(PLUGIN_CODE)
    sup = FakeSupervisor(plugin_dir, "chat", "plugins.chat:Chat")
    try:
        sup.start(NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT="", NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT="", NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT="")
        sup.handshake()
        r = sup.call("push", {"source": "x", "content": "y"})
        assert r["error"]["code"] == "INTERNAL"
        assert r["error"]["message"] == "Plugin 'chat' entry 'entry push' execution failed: Unexpected error: message_plane is not available for push_message"
        assert "@message handlers (anything, broken, from_chat, own) will not be called: the message plane is not available" in sup.stderr()
        sup.send("stop", {"grace_ms": 2000})
        assert sup.proc.wait(timeout=10) == 0
    finally:
        sup.close()
