"""Attacks on what the zygote now sets up once for every worker, and on what a spare
holds before its call: the Landlock read paths it opened (inherited as descriptors),
the jail's skeleton and its one recursive read-only flag, the cgroup limits written
with plain system calls, a spare prepared for a profile, a warm worker's key.

Each runs in a fresh worker, in a spare prepared for its profile and (where it
applies) in a warm worker, under each file layer alone and both together, with the
workers' uid 0 where the machine is root (no uid of their own stands in).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import select
import stat
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pool_without, shared

from policies import parse_policy
from sandbox import IsolationWarning, Limits, Pool, SandboxUnavailable, _jail, _linux, _probes
from sandbox.protocol import Profile
from sandbox.read_set import base_read_paths
from sandbox.template import WorkerHandle
from tools import Registry

pytestmark = [
    pytest.mark.attack,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the attack tools are x86_64"),
]
TOOLS = str(Path(__file__).with_name("spare_attack_tools.py"))
BOMBS = str(Path(__file__).with_name("attack_tools.py"))
"""Its fork and memfd bombs, aimed here at a prepared spare's limits."""
ARRIVAL_S = 60.0
"""How long a requested spare may take to arrive on a loaded machine."""

LAYERS = {
    # name: (layers off, layers that must be on)
    "jail and Landlock": (("unprivileged_uid",), ("bind_mounts", "landlock")),
    "jail alone": (("landlock", "unprivileged_uid"), ("bind_mounts",)),
    "Landlock alone": (("bind_mounts", "unprivileged_uid"), ("landlock",)),
    "neither file layer": (("bind_mounts", "landlock"), ("unprivileged_uid",)),
}
"""Without a uid of its own a root pool's worker is uid 0 without capabilities: what
it could reach, it could write. With neither file layer it needs that uid (the pool
refuses uid 0 there)."""

ROOTED = ("spare_descriptors", "spare_write_every_mount")
"""Tools with a `root`: the call's own bind, added after the skeleton's."""


@pytest.fixture(scope="module", params=list(LAYERS))
def layered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pool]:
    base = tmp_path_factory.mktemp("spares")
    (base / "docs").mkdir()
    (base / "docs" / "doc.txt").write_text("the tool's own")
    text = "".join(f'[tools.{name}]\nroot = "docs"\n' for name in ROOTED)
    text += "[tools.attack_fork_bomb]\nmax_processes = 16\n"
    text += "[tools.attack_memfd_bomb]\nmemory_mb = 64\nmax_open_files = 1024\ntimeout_s = 60\n"
    registry = Registry.default()
    registry.load(TOOLS)
    registry.load(BOMBS)
    off, wanted = LAYERS[request.param]
    policy = parse_policy(text, "spares.toml", base)
    try:
        made = pool_without(off, wanted, policy, registry=registry)
    except SandboxUnavailable as exc:  # uid 0 with no file layer: refused, as it should
        pytest.skip(f"{request.param}: {exc}")
    with made as pool:
        yield shared(pool)


def wait_ready(pool: Pool, profile: Profile) -> None:
    """Until a spare set up for `profile` waits (the next such call takes it)."""
    template = pool._template
    deadline = time.monotonic() + ARRIVAL_S
    while True:
        with template._prepared_lock:
            if template.prepared.get(profile.key):
                return
        assert time.monotonic() < deadline, "no prepared spare arrived"
        time.sleep(0.01)


def fresh_then_prepared(pool: Pool, tool: str, **args: object) -> list[str]:
    """`tool`'s output in a fresh worker set up at the call, then in a spare set up
    ahead for the call's profile (its set-up done before the call arrived)."""
    first = pool.call(tool, args)
    assert first.ok, first
    call = pool._prepare(tool, args, None)
    profile = Profile.of(call)
    assert profile is not None
    wait_ready(pool, profile)
    hits = pool._template.hits.get(profile.key, 0)
    second = pool.call(tool, args)
    assert second.ok, second
    assert pool._template.hits.get(profile.key, 0) == hits + 1  # it took the spare
    return [first.output or "", second.output or ""]


def set_up(handle: WorkerHandle) -> None:
    """Until `handle`'s set-up is over (it closes its set-up pipe as the last step)."""
    poller = select.poll()
    poller.register(handle.setup_fd, select.POLLIN)
    assert poller.poll(ARRIVAL_S * 1000), "the spare's set-up never ended"
    assert handle.setup_failure() is None


def test_a_tool_holds_no_descriptor_the_zygote_opened(layered: Pool) -> None:
    """The zygote holds the Landlock read paths open (O_PATH, in the host's mount
    namespace), its namespaces' descriptors, its control socket: a worker inherits
    them all at fork. None may reach the tool, where `openat(fd, "..")` or `fchdir`
    would walk out of the jail and past Landlock's rules."""
    seen = fresh_then_prepared(layered, "spare_descriptors")
    warm = Limits(reuse_worker=True)
    for _ in range(2):
        result = layered.call("spare_descriptors", {}, limits=warm)
        assert result.ok, result
        seen.append(result.output or "")
    for output in seen:
        assert json.loads(output) == {}, output


def test_no_mount_but_the_workdir_is_writable(layered: Pool) -> None:
    """Every bind (directories, files, the call's `root` bound after the skeleton,
    /proc) and the skeleton itself refuse a new file, a new directory and an open for
    writing, with the worker's uid 0 owning most of them: one recursive read-only
    flag set before the workdir and the root were bound must cover all of them."""
    if not layered.layers["bind_mounts"].active:
        pytest.skip("no jail: the host's own mounts are what Landlock or the uid guard")
    for output in fresh_then_prepared(layered, "spare_write_every_mount"):
        seen = json.loads(output)
        assert seen["mounts"] > 5, seen  # the jail's binds, not a mount namespace alone
        assert seen["written"] == [], seen


def test_nothing_of_one_call_reaches_the_next(layered: Pool) -> None:
    """Fresh calls, the second in a spare prepared while the first ran: no file, no
    environment, no signal disposition of the first is there."""
    if not (layered.layers["bind_mounts"].active or layered.layers["landlock"].active):
        pytest.skip("with neither file layer, /tmp is the host's to write (by design)")
    marker = f"sa-spare-trace-{os.getpid()}-{time.monotonic_ns()}"
    first = layered.call("spare_leave_traces", {"marker": marker})
    assert first.ok, first
    left = json.loads(first.output or "[]")
    profile = Profile.of(layered._prepare("spare_find_traces", {"marker": marker}, None))
    assert profile is not None
    wait_ready(layered, profile)
    for _ in range(2):
        found = layered.call("spare_find_traces", {"marker": marker})
        assert found.ok and json.loads(found.output or "") == [], (left, found)


def test_no_spare_nor_the_zygote_can_be_signalled(layered: Pool) -> None:
    """The zygote (uid 0 with capabilities where the pool is root), the spares
    waiting beside the call (uid 0 until their set-up) and the orchestrator."""
    template = layered._template
    targets = {template.pid, os.getpid()}
    for spares in template.spares.values():
        with spares.mutex:
            targets |= {h.host_pid for h in spares.queue if hasattr(h, "host_pid")}
    with template._prepared_lock:
        targets |= {h.host_pid for idle in template.prepared.values() for h in idle}
    result = layered.call("spare_signal", {"pids": sorted(targets)})
    assert result.ok, result
    assert json.loads(result.output or "")["reached"] == [], (targets, result)


def test_limits_written_ahead_still_bind_a_prepared_spare(
    layered: Pool, request: pytest.FixtureRequest
) -> None:
    """pids.max and the memory limit, written by a spare while it waits for a call of
    its profile: a fork bomb and memory RLIMIT_AS does not count (memfd) stop there."""
    if request.node.callspec.params["layered"] != "jail and Landlock":
        pytest.skip("the limits do not depend on the file layers: one combination is enough")
    if not layered.layers["cgroup_pids"].active:
        pytest.skip(f"no pids cgroup here: {layered.layers['cgroup_pids'].detail}")
    for output in fresh_then_prepared(layered, "attack_fork_bomb"):
        assert output.startswith("stopped after") and int(output.split()[2]) < 16, output
    if not layered.layers["cgroup_memory"].active:
        return
    first = layered.call("attack_memfd_bomb")
    profile = Profile.of(layered._prepare("attack_memfd_bomb", {}, None))
    assert profile is not None
    wait_ready(layered, profile)
    second = layered.call("attack_memfd_bomb")
    for result in (first, second):
        if result.ok:
            assert result.output.startswith("stopped after"), result
            assert int(result.output.split()[2]) <= 64 + 16, result
        else:
            assert result.error is not None and result.error.kind == "memory_limit", result


@pytest.fixture(scope="module")
def one_uid() -> Iterator[Pool]:
    """Workers that share one uid (root's 0 without capabilities, or the pool's user)
    in the host's PID namespace, with no Landlock domain between them: only the
    capability drop claims to keep them from tracing one another. Nor does seccomp
    keep them from making user namespaces: only the jail's flags hold there. Nothing
    walls signals then, so the pool starts only when told to accept that (the
    red-team suite's kill test holds it to refusing otherwise)."""
    registry = Registry.default()
    registry.load(TOOLS)
    off = ("pid_namespace", "landlock", "unprivileged_uid", "seccomp", "userns_denied", "keyring")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        pool = Pool(registry=registry, size=1, disable=off, accept_unwalled_signals=True)
    for layer in ("bind_mounts", "capabilities"):
        if not pool.layers[layer].active:
            pool.close()
            pytest.skip(f"{layer} is unavailable here: {pool.layers[layer].detail}")
    with pool:
        yield shared(pool)


def test_a_tool_cannot_trace_a_spare_prepared_for_another_call(one_uid: Pool) -> None:
    """A spare prepared for another profile has dropped its capabilities already and
    waits, in the host's PID namespace, for a call it will run with that call's
    arguments, settings and network: a tool that could attach to it (or read or write
    its memory through /proc) would run in the next call. Neither it, the zygote, the
    other spares nor the orchestrator may be reached."""
    other = Limits(timeout_s=9)  # a profile of this test's own
    assert one_uid.call("spare_trace", {"pids": []}, limits=other).ok
    wait_ready(one_uid, Profile(limits=other))
    template = one_uid._template
    with template._prepared_lock:
        handles = [h for idle in template.prepared.values() for h in idle]
    for handle in handles:
        set_up(handle)
    prepared = {h.host_pid for h in handles}
    targets = prepared | {template.pid, os.getpid()}
    for spares in template.spares.values():
        with spares.mutex:
            targets |= {h.host_pid for h in spares.queue if hasattr(h, "host_pid")}
    result = one_uid.call("spare_trace", {"pids": sorted(targets)})
    assert result.ok, result
    assert json.loads(result.output or "")["reached"] == [], (prepared, result)
    after = one_uid.call("spare_trace", {"pids": []}, limits=other)  # the spare still serves
    assert after.ok, after


@pytest.mark.parametrize("mount_setattr", [True, False], ids=["mount_setattr", "remounts"])
def test_every_bind_is_read_only_on_either_road(mount_setattr: bool, tmp_path: Path) -> None:
    """`_jail.build` makes the binds read-only with one recursive `mount_setattr`, or
    (a kernel before 5.12, played here by making it unavailable) with a remount per
    bind: on either road, nothing bound (directories, files, the masked /proc files)
    takes a write, not even from root."""
    if os.geteuid() != 0 or not _linux.capabilities_effective() & (1 << 21):
        pytest.skip("builds a jail in a mount namespace of its own: needs CAP_SYS_ADMIN")
    layout = _jail.plan(base_read_paths([]))

    def probe() -> None:
        if not mount_setattr:
            _linux.set_readonly = lambda *_, **__: False  # this throwaway child's copy only
        _probes.enter_jail(str(tmp_path), layout, own_proc=False)
        written = []
        masked = [p for p in _jail.MASKED if os.path.exists(p)]
        # procfs makes no directory, read-only or not: one of its files instead.
        paths = [p if p != "/proc" else "/proc/self/comm" for p in [*layout.binds, *masked]]
        for path in paths:
            if os.path.isdir(path):
                planted = os.path.join(path, f"planted-{os.getpid()}")
                try:
                    os.mkdir(planted)
                except OSError as exc:
                    if exc.errno != errno.EROFS:
                        written.append(f"{path}: {exc}")
                else:
                    os.rmdir(planted)  # on the host: the bind is its directory
                    written.append(f"made a directory in {path}")
            elif not stat.S_ISCHR(os.stat(path).st_mode):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
                except OSError as exc:
                    if exc.errno != errno.EROFS:
                        written.append(f"{path}: {exc}")
                else:
                    written.append(f"opened {path} for writing")
        if written:
            raise AssertionError("; ".join(written))

    assert _probes.in_child(probe) is None


def test_a_read_path_moved_away_is_not_readable_at_its_new_name(tmp_path: Path) -> None:
    """The zygote holds each read path open from its start, for rules every worker
    adds through the descriptor. A directory the policy names, moved away since (an
    atomic deploy swaps `docs` for a new one, `mv docs archive`), is not what that
    path names any more: a worker forked after the move, with Landlock as its only
    file wall, may read the new `docs` and nothing at the old one's new name, not
    even what was written there after the move."""
    docs, archive = tmp_path / "docs", tmp_path / "archive"
    docs.mkdir()
    (docs / "published.txt").write_text("published")
    registry = Registry.default()
    registry.load(TOOLS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolationWarning)
        pool = Pool(
            registry=registry, read_paths=[str(docs)], disable=("bind_mounts", "unprivileged_uid")
        )
    with pool:
        if not pool.layers["landlock"].active:
            pytest.skip(f"no Landlock here: {pool.layers['landlock'].detail}")
        first = pool.call("spare_read", {"paths": [str(docs / "published.txt")]})
        seen = json.loads(first.output or "")
        assert seen[str(docs / "published.txt")] == "published", seen
        docs.rename(archive)
        (archive / "later.txt").write_text("written after the move")
        docs.mkdir()
        (docs / "new.txt").write_text("the new docs")
        moved = time.clock_gettime(time.CLOCK_BOOTTIME)
        paths = [str(archive / "published.txt"), str(archive / "later.txt"), str(docs / "new.txt")]
        deadline = time.monotonic() + ARRIVAL_S
        while True:  # the spares forked before the move (or during it) go first
            result = pool.call("spare_read", {"paths": paths})
            assert result.ok, result
            if json.loads(result.output or "")["started"] > moved:
                break
            assert time.monotonic() < deadline, "no worker forked after the move came"
        seen = json.loads(result.output or "")
        assert seen[paths[0]].startswith("denied") and seen[paths[1]].startswith("denied"), seen
        assert seen[paths[2]] == "the new docs", seen


def test_a_user_namespace_of_its_own_unlocks_no_bind(one_uid: Pool) -> None:
    """With seccomp off a tool can make a user namespace, and hold every capability
    in it: the jail's mounts, copied into its mount namespace, keep their read-only
    flag locked (set by one recursive `mount_setattr` in the worker's), so neither a
    remount nor `mount_setattr` clears it, and nothing bound takes a write."""
    result = one_uid.call("spare_remount_in_user_namespace")
    assert result.ok, result
    seen = json.loads(result.output or "")
    if seen["unshare"] != "done":
        pytest.skip(f"no user namespace for the tool here: {seen['unshare']}")
    assert seen["done"] == [], seen
