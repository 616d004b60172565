// Chat rooms: join rooms (tabs), chat in them (publish on room:<name>, which keeps
// history, so missed messages come back after a reconnect), and typing indicators
// (publish on typing:<name>, which keeps none: ephemeral), and who is in each room
// (the presence of room:<name>).
import { useState } from 'react';
import type { TidingsClient } from '../src/index.js';
import { ROOM_RE } from './api.js';
import { RoomPane } from './RoomPane.js';

export function Rooms({ client, user, subject, hidden = false }: { client: TidingsClient; user: string; subject: string; hidden?: boolean }) {
  const [rooms, setRooms] = useState<string[]>(['lobby']);
  const [active, setActive] = useState('lobby');
  const [name, setName] = useState('');
  const [error, setError] = useState('');

  function join(room: string): void {
    if (!ROOM_RE.test(room)) {
      setError('room names: 1-32 letters, digits, _ and -');
      return;
    }
    setError('');
    setRooms((p) => (p.includes(room) ? p : [...p, room]));
    setActive(room);
    setName('');
  }

  function leave(room: string): void {
    const rest = rooms.filter((r) => r !== room);
    setRooms(rest);
    if (active === room) setActive(rest[0] ?? '');
  }

  return (
    <main className="rooms" hidden={hidden}>
      <nav>
        {rooms.map((r) => (
          <span key={r} className={r === active ? 'tab active' : 'tab'}>
            <button data-testid={`room-tab-${r}`} onClick={() => setActive(r)}>
              #{r}
            </button>
            <button className="close" title={`leave #${r}`} data-testid={`leave-${r}`} onClick={() => leave(r)}>
              ×
            </button>
          </span>
        ))}
        <form
          onSubmit={(e) => {
            e.preventDefault();
            join(name.trim());
          }}
        >
          <input data-testid="room-input" value={name} onChange={(e) => setName(e.target.value)} placeholder="room name" maxLength={32} />
          <button data-testid="join-button">Join</button>
        </form>
        {error && <span className="error">{error}</span>}
      </nav>
      {rooms.map((r) => (
        <RoomPane key={r} client={client} user={user} subject={subject} room={r} active={r === active} />
      ))}
      {rooms.length === 0 && <p className="empty">Join a room to chat.</p>}
    </main>
  );
}
