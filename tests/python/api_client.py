#!/usr/bin/env python3
"""An independent Custos API client, in Python with grpcio, from the .proto alone.

It generates its stubs from agentd/proto/custos/v1/custos.proto (grpcio-tools), connects to
agentd's Unix socket, streams the log from sequence 0 until a signed checkpoint covering at
least MIN records, checks that the sequence is gap-free, that the Merkle root of the records
received equals the checkpoint's root and that the checkpoint is signed by the key given, then
asks for an inclusion proof of one record and checks it (RFC 9162). It shares no code with
agentd: hashing, proofs and the note format are implemented here from docs/log-format.md.

usage: api_client.py SOCKET --key PUBKEY_FILE --min N --prove SEQ
"""

import argparse
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

from verify_log import leaf_hash, mth, parse_key, parse_note, signed_by, verify_inclusion

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "agentd", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="custos-py-")
    proto = os.path.join(PROTO_ROOT, "custos", "v1", "custos.proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", proto])
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    from custos.v1 import custos_pb2, custos_pb2_grpc  # noqa: E402
    return custos_pb2, custos_pb2_grpc


def check_checkpoint(cp, hashes, keys):
    """The checkpoint's signature, body and root against the leaf hashes received."""
    note = parse_note(cp.note)
    if not signed_by(note, keys):
        sys.exit(f"FAILED: checkpoint {cp.tree_size} is not signed by the key given")
    size, root = note["size"], note["root"]
    if size != cp.tree_size or root != cp.root_hash:
        sys.exit("FAILED: checkpoint fields differ from its signed note")
    if size > len(hashes):
        sys.exit(f"FAILED: checkpoint {size} arrived before its records")
    if mth(hashes[:size]) != root:
        sys.exit(f"FAILED: the records received do not hash to checkpoint {size}'s root")
    return size, root


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("--key", required=True)
    parser.add_argument("--min", type=int, required=True)
    parser.add_argument("--prove", type=int, required=True)
    args = parser.parse_args()
    pb, rpc = load_stubs()
    with open(args.key) as f:
        keys = [parse_key(f.read())]
    # gRPC core would send the socket path as the HTTP/2 :authority, which is not a valid
    # authority (agentd's HTTP/2 stack resets such streams): name the host instead.
    channel = grpc.insecure_channel(f"unix:{args.socket}",
                                    options=[("grpc.default_authority", "localhost")])
    stub = rpc.CustosStub(channel)

    hashes, records, checked = [], {}, 0
    stream = stub.StreamEvents(pb.StreamEventsRequest(from_sequence=0), timeout=120)
    for item in stream:
        which = item.WhichOneof("item")
        if which == "event":
            if item.event.sequence != len(hashes):
                sys.exit(f"FAILED: expected sequence {len(hashes)}, got {item.event.sequence}")
            hashes.append(leaf_hash(item.event.record))
            records[item.event.sequence] = item.event.record
        elif which == "checkpoint":
            size, _ = check_checkpoint(item.checkpoint, hashes, keys)
            checked += 1
            if size >= args.min:
                break
    stream.cancel()
    if checked == 0:
        sys.exit("FAILED: no checkpoint received")

    proof = stub.GetInclusionProof(pb.GetInclusionProofRequest(sequence=args.prove))
    note = parse_note(proof.checkpoint.note)
    if not signed_by(note, keys):
        sys.exit("FAILED: the proof's checkpoint is not signed by the key given")
    size, root = note["size"], note["root"]
    if args.prove in records and records[args.prove] != proof.record:
        sys.exit("FAILED: the proof's record differs from the streamed one")
    if not verify_inclusion(args.prove, size, leaf_hash(proof.record), list(proof.hashes), root):
        sys.exit("FAILED: the inclusion proof does not verify")
    print(f"ok: {len(hashes)} records gap-free, {checked} checkpoints verified, "
          f"record {args.prove} proven in a tree of {size}")


if __name__ == "__main__":
    main()
