// Login (pick a user name, get a token), then the chat or the shared documents,
// notifications and status.
import { useEffect, useState } from 'react';
import { jsonCodec, TidingsClient } from '../src/index.js';
import { msgpackCodec } from '../src/msgpack.js';
import { fetchToken, USER_RE, wsUrl } from './api.js';
import { ConnectionBar } from './ConnectionBar.js';
import { Docs } from './Docs.js';
import { EventLog } from './EventLog.js';
import { Notifications } from './Notifications.js';
import { Rooms } from './Rooms.js';

interface Session {
  /** The name the user picked (shown, and the sender of chat lines). */
  user: string;
  /** The token's subject: demo users are `demo-<name>`, never a real user. */
  subject: string;
  client: TidingsClient;
}

// ?encoding=msgpack switches the connection to binary MessagePack frames.
const codec = new URLSearchParams(location.search).get('encoding') === 'msgpack' ? msgpackCodec : jsonCodec;

// ?view=docs opens the documents (?doc=<name> picks the first one).
const params = new URLSearchParams(location.search);
const initialView = params.get('view') === 'docs' ? 'docs' : 'chat';
const initialDoc = params.get('doc') ?? 'notes';

function initialUser(): string {
  return new URLSearchParams(location.search).get('user') ?? sessionStorage.getItem('tidings-demo-user') ?? '';
}

export function App() {
  const [session, setSession] = useState<Session | undefined>();
  const [name, setName] = useState(initialUser);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const [view, setView] = useState<'chat' | 'docs'>(initialView);

  async function login(user: string): Promise<void> {
    if (!USER_RE.test(user)) {
      setError('1-32 characters: letters, digits, _ and -');
      return;
    }
    setBusy(true);
    setError('');
    try {
      const { token, user: subject } = await fetchToken(user);
      const client = new TidingsClient({
        url: wsUrl(),
        token,
        codec,
        // Called before the token expires, and when the server refuses it.
        getToken: async () => (await fetchToken(user)).token,
      });
      sessionStorage.setItem('tidings-demo-user', user);
      setSession({ user, subject, client });
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  }

  // ?user=alice logs in at once (handy for opening several tabs).
  useEffect(() => {
    const u = new URLSearchParams(location.search).get('user');
    if (u) void login(u);
  }, []);

  function logout(): void {
    void session?.client.close();
    sessionStorage.removeItem('tidings-demo-user');
    setSession(undefined);
  }

  if (!session) {
    return (
      <main className="login">
        <h1>Tidings demo</h1>
        <p>Pick a user name. Open another window with another name to chat with yourself.</p>
        <form
          data-testid="login-form"
          onSubmit={(e) => {
            e.preventDefault();
            void login(name.trim());
          }}
        >
          <input
            data-testid="user-input"
            value={name}
            onChange={(e) => setName(e.target.value)}
            placeholder="alice"
            autoFocus
            maxLength={32}
          />
          <button data-testid="login-button" disabled={busy}>
            Join
          </button>
        </form>
        {error && (
          <p className="error" data-testid="login-error">
            {error}
          </p>
        )}
      </main>
    );
  }

  const { client, user, subject } = session;
  return (
    <div className="app">
      <header>
        <h1>Tidings demo</h1>
        <span className="views">
          <button className={view === 'chat' ? 'view active' : 'view'} data-testid="view-chat" onClick={() => setView('chat')}>
            Chat
          </button>
          <button className={view === 'docs' ? 'view active' : 'view'} data-testid="view-docs" onClick={() => setView('docs')}>
            Docs
          </button>
        </span>
        <ConnectionBar client={client} />
        <span className="encoding" data-testid="encoding">
          {codec.subprotocol}
        </span>
        <span className="user" data-testid="current-user">
          {user}
        </span>
        <button className="link" onClick={logout} data-testid="logout-button">
          log out
        </button>
      </header>
      <Rooms client={client} user={user} subject={subject} hidden={view !== 'chat'} />
      <Docs client={client} subject={subject} active={view === 'docs'} initialDoc={initialDoc} />
      <aside>
        <Notifications client={client} user={subject} />
        <EventLog client={client} />
      </aside>
    </div>
  );
}
