#!/usr/bin/env python3
"""Writes bench/populate.py's synthetic events n = START .. END-1 as NDJSON (one event per line)
to stdout, for bench/run's bulk loads through POST /events/bulk. Standard library only.

usage: ndjson.py START END
"""

import json
import sys

from populate import event


def main():
    start, end = int(sys.argv[1]), int(sys.argv[2])
    out = sys.stdout
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for n in range(start, end):
        out.write(dumps(event(n)))
        out.write("\n")


if __name__ == "__main__":
    main()
