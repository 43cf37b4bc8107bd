#!/usr/bin/env python3
"""An independent check of rofr evidence bundles.

Written from RFC 9162 (Merkle tree hashes and inclusion proofs, section 2.1) and the
C2SP signed-note and tlog-checkpoint specifications alone, sharing no code with rofr:
it uses Python's hashlib, base64 and json, and Ed25519 from the `cryptography` package.

    python3 tools/verify-evidence.py BUNDLE.json 'name+keyid+base64key' [--witness KEY]...

Each `--witness` names a witness whose C2SP tlog-cosignature/v1 (Ed25519, key type
0x04, a timestamp and a signature over `cosignature/v1`, `time <T>` and the
checkpoint's text) the checkpoint must carry.

Exit status 0 when the checkpoint's signature and every entry's inclusion proof
verify, each deal entry's text (adoption or amendment) matches its SHA-256, and every
version the need names (at its submission, and at each move to another version) is one
the bundle holds (where it holds deal entries); 1 otherwise. It checks the
cryptography and the deal's bytes only; the first-refusal story is `rofr verify`'s to
tell.
"""

import argparse
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha256(data):
    return hashlib.sha256(data).digest()


def parse_verifier_key(text, kind=0x01):
    name, key_id, encoded = text.strip().split("+", 2)
    raw = base64.b64decode(encoded)
    if len(raw) != 33 or raw[0] != kind:
        raise ValueError(f"not an Ed25519 key of type {kind:#04x}: {text.strip()}")
    public = raw[1:]
    computed = sha256(name.encode() + b"\n" + bytes([kind]) + public)[:4]
    if computed.hex() != key_id:
        raise ValueError("the key ID does not match the key")
    return name, computed, public


def open_note(note, key):
    name, key_id, public = key
    split = note.rindex("\n\n")
    text, signatures = note[: split + 1], note[split + 2 :]
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise ValueError("malformed signature line")
        signer, blob = line[2:].split(" ", 1)
        blob = base64.b64decode(blob)
        if signer == name and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text.encode())
            return text
    raise ValueError("no signature by the key")


def check_cosignature(note, key):
    name, key_id, public = key
    split = note.rindex("\n\n")
    text, signatures = note[: split + 1], note[split + 2 :]
    for line in signatures.splitlines():
        signer, blob = line[2:].split(" ", 1)
        blob = base64.b64decode(blob)
        if signer == name and blob[:4] == key_id and len(blob) == 76:
            timestamp = int.from_bytes(blob[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
            Ed25519PublicKey.from_public_bytes(public).verify(blob[12:], message)
            return timestamp
    raise ValueError(f"the checkpoint carries no cosignature by witness {name}")


def parse_checkpoint(body):
    lines = body.split("\n")
    return lines[0], int(lines[1]), base64.b64decode(lines[2])


def leaf_hash(data):
    return sha256(b"\x00" + data)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162, section 2.1.3.2."""
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


def main():
    arguments = argparse.ArgumentParser(description="Check a rofr evidence bundle.")
    arguments.add_argument("bundle")
    arguments.add_argument("key", help="the log's verifier key")
    arguments.add_argument("--witness", action="append", default=[], metavar="KEY",
                           help="a witness whose cosignature is required (repeatable)")
    args = arguments.parse_args()
    bundle = json.load(open(args.bundle))
    key = parse_verifier_key(args.key)
    origin, size, root = parse_checkpoint(open_note(bundle["checkpoint"], key))
    for text in args.witness:
        witness = parse_verifier_key(text, kind=0x04)
        timestamp = check_cosignature(bundle["checkpoint"], witness)
        print(f"cosigned by {witness[0]} at {timestamp}")
    deals = {}
    versions = []
    for entry in bundle["entries"]:
        data = base64.b64decode(entry["data"])
        proof = [base64.b64decode(p) for p in entry["proof"]]
        if not verify_inclusion(entry["index"], size, leaf_hash(data), proof, root):
            print(f"entry {entry['index']}: inclusion proof fails")
            return 1
        value = json.loads(data)
        if value.get("type") in ("deal_adopted", "deal_amended"):
            if hashlib.sha256(value["text"].encode()).hexdigest() != value["sha256"]:
                print(f"entry {entry['index']}: the deal's text does not match its SHA-256")
                return 1
            deals[value["version"]] = value
        elif value.get("type") == "need_submitted" and "deal_version" in value:
            versions.append((entry["index"], value["deal_version"]))
        elif value.get("type") == "terms_changed":
            versions.append((entry["index"], value["version"]))
    for index, version in versions:
        if deals and version not in deals:
            print(f"entry {index}: names deal version {version}, which the bundle lacks")
            return 1
    print(f"ok: {len(bundle['entries'])} entries proved against {origin} at size {size}")
    for version, deal in sorted(deals.items()):
        since = ""
        if deal["type"] == "deal_amended":
            since = f", effective {deal['effective']} (open needs {deal['open_needs']})"
        print(f"deal {deal['deal']} version {version}: {deal['file']}, SHA-256 {deal['sha256']}{since}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # any malformed input is a failed verification
        print(f"failed: {error or type(error).__name__}")
        sys.exit(1)
