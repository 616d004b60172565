// A log of connection events, to watch the client reconnect and resume.
import { useState } from 'react';
import type { TidingsClient } from '../src/index.js';
import { useClientEvent } from '../src/react.js';

interface Entry {
  at: string;
  text: string;
}

export function EventLog({ client }: { client: TidingsClient }) {
  const [entries, setEntries] = useState<Entry[]>([]);
  const add = (text: string): void =>
    setEntries((p) => [{ at: new Date().toLocaleTimeString(), text }, ...p].slice(0, 50));
  useClientEvent(client, 'connected', (c) => add(`connected to ${c.node} (session ${c.session})`));
  useClientEvent(client, 'disconnected', (d) =>
    add(`disconnected${d.code ? ` (${d.code})` : ''}: ${d.reason}${d.willReconnect ? '' : ', not reconnecting'}`),
  );
  useClientEvent(client, 'reconnecting', (r) => add(`reconnecting in ${(r.delayMs / 1000).toFixed(1)} s`));
  useClientEvent(client, 'recovered', (r) => add(`${r.channel}: ${r.recovered ? 'recovered' : 'NOT recovered'}`));
  useClientEvent(client, 'error', (e) => add(`error: ${e.message}`));
  return (
    <section className="panel log">
      <h2>Connection log</h2>
      <ol data-testid="event-log">
        {entries.map((e, i) => (
          <li key={entries.length - i}>
            <time>{e.at}</time> {e.text}
          </li>
        ))}
      </ol>
    </section>
  );
}
