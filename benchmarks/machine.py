"""The machine-speed probe alone, one line: CPU model, cores, fp32 matmul GFLOP/s, load, versions.

    python -m benchmarks.machine

Every benchmark prints the same line first (harness.start). The README's timings and docs/benchmarks.md name
the machine by it: an AMD EPYC here measured ~350 GFLOP/s, an Intel Xeon of the same size ~95.
"""

from benchmarks import harness


def main():
  harness.report_machine()


if __name__ == "__main__":
  main()
