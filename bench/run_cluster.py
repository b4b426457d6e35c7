#!/usr/bin/env python3
"""Issue 6, benchmarks 2-4, in one run on servers this script starts itself on loopback:

  2. Scheduler: one tick over --databases databases (--due of them due), on the SQLite catalog
     and on the PostgreSQL catalog, then a tick with none due; also at a tenth of the databases,
     to show the work follows the due count, not the total. Target: < 1 s of CPU per tick.
  3. Job claiming on the PostgreSQL catalog: 3 nodes (a connection pool each) x 8 workers claim
     and finish --jobs backup jobs; claims per second, and that no job was claimed twice.
  4. Backup and restore of the same SQLite database through the repository to moto_server (S3)
     and to local disk.

  swift build -c release --product cloudheed-bench
  python3 bench/run_cluster.py [--databases 100000] [--due 1000] [--jobs 20000] [--size-mb 256]

Prints a Markdown report; copy it into bench/RESULTS.md.
"""
import argparse, json, os, shutil, socket, subprocess, sys, time

from benchlib import run
from run_postgres import Server

BENCH = ".build/release/cloudheed-bench"
MOTO = ".build/tools-venv/bin/moto_server"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port


def bench(*args):
    _, out, _ = run([BENCH, *args])
    return json.loads(out.strip().splitlines()[-1])


def catalog_url(server, name):
    server.sql(f'CREATE DATABASE "{name}" OWNER cloudheed_admin')
    return f"postgresql://cloudheed_admin:bench-admin@127.0.0.1:{server.port}/{name}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--databases", type=int, default=100_000)
    ap.add_argument("--due", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/cloudheed-bench-cluster")
    args = ap.parse_args()
    for tool in (BENCH, MOTO):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is missing (swift build -c release --product cloudheed-bench; scripts/install-deps)")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    server = Server(args.workdir)
    moto = None
    try:
        # 2. Scheduler ticks.
        print("## Scheduler tick (benchmark 2)\n")
        print("| catalog | databases | due | tick CPU | tick wall | idle tick CPU | idle tick wall | target |")
        print("|---|---|---|---|---|---|---|---|")
        for total in (args.databases // 10, args.databases):
            for name, extra in (("SQLite", []), ("PostgreSQL", ["--catalog", catalog_url(server, f"ticks{total}")])):
                r = bench("scheduler-tick", "--data", f"{args.workdir}/ticks-{name}-{total}", "--databases", str(total), "--due", str(args.due), *extra)
                assert r["scheduled"] == args.due and r["idle_scheduled"] == 0, r
                met = "met" if r["tick_cpu_seconds"] < 1 and r["idle_tick_cpu_seconds"] < 1 else "missed"
                print(f"| {name} | {total:,} | {args.due:,} | {r['tick_cpu_seconds']:.3f} s | {r['tick_wall_seconds']:.3f} s | "
                      f"{r['idle_tick_cpu_seconds'] * 1000:.1f} ms | {r['idle_tick_wall_seconds'] * 1000:.1f} ms | < 1 s CPU: {met} |", flush=True)

        # 3. Claims.
        print("\n## Job claiming on the PostgreSQL catalog (benchmark 3)\n")
        r = bench("claims", "--catalog", catalog_url(server, "claims"), "--jobs", str(args.jobs), "--nodes", "3", "--workers", "8")
        assert r["claimed"] == args.jobs and r["distinct"] == args.jobs, r
        print("| nodes x workers | jobs | claimed (distinct) | seconds | claims/s (claim + finish) |")
        print("|---|---|---|---|---|")
        print(f"| 3 x 8 | {args.jobs:,} | {r['claimed']:,} ({r['distinct']:,}) | {r['seconds']:.1f} | {r['claims_per_second']:,.0f} |", flush=True)

        # 4. S3 vs local.
        port = free_port()
        moto = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        db = f"{args.workdir}/db/orders.sqlite3"
        os.makedirs(os.path.dirname(db))
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "generate_sqlite.py"), "create", db, str(args.size_mb)], check=True,
                       stdout=subprocess.DEVNULL)
        r = bench("storage-throughput", "--data", f"{args.workdir}/throughput", "--db", db, "--s3-endpoint", f"http://127.0.0.1:{port}")
        size = r["size_bytes"] / 1e6
        print("\n## Backup and restore throughput, S3 (moto_server) vs local disk (benchmark 4)\n")
        print(f"Database: {size:,.0f} MB SQLite (generate_sqlite.py), full backup then restore, through the same repository code.\n")
        print("| storage | backup | backup MB/s | restore | restore MB/s | stored |")
        print("|---|---|---|---|---|---|")
        for name in ("local", "s3"):
            b, rs = r[name]["backup_seconds"], r[name]["restore_seconds"]
            print(f"| {name} | {b:.2f} s | {size / b:,.0f} | {rs:.2f} s | {size / rs:,.0f} | {r[name]['stored_bytes'] / 1e6:,.0f} MB |")
        print(f"\nS3 / local time: backup {r['s3']['backup_seconds'] / r['local']['backup_seconds']:.2f}x, "
              f"restore {r['s3']['restore_seconds'] / r['local']['restore_seconds']:.2f}x")
    finally:
        if moto:
            moto.kill()
        server.stop()


if __name__ == "__main__":
    main()
