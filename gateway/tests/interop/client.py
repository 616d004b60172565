#!/usr/bin/env python3
"""Drives a Tidings gateway with the `websockets` package (a client we did not write).

Usage: client.py WS_URL TOKEN --auth subprotocol|bearer --channel CH [--publish]
                 [--timeout SECONDS]

Connects (token in the `tidings.token.<jwt>` subprotocol next to `tidings.json`, or in
an `Authorization: Bearer` header with no subprotocol), checks the welcome frame,
subscribes to CH, prints {"step": "ready"}, then waits for one message (the caller
publishes it through the HTTP API). With --publish it also publishes to CH itself and
expects both the reply and its own message back. Every result is one JSON line on
stdout; the last is {"step": "done"}. Any failure prints {"step": "error", ...} and
exits non-zero. Every wait is bounded.
"""

import argparse
import asyncio
import json
import sys

try:
    import websockets
except ImportError:
    print(json.dumps({"step": "error", "error": "python package `websockets` is not installed"}))
    sys.exit(3)

try:  # websockets >= 13: the new asyncio implementation.
    from websockets.asyncio.client import connect as ws_connect

    HEADERS_KW = "additional_headers"
except ImportError:  # pragma: no cover - older releases
    from websockets import connect as ws_connect

    HEADERS_KW = "extra_headers"


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Failure(Exception):
    pass


async def recv_frame(ws, timeout):
    """The next application frame as a dict, answering app-level pings."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if not isinstance(raw, str):
            raise Failure(f"expected a text frame on tidings.json, got {type(raw).__name__}")
        frame = json.loads(raw)
        if frame.get("type") == "ping":
            await ws.send(json.dumps({"type": "pong"}))
            continue
        return frame


async def run(args):
    kwargs = {"open_timeout": args.timeout, "close_timeout": args.timeout}
    if args.auth == "subprotocol":
        kwargs["subprotocols"] = ["tidings.json", "tidings.token." + args.token]
    else:
        kwargs[HEADERS_KW] = {"Authorization": "Bearer " + args.token}
    async with ws_connect(args.url, **kwargs) as ws:
        welcome = await recv_frame(ws, args.timeout)
        if welcome.get("type") != "welcome":
            raise Failure(f"first frame is not a welcome: {welcome}")
        emit(
            step="welcome",
            subprotocol=ws.subprotocol,
            user=welcome.get("user"),
            channel=welcome.get("channel"),
            node=welcome.get("node"),
            has_session=bool(welcome.get("session")),
            heartbeat_ms=welcome.get("heartbeat_ms"),
            limits=welcome.get("limits"),
        )

        await ws.send(json.dumps({"type": "subscribe", "id": 1, "channel": args.channel}))
        reply = await recv_frame(ws, args.timeout)
        if reply.get("type") != "reply" or reply.get("id") != 1:
            raise Failure(f"expected the reply to subscribe: {reply}")
        emit(step="subscribed", ok=reply.get("ok"), result=reply.get("result"), error=reply.get("error"))
        if not reply.get("ok"):
            raise Failure("subscribe refused")

        emit(step="ready")
        msg = await recv_frame(ws, args.timeout)
        if msg.get("type") != "message":
            raise Failure(f"expected a message: {msg}")
        emit(step="message", source="api", **{k: msg.get(k) for k in ("channel", "event", "payload", "msg_id")})

        if args.publish:
            payload = {"from": "python", "list": [1, 2.5, None, True, "\u00e9"]}
            await ws.send(
                json.dumps({"type": "publish", "id": 2, "channel": args.channel, "event": "py.hello", "payload": payload})
            )
            # Our own message and the reply may come in either order.
            got_reply = got_message = None
            while got_reply is None or got_message is None:
                f = await recv_frame(ws, args.timeout)
                if f.get("type") == "reply" and f.get("id") == 2:
                    got_reply = f
                elif f.get("type") == "message":
                    got_message = f
                else:
                    raise Failure(f"unexpected frame while publishing: {f}")
            emit(step="published", ok=got_reply.get("ok"), result=got_reply.get("result"), error=got_reply.get("error"))
            emit(
                step="message",
                source="client",
                payload_roundtrip=got_message.get("payload") == payload,
                **{k: got_message.get(k) for k in ("channel", "event", "payload")},
            )

        # Unknown frame types get an error reply, not a dropped connection.
        await ws.send(json.dumps({"type": "dance", "id": 3}))
        f = await recv_frame(ws, args.timeout)
        emit(step="unknown_type", id=f.get("id"), ok=f.get("ok"), code=(f.get("error") or {}).get("code"))

    emit(step="closed", code=ws.close_code)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("token")
    p.add_argument("--auth", choices=["subprotocol", "bearer"], default="subprotocol")
    p.add_argument("--channel", default="news")
    p.add_argument("--publish", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    try:
        # An overall bound on top of the per-step ones.
        asyncio.run(asyncio.wait_for(run(args), args.timeout * 4))
    except Exception as e:  # noqa: BLE001 - report anything to the Rust side
        emit(step="error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
    emit(step="done", websockets_version=getattr(websockets, "__version__", "?"))


if __name__ == "__main__":
    main()
