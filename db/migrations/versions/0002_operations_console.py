"""operations console: users.is_admin, admin_actions, indexes for the operators' lists

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant server default: Postgres 11+ adds the column without rewriting the table.
    op.add_column('users', sa.Column('is_admin', sa.Boolean(), server_default='false',
                                     nullable=False))
    op.create_table('admin_actions',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()),
              server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
              nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('admin_actions_created', 'admin_actions', ['created_at'], unique=False)
    op.create_index('orders_open_created', 'orders', ['created_at'], unique=False,
                    postgresql_where=sa.text("status IN ('PENDING', 'PROCESSING')"))
    op.create_index('webhook_events_received', 'webhook_events', ['received_at'], unique=False)
    op.create_index('webhook_events_outcome_received', 'webhook_events',
                    ['outcome', 'received_at'], unique=False)


def downgrade() -> None:
    op.drop_index('webhook_events_outcome_received', table_name='webhook_events')
    op.drop_index('webhook_events_received', table_name='webhook_events')
    op.drop_index('orders_open_created', table_name='orders',
                  postgresql_where=sa.text("status IN ('PENDING', 'PROCESSING')"))
    op.drop_index('admin_actions_created', table_name='admin_actions')
    op.drop_table('admin_actions')
    op.drop_column('users', 'is_admin')
