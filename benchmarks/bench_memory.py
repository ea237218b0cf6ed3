"""What keeping freed memory (pathology.memory.reuse_freed_memory) costs and saves, glibc only.

    python benchmarks/bench_memory.py [--quick]

In a fresh process per setting: a 64 MB batch buffer is allocated, written and freed 20
times (40 with the full run); the resident set size after the last free is the memory kept,
and the time per round is what re-mapping, page faults and zeroing cost. The test suite
checks glibc's bookkeeping instead (tests/pathology/test_memory.py); the effect on embedding
is in bench_embed.py. ``--quick`` prints only and does not update RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, markdown_table, write_section

PROBE = """
import json, os, sys, time
import numpy as np
from pathology.memory import reuse_freed_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

applied = reuse_freed_memory() if sys.argv[1] == "on" else False
rounds = int(sys.argv[2])
before = rss()
t = time.perf_counter()
for _ in range(rounds):
    a = np.ones(64 << 20, np.uint8)  # every page written, as a batch tensor is
    del a
seconds = (time.perf_counter() - t) / rounds
print(json.dumps({"applied": applied, "kept_mb": (rss() - before) / 2**20, "ms": 1000 * seconds}))
"""


def measure(mode: str, rounds: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(rounds)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds; prints only")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("glibc only: reuse_freed_memory changes nothing elsewhere")
    rounds = 20 if args.quick else 40
    rows = []
    for mode, label in (("off", "glibc default"), ("on", "reuse_freed_memory()")):
        result = measure(mode, rounds)
        rows.append([label, result["applied"], f"{result['kept_mb']:.0f}", f"{result['ms']:.1f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["allocator", "applied", "RSS kept after free (MB)", "ms per 64 MB alloc+fill+free"],
                           rows)
    print(table)
    if args.quick:
        print("(quick run: RESULTS.md not updated)")
        return
    write_section("bench_memory.py", f"Machine: {machine()}. A 64 MB buffer allocated, written and freed "
                  f"{rounds} times in a fresh process.\n\n{table}")


if __name__ == "__main__":
    main()
