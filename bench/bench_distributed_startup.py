"""``Client()`` startup of taskloom-distributed next to dask.distributed: 2 workers, 1 thread each.

For each library, in the same run on the same machine, alternating so that load affects both:

* **cold**: a fresh interpreter runs ``import``, ``Client(n_workers=2, threads_per_worker=1)``
  and one ``submit(...).result()`` -- what a user's script waits for -- timed from the parent
  (interpreter start included), and from inside the script (import, then Client ready);
* **warm**: in an interpreter that has imported the library already, ``Client(...)`` until it
  returns (workers registered) and one result back; then ``close()`` timed apart.

Python's bytecode cache is on for every process (``PYTHONPYCACHEPREFIX``, a temporary directory
filled by one warm-up run per library), as for a pip-installed package, even where the
environment sets ``PYTHONDONTWRITEBYTECODE``; ``--no-bytecode`` measures without it (every
process then compiles every module it imports, which costs each worker process ~0.2-0.5 s).

Run: ``python bench/bench_distributed_startup.py [--repeat 5] [--no-dask] [--no-bytecode]``.
Prints medians (and min-max) in seconds; nothing is asserted.  The target for taskloom is under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    t0 = time.perf_counter()
    library, mode, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.disable(logging.WARNING)

    def inc(x):
        return x + 1

    def main():
        if library == "taskloom":
            from taskloom_distributed import Client
            kwargs = {"set_as_default": False}
        else:
            from distributed import Client
            kwargs = {"dashboard_address": None, "set_as_default": False}
        imported = time.perf_counter()
        out = {"import": imported - t0, "ready": [], "first_result": [], "close": []}
        for _ in range(repeat):
            start = time.perf_counter()
            client = Client(n_workers=2, threads_per_worker=1, **kwargs)
            ready = time.perf_counter()
            assert client.submit(inc, 1).result() == 2
            first = time.perf_counter()
            client.close()
            if library != "taskloom":
                client.cluster.close()
            closed = time.perf_counter()
            out["ready"].append(ready - start)
            out["first_result"].append(first - start)
            out["close"].append(closed - first)
        print(json.dumps(out), flush=True)

    if __name__ == "__main__":
        main()
    """
)


def run_child(library: str, mode: str, repeat: int, script: str, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, library, mode, str(repeat)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{library} {mode} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per library and mode")
    parser.add_argument("--no-dask", action="store_true", help="skip dask.distributed")
    parser.add_argument("--no-bytecode", action="store_true", help="no bytecode cache (compile every time)")
    args = parser.parse_args()
    libraries = ["taskloom"] + ([] if args.no_dask else ["dask"])
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".startup_child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    cold: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libraries}
    warm: dict[str, dict[str, Any]] = {}
    cache = tempfile.TemporaryDirectory(prefix="taskloom-bench-pycache-")
    env = dict(os.environ)
    if not args.no_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache.name
    try:
        for lib in libraries:  # warm-up: fills the bytecode cache (not measured)
            run_child(lib, "cold", 1, script, env)
        for _ in range(args.repeat):  # alternate, so that the machine's load hits both alike
            for lib in libraries:
                cold[lib].append(run_child(lib, "cold", 1, script, env))
        for lib in libraries:
            warm[lib] = run_child(lib, "warm", args.repeat, script, env)
    finally:
        os.remove(script)
        cache.cleanup()
    load = os.getloadavg()[0]
    print(f"Client(n_workers=2, threads_per_worker=1) startup, {os.cpu_count()} cores, load {load:.2f}")
    bytecode = "without" if args.no_bytecode else "with"
    print(f"python {sys.version.split()[0]}, {bytecode} bytecode cache; medians of {args.repeat} (min-max)\n")
    for lib in libraries:
        runs = cold[lib]
        print(f"{lib}")
        print(f"  cold: script start to first result   {summary([r['wall'] for r in runs])}")
        print(f"        import                          {summary([r['import'] for r in runs])}")
        print(f"        Client() ready                  {summary([r['ready'][0] for r in runs])}")
        print(f"  warm: Client() ready                  {summary(warm[lib]['ready'])}")
        print(f"        Client() + first result         {summary(warm[lib]['first_result'])}")
        print(f"        close()                         {summary(warm[lib]['close'])}")


if __name__ == "__main__":
    main()
