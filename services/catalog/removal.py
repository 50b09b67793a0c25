"""Removal (CONTRACT §6): absence from a full listing is only a candidate.

A consistent listing can still miss a product: G2A removes one from an already-read page
and adds one elsewhere, `total` stays the same, and the product at the next page boundary
slides onto the page we already read. So every active game the listing did not show is
looked up by id (`GET /v1/products?id=`, same limiter and retries as every request): one
G2A still returns is kept and written, one it does not is deactivated, one whose look-up
fails is kept and counted as an error (never deactivate on doubt). A nothing-removed run
costs no extra request.

The removal guard: when the candidates exceed `max_removal_percent` of the active games (an
empty `200 {total: 0}` answer is the canonical case), nothing is looked up and nothing
deactivated: the run ends partial with a `removal guard:` error detail and
`alert=sync_removal_guard`, until an operator passes `allow_mass_removal` for one run.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from decimal import Decimal

from structlog.stdlib import BoundLogger

from services.catalog.model import ErrorTally, SyncDeps, SyncResult
from services.catalog.writer import Writer
from services.g2a import G2AError

# `sync_runs.error_detail` of a run the removal guard stopped starts with this; `keysync
# status` finds guarded runs by it (no extra column: the detail is the operator's message).
REMOVAL_GUARD_DETAIL = "removal guard:"


@dataclass
class Removal(ErrorTally):
    """What happened to the candidates of one complete full listing."""

    guarded: bool = False


def remove_absent(deps: SyncDeps, writer: Writer, result: SyncResult, *,
                  allow_mass_removal: bool, bound: BoundLogger) -> Removal:
    """Deactivate exactly the active games G2A confirms it no longer lists (CONTRACT §6)."""
    outcome = Removal()
    candidates, active = writer.candidates()
    result.removal_candidates = len(candidates)
    if not candidates:
        return outcome
    # Decided before any look-up: a listing that lost a large share of the catalog is far
    # more likely a G2A fault (an empty answer, a truncated index) than real removals, and
    # confirming them all would cost one request each.
    share = Decimal(len(candidates) * 100) / Decimal(active)
    if share > deps.max_removal_percent and not allow_mass_removal:
        outcome.guarded = result.removal_guard = True
        outcome.error_detail = (
            f"{REMOVAL_GUARD_DETAIL} {len(candidates)} of {active} active games "
            f"({share:.1f} %) were absent from the full listing, more than "
            f"SYNC_MAX_REMOVAL_PERCENT={deps.max_removal_percent}; nothing was deactivated. "
            "If G2A really removed them, run `keysync sync --full --allow-mass-removal`."
        )
        bound.error("sync.removal_guard", alert="sync_removal_guard",
                    candidates=len(candidates), active=active,
                    percent=float(round(share, 2)),
                    max_percent=float(deps.max_removal_percent))
        return outcome
    if share > deps.max_removal_percent:
        bound.warning("sync.removal_guard_lifted", candidates=len(candidates), active=active,
                      percent=float(round(share, 2)))
    gone = _confirm_absent(deps, writer, result, candidates, outcome, bound)
    writer.flush()
    if result.still_listed:
        bound.info("sync.absent_but_listed", kept=result.still_listed,
                   candidates=len(candidates))
    writer.remove(gone)
    return outcome


def _confirm_absent(deps: SyncDeps, writer: Writer, result: SyncResult, candidates: list[str],
                    outcome: Removal, bound: BoundLogger) -> list[str]:
    """Look every candidate up; the ids G2A answered "not listed" for."""
    gone: list[str] = []
    pool = ThreadPoolExecutor(min(deps.concurrency, len(candidates)),
                              thread_name_prefix="g2a-lookup")
    try:
        futures = {
            # A context copy per task so the look-ups' log lines carry the run_id.
            pool.submit(contextvars.copy_context().run, deps.client.get_product, pid): pid
            for pid in candidates
        }
        for future in as_completed(futures):
            pid = futures[future]
            try:
                product = future.result()
            except G2AError as exc:
                # In doubt, keep: a look-up G2A did not answer proves nothing.
                bound.warning("sync.lookup_failed", g2a_product_id=pid, error=str(exc))
                outcome.count(f"look-up of product {pid}: {exc}")
                continue
            if product is None:
                gone.append(pid)
                continue
            # Still sold: the listing missed it (it slid across a page boundary). Write it
            # like any listed product, which also keeps it seen.
            result.still_listed += 1
            writer.add([product])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return gone
