"""Three simulated days of hourly runs (benchmarks/month.py) into PostgreSQL: its own file, so
it runs beside the SQLite one (tests/test_month.py) in the other test process."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.mark.slow
def test_three_days_unattended_on_postgres(month_benchmark, postgres_url, evidence):
    from tests.conftest import _drop_dintero_tables

    _drop_dintero_tables(postgres_url)
    month = month_benchmark.simulate(3, postgres_url, log=lambda line: None)
    evidence.note("postgresql · " + month.line())
    assert not month.unmet_goals(), (month.unmet_goals(), month.failures, month.stale)
