"""The tables bench/relay.py prints: the side-by-side summary of its rounds, and where
the daemon's time went according to py-spy's collapsed stacks."""

from __future__ import annotations

import argparse
from pathlib import Path


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace, idle_rate: float) -> None:
    def total(name: str, key: str) -> float:
        return sum(r[key] for r in runs[name])

    base = total("direct", "chunks") / total("direct", "seconds")
    print(f"\n{args.streams} concurrent streams x {args.tokens} tokens of /v1/completions, "
          f"{args.rounds} rounds x {args.requests} requests per target (sums over rounds):")
    print(f"{'target':<8} {'chunks/s':>9} {'tok/s':>8} {'vs direct':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'proxy CPU/chunk':>15} {'proxy CPU %':>11} {'client CPU/chunk':>16} {'vLLM CPU/chunk':>14} "
          f"{'others %':>8}")
    for name in runs:
        chunks, seconds = total(name, "chunks"), total(name, "seconds")
        rate = chunks / seconds
        tokens = total(name, "requests") * args.tokens / seconds
        p50 = max(r["ttft_p50"] for r in runs[name])
        p99 = max(r["ttft_p99"] for r in runs[name])
        cpu = f"{total(name, 'cpu') / chunks * 1e6:12.1f} us" if name != "direct" else f"{'-':>15}"
        share = f"{total(name, 'cpu') / seconds * 100:10.0f}%" if name != "direct" else f"{'-':>11}"
        print(f"{name:<8} {rate:>9.0f} {tokens:>8.0f} {rate / base:>8.3f}x {p50:>7.1f}ms {p99:>7.1f}ms "
              f"{cpu} {share} {total(name, 'client_cpu') / chunks * 1e6:13.1f} us "
              f"{total(name, 'vllm_cpu') / chunks * 1e6:11.1f} us {total(name, 'others_cpu') / seconds * 100:7.0f}%")
    nginx = total("nginx", "cpu") / total("nginx", "chunks")
    gateway = total("gateway", "cpu") / total("gateway", "chunks")
    relay_only = (total("gateway", "cpu") - idle_rate * total("gateway", "seconds")) / total("gateway", "chunks")
    print(f"gateway CPU/chunk = {gateway / nginx:.2f}x nginx's (target <= 2x); without the daemon's idle "
          f"{idle_rate * 100:.1f}% of a core: {relay_only * 1e6:.1f} us = {relay_only / nginx:.2f}x")
    gateway_loop = total("gateway", "loop_cpu") / total("gateway", "chunks")
    print(f"the daemon's main thread alone (its event loop: gateway, relay, orchestrator; not the footprint "
          f"and watcher threads): {gateway_loop * 1e6:.1f} us/chunk = {gateway_loop / nginx:.2f}x nginx's")
    print("TTFT: the worst round's percentile")


def print_profile(path: Path, top: int = 25) -> None:
    """Where the daemon's time went in the profiled gateway round: py-spy's collapsed
    stacks, summed by innermost frame (self time) and by frame anywhere on the stack."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + n
    print(f"\npy-spy of the daemon, one gateway round ({total} samples, idle included): self time")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {n / total * 100:5.1f}%  {frame}")
    print("inclusive:")
    for frame, n in sorted(anywhere.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {n / total * 100:5.1f}%  {frame}")
