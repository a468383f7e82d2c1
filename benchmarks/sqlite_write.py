"""What SQLite's raw executemany buys: the core sync of N transactions into a new SQLite file,
with the dialect's raw ``executemany`` and with SQLAlchemy's ``execute`` (the base dialect's
write), in 3 interleaved rounds, each in a fresh process.

Run: ``.venv/bin/python benchmarks/sqlite_write.py 50000``.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from _emulator import start_emulator
from sync_throughput import SYNC

PLAIN = SYNC.replace(
    "from prefect_dintero.sink import Sink",
    "from prefect_dintero.sink import Sink\nfrom prefect_dintero.sink.sqlite import SQLiteDialect\nfrom prefect_dintero.sink.dialect import Dialect\nSQLiteDialect.write = Dialect.write",
)


def run(code, url, db):
    out = subprocess.run([sys.executable, "-c", code, url, db], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


n = int(sys.argv[1])
proc, url = start_emulator("--transactions", str(n), "--token-lifetime", "86400", timeout=300)
try:
    res = {"raw": [], "sqlalchemy": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(3):
            for name, code in (("raw", SYNC), ("sqlalchemy", PLAIN)):
                db = f"{d}/{name}{r}.db"
                out = run(code, url, db)
                assert out["table_rows"] == n, out
                res[name].append(out["seconds"])
    print(json.dumps(res))
    ratios = [s / r for r, s in zip(res["raw"], res["sqlalchemy"], strict=True)]
    print("median sqlalchemy/raw:", statistics.median(ratios), ratios)
    print(
        "rows/s raw",
        n / statistics.median(res["raw"]),
        "sqlalchemy",
        n / statistics.median(res["sqlalchemy"]),
    )
finally:
    proc.terminate()
