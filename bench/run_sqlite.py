#!/usr/bin/env python3
"""Issue 3's SQLite benchmarks: Cloudheed's repository against sqlite3 .backup + zstd and restic,
measured side by side in one run. Prints a Markdown report; copy it into bench/RESULTS.md.

  python3 bench/run_sqlite.py [--size-mb 1024] [--workdir /tmp/cloudheed-bench] [--bin .build/release/cloudheed-bench]
"""
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time

from benchlib import du, run


def mib(n): return f"{n / 1048576:,.1f} MiB"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/cloudheed-bench")
    ap.add_argument("--bin", default=".build/release/cloudheed-bench")
    ap.add_argument("--skip-restic", action="store_true")
    a = ap.parse_args()
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    db, data = f"{work}/db.sqlite3", f"{work}/cloudheed"
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"generating {a.size_mb} MiB ...", file=sys.stderr)
    subprocess.run([sys.executable, f"{here}/generate_sqlite.py", "create", db, str(a.size_mb)], check=True, stdout=sys.stderr)
    size = os.path.getsize(db)
    rows = []

    # 1. Full backup: sqlite3 .backup + zstd -3 -T0, against ours (snapshot + chunk + hash + compress + encrypt + store).
    t_snap, _, rss_sqlite = run(["sqlite3", db, f".backup {work}/snap1"])
    t_zstd, _, rss_zstd = run(["zstd", "-3", "-T0", "-q", "-f", f"{work}/snap1", "-o", f"{work}/snap1.zst"])
    peer_full = t_snap + t_zstd
    t1, out1, rss1 = run([a.bin, "backup", "--data", data, "--db", db])
    first = json.loads(out1)
    stored1 = du(f"{data}/repository")
    rows.append(("1. full backup wall time", f"{t1:.2f} s (snapshot {first['snapshot_seconds']:.2f} s + store {first['store_seconds']:.2f} s; stores {mib(stored1)})",
                 f"sqlite3 .backup {t_snap:.2f} s + zstd -3 -T0 {t_zstd:.2f} s = {peer_full:.2f} s ({mib(os.path.getsize(work + '/snap1.zst'))})",
                 f"{t1 / peer_full:.2f}x", "<= 1.0x"))

    # 2. A day of changes: 1% rows appended, 0.1% updated.
    subprocess.run([sys.executable, f"{here}/generate_sqlite.py", "mutate", db], check=True, stdout=sys.stderr)
    run(["sqlite3", db, f".backup {work}/snap2"])
    _, changed_out, _ = run([a.bin, "changed-pages", "--old", f"{work}/snap1", "--new", f"{work}/snap2", "--out", f"{work}/changed.bin", "--page-size", "4096"])
    changed = json.loads(changed_out)
    run(["zstd", "-3", "-q", "-f", f"{work}/changed.bin", "-o", f"{work}/changed.zst"])
    limit = os.path.getsize(f"{work}/changed.zst")
    t2, out2, rss2 = run([a.bin, "backup", "--data", data, "--db", db, "--parent", first["key"]])
    second = json.loads(out2)
    stored2 = du(f"{data}/repository") - stored1
    rows.append(("2a. second backup: new stored bytes", mib(stored2),
                 f"zstd -3 of the {changed['changed']:,} of {changed['pages']:,} pages that changed ({100 * changed['changed'] / changed['pages']:.1f}%): {mib(limit)}",
                 f"{stored2 / limit:.2f}x", "<= 1.25x"))
    rows.append(("2b. second backup: wall time", f"{t2:.2f} s (snapshot {second['snapshot_seconds']:.2f} s + store {second['store_seconds']:.2f} s)", f"first backup {t1:.2f} s", f"{t2 / t1:.2f}x", "<= 0.5x"))

    # 3. restic, backing up the snapshot file twice (as a daily job would).
    if not a.skip_restic and shutil.which("restic"):
        env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=f"{work}/restic", RESTIC_CACHE_DIR=f"{work}/restic-cache")
        run(["restic", "init"], env)
        shutil.copyfile(f"{work}/snap1", f"{work}/restic-file.db")
        r1, _, rr1 = run(["restic", "backup", f"{work}/restic-file.db"], env)
        s1 = du(f"{work}/restic")
        shutil.copyfile(f"{work}/snap2", f"{work}/restic-file.db")
        r2, _, rr2 = run(["restic", "backup", f"{work}/restic-file.db"], env)
        s2 = du(f"{work}/restic") - s1
        rows.append(("3a. restic first backup", f"ours {t1:.2f} s, {mib(stored1)}", f"restic {r1:.2f} s, {mib(s1)}", f"{t1 / r1:.2f}x time, {stored1 / s1:.2f}x bytes", "reference"))
        rows.append(("3b. restic second backup", f"ours {t2:.2f} s, {mib(stored2)} new", f"restic {r2:.2f} s, {mib(s2)} new", f"{t2 / r2:.2f}x time, {stored2 / max(1, s2):.3f}x bytes", "reference"))
    else:
        rows.append(("3. restic", "skipped", "restic not installed", "", ""))

    # 4. Restore of the second backup against zstd -d of the same snapshot.
    run(["zstd", "-3", "-T0", "-q", "-f", f"{work}/snap2", "-o", f"{work}/snap2.zst"])
    tz, _, rss_unzstd = run(["zstd", "-d", "-q", "-f", f"{work}/snap2.zst", "-o", f"{work}/unzstd.db"])
    tr, outr, rssr = run([a.bin, "restore", "--data", data, "--key", second["key"], "--out", f"{work}/restored.db"])
    same = subprocess.run(["cmp", "-s", f"{work}/restored.db", f"{work}/snap2"]).returncode == 0
    rows.append(("4. restore wall time", f"{tr:.2f} s ({'identical to the snapshot' if same else 'DIFFERS FROM THE SNAPSHOT'})",
                 f"zstd -d {tz:.2f} s", f"{tr / tz:.2f}x", "none set; compare"))

    # 5. Peak RSS.
    rows.append(("5. peak RSS", f"backup {mib(max(rss1, rss2))}, restore {mib(rssr)}", f"zstd -3 -T0 {mib(rss_zstd)}, zstd -d {mib(rss_unzstd)}", "", "< 256 MiB"))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"### SQLite, {mib(size)} generated database, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; release build.\n")
    print("| measurement | Cloudheed | peer | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")

if __name__ == "__main__":
    main()
