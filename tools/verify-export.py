#!/usr/bin/env python3
"""An independent check of rofr period exports (docs/export.md).

Written from RFC 9162 (the Merkle tree hash, section 2.1.1) and the C2SP signed-note,
tlog-checkpoint and tlog-cosignature specifications; the note and key handling is
`verify-evidence.py`'s, and nothing is shared with rofr itself.

    python3 tools/verify-export.py EXPORT.jsonl 'name+keyid+base64key' [--witness KEY]...

It reads the export line by line, checks the checkpoint's signature (and each
witness's cosignature), that each entry's bytes hash to the leaf hash beside them, and
rebuilds the checkpoint's root from the entries and the multi-leaf proof by walking
the tree left to right. Exit status 0 when all of it holds, 1 otherwise, naming the
line.
"""

import argparse
import base64
import importlib.util
import json
import pathlib
import sys

from cryptography.exceptions import InvalidSignature

_spec = importlib.util.spec_from_file_location(
    "verify_evidence", pathlib.Path(__file__).with_name("verify-evidence.py")
)
evidence = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evidence)


class Refused(Exception):
    pass


def split(n):
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Source:
    """Entries and proof hashes in the order the walk takes them."""

    def __init__(self, lines):
        self.lines = lines
        self.number = 1
        self.pending = []
        self.next = None
        self.end = None
        self.count = 0
        self.last = None
        self.advance()

    def fail(self, message):
        raise Refused(f"line {self.number}: {message}")

    def advance(self):
        if self.pending:
            self.fail("proof hashes left over before the next entry")
        self.next = None
        if self.end is not None:
            return
        line = next(self.lines, None)
        self.number += 1
        if line is None:
            self.fail("no end line: the export was cut short")
        record = json.loads(line)
        if "end" in record:
            self.end = record["end"]
            self.pending = [base64.b64decode(h) for h in self.end["proof"]]
            return
        index = record["index"]
        if self.last is not None and index <= self.last:
            self.fail(f"entry {index}: indexes do not increase")
        self.last = index
        # The entry's bytes, exactly as they stand in the line.
        start = line.index('"entry":') + len('"entry":')
        data = line[start : line.rindex("}")].encode()
        leaf = evidence.leaf_hash(data)
        if base64.b64decode(record["leaf"]) != leaf:
            self.fail(f"entry {index}: its bytes do not hash to its leaf hash")
        self.pending = [base64.b64decode(h) for h in record["proof"]]
        self.next = (index, leaf)
        self.count += 1

    def take_leaf(self):
        if self.pending:
            self.fail("proof hashes left over before an entry")
        leaf = self.next[1]
        self.advance()
        return leaf

    def take_hash(self):
        if not self.pending:
            self.fail("the proof runs out of hashes")
        return self.pending.pop(0)


def walk(lo, hi, source):
    inside = source.next is not None and lo <= source.next[0] < hi
    if not inside:
        return source.take_hash()
    if hi - lo == 1:
        return source.take_leaf()
    mid = lo + split(hi - lo)
    left = walk(lo, mid, source)
    right = walk(mid, hi, source)
    return evidence.node_hash(left, right)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export")
    parser.add_argument("key")
    parser.add_argument("--witness", action="append", default=[])
    args = parser.parse_args()
    key = evidence.parse_verifier_key(args.key)
    with open(args.export, encoding="utf-8") as file:
        lines = (line.rstrip("\n") for line in file)
        try:
            header = json.loads(next(lines))
            if header.get("format") != "rofr-export/1":
                raise Refused("line 1: not a rofr-export/1 file")
            body = evidence.open_note(header["checkpoint"], key)
            origin, size, root = evidence.parse_checkpoint(body)
            for witness in args.witness:
                at = evidence.check_cosignature(header["checkpoint"], evidence.parse_verifier_key(witness, 0x04))
                print(f"cosigned by {witness.split('+')[0]} at {at}")
            source = Source(lines)
            got = walk(0, size, source) if size > 0 else evidence.sha256(b"")
            if source.next is not None:
                source.fail(f"entry {source.next[0]} lies beyond the checkpoint")
            if source.pending:
                source.fail("proof hashes left over at the end")
            if source.end is None or source.end["entries"] != source.count:
                source.fail("the end line's count does not match the entries")
            if next(lines, None) is not None:
                raise Refused("lines after the end line")
            if got != root:
                raise Refused("the entries and the proof do not rebuild the checkpoint's root")
        except (Refused, ValueError, KeyError, json.JSONDecodeError, InvalidSignature) as error:
            print(f"NOT VERIFIED: {error or type(error).__name__}")
            return 1
    print(f"ok: {source.count} entries of {origin} proved against its checkpoint of {size} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
