"""The status view's judgement and formatting, from items as DynamoDB returns them (no table needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from token_vending import status
from token_vending.request import fingerprint

NOW = 1_800_000_000.0  # a whole hour: budget#1800000000 is the current window
SETTINGS = status.Settings.from_env({})


FAKE_TOKEN = "tok-secret-value"


def token_item(provider: str, key: str, *, expires: float, fetched: float, lifetime: int,
               **extra: Any) -> dict[str, Any]:
    return {"pk": {"S": provider}, "sk": {"S": f"token#{key}"}, "access_token": {"S": FAKE_TOKEN},
            "expires_at": {"N": str(int(expires))}, "fetched_at": {"N": str(fetched)},
            "lifetime": {"N": str(lifetime)}, **extra}


def document(*items: dict[str, Any], settings: status.Settings = SETTINGS) -> dict[str, Any]:
    rows, budgets = status.collect(iter(items), NOW)
    return status.report(rows, budgets, settings, NOW, table="tokens")


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (9.9, "9s"), (60, "1m00s"), (245, "4m05s"), (3720, "1h02m"), (90000, "1d01h"), (-245, "4m05s"),
])
def test_duration(seconds: float, shown: str) -> None:
    assert status.duration(seconds) == shown


def test_no_items() -> None:
    doc = document()
    assert doc["tokens"] == []
    assert doc["now"] == {"iso": "2027-01-15T08:00:00Z", "epoch": NOW}
    assert status.table_lines(doc) == ["tokens: no tokens cached (2027-01-15T08:00:00Z)"]


def test_expired_token_shows_negative_time_left_as_expired() -> None:
    doc = document(token_item("pyng", "a", expires=NOW - 75, fetched=NOW - 975, lifetime=900, used_at={"N": "0"}))
    row = doc["tokens"][0]
    assert row["state"] == ["expired"]
    assert row["time_left_seconds"] == -75
    assert row["renewal_due_in_seconds"] == -165  # 90 s margin before expiry
    assert row["last_use_seconds_ago"] == 975  # never marked: counts from its fetch
    line = status.table_lines(doc)[1]
    assert "expired 1m15s ago" in line
    assert "now (2m45s ago)" in line
    assert FAKE_TOKEN not in line + json.dumps(doc)
    assert fingerprint(FAKE_TOKEN) in line


def test_malformed_items_are_shown_not_fatal() -> None:
    doc = document(
        {"pk": {"S": "pyng"}, "sk": {"S": "token#a"}, "access_token": {"S": "tok-x"}, "expires_at": {"S": "soon"}},
        {"pk": {"S": "pyng"}, "sk": {"S": "lease#a"}, "owner": {"S": "x"}},
        {"pk": {"S": "pyng"}, "sk": {"S": "mystery"}},
        {"pk": {"S": "aria"}, "sk": {"S": f"budget#{int(NOW)}"}, "spent": {"S": "lots"}},
        {"pk": {"S": "aria"}, "sk": {"S": f"budget#{int(NOW) - 3600}"}, "spent": {"N": "999"}},
    )
    by_key = {(row["connection"], row["scope"]): row for row in doc["tokens"]}
    assert by_key["pyng", "a"]["malformed"] == ["token", "lease"]
    assert by_key["pyng", "mystery"]["malformed"] == ["item"]
    assert by_key["aria", None]["malformed"] == ["budget"]
    assert by_key["aria", None]["budget"] == {"spent": None, "limit": 60, "forced": None}
    text = "\n".join(status.table_lines(doc))
    assert "malformed (token, lease)" in text
    assert "?/60" in text
    assert "999" not in text  # an earlier hour's counter is not this hour's spending


def test_lapsed_cool_down_keeps_its_streak_and_a_lapsed_lease_is_gone() -> None:
    doc = document(
        {"pk": {"S": "pyng"}, "sk": {"S": "lease#a"}, "lease_expires_at": {"N": str(NOW - 1)},
         "failure": {"S": "not json"}, "failures": {"N": "2"}},
        {"pk": {"S": "pyng"}, "sk": {"S": "lease#b"}, "lease_expires_at": {"N": str(NOW - 1)}},
    )
    by_key = {row["scope"]: row for row in doc["tokens"]}
    assert by_key["a"]["cool_down"] == {"until": {"iso": "2027-01-15T07:59:59Z", "epoch": NOW - 1},
                                        "seconds_left": -1, "active": False, "streak": 2, "error": None}
    assert by_key["a"]["state"] == []
    assert by_key["b"]["lease"] is None
    assert by_key["b"]["cool_down"] is None
    assert "lapsed, streak 2" in "\n".join(status.table_lines(doc))


def test_provider_settings_follow_the_functions_names() -> None:
    settings = status.Settings.from_env({"REFRESH_MARGIN_SECONDS": "420", "REFRESH_AHEAD_IDLE_HOURS": "1",
                                         "UPSTREAM_BUDGETS": "pyng=5"})
    doc = document(token_item("pyng", "a", expires=NOW + 400, fetched=NOW - 500, lifetime=900,
                              used_at={"N": str(NOW - 7200)}), settings=settings)
    row = doc["tokens"][0]
    assert row["state"] == ["in margin", "idle"]
    assert row["renewal_due_in_seconds"] == -20  # a 420 s margin (below half the lifetime) before expiry
    assert row["budget"]["limit"] == 5


def test_bad_settings_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--budgets", "pyng=lots"], env={}) == 2
    assert "UPSTREAM_BUDGETS" in capsys.readouterr().err
    assert status.main(["--watch", "0"], env={}) == 2


def test_rows_are_per_connection_with_its_provider_and_its_own_budget() -> None:
    """Two connections of one provider are two partitions: each its own rows and budget (``UPSTREAM_BUDGETS`` by
    connection name), each shown with the catalogue entry it belongs to; a partition no catalogue entry fits has
    no provider."""
    settings = status.Settings.from_env({"UPSTREAM_BUDGETS": "AriaAu=7"})
    doc = document(
        token_item("aria", "", expires=NOW + 3000, fetched=NOW - 600, lifetime=3600),
        token_item("AriaAu", "", expires=NOW + 3000, fetched=NOW - 600, lifetime=3600),
        {"pk": {"S": "AriaAu"}, "sk": {"S": f"budget#{int(NOW)}"}, "spent": {"N": "3"}, "forced": {"N": "1"}},
        token_item("Stray", "x", expires=NOW + 3000, fetched=NOW - 600, lifetime=3600),
        settings=settings)
    rows = {row["connection"]: row for row in doc["tokens"]}
    assert set(rows) == {"aria", "AriaAu", "Stray"}
    assert (rows["aria"]["provider"], rows["AriaAu"]["provider"], rows["Stray"]["provider"]) == ("aria", "aria", None)
    assert rows["aria"]["budget"] == {"spent": 0, "limit": 60, "forced": 0}
    assert rows["AriaAu"]["budget"] == {"spent": 3, "limit": 7, "forced": 1}
    assert rows["AriaAu"]["scope"] == ""
    lines = status.table_lines(doc)
    assert lines[0].split()[:3] == ["CONNECTION", "PROVIDER", "SCOPE"]
    au = next(line for line in lines if line.startswith("AriaAu"))
    assert au.split()[:3] == ["AriaAu", "aria", status.NO_SCOPE]
    assert "3/7" in au
    assert next(line for line in lines if line.startswith("Stray")).split()[1] == "?"
