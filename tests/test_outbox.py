from decimal import Decimal

from cdc.facts import price_fact, stock_fact
from cdc.outbox.queue import SinkQueue
from cdc.outbox.store import Outbox
from cdc.outbox.views import dlq_counts, dlq_list, dlq_retry, pending_counts


def test_newest_value_per_key_and_unchanged_values_are_skipped(tmp_path):
    ob = Outbox(tmp_path / "o.db", {"shop": ["stock", "price"]})
    ob.begin()
    assert ob.write_facts([stock_fact("A", "mad", 1), stock_fact("A", "mad", 5)]) == 2
    assert ob.write_facts([stock_fact("A", "mad", 5)]) == 0  # same value: nothing to push
    ob.set_position("src", "0/10")
    ob.commit()
    q = SinkQueue(tmp_path / "o.db", "shop")
    batch = q.next_batch(10)
    assert [(p.fact.sku, p.fact.available) for p in batch] == [("A", 5)]
    assert ob.position("src") == "0/10"


def test_position_and_facts_commit_together(tmp_path):
    ob = Outbox(tmp_path / "o.db", {"shop": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 1)])
    ob.set_position("src", "0/20")
    ob.rollback()  # a crash before commit loses both, never one without the other
    assert ob.position("src") is None
    assert list(ob.facts()) == []


def test_delivery_tracking_retry_and_dead_letters(tmp_path):
    ob = Outbox(tmp_path / "o.db", {"shop": ["stock", "price"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 1), price_fact("B", "RETAIL", Decimal("9.90"), "EUR")])
    ob.commit()
    q = SinkQueue(tmp_path / "o.db", "shop")
    a, b = sorted((p.fact for p in q.next_batch(10)), key=lambda f: f.sku)
    assert b.amount == Decimal("9.90")
    q.mark_ok([a])
    q.mark_retry([(b, 1, 60.0, "HTTP 503")])
    assert q.next_batch(10) == []  # b waits for its backoff
    assert pending_counts(q.conn) == {"shop": 1}
    q.mark_dead([(b, 1, "unknown sku")])
    assert pending_counts(q.conn) == {}
    assert dlq_counts(q.conn) == {"shop": 1}
    assert dlq_list(q.conn)[0]["error"] == "unknown sku"
    assert dlq_retry(q.conn, "shop") == 1
    assert [p.fact.sku for p in q.next_batch(10)] == ["B"]


def test_newer_value_while_in_flight_stays_pending(tmp_path):
    ob = Outbox(tmp_path / "o.db", {"shop": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 1)])
    ob.commit()
    q = SinkQueue(tmp_path / "o.db", "shop")
    (old,) = [p.fact for p in q.next_batch(10)]
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 2)])  # arrives while the old value is being pushed
    ob.commit()
    q.mark_ok([old])
    (new,) = [p.fact for p in q.next_batch(10)]
    assert new.available == 2 and new.version > old.version


def test_sink_added_later_gets_current_facts(tmp_path):
    ob = Outbox(tmp_path / "o.db", {"a": ["stock"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 3)])
    ob.commit()
    ob.register_sinks({"a": ["stock"], "b": ["stock"]})
    assert [p.fact.available for p in SinkQueue(tmp_path / "o.db", "b").next_batch(10)] == [3]


def test_commit_counts_changed_values_per_kind(tmp_path) -> None:
    ob = Outbox(tmp_path / "o.db", {"s": ["stock", "price"]})
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 1), price_fact("A", "RETAIL", Decimal("9.90"), "EUR"),
                    price_fact("B", "RETAIL", Decimal("1.00"), "EUR")])
    assert ob.commit() == {"stock": 1, "price": 2}
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 1), stock_fact("A", "bcn", 3)])  # only one is a change
    ob.rollback()
    ob.begin()
    ob.write_facts([stock_fact("A", "mad", 2)])
    assert ob.commit() == {"stock": 1}  # the rolled-back transaction's change is not counted
    ob.close()
