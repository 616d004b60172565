// Shared documents: open documents (tabs) by name, each a collaboratively edited text
// on doc:<name> (docs/collaboration.md): operations on the channel's history,
// snapshots on snap:<name>, cursors on cursor:<name>.
import { useState } from 'react';
import type { TidingsClient } from '../src/index.js';
import { ROOM_RE } from './api.js';
import { DocPane } from './DocPane.js';

export function Docs({ client, subject, active, initialDoc }: { client: TidingsClient; subject: string; active: boolean; initialDoc: string }) {
  const first = ROOM_RE.test(initialDoc) ? initialDoc : 'notes';
  const [docs, setDocs] = useState<string[]>([first]);
  const [current, setCurrent] = useState(first);
  const [name, setName] = useState('');
  const [error, setError] = useState('');

  function open(doc: string): void {
    if (!ROOM_RE.test(doc)) {
      setError('document names: 1-32 letters, digits, _ and -');
      return;
    }
    setError('');
    setDocs((p) => (p.includes(doc) ? p : [...p, doc]));
    setCurrent(doc);
    setName('');
  }

  function closeDoc(doc: string): void {
    const rest = docs.filter((d) => d !== doc);
    setDocs(rest);
    if (current === doc) setCurrent(rest[0] ?? '');
  }

  return (
    <main className="rooms docs" hidden={!active} data-testid="docs">
      <nav>
        {docs.map((d) => (
          <span key={d} className={d === current ? 'tab active' : 'tab'}>
            <button data-testid={`doc-tab-${d}`} onClick={() => setCurrent(d)}>
              {d}
            </button>
            <button className="close" title={`close ${d}`} data-testid={`close-doc-${d}`} onClick={() => closeDoc(d)}>
              ×
            </button>
          </span>
        ))}
        <form
          onSubmit={(e) => {
            e.preventDefault();
            open(name.trim());
          }}
        >
          <input data-testid="doc-input" value={name} onChange={(e) => setName(e.target.value)} placeholder="document name" maxLength={32} />
          <button data-testid="doc-open-button">Open</button>
        </form>
        {error && <span className="error">{error}</span>}
      </nav>
      {docs.map((d) => (
        <DocPane key={d} client={client} subject={subject} name={d} active={d === current} />
      ))}
      {docs.length === 0 && <p className="empty">Open a document to edit it together.</p>}
    </main>
  );
}
