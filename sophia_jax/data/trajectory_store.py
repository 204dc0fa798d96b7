"""Trajectory store: ArrayRecord shards with done markers, a derived manifest, and selection indexes.

Layout under ``root``::

    shards/shard-00007.array_record   one encoded TrajectoryRecord per ArrayRecord entry
    shards/shard-00007.json           done marker: counts, sha256 of the data file, provenance,
                                      caller meta, and a small per-record index (see below)
    selections/<name>.json            a re-selection result: (shard_id, record_index) keys
    manifest.json                     a view rebuilt from the markers, for people and tools

Questions go to shards by a stable hash of their id (:func:`shard_of`), and each host processes
its own shards (:func:`shards_for_host`), so hosts never write the same file. Nothing is shared
except the manifest, which is derived: any host may rewrite it, and the last write wins with a
complete view.

Atomicity. Every file is written to a temporary name in its own folder, flushed and fsynced,
then renamed over the final name (``os.replace``, atomic on POSIX). A shard's data file is
renamed into place first and its marker second, so a shard is *finished* exactly when its
marker exists and the data file on disk has the size the marker records (:meth:`verify_shard`
also checks the sha256 and record count). A job killed midway leaves a temporary file or a data
file without a marker; :meth:`TrajectoryStore.cleanup`, run on open, deletes those, and the shard
is simply generated again. Overwriting a finished shard deletes its marker first, so a kill
during the overwrite also leaves an unfinished shard rather than a marker naming the wrong data.

Cleanup never touches another live host's files: temporary names carry the writer's process
index, and by default a store removes only its own temporary files and unfinished data files
of shards it owns. ``cleanup(all_processes=True)`` removes everyone's, for when no job runs.

The per-record index in each marker holds the columns Keep-N selection needs (key, rewards,
policy-token length, selected flag), so :meth:`iter_index` lets selection be rerun over
millions of trajectories without reading their text or log-probs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from sophia_jax.errors import UserError
from sophia_jax.data.trajectory_record import FORMAT_VERSION, RecordKey, TrajectoryRecord, decode, encode, record_key

__all__ = [
    "DecodeRecord",
    "IndexRow",
    "Selection",
    "SelectedSource",
    "ShardExistsError",
    "StaleSelectionError",
    "StoreError",
    "TrajectoryStore",
    "shard_of",
    "shards_for_host",
]

log = logging.getLogger(__name__)

# One record per chunk: Grain reads records at random, and a trajectory is already many KiB.
WRITER_OPTIONS = "group_size:1"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(array_record|json)$")
_TMP_RE = re.compile(r"^\..+\.tmp\.p(\d+)\.\d+\.[0-9a-f]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
_INDEX_COLUMNS = ("question_id", "caption_index", "trajectory_index", "outcome_reward",
                  "caption_reward", "trajectory_policy_tokens", "selected")


class StoreError(UserError, RuntimeError):
    """The store is asked for something it does not hold (unfinished shard, unknown selection)."""


class ShardExistsError(FileExistsError):
    """Writing a shard that is already finished, without ``overwrite=True``."""


class StaleSelectionError(StoreError):
    """A selection points at a shard that was rewritten or removed after the selection was made."""


def shard_of(question_id: str, num_shards: int) -> int:
    """Shard of a question: sha256 of its id modulo ``num_shards`` (stable across processes)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    digest = hashlib.sha256(question_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shards_for_host(all_shard_ids: Iterable[int], process_index: int, process_count: int) -> list[int]:
    """The shards host ``process_index`` of ``process_count`` owns: ``shard_id % count == index``, sorted."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return sorted({int(s) for s in all_shard_ids if int(s) % process_count == process_index})


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """One record as seen by selection, read from a shard marker (no text, no log-probs)."""

    shard_id: int
    record_index: int
    question_id: str
    caption_index: int
    trajectory_index: int
    outcome_reward: float
    caption_reward: float
    trajectory_policy_tokens: int
    selected: bool


@dataclasses.dataclass(frozen=True)
class Selection:
    """A stored re-selection: ``keys`` are ``(shard_id, record_index)`` in the order written."""

    name: str
    keys: tuple[tuple[int, int], ...]
    meta: dict[str, Any]
    created_at: str
    shard_sha256: dict[int, str]  # the data files the keys refer to, as they were when selected


class DecodeRecord(grain.transforms.Map):
    """Grain transform: ArrayRecord bytes -> :class:`TrajectoryRecord`."""

    def map(self, element: bytes) -> TrajectoryRecord:
        return decode(element)


class SelectedSource:
    """Random-access source over the selected records only: ``source[i]`` is the bytes of ``keys[i]``.

    Picklable (an ArrayRecord source and an index array), so Grain worker processes can use it.
    """

    def __init__(self, paths: Sequence[str], global_indices: np.ndarray):
        self._source = grain.sources.ArrayRecordDataSource(list(paths))
        self._indices = np.asarray(global_indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> bytes:
        return self._source[int(self._indices[i])]

    def __repr__(self) -> str:
        return f"SelectedSource({len(self)} records from {len(self._source.paths)} shards)"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. FUSE mounts) cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TrajectoryStore:
    """ArrayRecord trajectory shards under ``root`` (see the module docstring for the layout).

    Args:
        root: store folder; created on the first write.
        process_index, process_count: this host's place in the job. They tag temporary files
            and decide which unfinished shards :meth:`cleanup` may delete.
        clean_on_open: run :meth:`cleanup` now (removes what a killed run of this host left).
    """

    def __init__(self, root: str | os.PathLike, *, process_index: int = 0, process_count: int = 1,
                 clean_on_open: bool = True):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.root = Path(root)
        self.process_index = process_index
        self.process_count = process_count
        self._markers: dict[int, tuple[tuple[int, ...], dict]] = {}  # id -> (stat key, marker)
        if clean_on_open:
            self.cleanup()

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.root)!r}, process {self.process_index}/{self.process_count})"

    # ----------------------------------------------------------------------------- paths
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def selection_dir(self) -> Path:
        return self.root / "selections"

    def data_path(self, shard_id: int) -> Path:
        return self.shard_dir / f"shard-{shard_id:05d}.array_record"

    def marker_path(self, shard_id: int) -> Path:
        return self.shard_dir / f"shard-{shard_id:05d}.json"

    def _tmp_path(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.tmp.p{self.process_index}.{os.getpid()}.{os.urandom(4).hex()}")

    def _write_json(self, final: Path, obj: Any) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_path(final)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(final.parent)

    # ----------------------------------------------------------------------------- shard state
    def _scan(self) -> tuple[set[int], set[int]]:
        """Shard ids with a data file, and shard ids with a marker file."""
        data, markers = set(), set()
        if self.shard_dir.is_dir():
            for entry in os.scandir(self.shard_dir):
                m = _SHARD_RE.match(entry.name)
                if m:
                    (data if m.group(2) == "array_record" else markers).add(int(m.group(1)))
        return data, markers

    def marker(self, shard_id: int) -> dict | None:
        """The done marker of a *finished* shard, or ``None`` if the shard is not finished."""
        try:
            st = self.marker_path(shard_id).stat()
            data_size = self.data_path(shard_id).stat().st_size
        except FileNotFoundError:
            return None
        # The inode changes with every replace; mtime alone can repeat (coarse clocks) and size too.
        stat_key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        cached = self._markers.get(shard_id)
        if cached is None or cached[0] != stat_key:
            try:
                marker = json.loads(self.marker_path(shard_id).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("unreadable marker %s: %s", self.marker_path(shard_id), e)
                return None
            cached = (stat_key, marker)
            self._markers[shard_id] = cached
        marker = cached[1]
        if marker.get("shard_id") != shard_id or marker.get("data_bytes") != data_size:
            return None
        return marker

    def finished_shards(self) -> set[int]:
        """Shards whose marker exists and matches the size of their data file."""
        data, markers = self._scan()
        return {s for s in data & markers if self.marker(s) is not None}

    def verify_shard(self, shard_id: int) -> None:
        """Full check of a finished shard: sha256 and record count; raises :class:`StoreError`."""
        marker = self.marker(shard_id)
        if marker is None:
            raise StoreError(f"shard {shard_id} is not finished in {self.root}")
        path = self.data_path(shard_id)
        if _sha256_of(path) != marker["sha256"]:
            raise StoreError(f"{path}: sha256 differs from its marker")
        reader = array_record_module.ArrayRecordReader(str(path))
        try:
            if reader.num_records() != marker["num_records"]:
                raise StoreError(f"{path}: {reader.num_records()} records, marker says {marker['num_records']}")
        finally:
            reader.close()

    def cleanup(self, *, all_processes: bool = False) -> list[Path]:
        """Delete what killed writers left: temporary files and unfinished shards' files.

        Only this process index's temporary files and the shards it owns are touched unless
        ``all_processes`` (other hosts may be writing right now). Returns the removed paths.
        """
        removed: list[Path] = []
        for folder in (self.root, self.shard_dir, self.selection_dir):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                m = _TMP_RE.match(entry.name)
                if m and (all_processes or int(m.group(1)) == self.process_index):
                    removed.append(Path(entry.path))
        data, markers = self._scan()
        for shard_id in sorted(data | markers):
            mine = all_processes or shard_id % self.process_count == self.process_index
            if mine and self.marker(shard_id) is None:
                removed += [p for p in (self.data_path(shard_id), self.marker_path(shard_id)) if p.exists()]
        for path in removed:
            log.warning("removing leftover of an interrupted write: %s", path)
            path.unlink(missing_ok=True)
        return removed

    # ----------------------------------------------------------------------------- writing
    def write_shard(self, shard_id: int, records: Sequence[TrajectoryRecord],
                    meta: Mapping[str, Any] | None = None, *, overwrite: bool = False) -> dict:
        """Write one shard's records and then its done marker; returns the marker.

        Raises :class:`ShardExistsError` if the shard is finished and ``overwrite`` is false,
        and ``ValueError`` for a repeated record key or a ``meta`` that is not JSON.
        """
        if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
            raise ValueError(f"shard_id must be a non-negative int, got {shard_id!r}")
        started_at = _now()
        records = list(records)
        meta = dict(meta or {})
        json.dumps(meta)  # fail before writing anything
        keys: set[RecordKey] = set()
        for r in records:
            if not isinstance(r, TrajectoryRecord):
                raise TypeError(f"shard {shard_id}: expected TrajectoryRecord, got {type(r).__name__}")
            if record_key(r) in keys:
                raise ValueError(f"shard {shard_id}: record {record_key(r)} appears twice")
            keys.add(record_key(r))
        if self.marker(shard_id) is not None and not overwrite:
            raise ShardExistsError(f"shard {shard_id} is already finished in {self.root}; "
                                   "pass overwrite=True to replace it")
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._markers.pop(shard_id, None)
        if self.marker_path(shard_id).exists():  # unfinish first, so a kill cannot pair old marker and new data
            self.marker_path(shard_id).unlink()
            _fsync_dir(self.shard_dir)

        final = self.data_path(shard_id)
        tmp = self._tmp_path(final)
        try:
            writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
            try:
                for r in records:
                    writer.write(encode(r))
            finally:
                writer.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sha256, data_bytes = _sha256_of(tmp), tmp.stat().st_size
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.shard_dir)

        marker = {
            "format": "sophia_jax.trajectory_shard",
            "version": 1,
            "record_format_version": FORMAT_VERSION,
            "shard_id": shard_id,
            "data_file": final.name,
            "data_bytes": data_bytes,
            "sha256": sha256,
            "num_records": len(records),
            "question_ids": sorted({r.question_id for r in records}),
            "index": {c: [getattr(r, c) for r in records] for c in _INDEX_COLUMNS},
            "process_index": self.process_index,
            "process_count": self.process_count,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at,
            "finished_at": _now(),
            "meta": meta,
        }
        self._write_json(self.marker_path(shard_id), marker)
        return marker

    # ----------------------------------------------------------------------------- manifest
    def manifest(self) -> dict:
        """A summary of the finished shards, rebuilt from their markers."""
        shards, owner = [], {}
        duplicates: set[str] = set()
        for shard_id in sorted(self.finished_shards()):
            m = self.marker(shard_id)
            for q in m["question_ids"]:
                if owner.setdefault(q, shard_id) != shard_id:
                    duplicates.add(q)
            shards.append({k: m[k] for k in ("shard_id", "data_file", "num_records", "data_bytes", "sha256",
                                             "process_index", "host", "finished_at")}
                          | {"num_questions": len(m["question_ids"])})
        return {
            "format": "sophia_jax.trajectory_store",
            "version": 1,
            "updated_at": _now(),
            "num_shards": len(shards),
            "num_records": sum(s["num_records"] for s in shards),
            "num_questions": len(owner),
            "duplicate_question_ids": sorted(duplicates),  # a question in two shards: a sharding bug
            "shards": shards,
            "selections": self.selections(),
        }

    def write_manifest(self) -> dict:
        """Rebuild ``manifest.json`` from the markers and replace it atomically; returns it."""
        manifest = self.manifest()
        self._write_json(self.root / "manifest.json", manifest)
        return manifest

    # ----------------------------------------------------------------------------- reading
    def _finished(self, shard_ids: Iterable[int] | None) -> list[int]:
        done = self.finished_shards()
        if shard_ids is None:
            return sorted(done)
        wanted = sorted(set(shard_ids))
        missing = [s for s in wanted if s not in done]
        if missing:
            raise StoreError(f"shards {missing} are not finished in {self.root}")
        return wanted

    def paths(self, shard_ids: Iterable[int] | None = None) -> list[str]:
        """Data files of the finished shards (or of ``shard_ids``, which must be finished), in shard order."""
        return [str(self.data_path(s)) for s in self._finished(shard_ids)]

    def iter_records(self, shard_ids: Iterable[int] | None = None, *,
                     batch: int = 64) -> Iterator[TrajectoryRecord]:
        """Every record of the finished shards, in shard order then write order."""
        for path in self.paths(shard_ids):
            reader = array_record_module.ArrayRecordReader(path)
            try:
                n = reader.num_records()
                for start in range(0, n, batch):
                    for payload in reader.read(start, min(start + batch, n)):
                        yield decode(payload)
            finally:
                reader.close()

    def iter_index(self, shard_ids: Iterable[int] | None = None) -> Iterator[IndexRow]:
        """Selection columns of every record, from the markers alone (no data file is read)."""
        for shard_id in self._finished(shard_ids):
            columns = self.marker(shard_id)["index"]
            for i, row in enumerate(zip(*(columns[c] for c in _INDEX_COLUMNS))):
                yield IndexRow(shard_id, i, *row)

    def locate(self, keys: Iterable[RecordKey]) -> list[tuple[int, int]]:
        """Map record keys ``(question_id, caption_index, trajectory_index)`` to ``(shard_id, record_index)``."""
        where = {(r.question_id, r.caption_index, r.trajectory_index): (r.shard_id, r.record_index)
                 for r in self.iter_index()}
        keys = [tuple(k) for k in keys]
        missing = [k for k in keys if k not in where]
        if missing:
            raise StoreError(f"{len(missing)} keys are not in a finished shard, e.g. {missing[:3]}")
        return [where[k] for k in keys]

    def data_source(self, selection: str | None = None) -> grain.sources.ArrayRecordDataSource | SelectedSource:
        """Grain random-access source of encoded records; decode with :class:`DecodeRecord`.

        Without ``selection``: every record of every finished shard, in shard order. With it:
        only that selection's records, in its order (a :class:`SelectedSource`).
        """
        if selection is None:
            paths = self.paths()
            if not paths:
                raise StoreError(f"no finished shards in {self.root}")
            return grain.sources.ArrayRecordDataSource(paths)
        sel = self.read_selection(selection)
        shard_ids = sorted(sel.shard_sha256)
        if not shard_ids:
            raise StoreError(f"selection {selection!r} is empty")
        offsets = np.cumsum([0] + [self.marker(s)["num_records"] for s in shard_ids])
        start = dict(zip(shard_ids, offsets[:-1].tolist()))
        indices = np.array([start[s] + i for s, i in sel.keys], dtype=np.int64)
        return SelectedSource(self.paths(shard_ids), indices)

    # ----------------------------------------------------------------------------- selections
    def _selection_path(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise ValueError(f"selection name {name!r} must match {_NAME_RE.pattern}")
        return self.selection_dir / f"{name}.json"

    def selections(self) -> list[str]:
        """Names of the stored selections."""
        if not self.selection_dir.is_dir():
            return []
        return sorted(p.stem for p in self.selection_dir.glob("*.json") if _NAME_RE.match(p.stem))

    def write_selection(self, name: str, keys: Iterable[tuple[int, int]], meta: Mapping[str, Any] | None = None,
                        *, overwrite: bool = False) -> Selection:
        """Store a selection as ``(shard_id, record_index)`` keys; the records are not copied.

        Every key must point into a finished shard; repeated keys raise ``ValueError``.
        """
        path = self._selection_path(name)
        if path.exists() and not overwrite:
            raise FileExistsError(f"selection {name!r} exists in {self.root}; pass overwrite=True")
        meta = dict(meta or {})
        keys = [(int(s), int(i)) for s, i in keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"selection {name!r} repeats keys")
        sha = {}
        for s in sorted({s for s, _ in keys}):
            marker = self.marker(s)
            if marker is None:
                raise StoreError(f"selection {name!r} refers to shard {s}, which is not finished")
            sha[s] = marker["sha256"]
        for s, i in keys:
            if not 0 <= i < self.marker(s)["num_records"]:
                raise ValueError(f"selection {name!r}: shard {s} has no record {i}")
        sel = Selection(name=name, keys=tuple(keys), meta=meta, created_at=_now(), shard_sha256=sha)
        self._write_json(path, {
            "format": "sophia_jax.selection",
            "version": 1,
            "name": name,
            "created_at": sel.created_at,
            "num_records": len(keys),
            "shard_sha256": {str(s): h for s, h in sha.items()},
            "keys": [list(k) for k in keys],
            "meta": meta,
        })
        return sel

    def read_selection(self, name: str, *, check: bool = True) -> Selection:
        """Load a stored selection. With ``check``, raise :class:`StaleSelectionError` if a shard it
        refers to is no longer finished or was rewritten since."""
        path = self._selection_path(name)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"no selection {name!r} in {self.root} (have: {self.selections()})") from None
        if raw.get("format") != "sophia_jax.selection" or raw.get("version") != 1:
            raise StoreError(f"{path}: not a version-1 selection file")
        sel = Selection(name=raw["name"], keys=tuple((s, i) for s, i in raw["keys"]), meta=raw["meta"],
                        created_at=raw["created_at"],
                        shard_sha256={int(s): h for s, h in raw["shard_sha256"].items()})
        if check:
            for s, h in sel.shard_sha256.items():
                marker = self.marker(s)
                if marker is None or marker["sha256"] != h:
                    raise StaleSelectionError(f"selection {name!r}: shard {s} was removed or rewritten "
                                              "after the selection was made; select again")
        return sel
