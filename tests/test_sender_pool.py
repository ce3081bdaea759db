"""Sticky senders: a contact keeps hearing from the same number as the pool changes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hub.sender_pool import choose_sender, choose_weighted

POOL = ["+15550000001", "+15550000002", "+15550000003", "+15550000004"]
CONTACTS = [f"contact-{i}" for i in range(20_000)]


def test_choice_is_pinned_across_releases_and_processes() -> None:
    # Golden values: if these change, every contact of every campaign switches numbers.
    assert [choose_sender(f"contact-{i}", POOL) for i in range(6)] == [
        POOL[3], POOL[1], POOL[1], POOL[2], POOL[1], POOL[3]]
    code = ("from hub.sender_pool import choose_sender as c; "
            f"print(c('contact-3', {POOL!r}))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == POOL[2]  # Python's salted hash() would not give this


def test_choice_ignores_the_order_the_pool_is_listed_in() -> None:
    for contact in CONTACTS[:500]:
        assert choose_sender(contact, POOL) == choose_sender(contact, POOL[::-1])


def test_load_spreads_evenly_over_the_pool() -> None:
    share = Counter(choose_sender(c, POOL) for c in CONTACTS)
    assert set(share) == set(POOL)
    assert all(0.22 <= n / len(CONTACTS) <= 0.28 for n in share.values())


def test_adding_a_number_moves_only_about_one_in_n_contacts_all_to_it() -> None:
    before = {c: choose_sender(c, POOL) for c in CONTACTS}
    grown = [*POOL, "+15550000005"]
    after = {c: choose_sender(c, grown) for c in CONTACTS}
    moved = [c for c in CONTACTS if before[c] != after[c]]
    assert 0.17 <= len(moved) / len(CONTACTS) <= 0.23  # ~1/5
    assert {after[c] for c in moved} == {"+15550000005"}


def test_removing_a_number_moves_only_its_own_contacts() -> None:
    before = {c: choose_sender(c, POOL) for c in CONTACTS}
    shrunk = POOL[1:]
    for c in CONTACTS:
        if before[c] != POOL[0]:
            assert choose_sender(c, shrunk) == before[c]


def test_weights_share_contacts_in_proportion_to_mps() -> None:
    weighted = [("long-code", 1.0), ("toll-free", 3.0), ("short-code", 0.0)]
    share = Counter(choose_weighted(c, weighted) for c in CONTACTS)
    assert "short-code" not in share  # weight 0: never chosen
    assert 0.72 <= share["toll-free"] / len(CONTACTS) <= 0.78


def test_changing_one_weight_only_moves_contacts_to_that_sender() -> None:
    old = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    new = [("a", 1.0), ("b", 1.0), ("c", 4.0)]  # c was upgraded to a faster number
    for contact in CONTACTS[:5_000]:
        before, after = choose_weighted(contact, old), choose_weighted(contact, new)
        assert before == after or after == "c"


def test_an_empty_pool_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ValueError):
        choose_sender("contact-1", [])
    with pytest.raises(ValueError):
        choose_weighted("contact-1", [("a", 0.0)])
    with pytest.raises(ValueError):
        choose_weighted("contact-1", [("a", -1.0)])
