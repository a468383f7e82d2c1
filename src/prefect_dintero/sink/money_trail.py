"""The money trail: one view that follows the money per payout destination and day, from the
payments' captures and refunds, through the providers' settlements, to the payout
destination's ledger (money in from each settlement, money out to the bank).

It reads only typed columns of the tables the sync writes, so it is one plain SQL view on
every dialect (only the day of a timestamp is written per dialect: ``Dialect.day``). The view
exists once all of its tables do; it is created (or replaced, when the code's definition
changed) by :meth:`Sink.prepare`.

Columns, per ``account_id``, ``payout_destination_id``, ``day`` (UTC, ``YYYY-MM-DD``) and
``currency``, amounts in the currency's smallest unit:

- ``captured``, ``refunded``: the payments' successful captures and refunds that day;
- ``awaiting_settlement``: of those, what no settlement entry covers yet (a refund counts
  negative);
- ``settled_capture``, ``settled_refund``, ``fees``, ``settled``: the settlements settled that
  day, as the providers report them (``settled = settled_capture - settled_refund - fees``);
- ``settled_by_payments``: the payments' own entries for those settlements;
- ``transferred``: what reached the payout destination from settlements that day (its
  ``inbound`` ledger entries, dated by the settlement they pay out);
- ``paid_out``: what left the payout destination for the bank that day (``outbound``);
- ``settlement_difference = settled - settled_by_payments``: a settlement whose payments are
  not all in the destination (or not settled in it), or a payment entry whose settlement is
  missing (negative);
- ``transfer_difference = settled - transferred``: a settlement not paid into the payout
  destination, or money in that no settlement explains (negative).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from .dialect import Dialect

VIEW = "dintero_money_trail"

#: The tables the view reads.
TABLES = (
    "dintero_transactions",
    "dintero_transaction_events",
    "dintero_transaction_settlements",
    "dintero_settlements",
    "dintero_payout_transfers",
)

#: The measures, in the view's order; each movement fills some and leaves the rest 0.
MEASURES = (
    "captured",
    "refunded",
    "awaiting_settlement",
    "settled_capture",
    "settled_refund",
    "fees",
    "settled",
    "settled_by_payments",
    "transferred",
    "paid_out",
)


def _movement(select: str, measures: dict[str, str], rest: str) -> str:
    """One kind of money movement as the view's columns (the measures it does not fill: 0)."""
    values = ", ".join(f"{measures.get(m, '0')} AS {m}" for m in MEASURES)
    return f"SELECT {select}, {values} {rest}"


def view_sql(dialect: Dialect) -> str:
    """The view's ``SELECT`` on ``dialect``."""
    day = dialect.day
    not_settled = (
        "NOT EXISTS (SELECT 1 FROM dintero_transaction_settlements p "
        "WHERE p.account_id = e.account_id AND p.transaction_id = e.transaction_id "
        "AND p.event_position = e.position)"
    )
    signed = "CASE WHEN e.event = 'CAPTURE' THEN e.amount ELSE -e.amount END"
    movements = [
        # The payments' captures and refunds, on the day they happened.
        _movement(
            f"e.account_id, t.payout_destination_id, {day('e.created_at')} AS day, e.currency",
            {
                "captured": "CASE WHEN e.event = 'CAPTURE' THEN e.amount ELSE 0 END",
                "refunded": "CASE WHEN e.event = 'REFUND' THEN e.amount ELSE 0 END",
                "awaiting_settlement": f"CASE WHEN {not_settled} THEN {signed} ELSE 0 END",
            },
            "FROM dintero_transaction_events e JOIN dintero_transactions t "
            "ON t.account_id = e.account_id AND t.id = e.transaction_id "
            "WHERE e.success AND e.event IN ('CAPTURE', 'REFUND')",
        ),
        # The settlements, on the day they settled, as the providers report them.
        _movement(
            f"s.account_id, s.payout_destination_id, {day('s.settled_at')}, s.currency",
            {
                "settled_capture": "s.capture",
                "settled_refund": "s.refund",
                "fees": "s.fee",
                "settled": "s.amount",
            },
            "FROM dintero_settlements s",
        ),
        # The payments' entries, on their settlement's day (their event's, when the
        # settlement is missing).
        _movement(
            "p.account_id, COALESCE(s.payout_destination_id, t.payout_destination_id), "
            f"{day('COALESCE(s.settled_at, e.created_at)')}, p.currency",
            {"settled_by_payments": "p.amount"},
            "FROM dintero_transaction_settlements p "
            "JOIN dintero_transactions t "
            "ON t.account_id = p.account_id AND t.id = p.transaction_id "
            "JOIN dintero_transaction_events e ON e.account_id = p.account_id "
            "AND e.transaction_id = p.transaction_id AND e.position = p.event_position "
            "LEFT JOIN dintero_settlements s "
            "ON s.account_id = p.account_id AND s.id = p.settlement_id",
        ),
        # Money into the payout destination, on the day of the settlement it pays out.
        _movement(
            "account_id, payout_destination_id, "
            f"{day('COALESCE(settled_at, created_at)')}, currency",
            {"transferred": "amount"},
            "FROM dintero_payout_transfers WHERE type = 'inbound'",
        ),
        # Money out to the bank.
        _movement(
            f"account_id, payout_destination_id, {day('created_at')}, currency",
            {"paid_out": "amount"},
            "FROM dintero_payout_transfers WHERE type = 'outbound'",
        ),
    ]
    # Whole numbers on every dialect (PostgreSQL's SUM of a bigint is a numeric).
    sums = ", ".join(f"CAST(SUM({m}) AS BIGINT) AS {m}" for m in MEASURES)
    return (
        f"SELECT account_id, payout_destination_id, day, currency, {sums}, "
        "CAST(SUM(settled) - SUM(settled_by_payments) AS BIGINT) AS settlement_difference, "
        "CAST(SUM(settled) - SUM(transferred) AS BIGINT) AS transfer_difference "
        f"FROM ({' UNION ALL '.join(movements)}) movements "
        "GROUP BY account_id, payout_destination_id, day, currency"
    )


#: The view's columns: a view that has exactly these is left as it is.
COLUMNS = (
    "account_id",
    "payout_destination_id",
    "day",
    "currency",
    *MEASURES,
    "settlement_difference",
    "transfer_difference",
)


def ensure_view(conn: Connection, dialect: Dialect) -> bool:
    """Create the view once its tables exist, or replace it when its columns changed (a newer
    version of the package). Runs in the caller's transaction, under the schema lock. A view
    already in place is never dropped again: on PostgreSQL a dashboard reading it would hold
    every sync's preparation behind its lock, and queue every later reader behind that. True
    when the view exists."""
    if not all(dialect.has_table(conn, table) for table in TABLES):
        return False
    if dialect.has_table(conn, VIEW) and dialect.existing_columns(conn, VIEW) == set(COLUMNS):
        return True
    dialect.replace_view(conn, VIEW, view_sql(dialect))
    return True
