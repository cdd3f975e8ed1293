"""Every dashboard page rendered under Streamlit's AppTest on a store with activity, read as a desk would read it.

The store: the test settings (``main`` a cash account, ``hedge`` a margin account) with fills, a refused order, a
HALTED portfolio, triggered and acknowledged alerts, a live limit change, monitor snapshots and heartbeats. Every
page (and every Risk tab, the Trade page with a checked ticket, the What-if with a basket run) is rendered and
the elements Streamlit sends to the browser are read back (the ``ForwardMsg`` deltas, so heights, column
configurations and Plotly specs are visible, not only the values). The test fails on:

- a cell, metric or text showing ``None`` / ``nan`` / ``NaN`` / ``NaT`` (a missing cell needs a placeholder);
- a money figure without the currency: a metric whose label names a money figure, or a numeric column whose
  name names one, must show the currency code;
- a numeric column with fractions and no display format (raw floats);
- a label or value cut by the layout: every column needs a pixel width of at least
  ``CHAR_PX`` per character of its longest rendered value or label plus ``CELL_PAD_PX``;
- a table taller than its rows (empty padding rows under the data);
- a gauge whose number cannot fit: the number must be SI-formatted (``1.5M``) with an explicit font size, and
  its longest rendering must fit the narrowest gauge column.

The rules are this test's own (the width per character is an upper bound for the dashboard's 14 px sans
font in capitals and digits); the dashboard's formatting module (logic/views/fmt.py) has to meet them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import streamlit as st
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest, local_script_runner

from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store

from .conftest import TEST_CONFIG
from .e2e_stack import toml_dumps

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
TIMEOUT = 60.0
CURRENCY = "USD"
"""The test settings leave ``dashboard.currency`` at its default."""

CHAR_PX = 9
"""Upper bound of one character's width in the table font (capitals and digits of a 14 px sans)."""
CELL_PAD_PX = 32
"""Cell padding both sides plus the header's sort / menu icon."""
ROW_PX = 35
"""Streamlit's default row height (header row included); a table is padded when taller than its rows."""
TABLE_BORDER_PX = 3
GAUGE_COLUMN_PX = 250
"""The narrowest column a gauge is drawn in (four gauges on a wide page of a 1280 px screen)."""
GAUGE_GLYPH_EM = 0.62
"""Width of a digit or an SI letter in em of the Plotly number font."""

BAD_WORDS = re.compile(r"(?<![\w.])(None|nan|NaN|NaT)(?![\w])")
MONEY_NAME = re.compile(
    r"(?i)(^|[\s_(])(equity|cash|p&l|pnl|market[ _]value|notional|fees?|price|avg[ _]price|last|c?var|lvar"
    r"|var[ _]limit|cost|gross|net|long|short|mfe|mae|exposure|diversification|value now|stand-alone"
    r"|delta_var|var_after|var_before|component_var|equity_after)($|[\s_):])"
)
NOT_MONEY = re.compile(
    r"(?i)(%|pct|share|weight|ratio|utili[sz]ation|qty|count|level|method|bars|confidence|tick|latency|_ms\b|\(ms\)|age)"
)


# -- reading what the browser gets ---------------------------------------------------------------------------


@dataclass
class Rendered:
    """The elements of one script run, as sent to the browser."""

    where: str
    elements: list[Any] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        return [getattr(e, kind) for e in self.elements if e.WhichOneof("type") == kind]

    def with_type(self, kind: str) -> list[Any]:
        return [e for e in self.elements if e.WhichOneof("type") == kind]


class Recorder:
    """Keeps the ForwardMsgs of the last script run (wraps AppTest's own parser; nothing is replaced)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = local_script_runner.parse_tree_from_messages

        def recording(messages: list[Any]) -> Any:
            self.messages = list(messages)
            return original(messages)

        monkeypatch.setattr(local_script_runner, "parse_tree_from_messages", recording)

    def rendered(self, where: str) -> Rendered:
        out = Rendered(where)
        for msg in self.messages:
            if msg.HasField("delta") and msg.delta.WhichOneof("type") == "new_element":
                out.elements.append(msg.delta.new_element)
        return out


# -- the store with activity ---------------------------------------------------------------------------------


@pytest.fixture
def busy_desk(
    redis_server: EmbeddedRedis,
    seeded_store: Store,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    from logic.alerts import build_alert_engine
    from logic.monitor import Monitor
    from logic.risk_manager import RiskManager

    store = seeded_store
    config = tmp_path / "riskdesk.toml"
    config.write_text(toml_dumps(TEST_CONFIG), encoding="utf-8")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("RISKDESK_CONFIG", str(config))
    st.cache_resource.clear()
    st.cache_data.clear()

    main = RiskManager(store.client, portfolio_id="main", settings=settings)
    assert main.execute_trade("CCC", 40, "BUY", client_order_id="r-1", actor="tester")["status"] == "FILLED"
    assert main.execute_trade("AAA", 200, "SELL", client_order_id="r-2", actor="tester")["status"] == "FILLED"
    refused = main.execute_trade("DDD", settings.limits.max_order_qty + 1, "BUY", client_order_id="r-3", actor="t")
    assert refused["status"] == "REJECTED"
    hedge = RiskManager(store.client, portfolio_id="hedge", settings=settings)
    hedge.set_trading_state("HALTED", "desk review", "tester")
    main.set_limits({"var_limit": 25_000}, "tester", "more room for the afternoon")

    engine = build_alert_engine(store, settings)
    engine.add_rule(
        {"id": "var_used", "metric": "var.utilization", "op": ">=", "threshold": 0.05, "severity": "CRITICAL",
         "description": "VaR used above 5% of the limit"},
        "tester",
    )  # fmt: skip
    engine.add_rule(
        {"id": "conc", "metric": "concentration.largest_share", "op": ">", "threshold": 0.01, "severity": "MEDIUM"},
        "tester",
    )
    monitor = Monitor(store, settings, alert_engine=engine)
    for _ in range(3):
        monitor.refresh()
    engine.acknowledge("main", "conc", "tester", "looking")
    now = time.time()
    for name in ("stream", "monitor"):
        store.write_heartbeat(
            name, {"ts": now, "pid": 4242, "bars_processed": 17, "last_latency_ms": 0.8, "version": 1}
        )
    yield store
    st.cache_resource.clear()


def open_page(recorder: Recorder, page: str, portfolio: str = "main", **state: Any) -> tuple[AppTest, Rendered]:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["refresh"] = "Paused"
    at.session_state["portfolio"] = portfolio
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"screens/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at, recorder.rendered(f"{page}[{portfolio}{', ' + ', '.join(map(str, state.values())) if state else ''}]")


def every_render(recorder: Recorder) -> list[Rendered]:
    out = []
    for page in ("overview", "trade", "performance", "alerts", "system", "firm", "limits"):
        out.append(open_page(recorder, page)[1])
    out.append(open_page(recorder, "overview", "hedge")[1])  # the HALTED margin portfolio
    for tab in ("Exposure & VaR", "Stress", "Surface", "Backtest"):
        out.append(open_page(recorder, "risk", risk_tab=tab)[1])
    at, _ = open_page(recorder, "risk", risk_tab="What-if")
    at.button(key="FormSubmitter:what_if_form-Run what-if").click().run()
    out.append(recorder.rendered("risk[What-if run]"))
    for qty in (40, 10**9):  # an approved ticket, then one refused with reasons
        at, _ = open_page(recorder, "trade")
        at.selectbox(key="tk_ticker").set_value("CCC")
        at.number_input(key="tk_qty").set_value(qty)
        at.button(key="FormSubmitter:ticket_form-Check").click().run()
        assert not at.exception, [e.value for e in at.exception]
        out.append(recorder.rendered(f"trade[ticket {qty}]"))
    return out


# -- the rules -----------------------------------------------------------------------------------------------


def printf(fmt: str, value: float) -> str:
    """A Streamlit NumberColumn printf format (``USD %,.2f``, ``%+,.0f``, ``%d``, ``%.2f%%``) applied in Python."""
    m = re.fullmatch(r"(.*?)%([+]?)(,?)(?:\.(\d+))?([dfge])(.*)", fmt, flags=re.S)
    if m is None:
        raise AssertionError(f"unreadable number format {fmt!r}")
    prefix, plus, comma, digits, kind, suffix = m.groups()
    if kind == "d":
        body = format(round(value), f"{plus}{comma}d")
    else:
        body = format(value, f"{plus}{comma}.{digits or 6}{kind}")
    return prefix + body + suffix.replace("%%", "%")


def rendered_cell(value: Any, config: dict[str, Any], placeholder: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return placeholder
    fmt = (config.get("type_config") or {}).get("format")
    if isinstance(value, pd.Timestamp):
        return "2026-01-01 00:00:00 UTC" if fmt is None else "2026-01-01 00:00:00"[: max(len(fmt), 10)]
    if isinstance(value, bool):
        return "[x]"
    if isinstance(value, int | float) and fmt:
        if fmt == "percent":
            return f"{value * 100:,.2f}%"
        if fmt in ("localized", "plain"):
            return f"{value:,}"
        return printf(fmt, float(value))
    return str(value)


def check_table(where: str, element: Any, problems: list[str]) -> None:
    proto = element.dataframe
    df = convert_arrow_bytes_to_pandas_df(proto.arrow_data.data)
    configs: dict[str, dict[str, Any]] = json.loads(proto.columns or "{}")
    placeholder = proto.placeholder if proto.HasField("placeholder") else "None"
    name = f"{where} table {list(df.columns)[:3]}"
    if element.height_config.WhichOneof("height_spec") == "pixel_height":
        height = element.height_config.pixel_height
        if height > (len(df) + 1) * ROW_PX + TABLE_BORDER_PX:
            problems.append(f"{name}: {height} px for {len(df)} rows (empty padding rows)")
    for column in df.columns:
        config = configs.get(str(column), {})
        if config.get("hidden"):
            continue
        label = str(config.get("label") or column)
        series = df[column]
        cells = [rendered_cell(v, config, placeholder) for v in series.tolist()]
        for cell in cells:
            if BAD_WORDS.search(cell):
                problems.append(f"{name} column {label!r}: a cell shows {cell!r}")
                break
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        fmt = (config.get("type_config") or {}).get("format")
        if numeric and not fmt and not all(float(v).is_integer() for v in series.dropna()):
            problems.append(f"{name} column {label!r}: raw floats (no display format)")
        per_unit = str(fmt or "") == "percent" or "bps" in str(fmt or "")  # a ratio, not an amount
        if numeric and MONEY_NAME.search(label) and not NOT_MONEY.search(label) and not per_unit:
            if CURRENCY not in str(fmt or "") and CURRENCY not in label:
                problems.append(f"{name} column {label!r}: money without the currency (format {fmt!r})")
        longest = max([len(label)] + [len(c) for c in cells])
        width = config.get("width")
        need = CHAR_PX * longest + CELL_PAD_PX
        if not isinstance(width, int) or width < need:
            problems.append(f"{name} column {label!r}: width {width!r} < {need} px for {longest} characters")


def check_metric(where: str, metric: Any, problems: list[str]) -> None:
    text = f"{metric.label}: {metric.body}"
    if BAD_WORDS.search(metric.body):
        problems.append(f"{where} metric {text!r}")
    if MONEY_NAME.search(metric.label) and not NOT_MONEY.search(metric.label) and metric.body not in ("—", "-"):
        if CURRENCY not in metric.body:
            problems.append(f"{where} metric {text!r}: money without the currency")


def si(value: float, digits: int) -> str:
    """d3's ``.{digits}s`` (trailing zeros trimmed as with ``~``), the widest case of what a gauge shows."""
    if value == 0:
        return "0"
    exponent = max(-8, min(8, math.floor(math.log10(abs(value)) / 3)))
    scaled = value / 1000**exponent
    text = f"{scaled:.{digits}g}"
    return text + ("yzafpnµm kMGTPEZY"[exponent + 8].strip())


def check_gauges(where: str, chart: Any, problems: list[str]) -> None:
    spec = json.loads(chart.spec)
    margin = (spec.get("layout") or {}).get("margin") or {}
    room = GAUGE_COLUMN_PX - float(margin.get("l", 80)) - float(margin.get("r", 80))
    for trace in spec.get("data", []):
        if trace.get("type") != "indicator":
            continue
        number = trace.get("number") or {}
        fmt = str(number.get("valueformat", ""))
        size = (number.get("font") or {}).get("size")
        title = (trace.get("title") or {}).get("text", "")
        m = re.fullmatch(r"[$,]*(?:\.(\d+))?~?s", fmt)
        if m is None:
            problems.append(f"{where} gauge {title!r}: number format {fmt!r} is not SI (1.5M), long figures clip")
            continue
        if not isinstance(size, int | float):
            problems.append(f"{where} gauge {title!r}: no explicit number font size (the label may not fit)")
            continue
        digits = int(m.group(1) or 3)
        widest = str(number.get("prefix", "")) + si(-888_888_888, digits) + str(number.get("suffix", ""))
        width = len(widest) * GAUGE_GLYPH_EM * size
        if width > room:
            problems.append(f"{where} gauge {title!r}: {widest!r} needs {width:.0f} px, {room:.0f} px available")


def check_text(where: str, kind: str, body: str, problems: list[str]) -> None:
    if BAD_WORDS.search(body):
        problems.append(f"{where} {kind}: {body[:120]!r}")


def problems_of(render: Rendered) -> list[str]:
    problems: list[str] = []
    for element in render.with_type("dataframe"):
        check_table(render.where, element, problems)
    for metric in render.of("metric"):
        check_metric(render.where, metric, problems)
    for chart in render.of("plotly_chart"):
        check_gauges(render.where, chart, problems)
    for md in render.of("markdown"):
        check_text(render.where, "text", md.body, problems)
    for alert in render.of("alert"):
        check_text(render.where, "message", alert.body, problems)
    return problems


# -- the test ------------------------------------------------------------------------------------------------


def test_every_page_shows_numbers_a_desk_accepts(busy_desk: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    renders = every_render(recorder)
    empty = [
        r.where
        for r in renders
        if not (r.with_type("dataframe") or r.of("metric") or r.of("plotly_chart") or r.of("alert"))
    ]
    assert len(renders) == 15 and not empty, f"pages that rendered no figure: {empty}"
    problems = [p for r in renders for p in problems_of(r)]
    assert not problems, f"{len(problems)} presentation problems:\n" + "\n".join(problems)


def test_the_rules_catch_what_they_describe() -> None:
    # the width rule: ACKNOWLEDGED (12 characters) needs 9 x 12 + 32 px
    assert CHAR_PX * len("ACKNOWLEDGED") + CELL_PAD_PX == 140
    assert printf("USD %,.0f", 1234567.89) == "USD 1,234,568"
    assert printf("%+,.2f", -1234.5) == "-1,234.50"
    assert printf("%.1f bps", 39.72) == "39.7 bps"
    assert si(1_512_345, 3) == "1.51M" and si(-888_888_888, 3) == "-889M"
    assert BAD_WORDS.search("Concentration None") and not BAD_WORDS.search("Nonempty nano")
    assert MONEY_NAME.search("unrealized_pnl") and MONEY_NAME.search("VaR 95% (1 day)")
    assert not MONEY_NAME.search("weight") and NOT_MONEY.search("P&L % equity")


# -- the CSV exports and the kill switch ---------------------------------------------------------------------


def test_the_positions_export_is_rounded_to_the_unit_shown_with_its_as_of_time_and_a_totals_row(
    busy_desk: Store, settings: Settings
) -> None:
    import csv
    import io

    from logic.views import Desk, positions_view
    from logic.views.export import AS_OF_COLUMN, csv_bytes
    from logic.views.fmt import COLUMN_KINDS, with_totals

    # Arrange: the positions table of the Trade page, as it is shown
    desk = Desk(busy_desk.client, settings, clock=lambda: 1_790_000_000.0)
    positions = positions_view(desk, "main").positions
    kinds = {c: COLUMN_KINDS.get(c, "text") for c in positions.columns}
    # Act
    data = csv_bytes(
        with_totals(positions, ("market_value", "unrealized_pnl", "realized_pnl", "weight"), "ticker"),
        kinds=kinds,
        as_of=desk.clock(),
    )
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    # Assert: the time on every row, money in whole units, prices in cents, a TOTAL row summing the column
    as_of = datetime.fromtimestamp(1_790_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert {r[AS_OF_COLUMN] for r in rows} == {as_of}
    body, total = rows[:-1], rows[-1]
    assert total["ticker"] == "TOTAL" and len(body) == len(positions)
    for row, (_, position) in zip(body, positions.iterrows(), strict=True):
        assert row["market_value"] == str(round(position["market_value"]))
        assert float(row["last"]) == round(position["last"], 2) and len(row["last"].split(".")[-1]) <= 2
    assert float(total["market_value"]) == round(positions["market_value"].sum())
    assert abs(float(total["weight"]) - positions["weight"].sum()) <= 0.00005  # 4 decimals: 20.22% is 0.2022


def test_the_kill_switch_always_holds_a_state(busy_desk: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    at, _ = open_page(recorder, "system", "hedge")
    switch = at.radio(key="ts_new_state")
    assert switch.value == "HALTED" and list(switch.options) == ["ACTIVE", "REDUCING", "HALTED"]
    switch.set_value("ACTIVE")
    at.text_input(key="ts_reason").input("review done")
    at.button(key="FormSubmitter:trading_state_form-Apply").click().run()
    assert busy_desk.read_trading_state("hedge").state == "HALTED"  # lifting a halt waits for its confirmation
    at.button(key="ts_confirm").click().run()
    assert not at.exception and busy_desk.read_trading_state("hedge").state == "ACTIVE"
    assert at.radio(key="ts_new_state").value in ("ACTIVE", "REDUCING", "HALTED")  # never "no state"


def test_the_surface_offers_no_short_position_to_a_cash_account_and_keeps_the_book_on_the_grid(
    busy_desk: Store, settings: Settings
) -> None:
    from logic.views import Desk, long_only, surface_view

    desk = Desk(busy_desk.client, settings)
    cash = surface_view(desk, "main", "AAA", "BBB")  # main: a cash account
    margin = surface_view(desk, "hedge", "CCC", "DDD")  # hedge: a margin account, short DDD
    assert long_only(desk, "main") and not long_only(desk, "hedge")
    assert cash.qty_a.min() == 0.0 and cash.qty_b.min() == 0.0  # down to flat, never short
    assert cash.current[0] in cash.qty_a and cash.current[1] in cash.qty_b  # the book itself is a grid point
    assert cash.lowest[0] >= 0 and cash.lowest[1] >= 0
    assert margin.qty_b.min() < 0  # a margin account may be short: its grid crosses zero


def test_no_page_script_has_a_bare_string_that_streamlit_would_print() -> None:
    """Streamlit's "magic" writes a page script's bare top-level expressions on the page: a docstring under a
    constant showed up as a stray line of text above the Trade page's figures."""
    import ast

    root = Path(__file__).resolve().parent.parent / "dashboard"
    stray = []
    for path in sorted([root / "app.py", *(root / "screens").glob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
        stray += [
            f"{path.name}:{node.lineno}"
            for node in body
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        ]
    assert not stray, f"bare strings Streamlit would print on the page: {stray}"
