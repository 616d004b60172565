// Connecting with the plain browser WebSocket API (no library), e.g. from a page or
// a worker. The same code runs in Node 22+ (global WebSocket) and Node 20 with
// `node --experimental-websocket`:
//
//   TIDINGS_WS_URL=ws://127.0.0.1:8080/ws TIDINGS_TOKEN=<jwt> node plain-websocket.mjs 2
//
// The token travels in the subprotocol list (browsers cannot set headers), next to
// the encoding. The page answers `ping` with `pong`, subscribes to `news` after the
// `welcome`, and tracks the last offset per channel so that a reconnect can resume
// (`?since=&epoch=` for the personal channel). A real client also reconnects with
// backoff: use tidings-client for that (tidings-client.mjs).

/** Opens one connection; `onEvent(name, data)` sees what happens. Returns the socket. */
export function connect(url, token, onEvent) {
  const ws = new WebSocket(url, ['tidings.json', `tidings.token.${token}`]);
  let nextId = 1;
  const positions = {}; // channel -> { epoch, offset }: where to resume from
  const send = (frame) => ws.send(JSON.stringify(frame));

  ws.onmessage = (ev) => {
    const frame = JSON.parse(ev.data);
    switch (frame.type) {
      case 'welcome':
        if (frame.epoch !== undefined) {
          positions[frame.channel] = { epoch: frame.epoch, offset: frame.offset };
        }
        onEvent('welcome', { user: frame.user, channel: frame.channel, limits: frame.limits });
        send({ type: 'subscribe', id: nextId++, channel: 'news' });
        break;
      case 'reply':
        // Switch on error.code, never on the message text.
        onEvent(frame.ok ? 'reply' : 'error', frame.ok ? frame.result : frame.error);
        break;
      case 'message': {
        const last = positions[frame.channel];
        if (frame.offset !== undefined) {
          // Same epoch and not above the last offset: a duplicate (after a resume).
          if (last && last.epoch === frame.epoch && frame.offset <= last.offset) break;
          positions[frame.channel] = { epoch: frame.epoch, offset: frame.offset };
        }
        onEvent('message', {
          channel: frame.channel,
          event: frame.event,
          payload: frame.payload,
          msg_id: frame.msg_id,
          offset: frame.offset,
        });
        break;
      }
      case 'ping':
        send({ type: 'pong' }); // the heartbeat: two missed intervals close the socket
        break;
      default:
        break; // ignore frame types this page does not know
    }
  };
  ws.onclose = (ev) => onEvent('close', { code: ev.code, reason: ev.reason });
  return ws;
}

// Run from the command line: print events as JSON lines, stop after N messages.
if (typeof process !== 'undefined' && import.meta.url === `file://${process.argv[1]}`) {
  if (typeof WebSocket === 'undefined') {
    console.error('no global WebSocket: use Node 22+, or node --experimental-websocket on Node 20');
    process.exit(2);
  }
  const want = Number(process.argv[2] ?? 1);
  let seen = 0;
  const ws = connect(process.env.TIDINGS_WS_URL, process.env.TIDINGS_TOKEN, (name, data) => {
    console.log(JSON.stringify({ kind: name, ...data }));
    if (name === 'message' && ++seen >= want) ws.close(1000);
    if (name === 'close') process.exit(data.code === 1000 || data.code === 1005 ? 0 : 1);
  });
  setTimeout(() => {
    console.error('timed out');
    process.exit(1);
  }, Number(process.env.TIDINGS_TIMEOUT_MS ?? 20000));
}
