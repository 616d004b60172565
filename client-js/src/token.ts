// Token timing: when to refresh, and reading `exp` from a JWT locally. Browsers cannot
// see a 401 handshake (it is reported as close 1006), so the client checks the token's
// expiry itself before every connect (docs/protocol.md section 3).

/**
 * Milliseconds until a token expiring at `expiresAt` (Unix seconds) should be
 * refreshed: at 80% of the remaining lifetime, at most 60 s before expiry.
 * Undefined when it has already expired.
 */
export function refreshDelayMs(expiresAt: number, nowMs: number): number | undefined {
  const remaining = expiresAt * 1000 - nowMs;
  if (!(remaining > 0)) return undefined;
  const lead = Math.min(remaining / 5, 60_000);
  return Math.floor(remaining - lead);
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The `exp` claim (Unix seconds) of a JWT, or undefined if it cannot be read. */
export function jwtExpiry(token: string): number | undefined {
  const part = token.split('.')[1];
  if (part === undefined) return undefined;
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(part));
    if (typeof claims === 'object' && claims !== null && 'exp' in claims) {
      const exp = (claims as { exp: unknown }).exp;
      if (typeof exp === 'number') return exp;
    }
  } catch {
    // Not a JWT we can read: the server will judge it.
  }
  return undefined;
}
