"""SQLAlchemy 2 typed models for every table of CONTRACT §4.

Constraints live in the database, not only in code, so that concurrent writers and
crashed processes cannot break the money invariants:
- users.email is unique case-insensitively (unique index on lower(email)); balance >= 0;
- a cart/wishlist row has exactly one owner (user xor session) and is unique per owner and game;
- at most one PURCHASE and one REFUND transaction per order (partial unique index);
- webhook_events.event_id and g2a_purchases.g2a_order_id are unique.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Money = Numeric(12, 2)


class Base(DeclarativeBase):
    pass


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _uuid_pk() -> Any:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TransactionType(enum.StrEnum):
    TOP_UP = "TOP_UP"  # credit, booked by an admin (`keysync user top-up`)
    PURCHASE = "PURCHASE"  # debit, in the transaction that creates the order
    REFUND = "REFUND"  # credit, once, when an order fails or is cancelled


class TransactionStatus(enum.StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class G2APurchaseStatus(enum.StrEnum):
    CREATED = "CREATED"  # G2A order exists, not paid yet
    PAID = "PAID"  # paid, key not downloaded yet
    DELIVERED = "DELIVERED"  # key stored encrypted
    FAILED = "FAILED"  # G2A refused (out of stock, price, funds)
    KEY_LOST = "KEY_LOST"  # paid but G2A says the key was already downloaded (ORD04): an alert


class SyncKind(enum.StrEnum):
    FULL = "full"  # the whole listing; the only kind that may deactivate games
    INCREMENTAL = "incremental"  # updated since the last succeeded run; never removes
    STOCK = "stock"  # quantities and prices of known games only; never adds or removes


class SyncStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        values_callable=lambda e: [m.value for m in e],
        native_enum=False,
        length=16,
        validate_strings=True,
    )


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        Index("users_email_lower_key", func.lower(text("email")), unique=True),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    balance: Mapped[Decimal] = mapped_column(Money, nullable=False, server_default="0")
    # May use the operations console (CONTRACT §8); granted by `keysync user admin`.
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    created_at: Mapped[datetime] = _now()


class Game(Base):
    __tablename__ = "games"

    id: Mapped[uuid.UUID] = _uuid_pk()
    g2a_product_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    slug: Mapped[str] = mapped_column(String(300), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    g2a_price: Mapped[Decimal] = mapped_column(Money, nullable=False)
    g2a_qty: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    in_stock: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    platform: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    image_url: Mapped[str | None] = mapped_column(Text)
    g2a_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _now()


class _OwnerScopedItem:
    """The columns cart_items and wishlist_items share: a game held by exactly one owner,
    a user or a guest session (a guest's rows move to the user at login)."""

    # sort_order: before the table's own columns, in the order the 0001 migration has them.
    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=True, sort_order=-1
    )
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), sort_order=-1
    )
    session_id: Mapped[str | None] = mapped_column(String(128), sort_order=-1)
    game_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("games.id"), nullable=False, sort_order=-1
    )


def _owner_scoped_args(table: str) -> tuple[Any, ...]:
    """Exactly one owner, and a game at most once per owner: partial unique indexes, one
    per kind of owner, because rows whose owner column is NULL never collide in a plain one."""
    return (
        CheckConstraint("(user_id IS NULL) <> (session_id IS NULL)", name=f"{table}_one_owner"),
        *(
            Index(
                f"{table}_{owner}_game_key",
                f"{owner}_id",
                "game_id",
                unique=True,
                postgresql_where=text(f"{owner}_id IS NOT NULL"),
            )
            for owner in ("user", "session")
        ),
    )


class CartItem(_OwnerScopedItem, Base):
    __tablename__ = "cart_items"
    __table_args__ = (
        *_owner_scoped_args("cart_items"),
        CheckConstraint("quantity > 0", name="cart_items_quantity_positive"),
    )

    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _now()


class WishlistItem(_OwnerScopedItem, Base):
    __tablename__ = "wishlist_items"
    __table_args__ = _owner_scoped_args("wishlist_items")

    created_at: Mapped[datetime] = _now()


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("orders_user_created", "user_id", "created_at"),
        # The console's order lists, newest first: all, or of one status.
        Index("orders_status_created", "status", "created_at"),
        # With the id, a deep page's ids come from the index alone (`list_orders`).
        Index("orders_created_id", "created_at", "id"),
        # `keysync orders --stuck`: the few open orders by age, without reading the rest.
        Index(
            "orders_open_created",
            "created_at",
            postgresql_where=text("status IN ('PENDING', 'PROCESSING')"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), nullable=False)
    status: Mapped[OrderStatus] = mapped_column(
        _enum(OrderStatus, "order_status"), nullable=False, default=OrderStatus.PENDING
    )
    total: Mapped[Decimal] = mapped_column(Money, nullable=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    items: Mapped[list[OrderItem]] = relationship(back_populates="order", order_by="OrderItem.id")


class OrderItem(Base):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), nullable=False, index=True
    )
    game_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("games.id"), nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, CheckConstraint("quantity > 0"), nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Money, nullable=False)

    order: Mapped[Order] = relationship(back_populates="items")


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        Index(
            "transactions_one_purchase_one_refund_per_order",
            "order_id",
            "type",
            unique=True,
            postgresql_where=text("order_id IS NOT NULL AND type IN ('PURCHASE', 'REFUND')"),
        ),
        Index("transactions_user_created", "user_id", "created_at"),
        CheckConstraint("amount > 0", name="transactions_amount_positive"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), nullable=False)
    order_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("orders.id"))
    type: Mapped[TransactionType] = mapped_column(
        _enum(TransactionType, "transaction_type"), nullable=False
    )
    # Always positive; the type says which way the money moved.
    amount: Mapped[Decimal] = mapped_column(Money, nullable=False)
    status: Mapped[TransactionStatus] = mapped_column(
        _enum(TransactionStatus, "transaction_status"), nullable=False
    )
    created_at: Mapped[datetime] = _now()


class G2APurchase(Base):
    __tablename__ = "g2a_purchases"
    __table_args__ = (
        Index("g2a_purchases_item_unit_key", "order_item_id", "unit_index", unique=True),
        # The G2A funds check (`keysync status`, the console's overview): the last hour's
        # rows, not every purchase ever made.
        Index("g2a_purchases_updated", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    order_item_id: Mapped[int] = mapped_column(
        ForeignKey("order_items.id", ondelete="CASCADE"), nullable=False
    )
    # Which unit of the order item this key is for (0..quantity-1): one row per key bought.
    unit_index: Mapped[int] = mapped_column(Integer, nullable=False)
    g2a_order_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[G2APurchaseStatus] = mapped_column(
        _enum(G2APurchaseStatus, "g2a_purchase_status"), nullable=False
    )
    price: Mapped[Decimal | None] = mapped_column(Money)
    transaction_id: Mapped[str | None] = mapped_column(String(128))
    key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        Index(
            "webhook_events_unprocessed",
            "received_at",
            postgresql_where=text("processed_at IS NULL"),
        ),
        # The operators' inbox (`keysync webhooks`): newest first, all or by outcome.
        Index("webhook_events_received", "received_at"),
        Index("webhook_events_outcome_received", "outcome", "received_at"),
        # Counts per outcome (status, overview): an index-only scan of a few pages.
        Index("webhook_events_outcome", "outcome"),
        # An order's events (its console timeline), as `services.webhooks` finds them.
        Index("webhook_events_data_order_id",
              text("((payload -> 'data'::text) ->> 'order_id'::text)")),
        Index("webhook_events_data_external_order_id",
              text("((payload -> 'data'::text) ->> 'external_order_id'::text)")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), nullable=False, unique=True)
    type: Mapped[str] = mapped_column(String(100), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    received_at: Mapped[datetime] = _now()
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # processed | orphan (order unknown yet, kept) | dead (gave up; visible to operators)
    outcome: Mapped[str | None] = mapped_column(String(16))


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (Index("sync_runs_kind_started", "kind", "started_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    kind: Mapped[SyncKind] = mapped_column(_enum(SyncKind, "sync_kind"), nullable=False)
    status: Mapped[SyncStatus] = mapped_column(_enum(SyncStatus, "sync_status"), nullable=False)
    fence_token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    added: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    updated: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    unchanged: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    removed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    errors: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    pages: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    requests: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error_detail: Mapped[str | None] = mapped_column(Text)


class CacheInvalidation(Base):
    """Durable outbox of invalidations that could not reach Redis; replayed when it answers."""

    __tablename__ = "cache_invalidations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # Either an exact key or a glob pattern (is_pattern); replaying is idempotent.
    target: Mapped[str] = mapped_column(Text, nullable=False)
    is_pattern: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    created_at: Mapped[datetime] = _now()


class LockFence(Base):
    """Highest fencing token that has written under a named lock.

    A writer holding token t may write only while t >= the stored token; a paused holder
    whose lock expired (and was re-acquired with a larger token) is rejected.
    """

    __tablename__ = "lock_fences"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = _now()


class JobOutbox(Base):
    """Messages to hand to the broker, written in the same transaction as the change that
    needs them; sent after commit and deleted once the broker accepted them, so a crash or a
    dead broker at commit time never loses a job (the sweeper re-sends what is left)."""

    __tablename__ = "job_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    actor_name: Mapped[str] = mapped_column(String(100), nullable=False)
    queue_name: Mapped[str] = mapped_column(String(100), nullable=False, server_default="default")
    args: Mapped[list[Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class AdminAction(Base):
    """The audit trail of operator actions (CONTRACT §4, §8): retries, discards, replays,
    relays and admin grants, from the console or the CLI."""

    __tablename__ = "admin_actions"
    __table_args__ = (Index("admin_actions_created", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # The admin's email, or `cli:<os user>` for the CLI.
    actor: Mapped[str] = mapped_column(String(320), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = _now()
