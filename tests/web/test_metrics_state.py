"""`GET /metrics` exports the cluster's state (read from Postgres and Redis at scrape time,
cached briefly), and docs/alerts.yml is valid Prometheus and names only metrics it exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from db.models import JobOutbox, SyncKind, SyncRun, SyncStatus, WebhookEvent
from keysync.resources import Resources
from services import job_outbox
from tests.helpers import wait_until
from web.app import create_app
from worker.enqueue import Actor

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "alerts.yml"


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample values by metric name, then by sorted labels; every family present, even
    one without samples (under its family name, empty)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        found.setdefault(family.name, {})
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
        **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def dead_letter(broker: Any, actor: Actor) -> None:
    job_outbox.send(broker, actor.value)
    consumer = broker.consume("default", prefetch=1, timeout=1000)
    message = next(m for m in consumer if m is not None)
    consumer.nack(message)
    consumer.close()


def test_metrics_export_the_cluster_state(
    resources: Resources, broker: Any, session: Any, worker_thread: Any, redis_client: Any,
) -> None:
    wait_until(lambda: redis_client.hlen("workers:heartbeat"), 10, "worker heartbeat")
    from tests.helpers import stop_worker

    stop_worker(broker, worker_thread)  # so the dead letter below stays dead, not consumed
    dead_letter(broker, Actor.SEND_EMAIL)
    with session.begin():
        session.execute(insert(JobOutbox).values(actor_name="fulfil_order", args=["x"]))
        session.execute(insert(WebhookEvent).values(
            event_id="d1", type="order.status_changed", payload={}, outcome="dead"))
        session.execute(insert(SyncRun).values(
            kind=SyncKind.FULL, status=SyncStatus.FAILED, fence_token=1,
            error_detail="listing failed: G2A answered 500"))
    samples = scrape(TestClient(create_app(resources)))

    assert one(samples, "keysync_state_up", source="database") == 1.0
    assert one(samples, "keysync_dead_letters", actor="send_email") == 1.0
    assert one(samples, "keysync_queue_messages", queue="default", state="dead") == 1.0
    assert one(samples, "keysync_outbox_pending", outbox="job") == 1.0
    assert one(samples, "keysync_outbox_pending", outbox="cache") == 0.0
    assert one(samples, "keysync_webhook_inbox_events", outcome="dead") == 1.0
    assert one(samples, "keysync_sync_runs_total", kind="full", status="failed") == 1.0
    assert one(samples, "keysync_sync_last_run_status", kind="full", status="failed") == 1.0
    assert one(samples, "keysync_sync_last_success_age_seconds", kind="full") == float("inf")
    assert one(samples, "keysync_workers_alive") == 0.0  # stopped cleanly
    assert one(samples, "keysync_orders_stuck") == 0.0
    assert one(samples, "keysync_check_state", check="dead_letters") == 2.0
    assert one(samples, "keysync_check_state", check="database") == 0.0
    # The process counters are still there beside the state.
    assert "keysync_cache_requests" in samples


def test_scrapes_share_one_read_within_the_ttl(resources: Resources) -> None:
    app = create_app(resources)
    client = TestClient(app)
    scrape(client)
    threads = [threading.Thread(target=scrape, args=(client,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert app.state.state_collector.snapshots_taken == 1


def test_metrics_answer_with_redis_down(settings: Any, broker: Any, dead_redis_url: str) -> None:
    res = Resources.build(settings.model_copy(update={"redis_url": dead_redis_url}), broker)
    try:
        samples = scrape(TestClient(create_app(res)))
    finally:
        res.close()
    assert one(samples, "keysync_state_up", source="redis") == 0.0
    assert one(samples, "keysync_state_up", source="database") == 1.0
    assert one(samples, "keysync_check_state", check="redis") == 2.0
    assert one(samples, "keysync_check_state", check="scheduler") == 1.0  # unknown


def promtool() -> str:
    """`promtool` from PATH, else from Debian's `prometheus` package, unpacked (not
    installed: no service, no root needed) into a cache directory once."""
    found = shutil.which("promtool")
    if found:
        return found
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keysync-tools"
    binary = cache / "usr" / "bin" / "promtool"
    if binary.exists():
        return str(binary)
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("promtool not on PATH and no apt-get/dpkg-deb to fetch Debian's prometheus")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, check=True,
                       capture_output=True, timeout=300)
        (deb,) = Path(tmp).glob("prometheus_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(cache)], check=True, timeout=120)
    return str(binary)


def test_alert_rules_pass_promtool_and_name_only_exported_metrics(
    resources: Resources,
) -> None:
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr

    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    named = {name for rule in rules for name in re.findall(r"\bkeysync_[a-z0-9_]+", rule["expr"])}
    exported = set(scrape(TestClient(create_app(resources))))
    assert named and named <= exported, named - exported
    # Every critical check of `keysync status` has an alert.
    from services.ops.checks import CHECKS

    alerted = {rule["labels"].get("check") for rule in rules
               if rule["labels"]["severity"] == "critical"}
    criticals = {check.__name__ for check in CHECKS} - {"stock_check", "cache_outbox"}
    assert criticals <= alerted, criticals - alerted
