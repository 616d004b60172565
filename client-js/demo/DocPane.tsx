// One shared document: a textarea bound to the document (useDocument), the other
// editors' carets and selections drawn over it, who is editing (the presence of
// doc:<name>), the document's state, and what happened on the last reconnect.
import { useEffect, useRef, useState, type ReactNode } from 'react';
import type { TidingsClient } from '../src/index.js';
import type { DocumentCursor } from '../src/collab/index.js';
import { useDocument } from '../src/react.js';
import { Members } from './Members.js';

/** A stable color per editor instance. */
function color(id: string, alpha = 1): string {
  let h = 0;
  for (const c of id) h = (h * 31 + (c.codePointAt(0) ?? 0)) % 360;
  return `hsla(${h}, 70%, 45%, ${alpha})`;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * The text with the remote selections highlighted and carets where their heads are,
 * laid out exactly like the textarea underneath (same font, padding and wrapping);
 * only the marks are visible.
 */
function Overlay({ text, cursors }: { text: string; cursors: DocumentCursor[] }) {
  const chars = Array.from(text);
  const cuts = new Set<number>([0, chars.length]);
  for (const c of cursors) {
    cuts.add(Math.min(c.anchor, chars.length));
    cuts.add(Math.min(c.head, chars.length));
  }
  const points = [...cuts].sort((a, b) => a - b);
  const out: ReactNode[] = [];
  for (let i = 0; i < points.length; i++) {
    const at = points[i] as number;
    for (const c of cursors) {
      if (Math.min(c.head, chars.length) !== at) continue;
      out.push(
        <span key={`caret-${c.client}`} className="remote-caret" style={{ borderColor: color(c.client) }} data-testid="remote-cursor" data-user={c.user} data-name={c.name} data-head={c.head}>
          <span className="remote-name" style={{ background: color(c.client) }}>
            {c.name}
          </span>
        </span>,
      );
    }
    const next = points[i + 1];
    if (next === undefined) break;
    const seg = chars.slice(at, next).join('');
    const sel = cursors.find((c) => Math.min(c.anchor, c.head) <= at && next <= Math.max(c.anchor, c.head));
    out.push(
      sel ? (
        <span key={`seg-${at}`} style={{ background: color(sel.client, 0.25) }}>
          {seg}
        </span>
      ) : (
        seg
      ),
    );
  }
  // A trailing newline needs something after it to take its line.
  out.push('\u200b');
  return <>{out}</>;
}

export function DocPane({ client, subject, name, active }: { client: TidingsClient; subject: string; name: string; active: boolean }) {
  const channel = `doc:${name}`;
  const doc = useDocument(client, channel);
  const overlay = useRef<HTMLDivElement>(null);
  const area = useRef<HTMLTextAreaElement | null>(null);
  const [, tick] = useState(0);

  // The overlay scrolls with the textarea.
  const sync = (): void => {
    if (overlay.current && area.current) overlay.current.scrollTop = area.current.scrollTop;
  };
  useEffect(sync, [doc.text, doc.remoteCursors]);
  // Reports fade after a while.
  useEffect(() => {
    const t = setInterval(() => tick((n) => n + 1), 5000);
    return () => clearInterval(t);
  }, []);

  const resynced = doc.resynced;
  const reloaded = doc.reloaded;
  return (
    <section className="room doc" hidden={!active} data-testid={`doc-${name}`}>
      <div className="room-status">
        doc:{name} ·{' '}
        <span className={`doc-status ${doc.status}`} data-testid="doc-status" data-status={doc.status}>
          {doc.status === 'offline' ? 'offline: edits are kept and sent on reconnect' : doc.status}
        </span>{' '}
        · revision <span data-testid="doc-revision">{doc.revision}</span>
        {doc.pending && (
          <span className="pending" data-testid="doc-pending">
            {' '}
            · saving…
          </span>
        )}
        {doc.error && <span className="error"> · {doc.error.message}</span>}
      </div>
      {resynced && (
        <div className="doc-report" data-testid="doc-resync">
          back online: resynced {plural(resynced.remoteOps, 'remote op')}, sent {plural(resynced.offlineEdits, 'offline edit')}
        </div>
      )}
      {reloaded && (
        <div className="doc-report warn" data-testid="doc-reload">
          reloaded from the newest snapshot ({reloaded.reason}){reloaded.droppedLocal ? '; unsent local edits were lost' : ''}
        </div>
      )}
      <div className="room-body">
        <div className="doc-editor">
          <textarea
            {...doc.textarea}
            ref={(el) => {
              area.current = el;
              doc.textarea.ref(el);
            }}
            onScroll={sync}
            data-testid="doc-text"
            spellCheck={false}
            placeholder={doc.status === 'loading' ? 'loading…' : 'Type here; open this document in another window to edit together.'}
          />
          <div className="doc-overlay" ref={overlay} aria-hidden="true">
            <Overlay text={doc.text} cursors={doc.remoteCursors} />
          </div>
        </div>
        <Members client={client} channel={channel} subject={subject} />
      </div>
    </section>
  );
}
