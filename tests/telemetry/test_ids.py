"""Decision ids (telemetry/ids.py): UUIDv7 whose random bits come from os.urandom in chunks."""

from __future__ import annotations

import os
import threading
import uuid

from telemetry.ids import _RANDOM_CHUNK, uuid7, uuid7_ms


def test_ids_are_version_7_time_ordered_and_unique_past_many_chunks() -> None:
    count = (_RANDOM_CHUNK // 10) * 5 + 3  # crosses several refills of the random chunk
    ids = [uuid7() for _ in range(count)]
    assert len(set(ids)) == count
    assert {i.version for i in ids} == {7}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert [uuid7_ms(i) for i in ids] == sorted(uuid7_ms(i) for i in ids)
    # The random part is not repeated within a millisecond either.
    assert len({i.int & ((1 << 74) - 1) for i in ids}) == count


def test_threads_draw_different_random_bits() -> None:
    seen: list[uuid.UUID] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [uuid7(unix_ms=1) for _ in range(200)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 800  # same millisecond: only the random bits tell them apart


def test_a_forked_child_does_not_reuse_the_parents_random_bits() -> None:
    uuid7()  # the parent has a chunk in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, sent to the parent
        os.close(read)
        os.write(write, b"".join(uuid7(unix_ms=1).bytes for _ in range(50)))
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {data[i : i + 16] for i in range(0, len(data), 16)}
    parent = {uuid7(unix_ms=1).bytes for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
