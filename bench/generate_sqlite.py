#!/usr/bin/env python3
"""Generates a realistic SQLite database for the benchmarks, and applies a 'day of changes'.

  generate_sqlite.py create PATH SIZE_MB   orders with text, numbers, JSON-ish notes, some blobs,
                                           and indexes (one on a random-valued column)
  generate_sqlite.py mutate PATH           appends 1% new rows (random values in the indexed
                                           `score` column) and updates 0.1% of rows in place
"""
import os, random, sqlite3, sys, time

WORDS = ("alpha beta gamma delta kiwi mango river stone cloud amber cedar maple quartz "
         "harbor meadow violet copper orbit pixel lantern summit willow ember falcon").split()
STATUSES = ["pending", "paid", "shipped", "delivered", "refunded", "cancelled"]

def row(rng, i):
    name = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}"
    note = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))
    return (i, name, f"{name.split()[0].lower()}.{i}@example.com", round(rng.uniform(1, 5000), 2),
            rng.randint(1, 20), rng.choice(STATUSES), note,
            f"2026-{rng.randint(1,12):02d}-{rng.randint(1,28):02d}T{rng.randint(0,23):02d}:{rng.randint(0,59):02d}:00Z",
            rng.getrandbits(48), '{"sku": "%08x", "tags": ["%s", "%s"]}' % (rng.getrandbits(32), rng.choice(WORDS), rng.choice(WORDS)))

def create(path, size_mb):
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, email TEXT NOT NULL, amount REAL NOT NULL,
            quantity INTEGER NOT NULL, status TEXT NOT NULL, note TEXT, created_at TEXT NOT NULL, score INTEGER NOT NULL, attrs TEXT);
        CREATE TABLE attachments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, data BLOB NOT NULL);
        CREATE INDEX orders_customer ON orders(customer);
        CREATE INDEX orders_score ON orders(score);
    """)
    rng = random.Random(42)
    target = size_mb * 1024 * 1024
    i = 0
    while True:
        batch = [row(rng, i + k + 1) for k in range(20000)]
        db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
        db.executemany("INSERT INTO attachments (order_id, data) VALUES (?, ?)",
                       [(r[0], os.urandom(rng.randint(64, 512))) for r in batch if rng.random() < 0.08])
        db.commit()
        i += len(batch)
        if db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0] >= target:
            break
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"{i} orders, {os.path.getsize(path) / 1048576:.0f} MiB")

def mutate(path):
    db = sqlite3.connect(path)
    rng = random.Random(int(time.time()))
    count = db.execute("SELECT MAX(id) FROM orders").fetchone()[0]
    appended = count // 100
    db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?)", [row(rng, count + k + 1) for k in range(appended)])
    updated = count // 1000
    for k in rng.sample(range(1, count + 1), updated):
        db.execute("UPDATE orders SET amount = ?, status = ?, quantity = quantity + 1 WHERE id = ?",
                   (round(rng.uniform(1, 5000), 2), rng.choice(STATUSES), k))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"appended {appended}, updated {updated}")

if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], int(sys.argv[3]))
    else:
        mutate(sys.argv[2])
