"""The ledger's schema: every table, column and index, in one place.

The migrations under ``ledger/migrations`` build exactly this (a test compares them on SQLite and
PostgreSQL). Money is kept two ways: BTCPay's decimal strings as ``Numeric`` in the payout's own
currency, and whole satoshis as ``BigInteger`` for the metrics and rollups.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Amount = Numeric(28, 12, asdecimal=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), Decimal: Amount, dict[str, Any]: JSON}


class Store(Base):
    """A BTCPay store connected to the monitor."""

    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # BTCPay store id
    name: Mapped[str] = mapped_column(String(200), default="")
    btcpay_url: Mapped[str | None] = mapped_column(String(500))
    api_key_sealed: Mapped[str | None] = mapped_column(Text)
    webhook_id: Mapped[str | None] = mapped_column(String(64))
    webhook_secret_sealed: Mapped[str | None] = mapped_column(Text)
    # Issuer key for cards this gateway programs itself (deterministic keys).
    issuer_key_sealed: Mapped[str | None] = mapped_column(Text)
    # BTCPay's own issuer key, or only its K1, for cards BTCPay Server issued.
    btcpay_issuer_key_sealed: Mapped[str | None] = mapped_column(Text)
    btcpay_issuer_k1_sealed: Mapped[str | None] = mapped_column(Text)
    card_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Boltcard(Base):
    """An NTAG 424 card: who it is, its keys (sealed), its counter and limits."""

    __tablename__ = "boltcards"
    __table_args__ = (
        Index(None, "uid_hash"),
        Index(None, "store_id", "created_at"),
        Index(None, "store_id", "last_payout_at"),
        Index(None, "k1_fingerprint"),
        Index(None, "updated_at"),  # the gateway's key ring learns changed cards by it
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id"))
    pull_payment_id: Mapped[str | None] = mapped_column(String(64))
    # origin: issued (keys derived or generated here), imported, btcpay (issued by BTCPay Server)
    origin: Mapped[str] = mapped_column(String(16))
    uid: Mapped[str | None] = mapped_column(String(14))  # NTAG UID, hex; erased on request
    uid_hash: Mapped[str | None] = mapped_column(String(64))  # keyed hash: the tap lookup key
    alias: Mapped[str | None] = mapped_column(String(100))
    key_version: Mapped[int] = mapped_column(Integer, default=1)
    keys_sealed: Mapped[str | None] = mapped_column(Text)
    k1_fingerprint: Mapped[str | None] = mapped_column(String(64))
    last_counter: Mapped[int] = mapped_column(BigInteger, default=-1)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    tx_limit_sats: Mapped[int | None] = mapped_column(BigInteger)
    day_limit_sats: Mapped[int | None] = mapped_column(BigInteger)
    first_used_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    last_payout_at: Mapped[datetime | None]
    wiped_at: Mapped[datetime | None]
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CardDaySpend(Base):
    """Amounts reserved against a card's day limit; reservations are atomic conditional updates."""

    __tablename__ = "card_day_spend"

    card_id: Mapped[str] = mapped_column(ForeignKey("boltcards.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    reserved_msat: Mapped[int] = mapped_column(BigInteger, default=0)


class CardTap(Base):
    """Every tap, accepted or refused, and what became of it."""

    __tablename__ = "card_taps"
    __table_args__ = (
        Index(None, "store_id", "created_at"),
        Index(None, "card_id", "created_at"),
        Index(None, "payment_hash"),
        Index(None, "payout_id"),
        Index(None, "outcome", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    store_id: Mapped[str | None] = mapped_column(String(64))
    card_id: Mapped[str | None] = mapped_column(String(64))
    uid: Mapped[str | None] = mapped_column(String(14))
    counter: Mapped[int | None] = mapped_column(BigInteger)
    # source: gateway (cards managed here) or btcpay_proxy (cards BTCPay Server issued)
    source: Mapped[str] = mapped_column(String(16), default="gateway")
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    k1_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    k1_expires_at: Mapped[datetime | None]
    k1_used_at: Mapped[datetime | None]
    max_withdrawable_msat: Mapped[int | None] = mapped_column(BigInteger)
    bolt11: Mapped[str | None] = mapped_column(Text)
    payment_hash: Mapped[str | None] = mapped_column(String(64))
    amount_msat: Mapped[int | None] = mapped_column(BigInteger)
    reserved_day: Mapped[date | None] = mapped_column(Date)
    payout_id: Mapped[str | None] = mapped_column(String(64))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Payout(Base):
    """A BTCPay payout, keyed by BTCPay's own payout id, with the card that collected it."""

    __tablename__ = "payouts"
    __table_args__ = (
        Index(None, "store_id", "created_at"),
        Index(None, "store_id", "status", "created_at"),
        # Newest first across several stores (Grafana's payout list) walks this backwards.
        Index(None, "created_at"),
        Index(None, "card_id", "created_at"),
        Index(None, "payment_hash"),
        Index(None, "pull_payment_id"),
        # The search (the API's q, the boards' search box): an id by its prefix (LIKE 'x%'
        # reads this index whatever the database's collation), an exact amount or sats.
        Index(None, "id", postgresql_ops={"id": "text_pattern_ops"}),
        Index(None, "store_id", "original_amount"),
        Index(None, "store_id", "amount_sats"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # BTCPay payout id
    store_id: Mapped[str] = mapped_column(String(64))
    pull_payment_id: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(32))  # BTCPay's raw state
    status: Mapped[str] = mapped_column(String(16))  # Pending, Processing, Completed, Failed
    original_amount: Mapped[Decimal | None]
    original_currency: Mapped[str | None] = mapped_column(String(16))
    payout_amount: Mapped[Decimal | None]
    payout_currency: Mapped[str | None] = mapped_column(String(16))
    amount_sats: Mapped[int | None] = mapped_column(BigInteger)
    payout_method_id: Mapped[str | None] = mapped_column(String(32))
    destination: Mapped[str | None] = mapped_column(Text)
    payment_hash: Mapped[str | None] = mapped_column(String(64))
    transaction_id: Mapped[str | None] = mapped_column(String(128))
    payment_proof: Mapped[dict[str, Any] | None]
    metadata_json: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    error_message: Mapped[str | None] = mapped_column(Text)
    card_id: Mapped[str | None] = mapped_column(String(64))
    card_uid: Mapped[str | None] = mapped_column(String(14))
    tap_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # When the view in this row was read from BTCPay: what orders it against another view
    # (ledger.payouts.view_supersedes). BTCPay's revision cannot, it does not move.
    btcpay_read_at: Mapped[datetime | None]


class PayoutEvent(Base):
    """The audit trail: every change to a payout, from the gateway, a webhook or a reconcile."""

    __tablename__ = "payout_events"
    __table_args__ = (
        Index(None, "payout_id", "id"),
        Index(None, "received_at"),
        Index(None, "enrich_pending", "id"),
        Index(None, "store_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64))
    payout_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # gateway, webhook, reconcile
    event_type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str | None] = mapped_column(String(32))
    revision: Mapped[int | None] = mapped_column(Integer)
    delivery_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Webhook bodies carry no amounts: such an event waits here until Greenfield is asked.
    enrich_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    enrich_attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any] | None]
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime]


class PayoutRollup(Base):
    """Payouts per store, creation day, current status and currency: stats and gauges read this."""

    __tablename__ = "payout_rollups"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    currency: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    amount: Mapped[Decimal] = mapped_column(Amount, default=Decimal(0))
    amount_sats: Mapped[int] = mapped_column(BigInteger, default=0)


class CardRollup(Base):
    """Per card and day: payouts, value and taps, for usage, top cards and per-card metrics."""

    __tablename__ = "card_rollups"
    # Usage and top cards group a store's days by card: with every column they read in the
    # index, PostgreSQL answers from the index alone instead of visiting one heap page per row.
    __table_args__ = (
        Index(
            None,
            "store_id",
            "day",
            "card_id",
            postgresql_include=[
                "payouts",
                "amount_sats",
                "taps",
                "refused_taps",
                "first_used_at",
                "last_used_at",
            ],
        ),
    )

    card_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64))
    payouts: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_sats: Mapped[int] = mapped_column(BigInteger, default=0)
    taps: Mapped[int] = mapped_column(BigInteger, default=0)
    refused_taps: Mapped[int] = mapped_column(BigInteger, default=0)
    first_used_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Counter(Base):
    """Monotonic counters per store (``store_id`` '' when no store is known), never lowered.

    ``name`` is the family (payouts_created, taps, ...); ``label`` its one enum label value
    (an outcome, a currency, an event type, a histogram bucket bound), '' when it has none.
    """

    __tablename__ = "counters"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Decimal] = mapped_column(Amount, default=Decimal(0))


class SyncState(Base):
    """Per store: how the last reconcile with BTCPay went."""

    __tablename__ = "sync_state"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_started_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    payouts_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    payouts_changed: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiToken(Base):
    """Local API tokens for tools and Grafana; only their hash is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash"), Index(None, "store_id"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # viewer, manager
    label: Mapped[str | None] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class KeyMaterial(Base):
    """Keys the ledger keeps for itself, sealed under the master key (see flash_payouts.keys)."""

    __tablename__ = "key_material"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class StoreReader(Base):
    """A database role that reads one store's rows only (PostgreSQL row-level security), for
    the store's own Grafana organisation; made by `flash-payouts dashboards roles`."""

    __tablename__ = "store_readers"

    role_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


class ReportSchedule(Base):
    """A store's scheduled report: how often, in which time zone, and where it is sent.

    The SMTP password and the webhook secret are sealed by the caller, with the schedule's id
    as part of their context.
    """

    __tablename__ = "report_schedules"
    __table_args__ = (Index(None, "store_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id"))
    frequency: Mapped[str] = mapped_column(String(8))  # daily, weekly, monthly
    time_zone: Mapped[str] = mapped_column(String(64))  # IANA name, such as Europe/Berlin
    # Local time of day (seconds after midnight) at which a period's report falls due, on the
    # day the period ends.
    send_at: Mapped[int] = mapped_column(Integer, default=0)
    email_to: Mapped[str | None] = mapped_column(Text)  # addresses, comma-separated
    mail_from: Mapped[str | None] = mapped_column(String(320))
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None] = mapped_column(Integer)
    smtp_security: Mapped[str | None] = mapped_column(String(8))  # starttls, tls, none
    smtp_username: Mapped[str | None] = mapped_column(String(255))
    smtp_password_sealed: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    webhook_secret_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ReportDelivery(Base):
    """One period's report on one channel (email, webhook) of a schedule.

    Inserting the row claims the period: its primary key lets exactly one exist, however many
    processes try. Sending it takes a lease by a conditional update, so one process at a time
    works on it; ``attempts`` is the lease's fencing token.
    """

    __tablename__ = "report_deliveries"
    __table_args__ = (Index(None, "status", "next_attempt_at"),)

    schedule_id: Mapped[str] = mapped_column(
        ForeignKey("report_schedules.id", ondelete="CASCADE"), primary_key=True
    )
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)  # local, inclusive
    channel: Mapped[str] = mapped_column(String(8), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(64))
    period_end: Mapped[date] = mapped_column(Date)  # local, exclusive
    due_at: Mapped[datetime]
    late: Mapped[bool] = mapped_column(Boolean, default=False)  # claimed well after due_at
    status: Mapped[str] = mapped_column(String(8))  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


metadata = Base.metadata
