"""Benchmark corpus extraction (issue 22): rows/s of ``mindscope extract`` in-process and on Ray
(1 actor x 2 threads, 2 actors x 1 thread) on one node, and 2 actors x 1 thread on a two-node
cluster on 127.0.0.1 (``ray start --head`` then ``ray start --address``, each node with 1 CPU of
its own). The script starts and stops the clusters itself. Usage:

    python bench/bench_extract.py [--prompts 768] [--part-size 64] [--out /tmp/ms-bench-extract]

Each run is a fresh driver process (as a user's CLI call would be) timing ``ms.extract`` itself:
corpus reading, the driver's model load (for the manifest), actor start-up and model loads,
and the writing; not the cluster's start-up. Every layer's resid_post at the last token,
float16, SmolLM2-135M. The machine's load average is printed with each row: the machine is
shared, and rows/s on 2 cores move with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

DRIVER = textwrap.dedent(
    r"""
    import json, sys, time
    import mindscope as ms
    corpus, out, engine, address, workers, threads, part_size = sys.argv[1:8]
    t = time.perf_counter()
    d = ms.extract("smollm2-135m", corpus, out, part_size=int(part_size), quiet=True, overwrite=True,
                   engine=engine, ray_address=address or None, workers=int(workers),
                   threads=int(threads) if threads != "-" else None)
    seconds = time.perf_counter() - t
    # positions="last": a row's position + 1 is its prompt's length in tokens.
    print(json.dumps({"seconds": seconds, "rows": d.n_rows, "tokens": int((d.position.astype("int64") + 1).sum())}))
    """
)

# Ray swaps 127.0.0.1 for the machine's routable address unless told it is a one-machine
# "cluster"; with this, every Ray process of the head listens on the loopback only.
# RAY_AUTH_MODE=token: `ray start` turns token authentication on; clients (drivers, the second
# node) must then send the token (~/.ray/auth_token) too.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
# A second node must pass `ray start`'s multi-node check, so it runs with the variable unset
# and with 127.0.0.1 kept as given (the CLI would otherwise resolve it to the routable address).
WORKER_NODE = textwrap.dedent(
    r"""
    import sys
    import ray._private.services as services
    services.resolve_ip_for_localhost = lambda host: host
    from ray.scripts.scripts import main
    sys.argv = ["ray", "start", *sys.argv[1:]]
    main()
    """
)
RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]
TEMP_DIR = "/tmp/ray-ms-bench"  # not the default /tmp/ray, which other Ray users of the machine share


def corpus(path: Path, n: int) -> Path:
    """``n`` prompts of 8 to 30 tokens, varied so that batches need padding."""
    cities = ["Paris", "Lima", "Oslo", "Cairo", "Kyoto", "Quito", "Accra", "Hanoi"]
    lines = [f"Record {i}: the city of {cities[i % 8]} lies " + "far away " * (i % 7) + "in the country of"
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(corpus_path: Path, out: Path, engine: str, address: str, workers: int, threads: int | None,
        part_size: int, env: dict[str, str]) -> dict[str, float]:
    args = [sys.executable, "-c", DRIVER, str(corpus_path), str(out), engine, address, str(workers),
            "-" if threads is None else str(threads), str(part_size)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=1800, env={**os.environ, **env})
    if res.returncode != 0:
        raise RuntimeError(f"{engine} run failed:\n{res.stderr[-3000:]}")
    out_json = json.loads(res.stdout.strip().splitlines()[-1])
    out_json["load"] = os.getloadavg()[0]
    return out_json


class Cluster:
    """Ray nodes started by this script with ``ray start --block``: each stays a child of ours
    (Ray ties its daemons' lives to that process), so stopping it stops only our nodes, never
    other Ray instances on the machine as ``ray stop`` would."""

    def __init__(self, port: int):
        self.address = f"127.0.0.1:{port}"
        self.port = port
        self.procs: list[subprocess.Popen] = []

    def _start(self, script: list[str], args: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen([*script, *args, "--block", "--disable-usage-stats",
                                            "--object-store-memory", str(300 * 2**20)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True, env={**os.environ, **env}))

    def head(self, cpus: int) -> None:
        self._start(RAY, ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                          "--num-cpus", str(cpus), "--include-dashboard", "false", "--temp-dir", TEMP_DIR],
                    LOOPBACK)
        self.wait_nodes(1)

    def worker(self, cpus: int) -> None:
        self._start([sys.executable, "-c", WORKER_NODE],
                    ["--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus)],
                    {"RAY_AUTH_MODE": "token"})
        self.wait_nodes(2)

    def wait_nodes(self, n: int, timeout: float = 120) -> list[str]:
        """Wait until ``n`` nodes are alive; their addresses."""
        code = ("import json, ray; ray.init(address='%s', logging_level='ERROR'); "
                "print(json.dumps([x['NodeManagerAddress'] for x in ray.nodes() if x['Alive']]))" % self.address)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a ray start process exited; see its logs under " + TEMP_DIR)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, **LOOPBACK})
            if res.returncode == 0:
                nodes = json.loads(res.stdout.strip().splitlines()[-1])
                if len(nodes) >= n:
                    return nodes
            time.sleep(1)
        raise RuntimeError(f"the cluster at {self.address} did not reach {n} nodes in {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to each node's process group (ours: started with a new session)."""
        for p in reversed(self.procs):  # worker nodes first
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=768)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--port", type=int, default=6390, help="the head's GCS port on 127.0.0.1")
    ap.add_argument("--out", default="/tmp/ms-bench-extract")
    args = ap.parse_args()
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    text = corpus(base / "corpus.txt", args.prompts)
    rows: list[tuple[str, dict[str, float]]] = []

    def record(label: str, result: dict[str, float]) -> None:
        rows.append((label, result))
        print(f"  {label}: {result['rows'] / result['seconds']:.1f} rows/s, {result['tokens'] / result['seconds']:.0f} "
              f"tokens/s ({result['seconds']:.1f} s, load {result['load']:.2f})", flush=True)

    print(f"{args.prompts} prompts, parts of {args.part_size}, {os.cpu_count()} cores, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    record("local, in-process (2 threads)", run(text, base / "local", "local", "", 1, None, args.part_size,
                                                 {"RAYON_NUM_THREADS": "2"}))
    cluster = Cluster(args.port)
    try:
        cluster.head(2)
        a = cluster.address
        record("ray, 1 node: 1 actor x 2 threads", run(text, base / "r12", "ray", a, 1, 2, args.part_size, LOOPBACK))
        record("ray, 1 node: 2 actors x 1 thread", run(text, base / "r21", "ray", a, 2, 1, args.part_size, LOOPBACK))
        cluster.stop()
        cluster.head(1)
        cluster.worker(1)
        print(f"  two-node cluster, nodes at {cluster.wait_nodes(2)}", flush=True)
        record("ray, 2 nodes x 1 CPU: 2 actors x 1 thread",
               run(text, base / "r2n", "ray", a, 2, 1, args.part_size, LOOPBACK))
    finally:
        cluster.stop()
    print("\n| run | rows/s | tokens/s | seconds | load average (1 min) |\n|---|---:|---:|---:|---:|")
    for label, r in rows:
        print(f"| {label} | {r['rows'] / r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | {r['seconds']:.1f} "
              f"| {r['load']:.2f} |")
    print(f"\n{rows[0][1]['rows']} rows = {rows[0][1]['tokens']} tokens; load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
