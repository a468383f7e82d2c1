"""Simulated days of hourly runs (benchmarks/month.py) into PostgreSQL: its own file, so it runs
beside the SQLite one (tests/test_month.py) in another test process.

One simulated day here, to keep CI under 15 minutes on 2 cores (three days on PostgreSQL took
8 minutes of a loaded CI run, and passed): the dialect's share (upserts, state, the updated_at
guard) shows within a day, as on SQLite (tests/test_month.py). For three or thirty on PostgreSQL:
``benchmarks/month.py --days 3 --destination $DINTERO_TEST_POSTGRES_URL``."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.slow
def test_a_day_unattended_on_postgres(month_benchmark, postgres_url, evidence):
    from tests.conftest import _drop_dintero_tables

    _drop_dintero_tables(postgres_url)
    month = month_benchmark.simulate(1, postgres_url, traffic=0.5, log=lambda line: None)
    evidence.note("postgresql · " + month.line())
    assert not month.unmet_goals(), (month.unmet_goals(), month.failures, month.stale)
