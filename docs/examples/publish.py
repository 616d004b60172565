"""Publishing notifications from a Python backend, with the standard library only.

    TIDINGS_URL=http://127.0.0.1:8080 TIDINGS_API_KEY=dev-api-key-change-me python3 publish.py alice

One notification to a user, then a batch, each with a message id so that a retry is
never delivered twice. 503 (the broker is unavailable) and network errors are retried
with exponential backoff and full jitter, with the same id every time. Prints one
JSON line per receipt.
"""

import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid

BASE = os.environ.get("TIDINGS_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("TIDINGS_API_KEY", "dev-api-key-change-me")


def post(path, body, attempts=8, base_s=0.2, cap_s=5.0):
    """POSTs `body` to `path`; retries 503s and network errors, never other errors."""
    data = json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(
            BASE + path,
            data=data,
            method="POST",
            headers={
                "Authorization": f"Bearer {API_KEY}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return json.load(res)
        except urllib.error.HTTPError as e:
            status, detail = e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            status, detail = 0, str(e)  # refused, reset, timed out: retry
        if status not in (503, 0) or attempt + 1 == attempts:
            raise RuntimeError(f"POST {path}: {status} {detail}")
        delay = random.uniform(0, min(cap_s, base_s * 2**attempt))  # full jitter
        print(f"POST {path}: {status}, retrying in {delay:.2f} s", file=sys.stderr)
        time.sleep(delay)


def main():
    user = sys.argv[1] if len(sys.argv) > 1 else "alice"
    # The id makes the publish idempotent: a retry within the gateway's
    # --idempotency-window (5 min) is reported in `duplicates`, not delivered.
    msg_id = f"invoice-77-paid-{uuid.uuid4()}"
    body = {"user": user, "event": "invoice.paid", "payload": {"invoice": 77}, "id": msg_id}
    print(json.dumps({"step": "publish", "id": msg_id, "receipt": post("/api/v1/publish", body)}))
    # The same id again (as after a timeout whose request did go through).
    print(json.dumps({"step": "retry", "id": msg_id, "receipt": post("/api/v1/publish", body)}))

    # Up to 100 publications in one request; each gets its own result, in order.
    batch = post(
        "/api/v1/publish/batch",
        {
            "messages": [
                {"user": user, "event": "badge", "payload": {"unread": 4}, "id": f"badge-{uuid.uuid4()}"},
                {"channel": "bad name", "payload": 1},
                {"users": [user, f"{user}-2"], "event": "digest", "payload": {"items": 2}},
            ]
        },
    )
    for i, result in enumerate(batch["results"]):
        print(json.dumps({"step": "batch", "index": i, "result": result}))


if __name__ == "__main__":
    main()
