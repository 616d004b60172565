// The notifications panel, fed by the personal channel ($user:<name>); backends push
// to it through the HTTP publish API.
import type { TidingsClient } from '../src/index.js';
import { useNotifications } from '../src/react.js';

function text(payload: unknown): string {
  if (payload && typeof payload === 'object' && 'text' in payload) return String((payload as { text: unknown }).text);
  return JSON.stringify(payload);
}

export function Notifications({ client, user }: { client: TidingsClient; user: string }) {
  const { messages, unread, markRead } = useNotifications(client);
  const curl = `curl -X POST ${location.origin}/api/v1/publish \\
  -H 'Authorization: Bearer <api key>' \\
  -d '{"user":"${user}","event":"notice","payload":{"text":"Hello ${user}"}}'`;
  return (
    <section className="panel notifications">
      <h2>
        Notifications{' '}
        <span className="badge" data-testid="unread-count">
          {unread}
        </span>
        <button className="link" onClick={() => void markRead().catch(() => undefined)} data-testid="ack-button" disabled={unread === 0}>
          mark read
        </button>
      </h2>
      <ul data-testid="notifications">
        {messages.length === 0 && <li className="empty">No notifications yet.</li>}
        {[...messages].reverse().map((m) => (
          <li key={`${m.channel}:${m.offset ?? m.ts}`} data-testid="notification" data-event={m.event}>
            <strong>{m.event}</strong> {text(m.payload)}
            {m.channel === '$broadcast' && <em> (broadcast)</em>}
          </li>
        ))}
      </ul>
      <details>
        <summary>Send one from a backend</summary>
        <pre data-testid="curl-example">{curl}</pre>
      </details>
    </section>
  );
}
