"""The run table: one row per attempt at running a session, the source of truth for who runs it.

An attempt holds a lease that its worker renews (`renew`, every RUN_HEARTBEAT_S). A worker that dies
stops renewing; once the lease has expired (or its holder is a process on this machine that is
gone) another worker's `claim` ends it (`expired`) and starts the next attempt, which resumes the
session from its LangGraph checkpoint. At most one attempt per session is `active`: a partial unique
index says so in the database, whatever the workers do. Claims of one session serialize on its
session row (`FOR UPDATE SKIP LOCKED` on PostgreSQL: a second claimer backs off instead of queueing
behind the first); on SQLite the database's single writer and the unique index do the same.

Attempt numbers only grow, and they fence: every session or event write of a worker checks, in its
own transaction after its statements (`install_fencing`: a before-commit hook), that its attempt is
still the active one (on PostgreSQL the check holds a share lock on the run row, which a
takeover's update waits for). A worker whose attempt was taken over gets `LeaseLost` and writes
nothing more.
"""

from __future__ import annotations

import os
import socket
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, DateTime, Index, UniqueConstraint, event, func, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from state.sessions import OptimizationSession
from state.users import utcnow

ACTIVE = "active"
# finished: the attempt ran the session to an end (or found nothing to run); interrupted: its worker
# stopped it on purpose (shut-down) and freed the lease; expired: it ended without its worker, whose
# lease ran out or whose process is known dead; lost: its worker found it taken over.
RUN_STATUSES: tuple[str, ...] = (ACTIVE, "finished", "interrupted", "expired", "lost")


class SessionRun(SQLModel, table=True):
    __tablename__ = "session_runs"
    __table_args__ = (
        UniqueConstraint("session_id", "attempt", name="uq_session_runs_session_attempt"),
        Index(
            "uq_session_runs_one_active",
            "session_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(
        foreign_key="optimization_sessions.id", index=True, max_length=32, ondelete="CASCADE"
    )
    attempt: int
    worker_id: str = Field(max_length=200)
    status: str = Field(default=ACTIVE, max_length=16)
    lease_expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class LeaseLost(RuntimeError):
    """This worker's attempt is no longer the session's active one: it must not write."""


@dataclass(frozen=True)
class Claim:
    run_id: int
    session_id: str
    attempt: int
    worker_id: str
    lease_expires_at: datetime


@dataclass(frozen=True)
class Held:
    """Another attempt holds a live lease (`attempt` 0: another claim of it is under way)."""

    session_id: str
    attempt: int
    worker_id: str
    heartbeat_at: datetime | None
    lease_expires_at: datetime | None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- who a worker is ---------------------------------------------------------------------------


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"  # unknown: its processes are never judged dead from here


def worker_identity(kind: str, pid: int | None = None, nonce: str | None = None) -> str:
    """`kind:host:pid-namespace:pid:nonce`: enough for a claimer on the same machine to see it died."""
    return ":".join(
        [kind, socket.gethostname(), _pid_namespace(), str(pid or os.getpid()), nonce or uuid.uuid4().hex[:8]]
    )


def holder_is_dead(worker_id: str) -> bool:
    """True only when the holder is a process in this machine's pid namespace that no longer runs
    (gone, or a zombie). Anything else (another machine, another namespace, a reused pid) is left to
    its lease; a wrong guess costs nothing but time, never a double run, thanks to the fence."""
    parts = worker_id.split(":")
    if len(parts) != 5:
        return False
    _kind, host, namespace, pid_text, _nonce = parts
    if host != socket.gethostname() or namespace == "0" or namespace != _pid_namespace():
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


# -- claims, leases, ends ------------------------------------------------------------------------


async def claim(
    sessionmaker: async_sessionmaker[AsyncSession], session_id: str, worker_id: str, lease_s: float
) -> Claim | Held | None:
    """Start the session's next attempt for `worker_id`; Held when a live attempt has it; None when
    the session does not exist."""
    async with sessionmaker() as db:
        postgres = db.bind.dialect.name == "postgresql"
        locked = (
            await db.exec(
                select(OptimizationSession)
                .where(OptimizationSession.id == session_id)
                .with_for_update(skip_locked=True)
            )
        ).first()
        if locked is None:
            if postgres and await db.get(OptimizationSession, session_id) is not None:
                return Held(session_id, 0, "", None, None)
            return None
        now = utcnow()
        active = (
            await db.exec(
                select(SessionRun).where(SessionRun.session_id == session_id, SessionRun.status == ACTIVE)
            )
        ).first()
        if active is not None:
            if _aware(active.lease_expires_at) > now and not holder_is_dead(active.worker_id):
                return Held(
                    session_id,
                    active.attempt,
                    active.worker_id,
                    _aware(active.heartbeat_at),
                    _aware(active.lease_expires_at),
                )
            active.status = "expired"
            active.ended_at = now
            db.add(active)
            await db.flush()  # before the insert: the partial unique index allows one active row
        last = (
            await db.exec(select(func.max(SessionRun.attempt)).where(SessionRun.session_id == session_id))
        ).one()
        # Sessions that ran before the run table counted their attempts in the session row.
        attempt = max(int(last or 0), locked.attempts) + 1
        run = SessionRun(
            session_id=session_id,
            attempt=attempt,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_s),
            heartbeat_at=now,
            started_at=now,
        )
        db.add(run)
        try:
            await db.commit()
        except IntegrityError:  # a concurrent claim (SQLite) got there first
            await db.rollback()
            return Held(session_id, 0, "", None, None)
        assert run.id is not None
        return Claim(run.id, session_id, attempt, worker_id, run.lease_expires_at)


async def renew(sessionmaker: async_sessionmaker[AsyncSession], run_id: int, lease_s: float) -> bool:
    """Heartbeat: extend the lease. False once the attempt is no longer active (taken over)."""
    now = utcnow()
    async with sessionmaker() as db:
        result = await db.exec(  # type: ignore[call-overload]
            update(SessionRun)
            .where(col(SessionRun.id) == run_id, col(SessionRun.status) == ACTIVE)
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        )
        await db.commit()
        return bool(result.rowcount == 1)


async def end(sessionmaker: async_sessionmaker[AsyncSession], run_id: int, status: str) -> bool:
    """End an active attempt (`finished`, `interrupted`, `lost`); False when it had already ended."""
    assert status in RUN_STATUSES and status != ACTIVE
    async with sessionmaker() as db:
        result = await db.exec(  # type: ignore[call-overload]
            update(SessionRun)
            .where(col(SessionRun.id) == run_id, col(SessionRun.status) == ACTIVE)
            .values(status=status, ended_at=utcnow())
        )
        await db.commit()
        return bool(result.rowcount == 1)


async def expire_worker(sessionmaker: async_sessionmaker[AsyncSession], worker_id: str) -> int:
    """End the active attempts of a worker known to be dead (its parent saw it exit): the next claim
    need not wait for its lease. Returns how many."""
    async with sessionmaker() as db:
        result = await db.exec(  # type: ignore[call-overload]
            update(SessionRun)
            .where(col(SessionRun.worker_id) == worker_id, col(SessionRun.status) == ACTIVE)
            .values(status="expired", ended_at=utcnow())
        )
        await db.commit()
        return int(result.rowcount or 0)


async def attempts(sessionmaker: async_sessionmaker[AsyncSession], session_id: str) -> list[SessionRun]:
    async with sessionmaker() as db:
        return list(
            (
                await db.exec(
                    select(SessionRun)
                    .where(SessionRun.session_id == session_id)
                    .order_by(col(SessionRun.attempt))
                )
            ).all()
        )


async def active_attempt(
    sessionmaker: async_sessionmaker[AsyncSession], session_id: str
) -> SessionRun | None:
    async with sessionmaker() as db:
        return (
            await db.exec(
                select(SessionRun).where(SessionRun.session_id == session_id, SessionRun.status == ACTIVE)
            )
        ).first()


# -- fencing ---------------------------------------------------------------------------------------


@dataclass
class RunFence:
    """A worker's proof that it still runs the session, checked inside each of its write transactions.

    `current_fence` carries it: set in the task that runs the attempt (and so in the tasks it starts),
    it makes every ORM commit there that wrote rows check first that the attempt is still active.
    Writes made elsewhere in the process (API requests) are not fenced.
    """

    sessionmaker: async_sessionmaker[AsyncSession]
    run_id: int
    session_id: str
    attempt: int
    lost: bool = False

    def _lost(self, status: str | None) -> LeaseLost:
        self.lost = True
        return LeaseLost(
            f"attempt {self.attempt} of session {self.session_id} is no longer active ({status or 'gone'})"
        )

    def check_in(self, session: Session) -> None:
        """Inside a transaction whose writes are flushed (raises LeaseLost; the commit then fails)."""
        if self.lost:
            raise self._lost("lost")
        query = select(SessionRun.status).where(SessionRun.id == self.run_id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(read=True)  # a takeover's UPDATE waits for our commit
        # SQLite: the flush took the write lock, so nobody can take the attempt over before we commit.
        status = session.execute(query).scalar_one_or_none()
        if status != ACTIVE:
            raise self._lost(status)

    async def check_now(self) -> None:
        """The same check in a transaction of its own, before a write that goes elsewhere (the
        checkpointer's): not atomic with it, so the heartbeat also stops a worker that lost its lease."""
        if self.lost:
            raise self._lost("lost")
        async with self.sessionmaker() as db:
            status = (await db.exec(select(SessionRun.status).where(SessionRun.id == self.run_id))).first()
        if status != ACTIVE:
            raise self._lost(status)


current_fence: ContextVar[RunFence | None] = ContextVar("robopt_run_fence", default=None)
_WROTE = "robopt_fence_wrote"
_installed = False


def _mark_flush(session: Session, _context: object) -> None:
    if current_fence.get() is not None:
        session.info[_WROTE] = True


def _check_before_commit(session: Session) -> None:
    fence = current_fence.get()
    if fence is None:
        return
    wrote = bool(session.new or session.dirty or session.deleted) or session.info.pop(_WROTE, False)
    if not wrote:
        return  # reads, and the run table's own statements (Core updates, never flushed)
    session.flush()
    fence.check_in(session)


def _forget(session: Session) -> None:
    session.info.pop(_WROTE, None)


def install_fencing() -> None:
    """Fence the commits of attempts in this process (idempotent; `current_fence` says which)."""
    global _installed
    if _installed:
        return
    event.listen(Session, "after_flush", _mark_flush)
    event.listen(Session, "before_commit", _check_before_commit)
    event.listen(Session, "after_rollback", _forget)
    event.listen(Session, "after_commit", _forget)
    _installed = True
