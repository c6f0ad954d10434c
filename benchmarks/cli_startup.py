"""Start-up cost of the command line and the package, each in a fresh interpreter, interleaved in one run.

- ``peft-neft --help``: builds the parser of every subcommand (standard library only);
- ``import peft_neft``: the package face, with NeFT's registration waiting for peft's first import;
- ``import peft_neft, peft``: the same once peft is loaded, i.e. what every ``--help`` paid while the
  registration imported peft eagerly.

Also records whether anything was written to stderr (torchao's "Failed to load" lines, warnings).

    python benchmarks/cli_startup.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402

COMMANDS = {
    "peft-neft --help": [sys.executable, "-m", "peft_neft.cli", "--help"],
    "import peft_neft": [sys.executable, "-c", "import peft_neft"],
    "import peft_neft, peft": [sys.executable, "-c", "import peft_neft, peft"],
}


def _run(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=bc.RESULTS_DIR / "cli_startup.json")
    args = parser.parse_args(argv)
    for command in COMMANDS.values():  # warm the file cache
        _run(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    stderr_lines: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            seconds, err = _run(command)
            times[name].append(seconds)
            stderr_lines[name] = len(err.splitlines())
    results = {n: {"median_s": statistics.median(t), "times_s": t, "stderr_lines": stderr_lines[n]}
               for n, t in times.items()}
    ratios = {"--help / eager registration": results["peft-neft --help"]["median_s"]
              / results["import peft_neft, peft"]["median_s"]}
    print(f"fresh interpreters, {args.repeats} rounds, medians")
    print(bc.table(["command", "seconds", "stderr lines"],
                   [[n, r["median_s"], r["stderr_lines"]] for n, r in results.items()]))
    print("\n" + bc.table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    bc.write_json(args.out, {"command": bc.command_line(), "machine": bc.machine(), "results": results,
                             "ratios": ratios})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
