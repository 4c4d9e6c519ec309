"""A small stand-in for neko's message plane (reference §9): INGEST (PULL), RPC (ROUTER) and PUB on
tcp://127.0.0.1 random ports, served by one thread. It records every ingest frame and RPC envelope
and keeps TopicStores good enough for the SDK's reads, replays and watchers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Optional

import msgpack
import zmq

ID_KEYS = ("message_id", "event_id", "lifecycle_id", "id", "task_id", "run_id")


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def make_index(payload: dict, now: float) -> dict:
    ts = _num(payload.get("timestamp"))
    if ts is None:
        ts = _num(payload.get("time"))
    try:
        priority = int(payload.get("priority") or 0)
    except (TypeError, ValueError):
        priority = 0
    kind = payload.get("kind")
    typ = payload.get("type") or payload.get("message_type")
    return {
        "plugin_id": payload.get("plugin_id"),
        "source": payload.get("source"),
        "priority": priority,
        "kind": kind if isinstance(kind, str) and kind else None,
        "type": typ if isinstance(typ, str) and typ else None,
        "timestamp": ts if ts is not None else now,
        "id": next((payload[k] for k in ID_KEYS if isinstance(payload.get(k), str) and payload[k]), None),
    }


class FakeMessagePlane:
    def __init__(self) -> None:
        self.zctx = zmq.Context()
        self.pull = self.zctx.socket(zmq.PULL)
        self.router = self.zctx.socket(zmq.ROUTER)
        self.pub = self.zctx.socket(zmq.PUB)
        for sock in (self.pull, self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
        host = "tcp://127.0.0.1"
        self.ingest_endpoint = f"{host}:{self.pull.bind_to_random_port(host)}"
        self.rpc_endpoint = f"{host}:{self.router.bind_to_random_port(host)}"
        self.pub_endpoint = f"{host}:{self.pub.bind_to_random_port(host)}"
        self.lock = threading.RLock()
        self.frames: list[dict] = []
        self.requests: list[dict] = []
        self.events: dict[str, list[dict]] = {}
        self.seq: dict[str, int] = {}
        #: When True, RPC requests are recorded but never answered (timeouts).
        self.mute = False
        #: op → callable(args) → result, to override answers.
        self.handlers: dict[str, Callable[[dict], Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-message-plane", daemon=True)
        self._thread.start()

    def env(self) -> dict:
        return {
            "NEKO_MESSAGE_PLANE_ZMQ_RPC_ENDPOINT": self.rpc_endpoint,
            "NEKO_MESSAGE_PLANE_ZMQ_PUB_ENDPOINT": self.pub_endpoint,
            "NEKO_MESSAGE_PLANE_ZMQ_INGEST_ENDPOINT": self.ingest_endpoint,
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in (self.pull, self.router, self.pub):
            sock.close(0)
        self.zctx.term()

    # -- serving ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(50))
            with self.lock:
                if self.pull in ready:
                    while True:
                        try:
                            raw = self.pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._ingest(raw)
                if self.router in ready:
                    while True:
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._rpc(frames)

    def _ingest(self, raw: bytes) -> None:
        frame = msgpack.unpackb(raw, raw=False)
        self.frames.append(frame)
        for item in frame.get("items") or []:
            self.publish(item.get("store") or item.get("bus"), item.get("topic") or "all", item.get("payload"))

    def publish(self, store: str, topic: str, payload: Any) -> dict:
        """Stores an event and publishes it on PUB (thread-safe)."""
        with self.lock:
            if not isinstance(payload, dict):
                payload = {"value": payload}
            now = time.time()
            self.seq[store] = self.seq.get(store, 0) + 1
            event = {"seq": self.seq[store], "ts": now, "store": store, "topic": topic, "payload": payload, "index": make_index(payload, now)}
            self.events.setdefault(store, []).append(event)
            try:
                body = json.dumps(event, ensure_ascii=False).encode("utf-8")
            except TypeError:
                return event  # bytes in the payload: not published, as the reference does
            self.pub.send_multipart([f"{store}.{topic}".encode("utf-8"), body])
            return event

    def items(self, store: str) -> list[dict]:
        with self.lock:
            return list(self.events.get(store, []))

    def pushed_payloads(self) -> list[dict]:
        with self.lock:
            return [item["payload"] for frame in self.frames for item in frame.get("items") or []]

    def _rpc(self, frames: list[bytes]) -> None:
        identity, *rest = frames
        request = msgpack.unpackb(rest[-1], raw=False)
        self.requests.append(request)
        if self.mute:
            return
        try:
            handler = self.handlers.get(request["op"])
            result = handler(request["args"]) if handler else self._answer(request["op"], request.get("args") or {})
            reply = {"v": 1, "req_id": request["req_id"], "ok": True, "result": result, "error": None}
        except Exception as exc:
            reply = {"v": 1, "req_id": request.get("req_id"), "ok": False, "result": None, "error": {"code": "ERR", "message": str(exc), "details": None}}
        self.router.send_multipart([identity, *rest[:-1], msgpack.packb(reply, use_bin_type=True)])

    # -- the ops ---------------------------------------------------------------------------------

    def _answer(self, op: str, args: dict) -> Any:
        store = args.get("store") or "messages"
        if op in ("ping", "health"):
            return {"ok": True, "ts": time.time()}
        if op == "bus.get_recent":
            items = [e for e in self.events.get(store, []) if e["topic"] == args["topic"]]
            return {"store": store, "topic": args["topic"], "items": self._light(items[-int(args.get("limit") or 200):], args), "light": bool(args.get("light"))}
        if op == "bus.query":
            items = self._query(store, args)
            return {"store": store, "topic": args.get("topic"), "items": self._light(items, args), "light": bool(args.get("light"))}
        if op == "bus.get_since":
            topic = args.get("topic")
            items = [e for e in self.events.get(store, []) if e["seq"] > int(args.get("after_seq") or 0) and (topic in (None, "", "*") or e["topic"] == topic)]
            return {"store": store, "topic": topic, "after_seq": args.get("after_seq"), "items": items[: int(args.get("limit") or 200)], "light": False}
        if op == "bus.replay":
            return {"store": store, "items": self._replay(store, args["plan"])[:1000], "light": False}
        if op == "bus.delete":
            events = self.events.get(store, [])
            kept = [e for e in events if e["index"]["id"] != args["id"]]
            self.events[store] = kept
            return {"deleted": len(kept) != len(events)}
        raise ValueError(f"unknown op: {op}")

    @staticmethod
    def _light(items: list[dict], args: dict) -> list[dict]:
        if not args.get("light"):
            return items
        return [{k: e[k] for k in ("seq", "ts", "store", "topic", "index")} for e in items]

    def _query(self, store: str, args: dict) -> list[dict]:
        topic = args.get("topic")
        out = []
        for e in self.events.get(store, []):
            idx = e["index"]
            if topic not in (None, "", "*") and e["topic"] != topic:
                continue
            if any(args.get(k) is not None and idx.get(k) != args[k] for k in ("plugin_id", "source", "kind", "type")):
                continue
            if args.get("priority_min") is not None and idx["priority"] < args["priority_min"]:
                continue
            if args.get("since_ts") is not None and idx["timestamp"] < args["since_ts"]:
                continue
            if args.get("until_ts") is not None and idx["timestamp"] > args["until_ts"]:
                continue
            out.append(e)
        out.sort(key=lambda e: e["seq"], reverse=True)
        return out[: int(args.get("limit") or 200)]

    def _replay(self, store: str, node: dict) -> list[dict]:
        kind = node.get("kind")
        if kind == "get":
            p = dict((node.get("params") or {}).get("params") or {})
            limit = p.pop("max_count", None) or p.pop("limit", None) or 200
            topic = p.pop("topic", "all")
            if any(p.get(k) is not None for k in ("plugin_id", "source", "kind", "type", "priority_min", "since_ts", "until_ts")):
                return self._query(store, {**p, "topic": topic, "limit": limit})
            items = [e for e in self.events.get(store, []) if e["topic"] == topic]
            return items[-int(limit):]
        if kind == "unary":
            items = self._replay(store, node["child"])
            op, p = node["op"], node.get("params") or {}
            if op == "limit":
                return items[: max(0, int(p["n"]))]
            if op == "filter":
                return [e for e in items if all(p.get(k) is None or e["index"].get(k) == p[k] for k in ("plugin_id", "source", "kind", "type")) and (p.get("priority_min") is None or e["index"]["priority"] >= p["priority_min"])]
            if op == "where_eq":
                return [e for e in items if e["index"].get(p["field"], e["payload"].get(p["field"])) == p["value"]]
            if op == "sort":
                by = p.get("by") or ["timestamp"]
                by = [by] if isinstance(by, str) else by
                return sorted(items, key=lambda e: tuple(e["index"].get(f, e["payload"].get(f)) for f in by), reverse=bool(p.get("reverse")))
            raise ValueError(f"unsupported plan: {op}")
        if kind == "binary":
            left, right = self._replay(store, node["left"]), self._replay(store, node["right"])
            key = lambda e: e["index"]["id"] or e["seq"]  # noqa: E731
            rkeys = {key(e) for e in right}
            if node["op"] == "merge":
                merged = {key(e): e for e in [*left, *right]}
                out = list(merged.values())
            elif node["op"] == "intersection":
                out = [e for e in left if key(e) in rkeys]
            else:
                out = [e for e in left if key(e) not in rkeys]
            return sorted(out, key=lambda e: e["seq"], reverse=True)
        raise ValueError("unsupported plan")
