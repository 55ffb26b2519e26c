"""/metrics across processes: the workers' counter files, their reading and summing.

The real thing (twistd with `processes = 2` on slapd, binds through both processes) is
tests/integration/test_processes.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from otpgate.procstats import (
    MAX_STATS_BYTES,
    PeerStats,
    ProcessTotals,
    StatsFolder,
    StatsWriter,
    private_folder_problem,
    worker_file,
)
from otpgate.stats import AuthCounts, DirectoryStats
from otpgate.web.metrics import Metrics, count_event


def totals(accepts: int, binds: int = 0) -> ProcessTotals:
    t = ProcessTotals()
    for _ in range(accepts):
        count_event(t.auth, {"outcome": "accept", "front_end": "ldap"})
    for _ in range(binds):
        t.directory.observe("bind", 0.002)
    return t


def write(folder: Path, index: int, pid: int, stats: ProcessTotals) -> None:
    doc = {"index": index, "pid": pid, "stats": stats.to_dict()}
    worker_file(folder, index).write_text(json.dumps(doc))


def test_counters_round_trip_and_add_up() -> None:
    a = totals(2, 3)
    a.directory.error("timeout")
    a.directory.cas_conflicts = 4
    count_event(a.auth, {"outcome": "reject", "front_end": "ldap", "reason": "wrong OTP "
                         "(now locked out)"})
    count_event(a.auth, {"outcome": "helpdesk-unlock", "front_end": "web"})
    b = ProcessTotals()
    b.add(json.loads(json.dumps(a.to_dict())))
    b.add(a.to_dict())
    assert b.auth.auth[("ldap", "accept")] == 4 and b.auth.rejections[("ldap", "wrong_otp")] == 2
    assert b.auth.lockouts == 2 and b.auth.web_actions["helpdesk-unlock"] == 2
    assert b.auth.total == 6
    assert b.directory.latency["bind"].count == 6 and b.directory.errors["timeout"] == 2
    assert b.directory.cas_conflicts == 8
    assert abs(b.directory.latency["bind"].total - 0.012) < 1e-9


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"directory": {"latency": {"bind": [[1, 2], 0.1]}}},
        {"directory": {"cas_conflicts": -1}},
        {"directory": {"errors": {"timeout": "many"}}},
        {"auth": {"auth": [["ldap", "accept"]]}},
        {"auth": {"lockouts": True}},
    ],
)
def test_a_doc_that_is_no_counters_is_refused_whole(doc: object) -> None:
    t = totals(1)
    with pytest.raises(ValueError):
        t.add(doc)
    assert t.auth.total == 1 and t.directory.cas_conflicts == 0


def test_writer_writes_when_changed_atomically_and_once_more_at_stop(tmp_path: Path) -> None:
    clock = Clock()
    counts = totals(1)
    writer = StatsWriter(worker_file(tmp_path, 1), 1, counts.to_dict, clock, interval=1.0)
    writer.startService()
    doc = json.loads(worker_file(tmp_path, 1).read_text())
    assert doc["index"] == 1 and doc["pid"] == os.getpid()
    mtime = worker_file(tmp_path, 1).stat().st_mtime_ns
    clock.advance(1)  # nothing changed: not written again
    assert worker_file(tmp_path, 1).stat().st_mtime_ns == mtime
    count_event(counts.auth, {"outcome": "accept", "front_end": "ldap"})
    writer.stopService()  # the last counts, even between two ticks
    assert json.loads(worker_file(tmp_path, 1).read_text())["stats"] == counts.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1.json"]  # no temp file left
    # the main process has gone with its folder: nothing to write to, no error
    StatsFolder(tmp_path).stopService()
    assert not tmp_path.exists()
    writer.write()


def test_peers_are_summed_and_a_restarted_worker_keeps_its_predecessors_counts(
    tmp_path: Path,
) -> None:
    peers = PeerStats(tmp_path)
    write(tmp_path, 1, 100, totals(3, 3))
    write(tmp_path, 2, 200, totals(5))
    read = peers.read()
    assert {i: t.auth.total for i, t in read.items()} == {1: 3, 2: 5} and peers.reporting == 2
    write(tmp_path, 1, 101, totals(1, 1))  # worker 1 died, its successor logged one in
    read = peers.read()
    assert read[1].auth.total == 4 and read[1].directory.latency["bind"].count == 4
    write(tmp_path, 1, 101, totals(2, 1))
    assert peers.read()[1].auth.total == 5  # monotonic: 3 (retired) + 2
    assert peers.read()[1].auth.total == 5  # reading twice adds nothing


def test_unreadable_files_are_skipped_and_the_others_still_count(tmp_path: Path) -> None:
    peers = PeerStats(tmp_path)
    write(tmp_path, 1, 100, totals(3))
    worker_file(tmp_path, 2).write_text("{not json")
    worker_file(tmp_path, 3).write_text(json.dumps({"index": "3", "pid": 1, "stats": {}}))
    worker_file(tmp_path, 4).write_text(" " * (MAX_STATS_BYTES + 1))
    assert {i: t.auth.total for i, t in peers.read().items()} == {1: 3}
    # a worker whose file turned bad keeps the counts last read from it
    worker_file(tmp_path, 1).write_text("garbage")
    assert peers.read()[1].auth.total == 3


def test_metrics_sum_every_process_and_list_each(tmp_path: Path) -> None:
    directory = DirectoryStats()
    directory.observe("bind", 0.002)
    peers = PeerStats(tmp_path)
    metrics = Metrics(directory, None, peers)
    metrics.observe_audit({"outcome": "accept", "front_end": "ldap"})
    metrics.observe_audit({"outcome": "reject", "front_end": "ldap", "reason": "wrong OTP"})
    write(tmp_path, 1, 100, totals(3, 2))
    text = metrics.text().decode()
    assert 'otpgate_authentications_total{front_end="ldap",outcome="accept"} 4.0' in text
    assert 'otpgate_rejections_total{front_end="ldap",reason="wrong_otp"} 1.0' in text
    assert 'otpgate_directory_seconds_count{operation="bind"} 3.0' in text
    assert 'otpgate_process_authentications_total{process="main"} 2.0' in text
    assert 'otpgate_process_authentications_total{process="1"} 3.0' in text
    assert "otpgate_processes_reporting 2.0" in text
    alone = Metrics(DirectoryStats()).text().decode()  # one process: the same families
    assert "otpgate_processes_reporting 1.0" in alone and "otpgate_lockouts_total 0.0" in alone


def test_auth_counts_total_counts_authentications_only() -> None:
    counts = AuthCounts()
    for outcome in ("accept", "reject", "challenge", "enroll", "view"):
        count_event(counts, {"outcome": outcome, "front_end": "web"})
    assert counts.total == 3 and sum(counts.web_actions.values()) == 2


def test_ldap_proxy_events_round_trip_and_sum_across_processes(tmp_path: Path) -> None:
    from collections import Counter

    worker = totals(0)
    worker.ldap_proxy.update({"proxy_header_untrusted": 2, "refused_client_limit": 1})
    back = ProcessTotals()
    back.add(json.loads(json.dumps(worker.to_dict())))
    assert back.ldap_proxy == {"proxy_header_untrusted": 2, "refused_client_limit": 1}
    for bad in ({"ldap_proxy": {"x": -1}}, {"ldap_proxy": {"x": 1.5}}, {"ldap_proxy": []},
                {"ldap_proxy": {"x": True}}, {"ldap_proxy": {str(i): 1 for i in range(65)}}):
        with pytest.raises(ValueError, match="ldap_proxy"):
            back.add(bad)
    assert sum(back.ldap_proxy.values()) == 3  # refused whole
    main = Counter({"proxy_header_untrusted": 1, "proxy_header_timeout": 4})
    peers = PeerStats(tmp_path)
    write(tmp_path, 1, 100, worker)
    text = Metrics(DirectoryStats(), None, peers, main).text().decode()
    family = "otpgate_ldap_proxy_connection_events_total"
    assert f'{family}{{event="proxy_header_untrusted"}} 3.0' in text
    assert f'{family}{{event="proxy_header_timeout"}} 4.0' in text
    assert f'{family}{{event="refused_client_limit"}} 1.0' in text
    assert family not in Metrics(DirectoryStats()).text().decode()  # no LDAP proxy: no family


def private(tmp_path: Path) -> Path:
    folder = tmp_path / "metrics"
    folder.mkdir(mode=0o700)
    return folder


def test_a_planted_symlink_is_replaced_never_followed(tmp_path: Path) -> None:
    """Someone who could write into the folder plants symlinks at the counter file's name and
    at the name a temporary file once had: the worker's write must not land in their target."""
    folder = private(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    worker_file(folder, 1).symlink_to(victim)
    (folder / f".worker-1.json.{os.getpid()}.tmp").symlink_to(victim)
    writer = StatsWriter(worker_file(folder, 1), 1, totals(2).to_dict, Clock())
    writer.write()
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    written = worker_file(folder, 1)
    assert not written.is_symlink() and stat.S_IMODE(written.lstat().st_mode) == 0o600
    assert json.loads(written.read_text())["stats"] == totals(2).to_dict()
    left = sorted(p.name for p in folder.iterdir())
    assert left == [f".worker-1.json.{os.getpid()}.tmp", "worker-1.json"]  # the plant, untouched


def test_nothing_is_written_to_a_folder_others_may_enter(tmp_path: Path) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o733)
    linked = tmp_path / "linked"
    linked.symlink_to(private(tmp_path))
    for folder in (open_folder, linked):
        StatsWriter(worker_file(folder, 1), 1, totals(1).to_dict, Clock()).write()
        assert list(folder.iterdir()) == []
    assert private_folder_problem(open_folder) == f"{open_folder} has mode 0733: others may enter it"
    assert private_folder_problem(linked) == f"{linked} is not a directory"
    assert private_folder_problem(tmp_path / "metrics") is None


def test_the_main_process_reads_no_symlink_and_no_fifo(tmp_path: Path) -> None:
    folder = private(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"index": 1, "pid": 9, "stats": totals(7).to_dict()}))
    worker_file(folder, 1).symlink_to(elsewhere)
    os.mkfifo(worker_file(folder, 2))
    write(folder, 3, 300, totals(3))
    peers = PeerStats(folder)
    assert {i: t.auth.total for i, t in peers.read().items()} == {3: 3}
