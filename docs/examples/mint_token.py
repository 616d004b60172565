"""Minting a client token in a Python backend with PyJWT (pip install PyJWT).

    TIDINGS_JWT_SECRET=dev-secret-change-me python3 mint_token.py alice

The gateway verifies it with the same secret (--jwt-secret; HS256 is what it accepts
by default). `sub` names the user (and the personal channel $user:<sub>); `exp` is
required; `subscribe` / `publish` hold the channel patterns the user may use. Prints
the token.
"""

import os
import sys
import time

import jwt  # PyJWT

secret = os.environ.get("TIDINGS_JWT_SECRET", "dev-secret-change-me")
user = sys.argv[1] if len(sys.argv) > 1 else "alice"
now = int(time.time())
claims = {
    "sub": user,
    "iat": now,
    "exp": now + 15 * 60,  # short-lived: clients refresh with a new one
    "subscribe": ["news", "room:*"],
    "publish": ["room:*"],
}
print(jwt.encode(claims, secret, algorithm="HS256"))
