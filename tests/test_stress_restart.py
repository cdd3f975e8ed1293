"""Stressed VaR: compared with ``stressed_var_limit``, its source on the Stress tab, the same figure under
another bar length, and every Overview and Stress figure unchanged across a restart of every process."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from engine import math_logic
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings, load_settings, settings_from_dict
from engine.store import Store
from logic import views
from logic.alerts import build_alert_engine
from logic.monitor import Monitor

from .conftest import TEST_CONFIG, merge

ROOT = Path(__file__).resolve().parent.parent
T = 1_700_000_000.0


def clock() -> float:
    return T


def desk_settings(**limits: Any) -> Settings:
    return settings_from_dict(merge(TEST_CONFIG, {"limits": limits} if limits else {}))


def seed(store: Store, settings: Settings) -> None:
    import warmup

    warmup.seed(store, settings, now=T)


def figures(overview: Any, stress: Any) -> dict[str, Any]:
    """Every figure the Overview and the Stress tab show, as plain data (DataFrames as records)."""
    out = {"overview": dataclasses.asdict(overview), "stress": dataclasses.asdict(stress)}
    out["stress"]["scenarios"] = stress.scenarios.to_dict("records")
    out["overview"]["trading"]["audit"] = overview.trading.audit.to_dict("records")
    return out


def start_everything(redis_server: EmbeddedRedis, settings: Settings) -> tuple[Any, ...]:
    """A fresh client, alert engine, monitor (one refresh), gate check and dashboard views: one 'start'."""
    client = redis_server.client()
    store = Store(client)
    engine = build_alert_engine(store, settings, clock=clock)
    Monitor(store, settings, clock=clock, alert_engine=engine).refresh()
    desk = views.Desk(client, settings, clock=clock)
    decision = desk.risk_manager("main").check("AAA", 1, "BUY")
    return client, views.overview_view(desk, "main"), views.stress_view(desk, "main"), decision


def test_every_overview_and_stress_figure_survives_a_restart_of_every_process(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    settings = desk_settings(stressed_var_limit="30000")
    seed(store, settings)
    client, overview, stress, decision = start_everything(redis_server, settings)
    before = figures(overview, stress)
    client.close()
    client, overview, stress, decision_after = start_everything(redis_server, settings)  # the "restart"
    after = figures(overview, stress)
    client.close()
    assert after == before
    assert decision_after.status == decision.status
    assert stress.stressed_var > 0 and stress.stressed_var_limit == 30000.0  # figures, not zeros


def test_stressed_var_is_drawn_against_the_stressed_limit_not_the_var_limit(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    for limit, expected in ((None, None), ("12345", 12345.0)):
        settings = desk_settings(**({"stressed_var_limit": limit} if limit else {}))
        store.client.flushdb()
        seed(store, settings)
        client, overview, stress, _ = start_everything(redis_server, settings)
        client.close()
        gauge = next(g for g in overview.gauges if g.title.startswith("Stressed VaR"))
        assert gauge.limit == expected and stress.stressed_var_limit == expected
        var_limit = float(settings.limits_for("main").var_limit)
        assert gauge.limit != var_limit
        if expected is not None:
            assert stress.of_limit == pytest.approx(stress.stressed_var / expected, rel=1e-12)


def test_the_stress_tab_says_what_the_stressed_figure_is_computed_from_and_when(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    settings = desk_settings()
    seed(store, settings)
    client, _, stress, _ = start_everything(redis_server, settings)
    client.close()
    text = " ".join(stress.provenance())
    assert "seed: the settings' annual volatilities and correlation" in text
    assert f"version {stress.source['version']}" in text and "market version 0" in text
    assert f"x{settings.model.stress_vol_multiplier:g}" in text
    assert f"{settings.model.bars_per_day:g} bars a day" in text
    import warmup

    # T, when the seed wrote it, by the OS account that ran the warm-up
    assert f"last changed 2023-11-14 22:13:20 UTC (by {warmup.ACTOR})" in text
    assert warmup.ACTOR.startswith("warmup:local:")
    assert stress.source["scale"] == 1.0


def test_a_matrix_written_for_another_bar_length_gives_the_same_daily_stressed_var(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    """The 20x (sqrt(390)) jump: a stressed matrix written per day (bars_per_day 1) read per minute bar would
    be scaled to a day a second time. Its meta now says its bar, and the reader rescales it."""
    settings = desk_settings()
    seed(store, settings)
    client, _, per_bar, _ = start_everything(redis_server, settings)
    client.close()
    version, tickers, cov = store.read_stressed()
    meta = {**store.read_stressed_meta(), "bars_per_day": 1.0, "source": "a per-day matrix", "written_at": T + 60}
    bpd = settings.model.bars_per_day
    store.write_stressed(version + 1, tickers, cov * bpd, meta=meta)  # the same matrix in day units
    client, _, per_day, _ = start_everything(redis_server, settings)
    client.close()
    assert per_day.stressed_var == pytest.approx(per_bar.stressed_var, rel=1e-9)
    assert per_day.stressed_var99 == pytest.approx(per_bar.stressed_var99, rel=1e-9)
    assert per_day.source["scale"] == pytest.approx(1.0 / bpd, rel=1e-15)
    text = " ".join(per_day.provenance())
    assert "a per-day matrix" in text and f"Written for 1 bars a day, read at {bpd:g}" in text
    assert "2023-11-14 22:14:20 UTC" in text  # the new input's stamp


def test_the_seeded_stressed_var_matches_the_closed_form(redis_server: EmbeddedRedis, store: Store) -> None:
    settings = desk_settings()
    seed(store, settings)
    client, _, stress, _ = start_everything(redis_server, settings)
    client.close()
    snap = store.read_market()
    state = store.read_portfolio("main")
    x = np.array([state.positions[t].qty * snap.prices[i] if t in state.positions else 0.0
                  for i, t in enumerate(snap.tickers)])  # fmt: skip
    m = settings.model
    s = math_logic.build_stressed_covariance(snap.cov, m.stress_vol_multiplier, m.stress_correlation_floor)
    days = settings.limits_for("main").var_horizon_days
    z = NormalDist().inv_cdf(0.99)
    expected99 = z * math.sqrt(x @ s @ x) * math.sqrt(m.bars_per_day * days)  # sVaR = z sqrt(x'Sx) sqrt(h)
    assert stress.stressed_var99 == pytest.approx(expected99, rel=1e-9)


def test_the_stress_tab_of_a_long_short_book_shows_the_multiplied_volatilities_when_they_are_worse(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    # Arrange: hedge is long CCC and short DDD (correlation 0.3); the floor (0.6) makes DDD a better hedge of CCC
    settings = desk_settings()
    seed(store, settings)
    snap = store.read_market()
    _, tickers, stressed = store.read_stressed()
    assert tickers == snap.tickers
    x = np.zeros(len(snap.tickers))
    x[snap.tickers.index("CCC")], x[snap.tickers.index("DDD")] = 300 * 200.0, -1000 * 25.0
    m, root = settings.model.stress_vol_multiplier, math.sqrt(settings.model.bars_per_day)
    assert math.sqrt(x @ stressed @ x) < m * math.sqrt(x @ snap.cov @ x)  # the crisis matrix alone says less
    client = redis_server.client()
    Monitor(store, settings, clock=clock).refresh()
    desk = views.Desk(client, settings, clock=clock)

    # Act
    stress = views.stress_view(desk, "hedge")
    overview = views.overview_view(desk, "hedge")
    client.close()

    # Assert: z·m·sqrt(x'Σx)·sqrt(h) on the tab, at its confidence and at 99%, the same figures as the monitor's
    # (its gauge at the limit's confidence and horizon, as the gate measures it; its 99% one-day figure), never
    # below the VaR
    for confidence, figure in ((0.95, stress.stressed_var), (0.99, stress.stressed_var99)):
        z = NormalDist().inv_cdf(confidence)
        assert figure == pytest.approx(z * m * math.sqrt(x @ snap.cov @ x) * root, rel=1e-9)
    gauge = next(g for g in overview.gauges if g.title.startswith("Stressed VaR"))
    assert gauge.value == pytest.approx(stress.stressed_var, rel=1e-12)
    assert overview.snapshot is not None
    assert overview.snapshot["var"]["stressed_var99"] == pytest.approx(stress.stressed_var99, rel=1e-12)
    assert stress.stressed_var >= stress.var and stress.multiple == pytest.approx(m, rel=1e-9)


def test_the_real_settings_seed_a_stamped_matrix(store: Store) -> None:
    settings = load_settings(ROOT / "riskdesk.toml")
    seed(store, settings)
    meta = store.read_stressed_meta()
    assert meta["bars_per_day"] == settings.model.bars_per_day and meta["written_at"] == T
