// Who is in a room: the channel's presence (usePresence), one line per user with an
// online dot and the name from their token's `info` claim (the user id without one).
import type { JsonValue, PresenceUser, TidingsClient } from '../src/index.js';
import { usePresence } from '../src/react.js';

function displayName(m: PresenceUser): string {
  const info = m.info as { [key: string]: JsonValue } | undefined;
  return typeof info?.name === 'string' && info.name ? info.name : m.user;
}

/** `subject`: the token's subject (`demo-<name>`), to mark the user's own line. */
export function Members({ client, channel, subject }: { client: TidingsClient; channel: string; subject: string }) {
  const presence = usePresence(client, channel);
  const live = presence.status === 'ready';
  const title = presence.error
    ? `presence unavailable: ${presence.error.message}`
    : live
      ? 'online now'
      : 'updating…';
  return (
    <aside className="members" data-testid="members" data-status={presence.status}>
      <h3>
        Members{' '}
        <span className="count" data-testid="member-count">
          {presence.count ? presence.count.users : '…'}
        </span>
      </h3>
      <ul>
        {presence.members.map((m) => (
          <li key={m.user} data-testid="member" data-user={m.user} className={m.user === subject ? 'me' : ''}>
            <span className={live ? 'dot online' : 'dot stale'} title={title} />
            <span className="name">{displayName(m)}</span>
            {m.user === subject && <span className="you"> (you)</span>}
            {m.clients > 1 && (
              <span className="clients" title={`${m.clients} connections`}>
                {' '}
                ×{m.clients}
              </span>
            )}
          </li>
        ))}
      </ul>
      {presence.error && <p className="error">{presence.error.message}</p>}
    </aside>
  );
}
