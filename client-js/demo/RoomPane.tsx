// One joined room: its messages, the message box, who is typing and who is here.
import { useEffect, useRef, useState } from 'react';
import type { Message, TidingsClient } from '../src/index.js';
import { useChannel } from '../src/react.js';
import { Members } from './Members.js';

/** How long a typing indicator lasts without a new typing event. */
const TYPING_TTL_MS = 4000;
/** At most one typing event per this interval while typing. */
const TYPING_EVERY_MS = 1500;

interface Chat {
  text: string;
  from: string;
}

function asChat(m: Message): Chat {
  const p = m.payload as Partial<Chat> | null;
  return { text: String(p?.text ?? ''), from: String(p?.from ?? '?') };
}

function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  return `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`;
}

export function RoomPane({
  client,
  user,
  subject,
  room,
  active,
}: {
  client: TidingsClient;
  user: string;
  subject: string;
  room: string;
  active: boolean;
}) {
  const chat = useChannel(client, `room:${room}`, { limit: 200 });
  const [typers, setTypers] = useState<Record<string, number>>({});
  const typing = useChannel(client, `typing:${room}`, {
    limit: 0,
    onMessage: (m) => {
      const p = m.payload as { who?: unknown; active?: unknown } | null;
      const who = typeof p?.who === 'string' ? p.who : undefined;
      if (!who || who === user) return;
      setTypers((prev) => {
        const next = { ...prev };
        if (p?.active === false) delete next[who];
        else next[who] = Date.now() + TYPING_TTL_MS;
        return next;
      });
    },
  });
  const [text, setText] = useState('');
  const [error, setError] = useState('');
  const [sending, setSending] = useState(0);
  const lastTyping = useRef(0);
  const list = useRef<HTMLOListElement>(null);

  // Expire indicators whose sender stopped (or vanished).
  useEffect(() => {
    if (Object.keys(typers).length === 0) return;
    const t = setInterval(() => {
      const now = Date.now();
      setTypers((prev) => Object.fromEntries(Object.entries(prev).filter(([, until]) => until > now)));
    }, 500);
    return () => clearInterval(t);
  }, [typers]);

  useEffect(() => {
    list.current?.scrollTo(0, list.current.scrollHeight);
  }, [chat.messages.length, active]);

  function onType(value: string): void {
    setText(value);
    const now = Date.now();
    if (value && now - lastTyping.current > TYPING_EVERY_MS) {
      lastTyping.current = now;
      typing.publish('typing', { who: user, active: true }).catch(() => undefined);
    }
  }

  async function send(): Promise<void> {
    const body = text.trim();
    if (!body) return;
    setText('');
    setError('');
    setSending((n) => n + 1);
    lastTyping.current = 0;
    typing.publish('typing', { who: user, active: false }).catch(() => undefined);
    try {
      // Queued while offline; sent in order after the reconnect.
      await chat.publish('chat', { text: body, from: user });
    } catch (e) {
      setError(`not sent: ${(e as Error).message}`);
    } finally {
      setSending((n) => n - 1);
    }
  }

  const names = Object.keys(typers).sort();
  return (
    <section className="room" hidden={!active} data-testid={`room-${room}`}>
      <div className="room-status">
        #{room} · {chat.status}
        {chat.recovered === false && <span className="warn"> · some messages were missed</span>}
        {chat.error && <span className="error"> · {chat.error.message}</span>}
      </div>
      <div className="room-body">
        <div className="room-main">
          <ol className="messages" data-testid="messages" ref={list}>
            {chat.messages.map((m) => {
              const c = asChat(m);
              return (
                <li key={`${m.offset ?? ''}:${m.ts}:${c.from}`} className={c.from === user ? 'mine' : ''} data-testid="message" data-from={c.from}>
                  <b>{c.from}</b> {c.text}
                </li>
              );
            })}
          </ol>
          <div className="typing" data-testid="typing">
            {typingText(names)}
          </div>
        </div>
        <Members client={client} channel={`room:${room}`} subject={subject} />
      </div>
      <form
        className="compose"
        onSubmit={(e) => {
          e.preventDefault();
          void send();
        }}
      >
        <input data-testid="message-input" value={text} onChange={(e) => onType(e.target.value)} placeholder={`Message #${room}`} maxLength={2000} />
        <button data-testid="send-button">Send</button>
      </form>
      {sending > 0 && <div className="pending">sending {sending}…</div>}
      {error && <div className="error">{error}</div>}
    </section>
  );
}
