// The demo's backend calls: the gateway's demo-mode token endpoint.

export interface DemoToken {
  token: string;
  user: string;
  expires_in: number;
}

/** Mints a token for `user` (demo mode only: `POST /demo/token`). */
export async function fetchToken(user: string): Promise<DemoToken> {
  const r = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  const body = (await r.json().catch(() => ({}))) as Partial<DemoToken> & { message?: string };
  if (!r.ok || typeof body.token !== 'string') {
    throw new Error(body.message ?? `token request failed with HTTP ${r.status}`);
  }
  return body as DemoToken;
}

/** The gateway's WebSocket endpoint on this origin. */
export function wsUrl(): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

export const USER_RE = /^[A-Za-z0-9_-]{1,32}$/;
export const ROOM_RE = /^[A-Za-z0-9_-]{1,32}$/;
