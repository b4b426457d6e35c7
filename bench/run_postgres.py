#!/usr/bin/env python3
"""Issue 4's PostgreSQL benchmarks: Cloudheed's postgres engine (pg_dump streamed into the
repository, restores streamed into pg_restore) against pg_dump -Fc / pg_restore, side by side in
one run on one PostgreSQL 15 server this script starts itself. Prints a Markdown report; copy it
into bench/RESULTS.md.

  python3 bench/run_postgres.py [--scale 70] [--mix-mb 1024] [--workdir /tmp/cloudheed-pgbench]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time

from benchlib import du, run

BIN = "/usr/lib/postgresql/15/bin"
ROOT = os.getuid() == 0


def as_postgres(cmd):
    return (["runuser", "-u", "postgres", "--"] if ROOT else []) + cmd


def shell(script):
    """Times a shell pipeline (run as postgres)."""
    start = time.perf_counter()
    subprocess.run(as_postgres(["bash", "-o", "pipefail", "-c", script]), check=True)
    return time.perf_counter() - start


def mb(n): return f"{n / 1e6:,.1f} MB"


class Server:
    def __init__(self, work):
        self.dir = f"{work}/pg"
        os.makedirs(self.dir)
        with open(f"{self.dir}/pw", "w") as f: f.write("bench-super\n")
        if ROOT: subprocess.run(["chown", "-R", "postgres:postgres", work], check=True)
        s = socket.socket(); s.bind(("127.0.0.1", 0)); self.port = s.getsockname()[1]; s.close()
        subprocess.run(as_postgres([f"{BIN}/initdb", "-D", f"{self.dir}/data", "-U", "postgres", f"--pwfile={self.dir}/pw",
                                    "--auth-local=trust", "--auth-host=scram-sha-256", "--locale=C.UTF-8", "-E", "UTF8"]),
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "start", "-o",
                                    f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} -c max_wal_size=4GB"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.sql("CREATE ROLE cloudheed_admin LOGIN CREATEDB CREATEROLE PASSWORD 'bench-admin'")
        self.url = f"postgresql://cloudheed_admin:bench-admin@127.0.0.1:{self.port}/postgres"

    def sql(self, statement, db="postgres", user="postgres"):
        return subprocess.run(as_postgres([f"{BIN}/psql", "-h", self.dir, "-p", str(self.port), "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1",
                                           "-At", "-c", statement]), check=True, capture_output=True, text=True).stdout.strip()

    def owned_database(self, name):
        """A database and owner role the way the engine makes them, the admin role a member."""
        self.sql(f'CREATE ROLE "{name}" LOGIN; GRANT "{name}" TO cloudheed_admin')
        self.sql(f'CREATE DATABASE "{name}" OWNER "{name}"')

    def conn(self): return ["-h", self.dir, "-p", str(self.port), "-U", "postgres"]

    def stop(self):
        subprocess.run(as_postgres([f"{BIN}/pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop"]), stdout=subprocess.DEVNULL)


MIX = """
CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz, kind text, amount numeric(12,2), score double precision,
                     payload jsonb, token text, tag bytea, note text);
INSERT INTO events
SELECT i, timestamptz '2025-01-01' + i * interval '1 second', (ARRAY['click','view','buy','refund','signup'])[1 + i % 5],
       round((random() * 10000)::numeric, 2), random(),
       jsonb_build_object('user', (random() * 100000)::int, 'ref', md5(i::text), 'flags', jsonb_build_array(i % 2 = 0, i % 3 = 0)),
       md5(random()::text) || md5(random()::text), decode(substr(md5(random()::text), 1, 16), 'hex'),
       (ARRAY['lorem ipsum dolor sit amet', 'consectetur adipiscing elit', 'sed do eiusmod tempor', 'incididunt ut labore et dolore',
              'magna aliqua ut enim'])[1 + (random() * 4)::int] || ' ' || i
FROM generate_series(1, {rows}) i;
CREATE INDEX events_by_kind_time ON events (kind, created_at);
"""


def pgbackrest(pg, work):
    """pgBackRest (Debian) full backup and restore of the whole cluster (both datasets), with its
    default compression (gz) and with zstd, for reference. WAL archiving is not set up, so
    archive-check is off: the backups time the copy, not a point-in-time-recoverable set."""
    rows = []
    cluster = int(pg.sql("SELECT sum(pg_database_size(datname)) FROM pg_database"))
    for compress in ["gz", "zst"]:
        repo, conf, target = f"{work}/pgbr-{compress}", f"{work}/pgbr-{compress}.conf", f"{work}/pgbr-restore-{compress}"
        os.makedirs(repo); os.makedirs(target, mode=0o700)
        with open(conf, "w") as f:
            f.write(f"[global]\nrepo1-path={repo}\ncompress-type={compress}\nprocess-max={os.cpu_count()}\nstart-fast=y\narchive-check=n\n"
                    f"log-level-console=warn\nlog-path={work}\nlock-path={work}\n"
                    f"[bench]\npg1-path={pg.dir}/data\npg1-port={pg.port}\npg1-socket-path={pg.dir}\n")
        if ROOT: subprocess.run(["chown", "-R", "postgres:postgres", repo, conf, target], check=True)
        br = ["pgbackrest", f"--config={conf}", "--stanza=bench"]
        subprocess.run(as_postgres(br + ["stanza-create"]), check=True, stdout=subprocess.DEVNULL)
        t_backup, _, _ = run(as_postgres(br + ["--type=full", "backup"]))
        size = du(repo)
        t_restore, _, _ = run(as_postgres(br + [f"--pg1-path={target}", "restore"]))
        rows.append((f"3. pgBackRest 2.45, compress-type={compress}: whole cluster ({mb(cluster)}, both datasets)",
                     "(ours: the sum of the two backups and two restores above)",
                     f"full backup {t_backup:.2f} s, {mb(size)}; restore (files only, no WAL replay) {t_restore:.2f} s", "", "reference"))
        shutil.rmtree(target, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--mix-mb", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/cloudheed-pgbench")
    ap.add_argument("--bin", default=os.path.abspath(".build/release/cloudheed-bench"))
    ap.add_argument("--skip-pgbackrest", action="store_true")
    ap.add_argument("--second-percent", type=float, default=1.0, help="pgbench transactions before the second backup, %% of accounts")
    a = ap.parse_args()
    work = a.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    pg = Server(work)
    rows = []
    try:
        print("generating ...", file=sys.stderr)
        pg.owned_database("chd_bench_pgbench")
        subprocess.run(as_postgres([f"{BIN}/pgbench", "-i", "-q", "-s", str(a.scale), "-h", pg.dir, "-p", str(pg.port), "-U", "chd_bench_pgbench",
                                    "chd_bench_pgbench"]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pg.owned_database("chd_bench_mix")
        pg.sql(MIX.format(rows=a.mix_mb * 3400), db="chd_bench_mix", user="chd_bench_mix")
        pg.sql("CHECKPOINT")
        for name, label in [("chd_bench_pgbench", f"pgbench scale {a.scale}"), ("chd_bench_mix", "mix")]:
            size = int(pg.sql(f"SELECT pg_database_size('{name}')"))
            dump = f"{work}/{name}.dump"
            t_dump = shell(f"{BIN}/pg_dump -Fc -f {dump} " + " ".join(pg.conn()) + f" {name}")
            dump_size = os.path.getsize(dump)
            t_zstd = shell(f"{BIN}/pg_dump -Fc -Z0 " + " ".join(pg.conn()) + f" {name} | zstd -3 -T0 -q -o {work}/{name}.zst")
            zstd_size = os.path.getsize(f"{work}/{name}.zst")
            data = f"{work}/cloudheed-{name}"
            t1, out1, rss1 = run([a.bin, "pg-backup", "--data", data, "--postgres-url", pg.url, "--database", name])
            first = json.loads(out1)
            stored1 = du(f"{data}/repository")
            target = 0.25 if "mix" in name else 1.0
            rows.append((f"{label} ({mb(size)}): 1. backup wall time", f"{t1:.2f} s", f"pg_dump -Fc {t_dump:.2f} s (pg_dump -Fc -Z0 \\| zstd -3 -T0: {t_zstd:.2f} s)",
                         f"{t1 / t_dump:.2f}x", f"<= {target}x"))
            rows.append((f"{label}: 1. stored bytes", mb(stored1), f"pg_dump -Fc file {mb(dump_size)} (zstd -3 of -Z0: {mb(zstd_size)})",
                         f"{stored1 / dump_size:.3f}x", "<= 1.05x"))
            pg.sql("CREATE DATABASE peer_restore")
            t_peer = shell(f"{BIN}/pg_restore -d peer_restore " + " ".join(pg.conn()) + f" {dump}")
            pg.sql("DROP DATABASE peer_restore")
            restored = f"{name}_restored"
            t2, _, rss2 = run([a.bin, "pg-restore", "--data", data, "--postgres-url", pg.url, "--key", first["key"], "--database", restored])
            same = pg.sql(f"SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace", db=restored)
            rows.append((f"{label}: 2. restore wall time", f"{t2:.2f} s ({same} tables)", f"pg_restore {t_peer:.2f} s", f"{t2 / t_peer:.2f}x", "<= 1.0x"))
            rows.append((f"{label}: 5. peak RSS", f"backup {rss1 / 1048576:.1f} MiB, restore {rss2 / 1048576:.1f} MiB", "", "", "bounded"))
            pg.sql(f'DROP DATABASE "{restored}"')
            pg.sql(f'DROP ROLE "{restored}"')
            if name == "chd_bench_pgbench":
                accounts = a.scale * 100000
                transactions = int(accounts * a.second_percent / 100)
                subprocess.run(as_postgres([f"{BIN}/pgbench", "-n", "-c", "2", "-t", str(transactions // 2), "-h", pg.dir, "-p", str(pg.port),
                                            "-U", "chd_bench_pgbench", "chd_bench_pgbench"]), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                t3, out3, _ = run([a.bin, "pg-backup", "--data", data, "--postgres-url", pg.url, "--database", name, "--parent", first["key"]])
                new = du(f"{data}/repository") - stored1
                t_dump2 = shell(f"{BIN}/pg_dump -Fc -f {dump}.2 " + " ".join(pg.conn()) + f" {name}")
                rows.append((f"{label}: 4. second backup after {transactions:,} pgbench transactions",
                             f"{t3:.2f} s, {mb(new)} new", f"pg_dump -Fc {t_dump2:.2f} s, {mb(os.path.getsize(dump + '.2'))} (whole again)",
                             f"{new / os.path.getsize(dump + '.2'):.2f}x bytes", "stated"))
        if shutil.which("pgbackrest") and not a.skip_pgbackrest:
            rows += pgbackrest(pg, work)
    finally:
        pg.stop()

    print(f"### PostgreSQL, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"Machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; release build; PostgreSQL 15 (Debian).\n")
    print("| measurement | Cloudheed | peer | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows: print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
