#!/usr/bin/env python3
"""Issue 6, benchmark 1: GET /v1/databases/{id}/backups under wrk.

  python3 bench/run_api.py [--databases 10000] [--backups 40] [--bin .build/release/cloudheed]
                           [--workdir /tmp/cloudheed-bench-api] [--connections 50] [--seconds 20]
                           [--catalog sqlite|postgresql|both] [--writes-per-second 5]

A catalog of `--databases` databases with `--backups` completed automatic backups each is made
the way the service would have made it: the account and one database through the API, the rest
bulk-inserted into the same catalog (the SQLite file, or with `--catalog postgresql` a PostgreSQL
15 server this script starts itself, loaded with COPY) with the service stopped (each backup with its own
manifest layer referencing a few chunks, some shared, so `unique_bytes` is real work). Then
`cloudheed serve` runs; one pass lists every database once (with the list cache, that renders
every list: the cold-cache rate), then wrk asks for the backup list of a random database on
every request, with 50 connections on loopback, twice: with nothing else happening, and while
manual backups are taken through the API (`--writes-per-second`), so the catalog changes all the
time. Prints requests per second and latency percentiles.
"""
import argparse, json, os, random, shutil, signal, sqlite3, subprocess, sys, time, urllib.request

TARGET_RPS, TARGET_P99_MS = 10_000, 10.0
TARGET_RPS_POSTGRES = 5_000


def call(base, method, path, token, body=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")


def serve(binary, workdir, port, admin, catalog=None):
    env = dict(os.environ, CLOUDHEED_ADMIN_TOKEN=admin)
    extra = ["--catalog", catalog] if catalog else []
    child = subprocess.Popen([binary, "serve", "--data-dir", workdir, "--port", str(port), "--log-level", "error",
                              "--scheduler-interval", "3600", *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return child
        except Exception:
            time.sleep(0.1)
    child.kill()
    sys.exit("the service did not start")


def stop(child):
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=60)


def fill(catalog_path, account, template, databases, backups):
    """Bulk-inserts databases and their completed automatic backups, with layers and chunks."""
    db = sqlite3.connect(catalog_path)
    db.execute("PRAGMA journal_mode = WAL")
    now = int(time.time() * 1000)
    day = 86_400_000
    columns = [row[1] for row in db.execute("PRAGMA table_info(databases)") if row[1] != "seq"]
    template_row = dict(zip(columns, db.execute(f"SELECT {', '.join(columns)} FROM databases WHERE id = ?", (template,)).fetchone()))
    packs = [f"benchpack{p:04d}" for p in range(100)]
    db.executemany("INSERT INTO packs (id, account_id, stored_size, plain_size, created_at) VALUES (?, ?, 4194304, 4194304, ?)",
                   [(p, account, now) for p in packs])
    chunk_ids = [os.urandom(32) for _ in range(40_000)]
    db.executemany("INSERT INTO chunks (account_id, id, pack_id, offset, length, stored_length, created_at) VALUES (?, ?, ?, 0, 4096, 1500, ?)",
                   [(account, c, packs[i % 100], now) for i, c in enumerate(chunk_ids)])
    rng = random.Random(7)
    for n in range(databases):
        row = dict(template_row)
        row.update(id=f"db-bench{n:011d}", name=f"bench-{n}", location=template_row["location"].replace(template, f"db-bench{n:011d}"),
                   next_backup_at=now + day // 2, restore_drills="off", next_drill_at=None)
        db.execute(f"INSERT INTO databases ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        layer_rows, chunk_rows, backup_rows = [], [], []
        for b in range(backups):
            layer = f"bench{n:06d}l{b:03d}"
            layer_rows.append((layer, account, now - b * day))
            for c in rng.sample(range(len(chunk_ids)), 10):
                chunk_rows.append((layer, account, chunk_ids[c]))
            created = now - (b + 1) * day
            backup_rows.append((f"backup-bench{n:06d}{b:04d}", account, row["id"], f"automatic-{b}", created, created, created + 60_000,
                                now + 30 * day, time.strftime("%Y-%m-%d", time.gmtime(created / 1000)), layer))
        db.executemany("""INSERT INTO layers (id, account_id, parent_id, depth, kind, page_size, entry_count, logical_size, stored_bytes,
                          object_checksum, refs, created_at) VALUES (?, ?, NULL, 0, 'pages-full', 4096, 10, 40960, 15000, 'x', 1, ?)""", layer_rows)
        db.executemany("INSERT OR IGNORE INTO layer_chunks (layer_id, account_id, chunk_id) VALUES (?, ?, ?)", chunk_rows)
        db.executemany("""INSERT INTO backups (id, account_id, database_id, name, type, status, engine, created_at, started_at, completed_at,
                          expires_at, scheduled_day, object_key, size_bytes, checksum, stored_bytes)
                          VALUES (?, ?, ?, ?, 'automatic', 'completed', 'sqlite', ?, ?, ?, ?, ?, ?, 40960, 'x', 15000)""", backup_rows)
        if n % 1000 == 999:
            db.commit()
    db.commit()
    db.execute("ANALYZE")
    db.close()


def fill_postgres(server, database, account, template, databases, backups):
    """The same rows as `fill`, streamed into the PostgreSQL catalog with COPY."""
    import csv, io
    from run_postgres import BIN, as_postgres
    now = int(time.time() * 1000)
    day = 86_400_000
    row = json.loads(server.sql(f"SELECT row_to_json(d) FROM databases d WHERE id = '{template}'", db=database))
    row.pop("seq")
    columns = list(row)
    rng = random.Random(7)
    chunk_ids = [os.urandom(32).hex() for _ in range(40_000)]
    packs = [f"benchpack{p:04d}" for p in range(100)]

    def copy(table, cols, rows):
        proc = subprocess.Popen(as_postgres([f"{BIN}/psql", "-h", server.dir, "-p", str(server.port), "-U", "postgres", "-d", database, "-v",
                                             "ON_ERROR_STOP=1", "-c", f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)"]),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        out = io.StringIO()
        writer = csv.writer(out)
        for r in rows:
            writer.writerow(["" if v is None else v for v in r])
            if out.tell() > 1 << 20:
                proc.stdin.write(out.getvalue()); out.seek(0); out.truncate()
        proc.stdin.write(out.getvalue())
        proc.stdin.close()
        if proc.wait() != 0:
            sys.exit(f"COPY {table} failed")

    copy("packs", ["id", "account_id", "stored_size", "plain_size", "created_at"], ((p, account, 4194304, 4194304, now) for p in packs))
    copy("chunks", ["account_id", "id", "pack_id", '"offset"', "length", "stored_length", "created_at"],
         ((account, "\\x" + c, packs[i % 100], 0, 4096, 1500, now) for i, c in enumerate(chunk_ids)))

    def database_rows():
        for n in range(databases):
            r = dict(row)
            r.update(id=f"db-bench{n:011d}", name=f"bench-{n}", location=row["location"].replace(template, f"db-bench{n:011d}"),
                     next_backup_at=now + day // 2, restore_drills="off", next_drill_at=None)
            yield [r[c] for c in columns]
    copy("databases", columns, database_rows())
    copy("layers", ["id", "account_id", "depth", "kind", "page_size", "entry_count", "logical_size", "stored_bytes", "object_checksum", "refs", "created_at"],
         ((f"bench{n:06d}l{b:03d}", account, 0, "pages-full", 4096, 10, 40960, 15000, "x", 1, now - b * day) for n in range(databases) for b in range(backups)))

    def layer_chunk_rows():
        for n in range(databases):
            for b in range(backups):
                for c in rng.sample(range(len(chunk_ids)), 10):
                    yield (f"bench{n:06d}l{b:03d}", account, "\\x" + chunk_ids[c])
    copy("layer_chunks", ["layer_id", "account_id", "chunk_id"], layer_chunk_rows())

    def backup_rows():
        for n in range(databases):
            for b in range(backups):
                created = now - (b + 1) * day
                yield (f"backup-bench{n:06d}{b:04d}", account, f"db-bench{n:011d}", f"automatic-{b}", "automatic", "completed", "sqlite",
                       created, created, created + 60_000, now + 30 * day, time.strftime("%Y-%m-%d", time.gmtime(created / 1000)),
                       f"bench{n:06d}l{b:03d}", 40960, "x", 15000)
    copy("backups", ["id", "account_id", "database_id", "name", "type", "status", "engine", "created_at", "started_at", "completed_at",
                     "expires_at", "scheduled_day", "object_key", "size_bytes", "checksum", "stored_bytes"], backup_rows())
    server.sql("VACUUM ANALYZE", db=database)


def wrk(port, token, databases, connections, seconds, workdir):
    script = os.path.join(workdir, "list.lua")
    with open(script, "w") as f:
        f.write(f"""
math.randomseed(7)
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  return wrk.format("GET", string.format("/v1/databases/db-bench%011d/backups", math.random(0, {databases - 1})))
end
""")
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
    latency = {l.split()[0]: l.split()[1] for l in out.splitlines() if l.strip().endswith("ms") or l.strip().endswith("us") or l.strip().endswith("s")}
    non2xx = next((l for l in out.splitlines() if "Non-2xx" in l), None)
    return rps, latency, non2xx, out


def first_pass(port, token, databases, threads=8):
    """Lists every database once, in order, from `threads` keep-alive connections: with a list
    cache, the pass renders every list (the cost of a cold cache); returns lists per second."""
    import http.client, threading
    ids = iter(range(databases))
    lock = threading.Lock()
    failures = []

    def worker():
        connection = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                n = next(ids, None)
            if n is None:
                break
            connection.request("GET", f"/v1/databases/db-bench{n:011d}/backups", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
        connection.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        sys.exit(f"first pass: {len(failures)} lists failed, e.g. HTTP {failures[0]}")
    return databases / (time.perf_counter() - started)


def milliseconds(text):
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    return float(text)


def measure(args, kind, server=None):
    """Fills a catalog of `kind`, serves it and runs wrk; returns the report row."""
    workdir = os.path.join(args.workdir, kind)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    admin, base = "bench-admin-token", f"http://127.0.0.1:{args.port}"
    catalog = None
    if kind == "postgresql":
        server.sql("CREATE DATABASE api OWNER cloudheed_admin")
        catalog = f"postgresql://cloudheed_admin:bench-admin@127.0.0.1:{server.port}/api"

    child = serve(args.bin, workdir, args.port, admin, catalog)
    created = call(base, "POST", "/v1/accounts", admin, {"name": "bench", "storage_quota_bytes": 1 << 40})
    account, token = created["account"]["id"], created["token"]
    template = call(base, "POST", "/v1/databases", token, {"name": "template", "tier": "large", "restore_drills": "off"})["id"]
    stop(child)
    started = time.perf_counter()
    if catalog:
        fill_postgres(server, "api", account, template, args.databases, args.backups)
    else:
        fill(os.path.join(workdir, "catalog.sqlite3"), account, template, args.databases, args.backups)
    print(f"{kind} catalog: {args.databases} databases x {args.backups} backups, filled in {time.perf_counter() - started:.0f} s", flush=True)

    child = serve(args.bin, workdir, args.port, admin, catalog)
    runs = []
    try:
        sample = call(base, "GET", "/v1/databases/db-bench00000000042/backups", token)
        assert len(sample["backups"]) == args.backups, sample
        cold = first_pass(args.port, token, args.databases)
        print(f"{kind}: first pass over all {args.databases} lists (each rendered once): {cold:,.0f} lists/s", flush=True)
        wrk(args.port, token, args.databases, args.connections, 3, workdir)  # warm-up
        runs.append(("no writes", *wrk(args.port, token, args.databases, args.connections, args.seconds, workdir)))
        if args.writes_per_second > 0:
            with BackgroundBackups(base, token, template, args.writes_per_second) as writer:
                runs.append((f"{args.writes_per_second} manual backups/s being taken", *wrk(args.port, token, args.databases, args.connections, args.seconds, workdir)))
            print(f"{kind}: {writer.completed} background backups completed during the run, {writer.failed} failed", flush=True)
    finally:
        stop(child)
    rows = []
    for load, rps, latency, non2xx, raw in runs:
        p50, p99 = milliseconds(latency.get("50%", "0ms")), milliseconds(latency.get("99%", "0ms"))
        print(f"{kind}, {load}:\n{raw}")
        if non2xx:
            print("WARNING:", non2xx)
        if kind == "postgresql":
            verdict = f">= {TARGET_RPS_POSTGRES:,} req/s: {'met' if rps >= TARGET_RPS_POSTGRES and not non2xx else 'missed'}"
        else:
            verdict = (f">= {TARGET_RPS:,} req/s and p99 < {TARGET_P99_MS:.0f} ms: "
                       f"{'met' if rps >= TARGET_RPS and p99 < TARGET_P99_MS and not non2xx else 'missed'}")
        rows.append(f"| {'PostgreSQL' if catalog else 'SQLite'} | {load} | {cold:,.0f} | {rps:,.0f} | {p50:.2f} ms | {p99:.2f} ms | {verdict} |")
    return rows


class BackgroundBackups:
    """Writes while wrk runs: a manual backup of the (empty) template database every
    1/rate seconds through the API, each one a job that claims, reports progress and completes,
    so the catalog's counters and the SQLite catalog's change count move all the time."""

    def __init__(self, base, token, database, rate):
        import threading
        self.base, self.token, self.database, self.rate = base, token, database, rate
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.ids, self.completed, self.failed = [], 0, 0

    def run(self):
        while not self.stopping.wait(1 / self.rate):
            self.ids.append(call(self.base, "POST", f"/v1/databases/{self.database}/backups", self.token)["id"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        time.sleep(2)
        statuses = [call(self.base, "GET", f"/v1/databases/{self.database}/backups/{i}", self.token)["status"] for i in self.ids]
        self.completed, self.failed = statuses.count("completed"), statuses.count("failed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--databases", type=int, default=10_000)
    ap.add_argument("--backups", type=int, default=40)
    ap.add_argument("--bin", default=".build/release/cloudheed")
    ap.add_argument("--workdir", default="/tmp/cloudheed-bench-api")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--port", type=int, default=18470)
    ap.add_argument("--catalog", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--writes-per-second", type=float, default=5, help="manual backups a second during a second wrk run (0: skip it)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    rows = []
    if args.catalog in ("sqlite", "both"):
        rows += measure(args, "sqlite")
    if args.catalog in ("postgresql", "both"):
        from run_postgres import Server
        server = Server(args.workdir)
        try:
            rows += measure(args, "postgresql", server)
        finally:
            server.stop()
    print("| catalog | meanwhile | first pass, lists/s | req/s | p50 | p99 | target |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
