"""The Trade page offers a refused ticket's ``max_qty_allowed`` with one click (Streamlit AppTest, real Redis;
the helpers and fixtures of tests/test_dashboard.py)."""

from __future__ import annotations

from engine.store import Store
from logic.views import max_qty_offer

from .test_dashboard import app_env, assert_clean, frame_with, joined, open_page, submit_ticket

__all__ = ["app_env"]  # the fixture, imported for pytest


def test_a_refused_ticket_offers_the_largest_quantity_that_passes_and_one_click_fills_it_in(
    app_env: Store,
) -> None:
    at = open_page("trade")
    at = submit_ticket(at, "AAA", "SELL", 1500)  # main holds 1000 AAA: an oversell
    assert_clean(at)
    assert "REJECTED" in joined(at.error)
    assert "OVERSELL" in set(frame_with(at, "code")["code"])
    offer = at.button(key="tk_use_max")
    assert "1,000 shares" in offer.label

    offer.click().run()
    assert at.number_input(key="tk_qty").value == 1000
    at.button(key="FormSubmitter:ticket_form-Check").click().run()

    assert_clean(at)
    assert "APPROVED" in joined(at.success)
    assert not [b for b in at.button if b.key == "tk_use_max"]
    assert app_env.read_trade_log("main", 10) == []  # checks and the resize never write


def test_a_refused_ticket_that_no_size_can_pass_says_so(app_env: Store) -> None:
    at = open_page("trade")
    at = submit_ticket(at, "CCC", "SELL", 10)  # main holds no CCC: a cash account cannot sell short

    assert_clean(at)
    assert "SHORT_NOT_ALLOWED" in set(frame_with(at, "code")["code"])
    assert not [b for b in at.button if b.key == "tk_use_max"]
    assert "No quantity of this SELL passes now" in joined(at.caption)


def test_no_offer_when_nothing_passes_or_the_ticket_was_approved() -> None:
    rejected = {"status": "REJECTED", "qty": 1500, "max_qty_allowed": 1000}
    assert max_qty_offer(rejected) == 1000
    assert max_qty_offer({**rejected, "max_qty_allowed": 0}) is None  # nothing passes (e.g. HALTED)
    assert max_qty_offer({**rejected, "max_qty_allowed": None}) is None  # malformed order: not sized
    assert max_qty_offer({**rejected, "max_qty_allowed": 1500}) is None  # the same size: nothing to offer
    assert max_qty_offer({"status": "APPROVED", "qty": 10, "max_qty_allowed": None}) is None
