"""Pure logic of the directory change notifications: file-system types, parameters, settle times."""

from __future__ import annotations

import pytest

from airflow_trigger_kit.assets.directory import directory_asset
from airflow_trigger_kit.hub.inotify import NO_EVENT_FS_TYPES, fs_type_of, parse_mountinfo, sends_no_events
from airflow_trigger_kit.sensors.directory import MultiDirectorySensor
from airflow_trigger_kit.sources.directory import DirectoryScan, DirectoryWatchConfig, detect, empty_cursor
from airflow_trigger_kit.triggers import MultiDirectoryTrigger

pytestmark = pytest.mark.unit

MOUNTINFO = """\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 fileserver:/export rw,vers=4.2
41 40 0:36 / /mnt/shared/local rw,relatime shared:21 - tmpfs tmpfs rw
42 22 0:37 / /mnt/with\\040space rw,relatime shared:22 - cifs //nas/share rw
43 22 0:38 / /home/me/remote rw,nosuid,nodev,relatime shared:23 - fuse.sshfs me@host:/ rw,user_id=0
44 22 0:39 / /data rw,relatime - ext4 /dev/sdb1 rw
45 22 0:40 / /data rw,relatime - nfs host:/data rw
46 22 259:3 / /mnt/ntfs rw,relatime shared:24 - fuseblk /dev/sdc1 rw
garbage line without a separator
"""


def test_mountinfo_lines_give_mount_points_and_types() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [(m.mount_point, m.fs_type) for m in mounts][:3] == [
        ("/", "ext4"),
        ("/proc", "proc"),
        ("/mnt/shared", "nfs4"),
    ]
    assert ("/mnt/with space", "cifs") in [(m.mount_point, m.fs_type) for m in mounts], "octal escapes decoded"
    assert len(mounts) == 9, "malformed lines are skipped"


@pytest.mark.parametrize(
    ("path", "fs_type", "no_events"),
    [
        ("/srv/incoming", "ext4", False),
        ("/mnt/shared", "nfs4", True),
        ("/mnt/shared/exports/a", "nfs4", True),
        ("/mnt/shared/local/a", "tmpfs", False),  # a local mount inside a remote one: its longest mount
        ("/mnt/sharedness", "ext4", False),  # a prefix that is not a path component is not inside
        ("/mnt/with space/x", "cifs", True),
        ("/home/me/remote/x", "fuse.sshfs", True),
        ("/data/x", "nfs", True),  # stacked mounts: the later line is on top
        ("/mnt/ntfs/x", "fuseblk", False),  # a local disk through FUSE: its changes go through this kernel
    ],
)
def test_file_system_of_a_directory_is_its_longest_mount(path: str, fs_type: str, no_events: bool) -> None:
    found = fs_type_of(path, parse_mountinfo(MOUNTINFO))
    assert found == fs_type
    assert sends_no_events(found) is no_events


def test_unknown_file_systems_count_as_local_and_the_list_can_be_extended() -> None:
    assert fs_type_of("/x", []) is None
    assert sends_no_events(None) is False
    assert sends_no_events("ext4", NO_EVENT_FS_TYPES | {"ext4"}) is True


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_notify_must_be_a_bool_and_the_message_names_it(bad: object) -> None:
    with pytest.raises(ValueError, match=r"notify must be True .* or False .*, got " + repr(bad).replace("'", ".")):
        MultiDirectoryTrigger(directories=["/data"], namespace="n", name="w", notify=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="notify must be True"):
        MultiDirectorySensor(task_id="t", directories=["/data"], notify=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="notify must be True"):
        directory_asset("a", directories=["/data"], notify=bad)  # type: ignore[arg-type]


def test_notify_is_part_of_the_identity_and_round_trips() -> None:
    on = MultiDirectoryTrigger(directories=["/data"], namespace="n", name="w", mode="sensor")
    off = MultiDirectoryTrigger(directories=["/data"], namespace="n", name="w", mode="sensor", notify=False)
    assert on.serialize()[1]["notify"] is True and off.serialize()[1]["notify"] is False
    assert on.source_identity() != off.source_identity()
    sensor = MultiDirectorySensor(task_id="t", directories=["/data"], notify=False)
    assert sensor.make_trigger("n", "w").serialize()[1]["notify"] is False


def test_detect_tells_when_the_first_settling_file_settles() -> None:
    for kinds in (("created",), ("created", "modified", "deleted")):
        config = DirectoryWatchConfig.create(directories=["/d"], settle_seconds=2.0, event_kinds=kinds)
        files = {
            "old": (1, 1, 1_000, 1_000),
            "hot1": (2, 1, 9_000_000_000, 9_000_000_000),
            "hot2": (3, 1, 9_500_000_000, 9_500_000_000),
        }
        scan = DirectoryScan("/d", True, files, 10_000_000_000)
        batch = detect(config, empty_cursor(config), [scan], 100, now_ns=10_000_000_000)
        assert [i.data["name"] for i in batch.items] == ["old"]
        assert batch.stats["unsettled"] == 2
        assert batch.stats["settles_at_ns"] == 11_000_000_000, "the oldest hot file's stamp + settle_seconds"
        settled = detect(config, batch.cursor, [scan], 100, now_ns=12_000_000_000)
        assert settled.stats["settles_at_ns"] == 0
