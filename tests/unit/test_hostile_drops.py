"""Every broken drop of the corpus gets a reason: through the drop handler (quarantine or a
failed model, nothing silent, nothing followed), and through `modelium analyze` (one line,
exit 2, never a traceback). The analysis runs in-process here for speed; the isolated
child process is tested in test_drop_isolation.py, and the whole corpus against a real
daemon in tests/e2e/test_hostile_drops.py."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelium.analysis.isolated import check_drop
from modelium.cli.main import app
from modelium.discovery import REASON_FILE
from modelium.orchestrator import DropHandler, ModelState
from tests.hostile_corpus import Case, cases
from tests.unit.test_orchestrator import build

SMALL = [case for case in cases(Path("/nonexistent-victim")) if case.small]


def in_process(path: Path, name: str):
    return asyncio.to_thread(check_drop, path, name)


async def drop(tmp_path: Path, case: Case) -> tuple[object, Path]:
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    incoming = tmp_path / "models/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    [case] = [c for c in cases(victim) if c.entry == case.entry]
    case.build(incoming / case.entry)
    await DropHandler(orchestrator, analyze=in_process)(case.entry, incoming / case.entry)
    await orchestrator.quiesce()
    assert not os.path.lexists(incoming / case.entry), "the drop must leave incoming/"
    assert victim.read_text() == "untouched"
    return orchestrator, tmp_path / "models/failed" / case.name


@pytest.mark.parametrize("case", SMALL, ids=[c.entry.encode("ascii", "replace").decode() for c in SMALL])
async def test_every_broken_drop_gets_a_reason(tmp_path: Path, case: Case) -> None:
    orchestrator, quarantined = await drop(tmp_path, case)
    if case.outcome == "failed":
        record = orchestrator.get(case.name)
        assert record.state == ModelState.FAILED and case.expect in record.reason, record.reason
        return
    reason = (quarantined / REASON_FILE).read_text()
    assert case.expect in reason, reason
    assert orchestrator.quarantined[-1]["name"] == case.name
    assert case.name not in orchestrator.table


async def test_a_quarantined_link_is_moved_as_a_link_never_followed(tmp_path: Path) -> None:
    [case] = [c for c in SMALL if c.entry == "etc-link"]
    _, quarantined = await drop(tmp_path, case)
    moved = quarantined / "etc-link"
    assert moved.is_symlink() and os.readlink(moved) == "/etc"
    assert Path("/etc/passwd").exists()


async def test_the_drop_s_own_reason_link_is_replaced_not_written_through(tmp_path: Path) -> None:
    [case] = [c for c in SMALL if c.entry == "reason-link"]
    _, quarantined = await drop(tmp_path, case)  # drop() checks the victim is untouched
    assert not (quarantined / REASON_FILE).is_symlink()


async def test_a_loose_onnx_file_becomes_a_model_named_after_it(tmp_path: Path) -> None:
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    incoming = tmp_path / "models/incoming"
    incoming.mkdir(parents=True)
    (incoming / "Tiny Net.onnx").write_bytes(b"\0" * 400)
    await DropHandler(orchestrator, analyze=in_process)("Tiny Net.onnx", incoming / "Tiny Net.onnx")
    record = orchestrator.get("tiny-net")
    assert record.path == tmp_path / "models/repository/tiny-net"
    assert (record.path / "Tiny Net.onnx").stat().st_size == 400
    assert record.profile.format == "onnx" and record.profile.path == str(record.path)
    assert not any(incoming.iterdir())


async def test_1_7e19_parameters_fail_with_the_numbers_not_an_overflow(tmp_path: Path) -> None:
    [case] = [c for c in SMALL if c.entry == "huge-model"]
    orchestrator, _ = await drop(tmp_path, case)
    record = orchestrator.get("huge-model")
    assert record.profile.parameters > 1.7e19
    assert "needs" in record.reason and "more than any device can hold" in record.reason


async def test_drops_becoming_the_same_name_are_handled_one_after_the_other(tmp_path: Path) -> None:
    orchestrator, _ = build(tmp_path, gpu_gib=4.0)
    await orchestrator.start()
    incoming = tmp_path / "models/incoming"
    for raw in ("My Model", "my-model"):
        (incoming / raw).mkdir(parents=True)
        shutil.copy(Path(__file__).parent / "fakes.py", incoming / raw / "notes.py")
        (incoming / raw / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, '
                                                    '"num_hidden_layers": 2, "num_attention_heads": 4, '
                                                    '"vocab_size": 100, "intermediate_size": 128}')
    handler = DropHandler(orchestrator, analyze=in_process)
    await asyncio.gather(handler("My Model", incoming / "My Model"), handler("my-model", incoming / "my-model"))
    await orchestrator.quiesce()
    record = orchestrator.get("my-model")
    assert record.revision == 2 and record.state == ModelState.READY  # one filed, one re-drop


runner = CliRunner()


@pytest.mark.parametrize("case", SMALL, ids=[c.entry.encode("ascii", "replace").decode() for c in SMALL])
def test_cli_analyze_prints_one_line_and_exits_non_zero(tmp_path: Path, case: Case) -> None:
    path = tmp_path / case.entry
    (tmp_path / "victim").write_text("untouched")
    [case] = [c for c in cases(tmp_path / "victim") if c.entry == case.entry]
    case.build(path)
    config = tmp_path / "modelium.yaml"
    config.write_text("vllm: {enabled: false}\ntriton: {enabled: false}\n")
    result = runner.invoke(app, ["analyze", str(path), "--config", str(config)])
    if case.outcome == "failed":  # analysable, but no device could hold it: the report, then 1
        assert result.exit_code == 1, result.output
        assert "does not fit" in result.output and case.expect in result.output, result.output
        return
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot analyze"), result.output
    if not path.is_symlink() and path.is_dir():  # a link is followed: the user asked for it
        assert case.expect in lines[0], lines[0]


def test_quarantine_across_filesystems_copies_links_as_links_and_leaves_fifos(tmp_path: Path, monkeypatch) -> None:
    import errno

    import modelium.discovery.filing as filing
    from modelium.discovery import quarantine

    drop = tmp_path / "incoming" / "d"
    drop.mkdir(parents=True)
    (drop / "config.json").write_text("{}")
    (drop / "etc").symlink_to("/etc")
    os.mkfifo(drop / "pipe")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == drop:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(filing.os, "rename", rename)
    target = quarantine(drop, tmp_path / "failed", "d", "bad")
    assert not os.path.lexists(drop)
    assert os.readlink(target / "etc") == "/etc" and (target / "config.json").read_text() == "{}"
    assert not os.path.lexists(target / "pipe")  # a special file is never opened to copy it
    assert "bad" in (target / REASON_FILE).read_text()
