"""Message ids: `arq_` + ULID, generated locally."""

from __future__ import annotations

import time

import arqonbus
from arqonbus import ZERO_ID, is_valid_id, new_id


def test_new_id_has_the_wire_form() -> None:
    for _ in range(1000):
        value = new_id()
        assert len(value) == 30
        assert is_valid_id(value), value


def test_ids_are_unique_and_time_prefixed() -> None:
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    before = new_id(int(time.time() * 1000) - 10_000)
    after = new_id()
    # The first 10 characters encode the millisecond timestamp.
    assert before[4:14] < after[4:14]


def test_known_encoding() -> None:
    # Timestamp 1 ms and zero randomness give ...0001 followed by 16 zeros.
    value = new_id(1)
    assert value[4:14] == "0000000001"
    assert new_id(0)[4:14] == "0000000000"
    assert is_valid_id(ZERO_ID)


def test_is_valid_id_rejects_other_shapes() -> None:
    good = new_id()
    for bad in ["", "bad", good.lower(), good[:-1], good + "0", "arq_" + "I" * 26, "arq_8" + "0" * 25, 42, None]:
        assert not is_valid_id(bad), bad
    assert arqonbus.is_valid_id(good)
