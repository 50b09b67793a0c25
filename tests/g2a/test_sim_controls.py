"""The simulator controls the catalog-removal scenarios need (CONTRACT §6), over real HTTP:
look-up by id, `skip`/`count`/`only` on faults, the empty listing answer, mid-listing drift."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from g2a_sim import SimServer
from tests.g2a.test_sim import AUTH, all_docs, products


@pytest.fixture
def fresh() -> Iterator[httpx.Client]:
    """A simulator of its own: drift changes the catalog, which a shared one must not see."""
    with SimServer(products=100, seed=3, rate_limit_per_min=0) as server, \
            httpx.Client(base_url=server.url, timeout=5.0) as http:
        yield http


def stats(http: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = http.get("/_sim/stats").json()
    return data


def test_lookup_by_id_is_a_listing_page_filtered_to_that_id(sim_http: httpx.Client) -> None:
    doc = products(sim_http, page=3, includeOutOfStock="true").json()["docs"][4]
    found = products(sim_http, id=doc["id"], includeOutOfStock="true").json()
    assert found == {"total": 1, "page": 1, "docs": [doc]}
    for missing in ("1", "not-a-number"):
        assert products(sim_http, id=missing, includeOutOfStock="true").json() == \
            {"total": 0, "page": 1, "docs": []}


def test_fault_skip_count_and_only(sim_http: httpx.Client) -> None:
    pid = products(sim_http).json()["docs"][0]["id"]
    before = stats(sim_http)["faults_injected"]
    r = sim_http.post("/_sim/faults", json={"status": 500, "skip": 2, "count": 2,
                                            "only": "listing"})
    assert r.status_code == 200
    codes = []
    for _ in range(5):
        # Look-ups in between are not listing requests: neither skipped nor hit.
        assert products(sim_http, id=pid).status_code == 200
        codes.append(products(sim_http).status_code)
    assert codes == [200, 200, 500, 500, 200]
    assert stats(sim_http)["faults_injected"] == before + 2

    sim_http.post("/_sim/faults", json={"status": 503, "count": 1, "only": "lookup"})
    assert products(sim_http).status_code == 200
    assert [products(sim_http, id=pid).status_code for _ in range(2)] == [503, 200]


def test_fault_controls_reject_bad_input(sim_http: httpx.Client) -> None:
    for body in ({"only": "orders"}, {"skip": -1}, {"count": 0},
                 {"empty_listing": True, "status": 500}, {"empty_listing": "yes"},
                 {"empty_listing": True, "only": "lookup"}):
        r = sim_http.post("/_sim/faults", json=body)
        assert r.status_code == 400 and r.json()["error"], body
    assert products(sim_http).status_code == 200  # nothing was armed


def test_empty_listing_answers_200_with_no_docs_but_lookups_still_work(
    sim_http: httpx.Client,
) -> None:
    doc = products(sim_http, includeOutOfStock="true").json()["docs"][0]
    sim_http.post("/_sim/faults", json={"empty_listing": True, "count": 2})
    for page in (1, 7):
        r = products(sim_http, page=page, includeOutOfStock="true")
        assert r.status_code == 200 and r.json() == {"total": 0, "page": page, "docs": []}
    assert products(sim_http, id=doc["id"], includeOutOfStock="true").json()["docs"] == [doc]
    assert products(sim_http, includeOutOfStock="true").json()["total"] == 300  # count used up


def test_drift_moves_a_product_across_a_read_page_boundary_keeping_total(
    fresh: httpx.Client,
) -> None:
    before = all_docs(fresh, includeOutOfStock="true")
    assert fresh.post("/_sim/drift", json={"after": 2}).json() == {"ok": True}
    page1 = products(fresh, page=1, includeOutOfStock="true").json()
    assert stats(fresh)["drift"]["applied"] is None
    page2 = products(fresh, page=2, includeOutOfStock="true").json()  # the 2nd: drift now
    assert [d["id"] for d in page1["docs"] + page2["docs"]] == [d["id"] for d in before[:40]]
    applied = stats(fresh)["drift"]["applied"]
    # The first product in stock (so it leaves every listing): on page 1, already read.
    first_in_stock = next(d for d in before if d["qty"] > 0)
    assert before.index(first_in_stock) < 20
    assert applied["removed"] == first_in_stock["id"] and applied["after"] == 2
    page3 = products(fresh, page=3, includeOutOfStock="true").json()
    # Same total, full pages, yet the product that opened page 3 slid onto page 2, which
    # the reader already has: a paging client never sees it.
    assert page3["total"] == page1["total"] == 100 and len(page3["docs"]) == 20
    slid = before[40]["id"]
    assert slid not in {d["id"] for d in page1["docs"] + page2["docs"] + page3["docs"]}
    after = all_docs(fresh, includeOutOfStock="true")
    ids = [d["id"] for d in after]
    assert slid in ids and applied["removed"] not in ids and ids[-1] == applied["added"]
    assert len(after) == len(before)
    # One-shot: later listings leave the catalog alone.
    assert len(all_docs(fresh, includeOutOfStock="true")) == 100
    assert stats(fresh)["drift"]["applied"] == applied


def test_drift_by_id_and_bad_input(fresh: httpx.Client) -> None:
    victim = products(fresh, page=2).json()["docs"][3]["id"]
    assert fresh.post("/_sim/drift", json={"after": 1, "remove_id": victim}).status_code == 200
    products(fresh)
    assert products(fresh, id=victim, includeOutOfStock="true").json()["total"] == 0
    assert stats(fresh)["listing_requests"] == 2 and stats(fresh)["lookups"] == 1
    for body in ({"after": 0}, {"after": 1, "remove_id": "1"}, {"after": "x"}):
        assert fresh.post("/_sim/drift", json=body).status_code == 400, body
    assert fresh.delete("/_sim/drift").status_code == 200
    assert stats(fresh)["drift"] is None
    assert fresh.get("/v1/products", headers=AUTH).status_code == 200


def test_faults_stack_are_listed_and_removed_one_by_one_or_all(fresh: httpx.Client) -> None:
    assert fresh.get("/_sim/faults").json() == {"faults": []}
    first = fresh.post("/_sim/faults", json={"status": 500, "only": "lookup"}).json()
    second = fresh.post("/_sim/faults", json={"status": 503, "only": "listing", "skip": 1,
                                              "count": 3}).json()
    assert first["ok"] and second["ok"] and first["id"] != second["id"]
    listed = fresh.get("/_sim/faults").json()["faults"]
    assert [(f["id"], f["status"], f["only"], f["count"], f["skip"]) for f in listed] == [
        (first["id"], 500, "lookup", None, 0), (second["id"], 503, "listing", 3, 1)]
    assert {"rate", "latency_ms", "paths", "empty_listing"} <= set(listed[0])

    # The second did not replace the first: both answer their own requests.
    pid = products(fresh).json()["docs"][0]["id"]  # the listing fault's skip
    assert products(fresh, id=pid).status_code == 500
    assert products(fresh).status_code == 503
    assert fresh.get("/_sim/faults").json()["faults"][1]["count"] == 2  # remaining

    assert fresh.delete(f"/_sim/faults/{first['id']}").json() == {"ok": True, "removed": 1}
    assert products(fresh, id=pid).status_code == 200
    assert fresh.delete(f"/_sim/faults/{first['id']}").status_code == 404
    assert [f["id"] for f in fresh.get("/_sim/faults").json()["faults"]] == [second["id"]]
    assert fresh.delete("/_sim/faults").json() == {"ok": True, "removed": 1}
    assert products(fresh).status_code == 200
    assert fresh.get("/_sim/faults").json() == {"faults": []}


def test_a_fault_whose_count_is_used_up_leaves_the_list(fresh: httpx.Client) -> None:
    fresh.post("/_sim/faults", json={"status": 502, "count": 1})
    fresh.post("/_sim/faults", json={"latency_ms": 1})
    assert products(fresh).status_code == 502
    assert [f["latency_ms"] for f in fresh.get("/_sim/faults").json()["faults"]] == [1]
    assert products(fresh).status_code == 200


def test_config_sets_funds_key_delay_and_rate_and_refuses_unknown_fields(
    fresh: httpx.Client,
) -> None:
    assert fresh.post("/_sim/config", json={"funds": "12.50", "key_delay_s": 0,
                                            "rate_limit_per_min": 0}).json() == {"ok": True}
    assert stats(fresh)["funds"] == 12.5
    refused = fresh.post("/_sim/config", json={"fund": 5})
    assert refused.status_code == 400 and "fund" in refused.json()["error"]


def test_g2a_sim_help_lists_every_control_and_the_credentials() -> None:
    from click.testing import CliRunner

    from keysync.cli import main

    text = CliRunner().invoke(main, ["g2a-sim", "--help"]).output
    for control in ("POST   /_sim/faults", "GET    /_sim/faults", "DELETE /_sim/faults",
                    "DELETE /_sim/faults/{id}", "POST   /_sim/drift", "DELETE /_sim/drift",
                    "POST   /_sim/mutate", "POST   /_sim/config", "GET    /_sim/stats",
                    "POST   /_sim/reset"):
        assert control in text, control
    for field in ("rate", "status", "latency_ms", "count", "skip", "paths", "only",
                  "empty_listing", "funds", "key_delay_s", "rate_limit_per_min",
                  "remove_id", "changed", "added", "removed", "out_of_stock"):
        assert field in text, field
    for credential in ("G2A_EMAIL", "G2A_API_HASH", "G2A_API_SECRET", "sim@keysync.local",
                       "sim-api-hash", "sim-api-secret", "WEBHOOK_SECRETS"):
        assert credential in text, credential
