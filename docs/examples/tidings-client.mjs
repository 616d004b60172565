// Connecting with tidings-client (client-js/), the browser client that reconnects with
// backoff, refreshes its token, resumes by offset and queues while offline. The same
// code runs in a page (bundled) and in Node 22+ (or Node 20 with
// `node --experimental-websocket`, or pass `WebSocket` from the `ws` package):
//
//   TIDINGS_WS_URL=ws://127.0.0.1:8080/ws TIDINGS_TOKEN=<jwt> node tidings-client.mjs 2
//
// In a page, `getToken` would fetch a fresh token from your backend.
import { TidingsClient } from 'tidings-client';

const want = Number(process.argv[2] ?? 1);
const print = (kind, data) => console.log(JSON.stringify({ kind, ...data }));

const client = new TidingsClient({
  url: process.env.TIDINGS_WS_URL,
  token: process.env.TIDINGS_TOKEN,
  getToken: async () => process.env.TIDINGS_TOKEN, // your backend's token endpoint
});

client.on('connected', (w) => print('welcome', { user: w.user, channel: w.channel }));
client.on('recovered', ({ channel, recovered }) => {
  if (!recovered) print('refetch', { channel }); // messages were missed: reload state
});

const news = client.subscribe('news');
await news.ready;
print('subscribed', { channel: 'news' });

let seen = 0;
client.on('message', async (m) => {
  print('message', { channel: m.channel, event: m.event, payload: m.payload, msg_id: m.msgId, offset: m.offset });
  if (m.channel === client.personalChannel && m.offset !== undefined) {
    await client.ack(m.offset); // the user has seen it: shared by all their devices
  }
  if (++seen >= want) {
    await client.close();
    process.exit(0);
  }
});
setTimeout(() => {
  console.error('timed out');
  process.exit(1);
}, Number(process.env.TIDINGS_TIMEOUT_MS ?? 20000));
