"""PortAllocator: ports for vLLM servers, counted up from base_port, skipping busy ones."""

from __future__ import annotations

import socket

import pytest

from modelium.runtimes.process import port_accepts
from modelium.runtimes.ray_serve.cluster import free_port_range
from modelium.runtimes.vllm.ports import NoFreePortError, PortAllocator


@pytest.fixture
def base() -> int:
    """The first of 5 consecutive ports that are free now (other tests run beside us)."""
    return free_port_range(5, low=40000, high=60000)


def test_counts_up_from_base(base: int) -> None:
    ports = PortAllocator(base, span=5)
    assert [ports.allocate() for _ in range(3)] == [base, base + 1, base + 2]
    assert ports.allocated == {base, base + 1, base + 2}


def test_skips_a_port_held_by_a_listening_socket(base: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", base))
        listener.listen()
        ports = PortAllocator(base, span=5)
        assert ports.allocate() == base + 1


def test_released_ports_are_reused(base: int) -> None:
    ports = PortAllocator(base, span=5)
    first, second = ports.allocate(), ports.allocate()
    ports.release(first)
    assert ports.allocate() == first
    ports.release(second)
    ports.release(second)  # twice: no-op
    ports.release(12345)  # never handed out: no-op
    assert ports.allocate() == second


def test_a_handed_out_port_is_not_handed_out_again_before_its_server_binds(base: int) -> None:
    ports = PortAllocator(base, span=5)
    assert len({ports.allocate() for _ in range(5)}) == 5  # nothing listens on any of them yet


def test_exhausted_window_says_so(base: int) -> None:
    ports = PortAllocator(base, span=2)
    ports.allocate()
    ports.allocate()
    with pytest.raises(NoFreePortError, match=f"{base}..{base + 1}"):
        ports.allocate()


def test_window_is_clipped_at_the_last_port() -> None:
    assert PortAllocator(65534, span=1000).span == 2
    with pytest.raises(ValueError):
        PortAllocator(0)
    with pytest.raises(ValueError):
        PortAllocator(8000, span=0)


async def test_port_accepts_tells_listening_from_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert await port_accepts(port)
    assert not await port_accepts(port)  # closed: refused at once
