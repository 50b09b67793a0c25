"""console indexes II: webhook events per outcome, the last hour of G2A purchases, deep
pages of orders

The first two are what `keysync status` and the console's overview read at every refresh.

Counting 100,000 events per outcome read the whole table (26 MB of payloads); an index on
`outcome` alone is deduplicated by btree (one key per outcome, a list of row pointers: 0.7
MB) and answers the count by an index-only scan: 88 pages instead of 3,334, ~3x faster
(EXPLAIN ANALYZE on bench/console.py's data). The (outcome, received_at) index cannot be
deduplicated (every key differs) and stays for the inbox's newest-first pages.

The G2A funds check reads the purchases updated in the last hour: a scan of every purchase
ever made (88,000 rows: 17 ms, growing with the shop) without `g2a_purchases_updated`,
well under a millisecond with it.

A deep page of the orders list (the console's page 1,000: offset 49,950) walked `orders_created` and every row before the page, 156 ms; with the id in the
index the page's ids come from an index-only scan and only its 50 rows are read, 25 ms.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('webhook_events_outcome', 'webhook_events', ['outcome'], unique=False)
    op.create_index('g2a_purchases_updated', 'g2a_purchases', ['updated_at'], unique=False)
    op.create_index('orders_created_id', 'orders', ['created_at', 'id'], unique=False)
    op.drop_index('orders_created', table_name='orders')


def downgrade() -> None:
    op.create_index('orders_created', 'orders', ['created_at'], unique=False)
    op.drop_index('orders_created_id', table_name='orders')
    op.drop_index('g2a_purchases_updated', table_name='g2a_purchases')
    op.drop_index('webhook_events_outcome', table_name='webhook_events')
