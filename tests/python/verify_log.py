#!/usr/bin/env python3
"""An independent verifier of Custos logs, written from docs/log-format.md alone.

It shares no code with agentd: SHA-256 from hashlib, Ed25519 from the `cryptography` package,
the Merkle tree and the RFC 9162 inclusion-proof check written out here. The end-to-end tests
run it against logs agentd wrote, so the format is proven by a second implementation, not only
self-consistent.

Usage: verify_log.py DIR --key KEY [--proof BUNDLE.json]
Prints "OK <size> <root hex>" and exits 0, or "FAIL: <reason>" and exits 1.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Failure(Exception):
    pass


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(hashes):
    """RFC 6962 tree hash over leaf hashes."""
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def canonical(value):
    """RFC 8785 for the values Custos writes (no floats)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(canonical(k) + ":" + canonical(value[k]) for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            o = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\b":
                out.append("\\b")
            elif ch == "\f":
                out.append("\\f")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif o < 0x20:
                out.append("\\u%04x" % o)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise Failure("integer beyond 2^53")
        return str(value)
    raise Failure("unexpected JSON value %r" % (value,))


def parse_key(text):
    """name+hexid+base64(0x01||key)"""
    name, key_id, key = text.strip().split("+", 2)
    raw = base64.b64decode(key, validate=True)
    if len(raw) != 33 or raw[0] != 1:
        raise Failure("not an Ed25519 verifier key")
    computed = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if computed.hex() != key_id:
        raise Failure("key id does not match the key")
    return name, computed, Ed25519PublicKey.from_public_bytes(raw[1:])


def parse_note(text):
    body, sep, sigs = text.rpartition("\n\n")
    if not sep:
        raise Failure("note without signatures")
    body += "\n"
    signatures = []
    for line in sigs.rstrip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            raise Failure("bad signature line %r" % line)
        name, sig = line[2:].split(" ", 1)
        raw = base64.b64decode(sig, validate=True)
        signatures.append((name, raw[:4], raw[4:]))
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise Failure("malformed checkpoint body")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise Failure("root is not 32 bytes")
    return {"origin": lines[0], "size": int(lines[1]), "root": root, "body": body, "signatures": signatures}


def signed_by(note, keys):
    for name, key_id, key in keys:
        for sig_name, sig_id, sig in note["signatures"]:
            if sig_name == name and sig_id == key_id:
                try:
                    key.verify(sig, note["body"].encode())
                    return True
                except InvalidSignature:
                    pass
    return False


def read_checkpoints(path):
    data = open(path, "rb").read() if os.path.exists(path) else b""
    notes, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        length = int(data[pos:nl])
        notes.append(data[nl + 1 : nl + 1 + length].decode())
        if nl + 1 + length > len(data):
            raise Failure("torn checkpoints file")
        pos = nl + 1 + length
    return notes


def verify_log(directory, keys):
    origin = open(os.path.join(directory, "origin")).read().strip()
    if os.path.exists(os.path.join(directory, "base")):
        raise Failure("pruned logs are not handled by this verifier")
    checkpoints = [parse_note(t) for t in read_checkpoints(os.path.join(directory, "checkpoints"))]
    segments = sorted(f for f in os.listdir(directory) if re.fullmatch(r"[0-9]{20}\.seg", f))
    hashes = []
    for name in segments:
        if int(name[:20]) != len(hashes):
            raise Failure("segment %s starts at %d, expected %d" % (name, int(name[:20]), len(hashes)))
        data = open(os.path.join(directory, name), "rb").read()
        index = open(os.path.join(directory, name[:20] + ".idx"), "rb").read()
        pos, i = 0, 0
        while pos < len(data):
            seq_expected = len(hashes)
            if pos + 12 > len(data):
                raise Failure("seq %d: torn frame" % seq_expected)
            length, seq = struct.unpack_from("<IQ", data, pos)
            leaf = data[pos + 12 : pos + 12 + length]
            stored = data[pos + 12 + length : pos + 12 + length + 32]
            if len(leaf) != length or len(stored) != 32:
                raise Failure("seq %d: torn frame" % seq_expected)
            h = leaf_hash(leaf)
            if h != stored:
                raise Failure("seq %d: leaf does not match its hash" % seq_expected)
            if seq != seq_expected:
                raise Failure("seq %d: frame carries seq %d" % (seq_expected, seq))
            offset, idx_hash = struct.unpack_from("<Q32s", index, i * 40)
            if offset != pos or idx_hash != h:
                raise Failure("seq %d: index disagrees with the segment" % seq_expected)
            record = json.loads(leaf)
            if record.get("seq") != seq_expected:
                raise Failure("seq %d: record says seq %r" % (seq_expected, record.get("seq")))
            if canonical(record).encode() != leaf:
                raise Failure("seq %d: the record is not in canonical (RFC 8785) form" % seq_expected)
            if record.get("kind") == "log.key_rotation":
                rot = record["rotation"]
                old, new = parse_key(rot["old_key"]), parse_key(rot["new_key"])
                if not any(k[1] == old[1] and k[0] == old[0] for k in keys):
                    raise Failure("seq %d: rotation from an untrusted key" % seq_expected)
                statement = "custos log key rotation\n%s\n%s\n" % (origin, rot["new_key"])
                try:
                    old[2].verify(base64.b64decode(rot["signature"]), statement.encode())
                except InvalidSignature:
                    raise Failure("seq %d: rotation not signed by the old key" % seq_expected)
                keys = [k for k in keys if k[1] != old[1]] + [new]
            hashes.append(h)
            for note in checkpoints:
                if note["size"] == len(hashes):
                    if not signed_by(note, keys):
                        raise Failure("checkpoint of size %d: not signed by a trusted key" % note["size"])
                    if mth(hashes) != note["root"]:
                        raise Failure("checkpoint of size %d: root mismatch" % note["size"])
            pos += 12 + length + 32
            i += 1
        if len(index) != i * 40:
            raise Failure("segment %s: index has %d entries, segment %d" % (name, len(index) // 40, i))
    previous = -1
    for note in checkpoints:
        if note["origin"] != origin:
            raise Failure("checkpoint of another log")
        if note["size"] < previous:
            raise Failure("checkpoint sizes go back")
        previous = note["size"]
        if note["size"] > len(hashes):
            raise Failure("checkpoint of size %d beyond the log's %d leaves: truncated" % (note["size"], len(hashes)))
    if len(hashes) > max(previous, 0):
        raise Failure("%d records after the last checkpoint are not signed" % (len(hashes) - max(previous, 0)))
    return len(hashes), mth(hashes), checkpoints


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_bundle(path, keys):
    bundle = json.load(open(path))
    note = parse_note(bundle["checkpoint"])
    if not signed_by(note, keys):
        raise Failure("proof: checkpoint not signed by a trusted key")
    leaf = bundle["leaf"].encode()
    proof = [bytes.fromhex(h) for h in bundle["proof"]]
    if json.loads(leaf)["seq"] != bundle["seq"]:
        raise Failure("proof: record seq differs")
    if not verify_inclusion(bundle["seq"], note["size"], leaf_hash(leaf), proof, note["root"]):
        raise Failure("proof: inclusion proof does not verify")
    # The tlog-proof text carries the same proof.
    lines = bundle["tlog_proof"].split("\n")
    if lines[0] != "c2sp.org/tlog-proof@v1" or lines[1] != "index %d" % bundle["seq"]:
        raise Failure("proof: bad tlog-proof header")
    if [base64.b64decode(l) for l in lines[2 : 2 + len(proof)]] != proof:
        raise Failure("proof: tlog-proof hashes differ")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--key", required=True)
    parser.add_argument("--proof")
    args = parser.parse_args()
    key_text = open(args.key).read() if os.path.isfile(args.key) else args.key
    try:
        keys = [parse_key(key_text)]
        size, root, checkpoints = verify_log(args.dir, keys)
        if args.proof:
            verify_bundle(args.proof, keys)
    except (Failure, ValueError, KeyError, json.JSONDecodeError) as err:
        print("FAIL: %s" % err)
        return 1
    print("OK %d %s %d" % (size, root.hex(), len(checkpoints)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
