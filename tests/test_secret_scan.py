"""The secret scan, after every other test of the session (its ``secret_scan`` marker sorts it
last: tests/conftest.py).

It looks for the client secret of every emulator the session started, and every access token,
refresh token and authorization code they issued, in everything the suite's flows left behind:
the Prefect databases (the test harness's and each real server's), Prefect's home (logs, result
storage), server logs, the sync databases (SQLite files and the PostgreSQL test database), test
artifacts, the captured output and log records of every test, and the error texts users saw.

Prefect's block documents are stored encrypted, so the secrets saved in blocks don't show in the
database file either; nothing needs excepting.

One thing is looked at separately. SQLite's write-ahead log keeps old page images until a
checkpoint: Prefect stores the login resume form's input (the pasted redirect URL, with its code)
as a run input, and the login flow deletes it once the code is exchanged, but a Prefect server
stopped with SIGTERM leaves its WAL behind with that page still in it. The scan folds every
Prefect database's WAL in (as SQLite does when the database is next opened) and then expects 0
hits; what the raw WALs held before that is reported, and must be authorization codes only:
spent ones, or one a test pasted and the login refused (a state that does not match), which is
never exchanged. A code alone cannot be exchanged: Dintero's exchange needs the API client's
own token, so its client secret. Whether such a page image is still in the WAL when the suite
ends depends on SQLite's automatic checkpoints, so on how many tests ran before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from .conftest import EVIDENCE

pytestmark = pytest.mark.secret_scan
ROOT = Path(__file__).resolve().parents[1]
# Secrets the bad-input tests typed on purpose (a wrong client secret, a database password).
TYPED_BY_TESTS = {"not-the-secret", "db-password"}


def _grep(patterns: Path, targets: list[Path]) -> list[str]:
    """Fixed-string search for many patterns at once (grep -F builds one automaton); each hit
    is `file:match`, even for one file (-H)."""
    if not targets:
        return []
    result = subprocess.run(
        ["grep", "-r", "-H", "-a", "-o", "-F", "-f", str(patterns), *map(str, targets)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    # A SQLite side file (-shm, -journal) can go while grep walks the folder, when the last
    # connection to its database closes: what it held is in the database, which is scanned.
    vanished = all(
        line.endswith("No such file or directory") for line in result.stderr.splitlines()
    )
    assert result.returncode in (0, 1) or (result.returncode == 2 and vanished), result.stderr
    return result.stdout.splitlines()


def _checkpoint(database: Path) -> None:
    """Fold a SQLite database's write-ahead log into the file and truncate it, as SQLite does
    when the last connection closes (the test harness's server is still running now; the real
    servers were stopped with SIGTERM and left theirs)."""
    conn = sqlite3.connect(database, timeout=30)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert not busy, f"could not checkpoint {database}"
    finally:
        conn.close()


def _postgres_text(url: str) -> str:
    """Every dintero_ table of the test database and of each parallel worker's copy of it."""
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    engine = create_engine(base)
    try:
        with engine.connect() as conn:
            names = conn.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE :prefix"),
                {"prefix": f"{base.database}%"},
            ).scalars()
            databases = list(names)
    finally:
        engine.dispose()
    chunks = []
    for database in databases:
        engine = create_engine(base.set(database=database))
        try:
            with engine.connect() as conn:
                for name in inspect(conn).get_table_names():
                    if name.startswith("dintero_"):
                        rows = conn.execute(text(f'SELECT t::text FROM "{name}" t')).scalars()
                        chunks.extend(rows)
        finally:
            engine.dispose()
    return "\n".join(chunks)


def test_no_secret_anywhere_the_suite_left_anything(tmp_path_factory, tmp_path):
    if shutil.which("grep") is None:
        pytest.fail("the secret scan needs grep")
    kinds = {**EVIDENCE.secrets, **dict.fromkeys(TYPED_BY_TESTS, "typed by a test")}
    secrets = {s for s in kinds if len(s) >= 8}
    if EVIDENCE.emulators == 0:
        pytest.skip("no emulator ran in this session: nothing was issued to look for")
    patterns = tmp_path / "patterns"
    patterns.write_text("\n".join(sorted(secrets)) + "\n")
    # The scanner finds a secret inside binary data: otherwise 0 hits would prove nothing.
    canary = tmp_path / "canary.bin"
    canary.write_bytes(b"\x00\x01SQLite page\x00" + max(secrets).encode() + b"\xff\x00")
    assert _grep(patterns, [canary]), "the scanner missed a planted secret"
    canary.unlink()

    # Texts: every test's captured output and logs, and the error texts users saw.
    texts = tmp_path / "texts"
    texts.write_text("\n".join(EVIDENCE.texts), errors="replace")
    dump = tmp_path / "postgres.txt"
    dump.write_text("")
    url = os.environ.get("DINTERO_TEST_POSTGRES_URL")
    if url:
        try:
            dump.write_text(_postgres_text(url))
        except Exception as exc:  # unreachable outside CI: the sink tests skipped too
            dump.write_text(f"unreachable: {type(exc).__name__}")

    roots = [p for p in {tmp_path_factory.getbasetemp(), *EVIDENCE.paths} if p.is_dir()]
    wals = sorted({w for root in roots for w in root.rglob("*.db-wal")})
    in_wals = _grep(patterns, wals)
    wal_kinds = Counter(kinds[h.rsplit(":", 1)[1]] for h in in_wals)
    for wal in wals:
        _checkpoint(wal.with_name(wal.name.removesuffix("-wal")))
    scanned_dirs = {tmp_path_factory.getbasetemp(), *EVIDENCE.paths, ROOT / "test-artifacts"}
    targets = [p for p in scanned_dirs if p.exists()]
    # The patterns file itself lives under the base temp dir: scan the rest, then the texts.
    files = [
        f
        for d in targets
        for f in (d.rglob("*") if d.is_dir() else [d])
        if f.is_file() and f not in (patterns,)
    ]
    hits = _grep(patterns, [f for f in files if f not in (texts, dump)])
    hits += _grep(patterns, [texts, dump])
    size = sum(f.stat().st_size for f in files)
    prefect_dbs = [f for f in files if f.suffix == ".db" and "prefect" in f.name]
    EVIDENCE.note(
        f"secret scan: {len(secrets)} secrets from {EVIDENCE.emulators} emulators "
        f"(client secrets, access and refresh tokens, codes) in {len(files)} files "
        f"({size / 1e6:.1f} MB, {len(prefect_dbs)} Prefect databases) and "
        f"{len(EVIDENCE.texts)} captured texts: {len(hits)} hits. Before folding in "
        f"{len(wals)} write-ahead logs, they held {sum(wal_kinds.values())} copies of secrets: "
        f"{dict(wal_kinds) or 'none'}"
    )
    assert set(wal_kinds) <= {"spent code", "unused code"}, (
        f"a token or client secret was in a WAL: {dict(wal_kinds)}"
    )
    if hits:  # name the files only: the failure report itself must not carry the secrets
        pytest.fail("secrets found in:\n" + "\n".join(sorted({h.rsplit(":", 1)[0] for h in hits})))
