"""The SAE page's evaluation panels: loss by token position and by topic, from `saescope evaluate`."""

from __future__ import annotations

import html
import json

import pytest
from fastapi.testclient import TestClient

from saescope.browse.app import create_app
from saescope.browse.evalview import breakdown_section
from saescope.evaluate.position import POSITION_LABELS

RES = "res.1__w256__c64"


@pytest.fixture(scope="module")
def client(browse_run):
    return TestClient(create_app(browse_run), base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_sae_page_plots_loss_by_position_and_tables_topics(client, browse_run):
    page = client.get(f"/sae/{RES}").text
    assert "By token position" in page and "delta LM loss by token position" in page and "FVU by token position" in page
    assert "<polyline" in page.split("By token position")[1].split("<h2>Latents")[0]
    for label in POSITION_LABELS:
        assert f"<td>{label}</td>" in page
    topics = json.loads((browse_run / "saes" / RES / "metrics.json").read_text())["by_topic"]
    assert "By topic" in page and len(topics) >= 2
    assert all(f"<td>{html.escape(topic)}</td>" in page for topic in topics)


def group(tokens: int, value: float | None) -> dict:
    return {"tokens": tokens, "delta_loss": value, "kl_div": value, "fvu": value, "l0": value}


def test_breakdowns_escape_names_and_show_empty_buckets_as_dashes():
    metrics = {
        "by_position": {label: group(0, None) if label == "257+" else group(5, 0.1) for label in POSITION_LABELS},
        "by_topic": {"<script>x</script>": group(3, 0.2)},
    }
    html = breakdown_section(metrics)
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<td>257+</td><td class=num>0</td><td class=num>-</td>" in html


def test_no_panel_for_an_sae_evaluated_before_the_breakdowns():
    assert breakdown_section({"l0": 3.0}) == ""
    assert "By topic" not in breakdown_section(
        {"by_position": {"1": group(1, 0.1)}, "by_topic": {"not_applicable": "no topic"}}
    )
