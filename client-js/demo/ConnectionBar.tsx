// The connection state: "connected", "reconnecting in N s", and whether the last
// reconnect recovered every missed message.
import { useEffect, useState } from 'react';
import type { ConnectionState, TidingsClient } from '../src/index.js';
import { useClientEvent, useConnectionState } from '../src/react.js';

function label(s: ConnectionState, now: number): string {
  switch (s.status) {
    case 'connected':
      return 'connected';
    case 'connecting':
      return s.attempt > 0 ? 'reconnecting…' : 'connecting…';
    case 'reconnecting':
      return `reconnecting in ${Math.max(0, Math.ceil((s.retryAt - now) / 1000))} s`;
    case 'stopped':
      return s.error ? `stopped: ${s.error.message}` : 'disconnected';
  }
}

export function ConnectionBar({ client }: { client: TidingsClient }) {
  const state = useConnectionState(client);
  const [now, setNow] = useState(Date.now());
  // Results of resuming each channel since the last connect.
  const [recovery, setRecovery] = useState<Record<string, boolean>>({});

  useEffect(() => {
    if (state.status !== 'reconnecting') return;
    const t = setInterval(() => setNow(Date.now()), 250);
    setNow(Date.now());
    return () => clearInterval(t);
  }, [state]);
  useClientEvent(client, 'connected', () => setRecovery({}));
  useClientEvent(client, 'recovered', (r) => setRecovery((p) => ({ ...p, [r.channel]: r.recovered })));

  const missed = Object.entries(recovery).filter(([, ok]) => !ok).map(([ch]) => ch);
  const resumed = Object.keys(recovery).length > 0;
  return (
    <div className="connection">
      <span className={`status ${state.status}`} data-testid="connection-status" data-status={state.status}>
        {label(state, now)}
      </span>
      {resumed && (
        <span
          className={missed.length ? 'recovery bad' : 'recovery ok'}
          data-testid="recovery"
          data-recovered={missed.length === 0}
          title={missed.length ? `messages were missed on ${missed.join(', ')}: refetch them` : 'every missed message was replayed'}
        >
          {missed.length ? `not recovered (${missed.join(', ')})` : 'recovered'}
        </span>
      )}
    </div>
  );
}
