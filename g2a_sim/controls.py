"""Test controls under `/_sim` (`keysync g2a-sim --help` and docs/operations.md list them):
inject, list and remove faults, arm drift, mutate the catalog, read and reset the stats,
change the rate limit, key delay and funds at run time."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from g2a_sim.catalog import money, to_cents
from g2a_sim.faults import FAULT_TARGETS, Fault, TokenBucket
from g2a_sim.state import SimError, SimState, Stats
from g2a_sim.webhooks import WebhookSender

log = structlog.get_logger("g2a_sim")

Body = dict[str, Any]
OK: Body = {"ok": True}
CONFIG_FIELDS = frozenset({"rate_limit_per_min", "key_delay_s", "funds"})


def _control(handler: Callable[[Body], Body]) -> Callable[[Request], Awaitable[Response]]:
    """A control taking a JSON object (an empty body is `{}`); whatever it refuses, a
    malformed value or a state error, is a 400 `{error}` naming the problem."""

    async def endpoint(request: Request) -> Response:
        try:
            raw = await request.body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            return JSONResponse(handler(body))
        except SimError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        except (ValueError, TypeError, InvalidOperation) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return endpoint


def _fault(body: Body) -> Fault:
    status = body.get("status")
    count = body.get("count")
    empty_listing = body.get("empty_listing", False)
    if not isinstance(empty_listing, bool):
        raise ValueError("empty_listing must be true or false")
    only = body.get("only") or ("listing" if empty_listing else None)
    fault = Fault(
        rate=float(body.get("rate", 1.0)),
        status=None if status is None else int(status),
        latency_ms=int(body.get("latency_ms") or 0),
        count=None if count is None else int(count),
        skip=int(body.get("skip") or 0),
        paths=body.get("paths") or None,
        only=only,
        empty_listing=empty_listing,
    )
    if not 0.0 <= fault.rate <= 1.0:
        raise ValueError("rate must be within 0..1")
    if fault.count is not None and fault.count < 1:
        raise ValueError("count must be at least 1 (omit it for no limit)")
    if fault.skip < 0:
        raise ValueError("skip must be >= 0")
    if fault.only is not None and fault.only not in FAULT_TARGETS:
        raise ValueError(f"only must be one of {', '.join(FAULT_TARGETS)}")
    if fault.empty_listing and (fault.status is not None or fault.only != "listing"):
        raise ValueError("empty_listing answers listing requests with 200: "
                         "no status, and only 'listing'")
    return fault


def control_routes(state: SimState, seed: int, sender: WebhookSender | None) -> list[Route]:
    """The `/_sim` routes over `state`; `seed` makes each armed fault's dice repeatable."""
    fault_seq = 0

    @_control
    def add_fault(body: Body) -> Body:
        nonlocal fault_seq
        fault = _fault(body)
        with state.lock:
            fault_seq += 1
            fault.id = fault_seq
            fault.rng = random.Random(f"{seed}:faults:{fault_seq}")
            state.faults.append(fault)
            active = len(state.faults)
        log.info("sim.fault_added", active=active, **fault.as_dict())
        return {**OK, "id": fault.id}

    async def list_faults(request: Request) -> Response:
        with state.lock:
            return JSONResponse({"faults": [fault.as_dict() for fault in state.faults]})

    async def clear_faults(request: Request) -> Response:
        with state.lock:
            removed = len(state.faults)
            state.faults.clear()
        return JSONResponse({**OK, "removed": removed})

    async def remove_fault(request: Request) -> Response:
        fault_id = request.path_params["fault_id"]
        with state.lock:
            kept = [fault for fault in state.faults if fault.id != fault_id]
            if len(kept) == len(state.faults):
                return JSONResponse({"error": f"no active fault {fault_id}"}, status_code=404)
            state.faults[:] = kept
        return JSONResponse({**OK, "removed": 1})

    @_control
    def mutate(body: Body) -> Body:
        counts = {k: int(body.get(k) or 0) for k in ("changed", "added", "removed",
                                                     "out_of_stock")}
        if any(v < 0 for v in counts.values()):
            raise ValueError("counts must be >= 0")
        result = state.mutate(**counts)
        log.info("sim.mutated", **counts)
        return result

    @_control
    def set_drift(body: Body) -> Body:
        after = int(body.get("after", 1))
        if after < 1:
            raise ValueError("after must be at least 1 (listing requests answered first)")
        raw_id = body.get("remove_id")
        remove_id = None if raw_id is None else int(str(raw_id))
        state.set_drift(after, remove_id)
        log.info("sim.drift_armed", after=after, remove_id=remove_id)
        return OK

    async def clear_drift(request: Request) -> Response:
        with state.lock:
            state.drift = None
        return JSONResponse(OK)

    async def stats(request: Request) -> Response:
        with state.lock:
            data = state.stats.as_dict()
            drift = state.drift
            data["drift"] = None if drift is None else {
                "after": drift.after, "listed": drift.listed, "applied": drift.applied}
            data["products"] = len(state.products)
            data["funds"] = money(state.funds)
            data["webhooks_delivered"] = sender.delivered if sender else 0
        return JSONResponse(data)

    async def reset(request: Request) -> Response:
        with state.lock:
            state.stats = Stats()
        return JSONResponse(OK)

    @_control
    def set_config(body: Body) -> Body:
        if unknown := sorted(set(body) - CONFIG_FIELDS):
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(CONFIG_FIELDS))}")
        with state.lock:
            if body.get("rate_limit_per_min") is not None:
                state.rate_limit = TokenBucket(int(body["rate_limit_per_min"]))
            if body.get("key_delay_s") is not None:
                state.key_delay_s = float(body["key_delay_s"])
            if body.get("funds") is not None:
                state.funds = to_cents(Decimal(str(body["funds"])))
        return OK

    return [
        Route("/_sim/faults", add_fault, methods=["POST"]),
        Route("/_sim/faults", list_faults, methods=["GET"]),
        Route("/_sim/faults", clear_faults, methods=["DELETE"]),
        Route("/_sim/faults/{fault_id:int}", remove_fault, methods=["DELETE"]),
        Route("/_sim/mutate", mutate, methods=["POST"]),
        Route("/_sim/drift", set_drift, methods=["POST"]),
        Route("/_sim/drift", clear_drift, methods=["DELETE"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/config", set_config, methods=["POST"]),
    ]
