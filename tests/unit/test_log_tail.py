"""The per-model log tail (modelium/log_tail.py): which records it keeps, its bounds, and
`after`/`limit` paging."""

from __future__ import annotations

import logging

import pytest

from modelium.log_tail import ModelLogTail, install


@pytest.fixture
def logger_with_tail():
    """A private logger (not the root: other tests' lines must not land here)."""
    logger = logging.getLogger("test.log_tail")
    logger.propagate = False
    logger.setLevel(logging.INFO)

    def build(**kwargs) -> ModelLogTail:
        tail = ModelLogTail(**kwargs)
        logger.addHandler(tail)
        return tail

    yield logger, build
    logger.handlers.clear()


def test_keeps_only_records_with_a_model_field(logger_with_tail):
    logger, build = logger_with_tail
    tail = build()
    logger.info("about %s", "a", extra={"model": "a"})
    logger.info("no model here")
    logger.info("empty model", extra={"model": ""})
    logger.warning("about b", extra={"model": "b"})
    [line] = tail.lines("a")
    assert (line.message, line.level, line.logger) == ("about a", "INFO", "test.log_tail")
    assert [line.message for line in tail.lines("b")] == ["about b"]
    assert tail.lines("b")[0].level == "WARNING"
    assert sorted(tail.models()) == ["a", "b"]


def test_lines_per_model_bound_drops_the_oldest(logger_with_tail):
    logger, build = logger_with_tail
    tail = build(lines_per_model=3)
    for i in range(7):
        logger.info("line %d", i, extra={"model": "m"})
    assert [line.message for line in tail.lines("m")] == ["line 4", "line 5", "line 6"]


def test_model_bound_drops_the_least_recently_written(logger_with_tail):
    logger, build = logger_with_tail
    tail = build(max_models=2)
    logger.info("x", extra={"model": "a"})
    logger.info("x", extra={"model": "b"})
    logger.info("x again", extra={"model": "a"})  # a is now the most recent
    logger.info("x", extra={"model": "c"})
    assert sorted(tail.models()) == ["a", "c"]
    assert tail.lines("b") == []


def test_after_is_exclusive_and_limit_caps_oldest_first(logger_with_tail):
    logger, build = logger_with_tail
    tail = build()
    for i in range(5):
        logger.info("a%d", i, extra={"model": "a"})
        logger.info("b%d", i, extra={"model": "b"})  # one counter across models
    seqs = [line.seq for line in tail.lines("a")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [line.message for line in tail.lines("a", after=seqs[1])] == ["a2", "a3", "a4"]
    assert [line.message for line in tail.lines("a", after=seqs[1], limit=2)] == ["a2", "a3"]
    assert tail.lines("a", after=seqs[-1]) == []


def test_forget_and_install_once():
    tail = ModelLogTail()
    root = logging.getLogger()
    try:
        install(tail)
        install(tail)
        assert root.handlers.count(tail) == 1
    finally:
        root.removeHandler(tail)
    tail.emit(logging.makeLogRecord({"msg": "hi", "model": "gone", "levelname": "INFO"}))
    assert tail.models() == ["gone"]
    tail.forget("gone")
    assert tail.models() == [] and tail.lines("gone") == []
    with pytest.raises(ValueError):
        ModelLogTail(lines_per_model=0)
