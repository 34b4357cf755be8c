#!/usr/bin/env python3
"""A webhook receiver for the end-to-end tests, written from docs/detector.md's wire format
alone: it checks each delivery's Ed25519 signature against the key it was given (the host's
public key file), then appends one JSON line per request to OUT:
{"delivery", "timestamp", "key_matches", "verified", "body"}.

Usage: webhook_receiver.py PORT PUBLIC_KEY_FILE OUT
"""
import base64
import http.server
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PORT, KEY_FILE, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
PINNED = open(KEY_FILE).read().strip()
# <name>+<hex id>+<base64(0x01 || key)>: split on the first two '+' only.
_name, _id, b64 = PINNED.split("+", 2)
raw = base64.b64decode(b64)
assert raw[0] == 1 and len(raw) == 33, "an Ed25519 verifier key"
PUBLIC = Ed25519PublicKey.from_public_bytes(raw[1:])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("X-Custos-Timestamp", "")
        delivery = self.headers.get("X-Custos-Delivery", "")
        sig = self.headers.get("X-Custos-Signature", "")
        message = b"custos-webhook-v1\n" + ts.encode() + b"\n" + delivery.encode() + b"\n" + body
        verified = False
        if sig.startswith("ed25519="):
            try:
                PUBLIC.verify(base64.b64decode(sig[len("ed25519="):]), message)
                verified = True
            except (InvalidSignature, ValueError):
                verified = False
        line = {
            "delivery": delivery,
            "timestamp": ts,
            "key_matches": self.headers.get("X-Custos-Key") == PINNED,
            "verified": verified,
            "body": json.loads(body),
        }
        with open(OUT, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
