"""A stand-in for neko's supervisor: binds a ROUTER on an ipc socket, starts the real runner
(`python -m plugin.runner`) with neko's environment, and speaks the protocol to it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Optional

import zmq

from plugin._runtime.protocol import S2P, Envelope, FrameError, Session

SDK_DIR = Path(__file__).resolve().parents[1]


class FakeSupervisor:
    def __init__(self, plugin_dir: Path, plugin_id: str, entry: str, *, heartbeat_ms: int = 1000, max_frame_bytes: int = 8 * 1024 * 1024):
        self.plugin_dir = Path(plugin_dir)
        self.plugin_id = plugin_id
        self.entry = entry
        self.heartbeat_ms = heartbeat_ms
        self.key = os.urandom(32)
        self.session = Session(self.key, S2P, max_frame_bytes)
        # ipc paths are limited to ~100 bytes: keep the socket in a short temporary folder.
        self._sockdir = tempfile.mkdtemp(prefix="neko-t")
        self.endpoint = f"ipc://{self._sockdir}/s.sock"
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.identity: Optional[bytes] = None
        self.proc: Optional[subprocess.Popen] = None
        self.backlog: list[Envelope] = []
        #: Messages of a received batch not handed out yet, and each received batch's size.
        self._unbatched: list[Envelope] = []
        self.batches: list[int] = []
        self.dropped: list[str] = []
        self.config_extra: dict = {}
        self.requests: list[dict] = []
        #: Answers for ops besides config.get: op → fn(request body) → {"ok", "result"?, "error"?}.
        self.op_handlers: dict[str, Callable[[dict], dict]] = {}
        self.stderr_path = Path(self._sockdir) / "stderr.log"

    # -- process --------------------------------------------------------------------------------

    def start(self, **env_overrides: str) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(
            {
                "NEKO_PLUGIN_ID": self.plugin_id,
                "NEKO_PLUGIN_ENDPOINT": self.endpoint,
                "NEKO_PLUGIN_SECRET": self.key.hex(),
                "NEKO_PROTOCOL_VERSION": "1",
                "NEKO_HEARTBEAT_MS": str(self.heartbeat_ms),
                "NEKO_MAX_FRAME_BYTES": str(self.session.max_frame_bytes),
                "NEKO_SUPERVISOR_PID": str(os.getpid()),
                "NEKO_PLUGIN_DIR": str(self.plugin_dir),
                "NEKO_PLUGIN_CONFIG": str(self.plugin_dir / "plugin.toml"),
                "NEKO_PLUGIN_ENTRY": self.entry,
                "NEKO_PLUGINS_ROOT": str(self.plugin_dir.parent),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The SDK must be importable as the supervisor's .pth file makes it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SDK_DIR), env.get("PYTHONPATH", "")) if p)
        env.update(env_overrides)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plugin.runner"],
            cwd=self.plugin_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
        )
        return self.proc

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if getattr(self, "_stderr", None):
            self._stderr.close()
        self.sock.close(0)
        self.zctx.term()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    # -- wire -------------------------------------------------------------------------------------

    def send(self, kind: str, body: dict) -> list[bytes]:
        frames = self.session.seal(kind, body)
        self.send_raw(frames)
        return frames

    def send_raw(self, frames: list[bytes]) -> None:
        assert self.identity is not None, "no HELLO yet"
        self.sock.send_multipart([self.identity, *frames])

    def _recv_one(self, timeout: float) -> Optional[Envelope]:
        if self._unbatched:
            env = self._unbatched.pop(0)
            if env.kind == "request":
                self._answer(env.body)
            return env
        if not self.sock.poll(int(timeout * 1000)):
            return None
        identity, *frames = self.sock.recv_multipart()
        try:
            env = self.session.open(frames)
        except FrameError as exc:
            self.dropped.append(exc.reason)
            return None
        if env.kind == "batch":
            self.batches.append(len(env.body["messages"]))
            self._unbatched.extend(env.body["messages"])
            return self._recv_one(0)
        if self.identity is None and env.kind == "hello":
            self.identity = identity
        if env.kind == "request":
            self._answer(env.body)
        return env

    def _answer(self, body: dict) -> None:
        self.requests.append(body)
        if body["op"] == "config.get":
            path = self.plugin_dir / "plugin.toml"
            with open(path, "rb") as fh:
                config = tomllib.load(fh)
            for section, values in self.config_extra.items():
                config.setdefault(section, {}).update(values)
            result = {"plugin_id": self.plugin_id, "config": config, "config_path": str(path), "last_modified": "2026-01-01T00:00:00Z"}
            self.send("response", {"request_id": body["request_id"], "ok": True, "result": result})
        elif body["op"] in self.op_handlers:
            answer = {"ok": True, "result": None, **self.op_handlers[body["op"]](body)}
            self.send("response", {"request_id": body["request_id"], **answer})
        else:
            self.send(
                "response",
                {
                    "request_id": body["request_id"],
                    "ok": False,
                    "result": None,
                    "error": {"code": "NOT_FOUND", "message": f"unknown request op '{body['op']}'"},
                },
            )

    def wait_for(self, predicate: Callable[[Envelope], bool], timeout: float = 10.0) -> Envelope:
        """The first message (from the backlog, then the socket) matching `predicate`."""
        for i, env in enumerate(self.backlog):
            if predicate(env):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for a message; runner output:\n{self.stderr()}")
            if self.proc is not None and self.proc.poll() is not None and not self._unbatched and not self.sock.poll(0):
                raise AssertionError(f"runner exited with {self.proc.returncode}; output:\n{self.stderr()}")
            env = self._recv_one(min(remaining, 0.5))
            if env is None:
                continue
            if predicate(env):
                return env
            if env.kind not in ("heartbeat", "request"):
                self.backlog.append(env)

    def expect(self, kind: str, timeout: float = 10.0) -> Envelope:
        return self.wait_for(lambda e: e.kind == kind, timeout)

    def handshake(self, timeout: float = 15.0, features: tuple = ()) -> Envelope:
        """Answers HELLO; `features`: those WELCOME grants (of those HELLO asked for)."""
        hello = self.expect("hello", timeout)
        granted = [f for f in features if f in hello.body["features"]]
        self.send("welcome", {"plugin_id": self.plugin_id, "heartbeat_interval_ms": self.heartbeat_ms, "features": granted})
        return hello

    # -- calls ------------------------------------------------------------------------------------

    _next = 0

    def trigger(
        self,
        entry_id: str,
        args: Optional[dict] = None,
        *,
        timeout_ms: int = 30000,
        run_id: Optional[str] = None,
        call_id: Optional[str] = None,
        event_type: Optional[str] = None,
        caller: Optional[str] = None,
    ) -> str:
        FakeSupervisor._next += 1
        call_id = call_id or f"c-{FakeSupervisor._next}"
        args = dict(args or {})
        body: dict[str, Any] = {"call_id": call_id, "entry_id": entry_id, "args": args, "timeout_ms": timeout_ms}
        if run_id:
            body["run_id"] = run_id
            args.setdefault("_ctx", {"run_id": run_id})
        if event_type:
            body["event_type"] = event_type
        if caller:
            body["caller"] = caller
        self.send("trigger", body)
        return call_id

    def result(self, call_id: str, timeout: float = 10.0) -> dict:
        return self.wait_for(lambda e: e.kind == "result" and e.body["call_id"] == call_id, timeout).body

    def call(self, entry_id: str, args: Optional[dict] = None, **kw: Any) -> dict:
        return self.result(self.trigger(entry_id, args, **kw))
