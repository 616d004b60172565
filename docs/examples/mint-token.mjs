// Minting a client token in a Node backend with `jose` (npm install jose).
//
//   TIDINGS_JWT_SECRET=dev-secret-change-me node mint-token.mjs alice
//
// The gateway verifies it with the same secret (--jwt-secret; HS256 is what it accepts
// by default). `sub` names the user (and the personal channel $user:<sub>); `exp` is
// required; `subscribe` / `publish` hold the channel patterns the user may use.
// Prints the token.
import { SignJWT } from 'jose';

const secret = new TextEncoder().encode(process.env.TIDINGS_JWT_SECRET ?? 'dev-secret-change-me');
const user = process.argv[2] ?? 'alice';

const token = await new SignJWT({ subscribe: ['news', 'room:*'], publish: ['room:*'] })
  .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
  .setSubject(user)
  .setIssuedAt()
  .setExpirationTime('15m') // short-lived: clients refresh with a new one
  .sign(secret);

console.log(token);
