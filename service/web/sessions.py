"""Sign-in sessions in PostgreSQL (``migrations/0011_sessions.sql``): every instance on the
database sees them, so no sticky sessions are needed behind a proxy.

Only hashes are stored: the session id's and the token's. Opening a session keeps at most
``per_token`` sessions of its token (the oldest beyond are ended: signing in again and
again with one token ends only that token's sessions) and clears expired ones; opens of one
token are serialised by an advisory lock, whichever instance runs them. Each runs through
``db.run``: a caller's deadline (``asyncio.timeout``) ends it at once even when the server
hangs.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import asyncpg

import db

_OPEN = """
INSERT INTO sessions (id_sha256, token_sha256, expires_at) VALUES ($1, $2, $3)
"""
_TRIM = """
DELETE FROM sessions WHERE id_sha256 IN (
    SELECT id_sha256 FROM sessions WHERE token_sha256 = $1
    ORDER BY created_at DESC, id_sha256 OFFSET $2)
"""
_EXPIRED = "DELETE FROM sessions WHERE expires_at < clock_timestamp()"
_FIND = """
SELECT token_sha256, expires_at FROM sessions
WHERE id_sha256 = $1 AND expires_at > clock_timestamp()
"""
_CLOSE = "DELETE FROM sessions WHERE id_sha256 = $1"


async def open_session(pool: asyncpg.Pool, id_sha256: str, token_sha256: str, *,
                       seconds: float, per_token: int) -> datetime:
    """Store a session; end the token's oldest beyond ``per_token``. Returns its expiry."""
    expires = datetime.now(timezone.utc) + timedelta(seconds=seconds)

    async def work(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 11))",
                               token_sha256)
            await conn.execute(_OPEN, id_sha256, token_sha256, expires)
            await conn.execute(_TRIM, token_sha256, per_token)
            await conn.execute(_EXPIRED)

    await db.run(pool, work)
    return expires


async def find_session(pool: asyncpg.Pool, id_sha256: str) -> tuple[str, datetime] | None:
    """(token hash, expiry) of a live session, else None."""
    row = await db.run(pool, lambda conn: conn.fetchrow(_FIND, id_sha256))
    return None if row is None else (row["token_sha256"], row["expires_at"])


async def close_session(pool: asyncpg.Pool, id_sha256: str) -> None:
    await db.run(pool, lambda conn: conn.execute(_CLOSE, id_sha256))


async def token_sessions(pool: asyncpg.Pool, token_sha256: str) -> int:
    """How many live sessions a token has (for tests and operators)."""
    return await pool.fetchval(
        "SELECT count(*) FROM sessions WHERE token_sha256 = $1 AND expires_at > clock_timestamp()",
        token_sha256)
