"""How database errors are read: "not now" (held and tried again) or "never" (a bug or bad
data), by SQLSTATE through SQLAlchemy's wrapping; and no bound value in an error's text."""

from __future__ import annotations

import pytest
from asyncpg import exceptions as pg_exc
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db.engine import is_transient, make_engine


@pytest.mark.parametrize("exc", [
    pg_exc.TooManyConnectionsError("sorry, too many clients already"),  # 53300
    pg_exc.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),  # 25006
    pg_exc.DiskFullError("could not extend file"),  # 53100
    pg_exc.SerializationError("could not serialize access"),  # 40001
    pg_exc.DeadlockDetectedError("deadlock detected"),  # 40P01
])
def test_errors_that_say_not_now_are_transient(exc: Exception) -> None:
    assert is_transient(exc)


def test_bad_data_and_bugs_are_not() -> None:
    assert not is_transient(pg_exc.NotNullViolationError("null value in column"))
    assert not is_transient(pg_exc.UndefinedTableError("relation does not exist"))


async def test_a_read_only_database_through_sqlalchemy_is_transient_and_hides_the_values(clean_db: str) -> None:
    # A failover leaves the old primary read-only: the write is to wait, not to be dropped as a
    # bug. And the error's text, which is logged, holds no bound value (an idToken, say).
    engine = make_engine(clean_db, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET default_transaction_read_only = on"))
            await conn.commit()
            with pytest.raises(DBAPIError) as info:
                await conn.execute(text("INSERT INTO id_tokens (id_token, type, status, created_at) "
                                        "VALUES (:t, 'ISO14443', 'Accepted', now())"), {"t": "04A1B2C3D4E5F6"})
        assert is_transient(info.value)
        assert "04A1B2C3D4E5F6" not in str(info.value)
    finally:
        await engine.dispose()
