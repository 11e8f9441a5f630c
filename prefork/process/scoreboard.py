"""Shared-memory scoreboard: one fixed-size slot per worker.

Strategy: the master maps an anonymous shared ``mmap`` before forking, so every
worker inherits the same pages. Each worker writes only its own slot (plain
``struct.pack_into`` on fields it alone owns, so no lock is needed); the master
and the status page read all slots. The one cross-worker write is the global
staging RAM budget, which takes a fork-inherited lock so that two workers
cannot both claim the last megabytes.
"""

from __future__ import annotations

import enum
import mmap
import fcntl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
import struct
import time
from dataclasses import dataclass

# Slot header: pid, state, generation, heartbeat (monotonic), started (wall),
# requests, http connections, ws connections, bytes received, staged RAM, staged disk,
# uploads in flight, handler threads, threads running a handler, connections shed at max_connections,
# streamed request bodies in progress; the Redis broadcast transport's state (0 none, 1 connected,
# 2 away) and its messages published, received, kept local (Redis away) and dropped.
_HEAD = struct.Struct("<qiiddQIIQQQIHHQHHQQQQ")
MAX_UPLOADS = 8
_PATH_BYTES = 120
# One upload: path, bytes so far, declared length (-1 unknown), start (wall clock).
_UPLOAD = struct.Struct(f"<{_PATH_BYTES}sQqd")
SLOT_SIZE = _HEAD.size + MAX_UPLOADS * _UPLOAD.size
_RETIRED_BROADCAST = 32  # after the four retired totals: the retired broadcast counts


class WorkerState(enum.IntEnum):
    """What a worker slot says about its worker."""

    EMPTY = 0
    BOOTING = 1
    READY = 2
    STOPPING = 3


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload in flight, as read from the scoreboard."""

    path: str
    received: int
    declared: int | None
    started: float


@dataclass(frozen=True, slots=True)
class Retired:
    """Counters of workers that are gone, kept so that totals never go down."""

    requests: int
    bytes_received: int
    shed: int
    broadcast: tuple[int, ...] = (0, 0, 0, 0)  # published, received, local only, dropped


@dataclass(frozen=True, slots=True)
class SlotView:
    """A snapshot of one worker slot."""

    index: int
    pid: int
    state: WorkerState
    generation: int
    heartbeat: float
    started: float
    requests: int
    connections: int
    ws_connections: int
    bytes_received: int
    staged_ram: int
    staged_disk: int
    uploads: tuple[Upload, ...]
    threads: int = 0
    busy_threads: int = 0
    shed: int = 0
    streams: int = 0
    broadcast_state: int = 0  # 0: no Redis transport, 1: connected to Redis, 2: Redis away
    broadcast: tuple[int, ...] = (0, 0, 0, 0)  # published, received, local only, dropped


class Scoreboard:
    """A table of worker slots in anonymous shared memory.

    Args:
        slots: how many worker slots to allocate (workers plus room for reloads).
        memory_budget: total bytes of staged request bodies allowed in RAM across workers.
    """

    def __init__(self, slots: int, memory_budget: int) -> None:
        self.slots = slots
        self.memory_budget = memory_budget
        # After the slots: retired requests, retired bytes, a sequence number that is odd
        # while the master moves a dead worker's counters into the retired totals, and
        # retired connections shed, then the retired broadcast counts (4 x Q).
        self._mem = mmap.mmap(-1, SLOT_SIZE * slots + _RETIRED_BROADCAST + 32)
        # A POSIX record lock on an unlinked file: shared by the forked workers, and
        # released by the kernel if its holder dies (a semaphore would stay taken).
        # lockf locks belong to the process, so a thread lock orders threads within one.
        self._lock_file = tempfile.TemporaryFile()
        self._thread_lock = threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive access across all processes and threads (for the RAM budget)."""
        with self._thread_lock:
            fcntl.lockf(self._lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._lock_file.fileno(), fcntl.LOCK_UN)

    # --- slot ownership (master) -------------------------------------------------
    def claim(self, pid: int, generation: int) -> int:
        """Find an empty slot, mark it booting for ``pid`` and return its index."""
        for index in range(self.slots):
            if self._read_head(index)[0] == 0:
                self._mem[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
                _HEAD.pack_into(self._mem, index * SLOT_SIZE, pid, WorkerState.BOOTING, generation,
                                time.monotonic(), time.time(), *([0] * (len(_FIELD_OFFSETS) - 5)))
                return index
        raise RuntimeError(f"scoreboard full: all {self.slots} slots are in use")

    def set_pid(self, index: int, pid: int) -> None:
        """Record the pid of the worker forked for a claimed slot."""
        struct.pack_into("<q", self._mem, index * SLOT_SIZE, pid)

    def release(self, index: int) -> None:
        """Free a dead worker's slot (its staged RAM reservation goes with it)."""
        with self.locked():
            self._mem[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)

    def retire(self, index: int) -> None:
        """Move a dead worker's counters into the retired totals and free its slot, as one step
        for readers of ``totals_and_views`` (a counter never dips or doubles while it happens)."""
        seq_offset = SLOT_SIZE * self.slots + 16
        # The budget lock is taken before the sequence turns odd: its system calls stay
        # outside the window in which readers have to retry.
        with self.locked():
            seq = struct.unpack_from("<Q", self._mem, seq_offset)[0]
            struct.pack_into("<Q", self._mem, seq_offset, seq + 1)
            try:
                head = self._read_head(index)
                self.add_retired(head[5], head[8], head[14], head[17:21])
                self._mem[index * SLOT_SIZE:(index + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)
            finally:
                struct.pack_into("<Q", self._mem, seq_offset, seq + 2)

    def totals_and_views(self) -> tuple[Retired, list[SlotView]]:
        """The retired totals and every occupied slot, read consistently.

        A seqlock read: retried while the master is retiring a worker (``retire``), so that a
        dead worker's counters are counted exactly once.
        """
        seq_offset = SLOT_SIZE * self.slots + 16
        while True:
            before = struct.unpack_from("<Q", self._mem, seq_offset)[0]
            if before % 2 == 0:
                views = self.views()
                retired = Retired(self.retired_requests, self.retired_bytes_received, self.retired_shed,
                                  _BROADCAST_COUNTS.unpack_from(self._mem, self._retired_broadcast_offset))
                if struct.unpack_from("<Q", self._mem, seq_offset)[0] == before:
                    return retired, views
            time.sleep(0.0001)

    @property
    def _retired_broadcast_offset(self) -> int:
        return SLOT_SIZE * self.slots + _RETIRED_BROADCAST

    def add_retired(self, requests: int, bytes_received: int = 0, shed: int = 0,
                    broadcast: tuple[int, ...] = (0, 0, 0, 0)) -> None:
        """Add a dead worker's counters to the totals kept across respawns."""
        kept = _BROADCAST_COUNTS.unpack_from(self._mem, self._retired_broadcast_offset)
        _BROADCAST_COUNTS.pack_into(self._mem, self._retired_broadcast_offset,
                                    *(a + b for a, b in zip(kept, broadcast)))
        offset = SLOT_SIZE * self.slots
        total, received = struct.unpack_from("<QQ", self._mem, offset)
        struct.pack_into("<QQ", self._mem, offset, total + requests, received + bytes_received)
        retired_shed = struct.unpack_from("<Q", self._mem, offset + 24)[0]
        struct.pack_into("<Q", self._mem, offset + 24, retired_shed + shed)

    @property
    def retired_requests(self) -> int:
        """Requests served by workers that are gone (so counters never go down)."""
        return int(struct.unpack_from("<Q", self._mem, SLOT_SIZE * self.slots)[0])

    @property
    def retired_shed(self) -> int:
        """Connections shed by workers that are gone."""
        return int(struct.unpack_from("<Q", self._mem, SLOT_SIZE * self.slots + 24)[0])

    @property
    def retired_bytes_received(self) -> int:
        """Bytes received by workers that are gone."""
        return int(struct.unpack_from("<Q", self._mem, SLOT_SIZE * self.slots + 8)[0])

    # --- reading (master, status page) ---------------------------------------------
    def _read_head(self, index: int) -> tuple[int, ...]:
        return _HEAD.unpack_from(self._mem, index * SLOT_SIZE)

    def view(self, index: int) -> SlotView:
        """Return a snapshot of one slot."""
        head = self._read_head(index)
        uploads = []
        base = index * SLOT_SIZE + _HEAD.size
        for n in range(min(head[11], MAX_UPLOADS)):
            path, received, declared, started = _UPLOAD.unpack_from(self._mem, base + n * _UPLOAD.size)
            uploads.append(Upload(path.rstrip(b"\0").decode("utf-8", "replace"), received,
                                  None if declared < 0 else declared, started))
        return SlotView(index, head[0], WorkerState(head[1]), head[2], head[3], head[4], head[5],
                        head[6], head[7], head[8], head[9], head[10], tuple(uploads), head[12], head[13],
                        head[14], head[15], head[16], head[17:21])

    def views(self) -> list[SlotView]:
        """Snapshots of every occupied slot."""
        return [self.view(i) for i in range(self.slots) if self._read_head(i)[0] != 0]

    def staged_ram_total(self) -> int:
        """Bytes of request bodies held in RAM across all workers."""
        return sum(self._read_head(i)[9] for i in range(self.slots))

    def slot(self, index: int) -> "WorkerSlot":
        """The writer handle a worker uses for its own slot."""
        return WorkerSlot(self, index)


class WorkerSlot:
    """A worker's handle on its own slot: heartbeat, counters, uploads, RAM budget."""

    def __init__(self, board: Scoreboard, index: int) -> None:
        self.board = board
        self.index = index
        self._base = index * SLOT_SIZE
        self._uploads: dict[int, tuple[str, int, int | None, float]] = {}

    def _add(self, field_offset: str, delta: int) -> None:
        offset = self._base + _FIELD_OFFSETS[field_offset]
        codec = _FIELD_STRUCTS[field_offset]
        mem = self.board._mem
        value = codec.unpack_from(mem, offset)[0] + delta
        codec.pack_into(mem, offset, value if value > 0 else 0)

    def heartbeat(self, now: float | None = None) -> None:
        """Mark the worker alive (called each loop turn)."""
        struct.pack_into("<d", self.board._mem, self._base + 16, time.monotonic() if now is None else now)

    def set_state(self, state: WorkerState) -> None:
        """Publish the worker's state."""
        struct.pack_into("<i", self.board._mem, self._base + 8, int(state))

    def set_threads(self, threads: int, busy: int) -> None:
        """Publish the handler threads and how many of them run a handler now."""
        struct.pack_into("<HH", self.board._mem, self._base + _FIELD_OFFSETS["threads"],
                         min(threads, 0xFFFF), min(busy, 0xFFFF))

    def count_request(self) -> None:
        """One more request served."""
        self._add("requests", 1)

    def add_streams(self, delta: int) -> None:
        """A streamed request body began (+1) or ended (-1)."""
        self._add("streams", delta)

    def set_broadcast(self, connected: bool, published: int, received: int, local_only: int,
                      dropped: int) -> None:
        """The Redis transport's state and counts (absolute: one writer, its own lock)."""
        _BROADCAST_FIELDS.pack_into(self.board._mem, self._base + _FIELD_OFFSETS["broadcast_state"],
                                    1 if connected else 2, published, received, local_only, dropped)

    def count_shed(self, count: int) -> None:
        """Connections closed to make room at max_connections."""
        self._add("shed", count)

    def add_connections(self, http: int = 0, ws: int = 0) -> None:
        """Adjust the open connection counters."""
        if http:
            self._add("connections", http)
        if ws:
            self._add("ws_connections", ws)

    def add_received(self, nbytes: int) -> None:
        """Add to the bytes-received counter."""
        self._add("bytes_received", nbytes)

    def add_staged_disk(self, nbytes: int) -> None:
        """Adjust the bytes staged on disk (negative when a staging file goes away)."""
        self._add("staged_disk", nbytes)

    # --- the global RAM budget (MemoryBudget protocol used by BodySpool) ---
    def try_reserve(self, nbytes: int) -> bool:
        """Reserve staging RAM from the global budget; False when it would be exceeded."""
        with self.board.locked():
            if self.board.staged_ram_total() + nbytes > self.board.memory_budget:
                return False
            self._add("staged_ram", nbytes)
        return True

    def release(self, nbytes: int) -> None:
        """Give back staging RAM reserved with try_reserve."""
        with self.board.locked():
            self._add("staged_ram", -nbytes)

    # --- uploads in flight ---
    def upload_started(self, key: int, path: str, declared: int | None) -> None:
        """Publish an upload in flight (``key`` is the caller's id for it)."""
        self._uploads[key] = (path, 0, declared, time.time())
        self._publish_uploads()

    def upload_progress(self, key: int, received: int) -> None:
        """Update how many bytes of an upload have arrived."""
        entry = self._uploads.get(key)
        if entry is None:
            return
        self._uploads[key] = (entry[0], received, entry[2], entry[3])
        position = list(self._uploads).index(key)
        if position < MAX_UPLOADS:
            offset = self._base + _HEAD.size + position * _UPLOAD.size + _PATH_BYTES
            struct.pack_into("<Q", self.board._mem, offset, received)

    def upload_finished(self, key: int) -> None:
        """Remove an upload from the slot."""
        if self._uploads.pop(key, None) is not None:
            self._publish_uploads()

    def _publish_uploads(self) -> None:
        base = self._base + _HEAD.size
        entries = list(self._uploads.values())[:MAX_UPLOADS]
        for n, (path, received, declared, started) in enumerate(entries):
            _UPLOAD.pack_into(self.board._mem, base + n * _UPLOAD.size, path.encode()[:_PATH_BYTES],
                              received, -1 if declared is None else declared, started)
        struct.pack_into("<I", self.board._mem, self._base + _FIELD_OFFSETS["uploads"], len(self._uploads))

    def read(self) -> SlotView:
        """A snapshot of this slot."""
        return self.board.view(self.index)


def _offsets() -> tuple[dict[str, int], dict[str, str]]:
    names = ["pid", "state", "generation", "heartbeat", "started", "requests", "connections",
             "ws_connections", "bytes_received", "staged_ram", "staged_disk", "uploads", "threads",
             "busy_threads", "shed", "streams", "broadcast_state", "broadcast_published",
             "broadcast_received", "broadcast_local_only", "broadcast_dropped"]
    codes = "qiiddQIIQQQIHHQHHQQQQ"
    offsets, formats, position = {}, {}, 0
    for name, code in zip(names, codes):
        size = struct.calcsize("<" + code)
        offsets[name], formats[name] = position, "<" + code
        position += size
    return offsets, formats


_FIELD_OFFSETS, _FIELD_FORMATS = _offsets()
# Counters change several times per request: compiled once, not looked up by format each time.
_FIELD_STRUCTS = {name: struct.Struct(fmt) for name, fmt in _FIELD_FORMATS.items()}
_BROADCAST_FIELDS = struct.Struct("<HQQQQ")
_BROADCAST_COUNTS = struct.Struct("<QQQQ")
