#!/usr/bin/env python3
"""Inclusive instruction count of the functions whose names contain PATTERN in
a callgrind output file (what they and everything they called executed).

    sim/bench/callgrind_incl.py FILE PATTERN

Used by http-instructions.sh to take the node's once-a-second dashboard sample
(`golden::sample_every`) out of the per-request figure: how many samples fall
into a run depends on how long callgrind takes, which would otherwise move the
figure by ~1,300 instructions per request between runs of one binary.
callgrind_annotate cannot read the LTO build's file, hence this parser.
"""
import re
import sys


def inclusive(path, pattern):
    names = {}
    total = 0
    fn_matches = False
    callee = None
    after_calls = False
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            fn_matches = pattern in names.get(m.group(1), "")
            after_calls = False
            continue
        m = re.match(r"^cfn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            callee = m.group(1)
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        if re.match(r"^([+-]?\d+|\*) \d+", line):
            cost = int(line.split()[1])
            if after_calls:
                # A call from a matching function to a non-matching one counts
                # (its callees' cost); calls between matching ones would count
                # twice.
                if fn_matches and pattern not in names.get(callee, ""):
                    total += cost
                after_calls = False
            elif fn_matches:
                total += cost
    return total


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: callgrind_incl.py FILE PATTERN")
    print(inclusive(sys.argv[1], sys.argv[2]))
