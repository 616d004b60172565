// Starts and always stops the processes the integration and e2e tests need: a
// redis-server on a free port (never 6379) and gateway binaries on free ports.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** client-js/ (this file runs from build-test/test/). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export const JWT_SECRET = 'e2e-secret-0123456789abcdef';
export const API_KEY = 'e2e-api-key-0123456789';

const live = new Set<ChildProcess>();
// Whatever happens (a failed assertion, an exception, Ctrl-C), no child survives us.
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    for (const c of live) c.kill('SIGKILL');
    process.exit(130);
  });
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` until it is true, or throws after `timeoutMs`. */
export async function waitFor(pred: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export class Proc {
  readonly output: string[] = [];
  readonly exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    live.add(child);
    const keep = (b: Buffer): void => {
      this.output.push(b.toString());
      if (this.output.length > 500) this.output.shift();
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((r) =>
      child.once('exit', (code) => {
        live.delete(child);
        r(code);
      }),
    );
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends `signal`, and SIGKILL if it has not exited within `graceMs`. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 8000): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  log(): string {
    return this.output.join('');
  }
}

export async function startRedis(): Promise<{ port: number; proc: Proc }> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = new Proc('redis', child);
  await waitFor(() => proc.log().includes('Ready to accept connections') || !proc.running, 10_000, 'redis-server');
  if (!proc.running) throw new Error(`redis-server exited:\n${proc.log()}`);
  return { port, proc };
}

let checkedBin: string | undefined;

/**
 * The gateway binary: $TIDINGS_GATEWAY_BIN as it is, or ../target/debug/gateway,
 * built with cargo when it is missing or older than the demo files it embeds.
 */
export function gatewayBin(): string {
  if (checkedBin) return checkedBin;
  const env = process.env.TIDINGS_GATEWAY_BIN;
  if (env) return (checkedBin = resolve(ROOT, env));
  const bin = resolve(ROOT, '../target/debug/gateway');
  const demo = resolve(ROOT, '../gateway/demo');
  const newest = existsSync(demo) ? Math.max(0, ...readdirSync(demo).map((f) => statSync(join(demo, f)).mtimeMs)) : 0;
  if (!existsSync(bin) || statSync(bin).mtimeMs < newest) {
    const r = spawnSync('cargo', ['build', '-p', 'gateway'], { cwd: resolve(ROOT, '..'), stdio: 'inherit', timeout: 900_000 });
    if (r.status !== 0 || !existsSync(bin)) throw new Error('cargo build -p gateway failed');
  }
  return (checkedBin = bin);
}

export interface Gateway {
  proc: Proc;
  port: number;
  adminPort: number;
  http: string;
  ws: string;
}

export interface GatewayOptions {
  port?: number;
  redisPort?: number;
  args?: string[];
}

export async function startGateway(opts: GatewayOptions = {}): Promise<Gateway> {
  const port = opts.port ?? (await freePort());
  const adminPort = await freePort();
  const args = [
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--jwt-secret', JWT_SECRET,
    '--api-keys', API_KEY,
    '--log', 'warn',
    ...(opts.redisPort ? ['--redis-url', `redis://127.0.0.1:${opts.redisPort}`] : []),
    ...(opts.args ?? []),
  ];
  const child = spawn(gatewayBin(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = new Proc(`gateway:${port}`, child);
  await waitFor(
    async () => {
      if (!proc.running) return true;
      try {
        return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200;
      } catch {
        return false;
      }
    },
    15_000,
    `gateway on ${port} to be ready`,
  );
  if (!proc.running) throw new Error(`gateway exited:\n${proc.log()}`);
  return { proc, port, adminPort, http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/ws` };
}

/** Publishes through the HTTP API of a gateway. */
export async function httpPublish(gw: Gateway, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await fetch(`${gw.http}/api/v1/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`publish failed: ${r.status} ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}

/** An HS256 JWT signed with the test secret. */
export function signJwt(claims: Record<string, unknown>, secret = JWT_SECRET): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

export function token(sub: string, extra: Record<string, unknown> = {}): string {
  return signJwt({
    sub,
    exp: Math.floor(Date.now() / 1000) + 600,
    subscribe: ['room:*', 'news', 'typing:*'],
    publish: ['room:*', 'news', 'typing:*'],
    ...extra,
  });
}
