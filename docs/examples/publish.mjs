// Publishing notifications from a Node backend (Node 20+: the built-in fetch).
//
//   TIDINGS_URL=http://127.0.0.1:8080 TIDINGS_API_KEY=dev-api-key-change-me node publish.mjs alice
//
// One notification to a user, then a batch, each with a message id so that a retry
// is never delivered twice. 503 (the broker is unavailable) and network errors are
// retried with exponential backoff and full jitter, with the same id every time.
// Prints one JSON line per receipt.
import { randomUUID } from 'node:crypto';

const base = process.env.TIDINGS_URL ?? 'http://127.0.0.1:8080';
const apiKey = process.env.TIDINGS_API_KEY ?? 'dev-api-key-change-me';
const user = process.argv[2] ?? 'alice';

/** POSTs `body` to `path`; retries 503s and network errors, never other errors. */
async function post(path, body, { attempts = 8, baseMs = 200, capMs = 5000 } = {}) {
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(base + path, {
        method: 'POST',
        headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
    } catch (err) {
      res = { status: 0, error: err }; // connection refused, reset, timeout: retry
    }
    if (res.status === 200) return res.json();
    const retryable = res.status === 503 || res.status === 0;
    if (!retryable || attempt + 1 >= attempts) {
      const detail = res.error ? String(res.error) : await res.text();
      throw new Error(`POST ${path}: ${res.status} ${detail}`);
    }
    const delay = Math.random() * Math.min(capMs, baseMs * 2 ** attempt); // full jitter
    console.error(`POST ${path}: ${res.status}, retrying in ${Math.round(delay)} ms`);
    await new Promise((r) => setTimeout(r, delay));
  }
}

// One notification. The id makes the publish idempotent: a retry within the
// gateway's --idempotency-window (5 min) is reported in `duplicates`, not delivered.
const id = `order-1234-shipped-${randomUUID()}`;
const receipt = await post('/api/v1/publish', {
  user,
  event: 'order.shipped',
  payload: { order: 1234, carrier: 'ups' },
  id,
});
console.log(JSON.stringify({ step: 'publish', id, receipt }));

// The same id again (as after a timeout whose request did go through): not delivered.
const again = await post('/api/v1/publish', {
  user,
  event: 'order.shipped',
  payload: { order: 1234, carrier: 'ups' },
  id,
});
console.log(JSON.stringify({ step: 'retry', id, receipt: again }));

// Up to 100 publications in one request; each gets its own result, in order.
const batch = await post('/api/v1/publish/batch', {
  messages: [
    { user, event: 'badge', payload: { unread: 3 }, id: `badge-${randomUUID()}` },
    { channel: 'bad name', payload: 1 },
    { users: [user, `${user}-2`], event: 'digest', payload: { items: 2 } },
  ],
});
for (const [i, result] of batch.results.entries()) {
  // A result is a receipt or {error, message}; a failed entry does not fail the batch.
  console.log(JSON.stringify({ step: 'batch', index: i, result }));
}
