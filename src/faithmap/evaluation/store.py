"""Columnar, crash-safe storage of evaluation results: one Parquet part per finished task.

Why Parquet through pyarrow: a column store with projection (a resume reads the keys only; the
report reads the few columns it aggregates), compression, typed columns and a reader in every data
tool; pyarrow also streams datasets of many files batch by batch, so summaries are computed in
bounded memory. (DuckDB would do the aggregation in SQL, but adds a second engine for what pyarrow
already does.)

Layout of ``--out``::

    run.json            settings and the lists of methods, resolutions and images
    parts/part-*.parquet  one file per finished task (method, resolution, batch of images)
    images.json         top-5, targets and regions of the images whose maps are kept
    maps/, images/      maps (.npy) and input thumbnails of the first --save-maps images
    .lock               held (fcntl.flock) by the one process that writes

A part holds the task's rows (one per image x target x metric; the deletion/insertion curves ride
on each (image, target)'s first row) and, in its Parquet metadata, the task's keys
(``image|method|resolution``, also for images that got no row) and each image's fingerprint. It is
written whole or not at all: a temporary file made by :func:`faithmap.core.io.atomic_open`
(``mkstemp`` in ``parts/``: a fresh ``O_EXCL`` name), ``fsync``, ``os.replace``. A process killed at
any instant, even inside a write, leaves finished parts and at most a stray temporary file, which
the next run removes; nothing is torn, so nothing needs repairing. Resuming reads only the parts'
footers (their metadata). Only the driver writes parts; workers return results to it.

Two processes on one ``--out``: the first holds an exclusive lock on ``.lock`` for the whole run
(released by the kernel when it exits, even on SIGKILL); a second one refuses with one line before
it writes anything, so no task is lost or duplicated. Shards that run at the same time use separate
directories, joined with ``--merge``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..core.io import atomic_open, os_error, output_dir
from ..errors import FaithmapError

STORE_FORMAT = "parquet-1"
PARTS = "parts"
LOCK = ".lock"
META_KEY = b"faithmap"
READ_THREADS = 4
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# the row schema: declared here once; the worker, the store, the exports, merge and legacy read it
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column of a results part: its name, Arrow type and kind.

    ``kind``: ``"row"`` (a reproducible value, exported to ``results.csv``), ``"time"`` (wall-clock
    seconds: they change from run to run), ``"cost"`` (model images, shared evenly among a task's
    rows: they change with the batching) or ``"curve"`` (deletion/insertion curves, on each
    (image, target)'s first row only; not in ``results.csv``).
    """

    name: str
    type: pa.DataType
    kind: str = "row"


_F64, _I64, _STR, _BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
COLUMNS: tuple[Column, ...] = (
    Column("key", _STR), Column("image", _STR), Column("label", _I64), Column("predicted", _I64),
    Column("correct", _BOOL), Column("target", _I64), Column("target_name", _STR), Column("target_prob", _F64),
    Column("category", _STR), Column("method", _STR), Column("resolution", _STR), Column("grid", _STR),
    Column("metric", _STR), Column("value", _F64), Column("higher_is_better", _BOOL), Column("seed", pa.uint64()),
    Column("image_seed", _I64), Column("fast", _BOOL), Column("explain_seconds", _F64, "time"),
    Column("explain_images", _F64, "cost"), Column("explain_grad_images", _F64, "cost"),
    Column("metric_seconds", _F64, "time"), Column("metric_images", _F64, "cost"), Column("task_row", pa.int32()),
    Column("fractions", pa.list_(_F64), "curve"), Column("deletion_curve", pa.list_(_F64), "curve"),
    Column("insertion_curve", pa.list_(_F64), "curve"),
)
"""The columns of a results part, in order."""
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
ROW_COLUMNS = tuple(c.name for c in COLUMNS if c.kind != "curve")
"""Columns of a row (the curves aside), in order: those of ``results.csv``."""
TIME_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "time")
"""Columns that change from run to run (wall-clock time); everything else is reproducible."""
COST_COLUMNS = TIME_COLUMNS + tuple(c.name for c in COLUMNS if c.kind == "cost")
"""What a task cost, per row: its seconds and model images shared evenly among its rows. A method that
adapts its work per image (AOP/SIGCAM) costs a batch other than the sum of its images' costs alone."""
CURVE_COLUMNS = tuple(c.name for c in COLUMNS if c.kind == "curve")
FLOAT_COLUMNS = tuple(c.name for c in COLUMNS if c.type == _F64)
"""Float columns: equal across runs within rounding only (compared by :func:`rows_close` with a tolerance)."""
_SCHEMA = pa.schema([(c.name, c.type) for c in COLUMNS])


def schema(columns: Sequence[Column] = COLUMNS) -> pa.Schema:
    """The Arrow schema of a part with ``columns`` (default: a results part, :data:`COLUMNS`)."""
    return _SCHEMA if columns is COLUMNS else pa.schema([(c.name, c.type) for c in columns])


def columns_table(columns: dict[str, list], spec: Sequence[Column] = COLUMNS) -> pa.Table:
    """A table with the columns of ``spec`` (default :data:`COLUMNS`), in order, from lists of Python values
    (``{}``: no rows)."""
    sch = schema(spec)
    if not columns or not columns.get("key"):
        return sch.empty_table()
    return pa.table({c.name: pa.array(columns[c.name], type=c.type) for c in spec}, schema=sch)


# ----------------------------------------------------------------------------------------------
# reading JSON written by earlier runs
# ----------------------------------------------------------------------------------------------
def read_json(path: str, what: str = "") -> dict:
    """A JSON object from ``path``; one line naming the file when it is unreadable, corrupt or absurdly nested."""
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise FaithmapError(f"{path} does not exist{what}") from None
    except OSError as exc:
        raise os_error("read", path, exc) from None
    except (ValueError, UnicodeDecodeError):
        raise FaithmapError(f"{path} is corrupt (not valid JSON){what}") from None
    except RecursionError:
        raise FaithmapError(f"{path} is corrupt (JSON nested too deeply){what}") from None
    if not isinstance(data, dict):
        raise FaithmapError(f"{path} is corrupt (expected a JSON object){what}")
    return data


def load_run(out: str) -> dict:
    """``run.json`` of an output directory, checked enough that reports can rely on it."""
    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        raise FaithmapError(f"{out} holds no run.json (not a faithmap evaluate output)")
    run = read_json(path, " (faithmap evaluate --overwrite starts this folder afresh)")
    for k, kind in (("methods", list), ("resolutions", list), ("images", list), ("settings", dict)):
        if not isinstance(run.get(k, kind()), kind):
            raise FaithmapError(f"{path} is corrupt ({k!r} should be a JSON {kind.__name__})")
    run.setdefault("methods", [])
    run.setdefault("resolutions", [])
    run.setdefault("images", [])
    run.setdefault("settings", {})
    run["resolutions"] = [str(r) for r in run["resolutions"]]
    return run


# ----------------------------------------------------------------------------------------------
# the lock
# ----------------------------------------------------------------------------------------------
class OutputLock:
    """An exclusive ``fcntl.flock`` on ``<out>/.lock``: one writing process per output directory."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self.fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error("lock", self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise FaithmapError(f"another faithmap process{who} is writing to {os.path.dirname(self.path)}; "
                                    f"wait for it to finish, or use another --out") from None
            raise os_error("lock", self.path, exc) from None
        try:  # who holds it, for the message above (the lock itself is the flock, not this text)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ----------------------------------------------------------------------------------------------
# the parts
# ----------------------------------------------------------------------------------------------
@dataclass
class Scan:
    """What the finished parts hold, read from their footers only."""

    parts: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # key -> part file
    images: dict[str, list] = field(default_factory=dict)  # image -> [digest, size, mtime_ns]
    dropped: int = 0  # unreadable parts removed
    rows: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # part -> rows


def part_meta(path: str, with_rows: bool = False):
    """A part's metadata (its keys, image fingerprints, and the parts it replaces), from its footer alone."""

    fmd = pq.read_metadata(path)
    meta = json.loads((fmd.metadata or {})[META_KEY].decode("utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("keys"), list):
        raise ValueError("no keys")
    return (meta, fmd.num_rows) if with_rows else meta


class Store:
    """The parts of one output directory (``writable`` stores also clean up after killed writers).

    ``columns``: the parts' columns, each with a ``key`` column (default :data:`COLUMNS`, an evaluation's
    rows; the audit stores its per-image rows in parts of its own columns through the same code)."""

    def __init__(self, out: str, columns: Sequence[Column] = COLUMNS):
        self.out = out
        self.dir = os.path.join(out, PARTS)
        self.columns = tuple(columns)
        self.scan_result: Scan | None = None

    # -- reading ------------------------------------------------------------------------------
    def scan(self, repair: bool = False) -> Scan:
        """Keys and image fingerprints of the finished parts; with ``repair`` (the lock held) also
        remove stray temporary files and unreadable or duplicate parts."""

        sc = Scan()
        if not os.path.isdir(self.dir):
            self.scan_result = sc
            return sc
        found = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if name.startswith("."):  # a temporary file of a writer that was killed
                if repair:
                    _remove(path)
                continue
            if not (name.startswith("part-") and name.endswith(".parquet")):
                continue
            try:
                meta, n = part_meta(path, with_rows=True)
            except Exception:  # noqa: BLE001 - any unreadable part is dropped (it holds nothing usable)
                sc.dropped += 1
                if repair:
                    _remove(path)
                continue
            found.append((name, path, meta, n))
        # a compacted part names the parts it replaces: if a compaction was cut short, they are still there
        replaced = {r for _, _, meta, _ in found for r in meta.get("replaces") or ()}
        for name, path, meta, n in found:
            if name in replaced:
                if repair:
                    _remove(path)
                continue
            dup = [k for k in meta["keys"] if k in sc.keys]
            if dup:  # the same task twice (cannot happen under the lock; e.g. files copied by hand)
                if not repair:
                    continue
                if len(dup) == len(meta["keys"]):
                    _remove(path)
                    continue
                self._drop_keys(path, set(dup))
                meta, n = part_meta(path, with_rows=True)
            sc.parts.append(path)
            sc.rows += n
            sc.sizes[path] = n
            for k in meta["keys"]:
                sc.keys[k] = path
            for img, v in (meta.get("images") or {}).items():
                sc.images.setdefault(img, v)
        self.scan_result = sc
        return sc

    def compact(self, min_parts: int = 256, target_rows: int = 100_000) -> int:
        """Join small parts into parts of about ``target_rows`` rows (call with the lock held); returns
        how many parts were replaced. Each new part lists the parts it replaces and is written (atomically)
        before they are removed, so an interrupted compaction leaves duplicates that every scan ignores."""

        sc = self.scan(repair=True)
        small = [p for p in sc.parts if sc.sizes.get(p, 0) < target_rows // 4]
        if len(small) < min_parts:
            return 0
        groups, cur, rows = [], [], 0
        for p in small:
            cur.append(p)
            rows += sc.sizes.get(p, 0)
            if rows >= target_rows:
                groups.append(cur)
                cur, rows = [], 0
        if cur:
            groups.append(cur)
        replaced = 0
        for g in groups:
            if len(g) < 2:
                continue
            tables, keys, images = [], [], {}
            for p in g:
                meta = part_meta(p)
                keys += meta["keys"]
                images.update(meta.get("images") or {})
                t = pq.read_table(p)
                if t.num_rows:
                    tables.append(t.replace_schema_metadata(None))
            table = pa.concat_tables(tables) if tables else schema(self.columns).empty_table()
            meta = {"format": STORE_FORMAT, "keys": keys, "images": images, "task": None,
                    "replaces": [os.path.basename(p) for p in g]}
            table = table.replace_schema_metadata({META_KEY: json.dumps(meta, separators=(",", ":")).encode("utf-8")})
            path = os.path.join(self.dir, f"part-{uuid.uuid4().hex}.parquet")
            with atomic_open(path) as fh:
                pq.write_table(table, fh, compression="zstd", row_group_size=65536)
            for p in g:
                _remove(p)
            replaced += len(g)
        self.scan(repair=True)
        return replaced

    @property
    def parts(self) -> list[str]:
        return (self.scan_result or self.scan()).parts

    def parts_of(self, images: Iterable[str]) -> list[str]:
        """The parts that hold rows of ``images`` (from the footers' keys: no row is read)."""
        want = set(images)
        keys = (self.scan_result or self.scan()).keys
        found = {p for k, p in keys.items() if k.rsplit("|", 2)[0] in want}
        return [p for p in self.parts if p in found]

    def batches(self, columns: Sequence[str], filter=None, rows: int = 65536, parts: Sequence[str] | None = None
                ) -> Iterator:
        """Tables of ``columns`` over the parts, one file read at a time and gathered to about ``rows``
        rows: memory is bounded by one chunk, whatever the number of parts."""

        paths = list(self.parts if parts is None else parts)
        cols = list(columns)

        def read(path):
            t = pq.ParquetFile(path).read(columns=cols, use_threads=False)
            return t.filter(filter) if filter is not None else t

        def tables():
            """Small parts read by a few threads, 32 at a time (pyarrow releases the GIL); a large (compacted)
            part streamed one batch of ``rows`` at a time. Memory stays bounded either way."""
            sizes = (self.scan_result.sizes if self.scan_result is not None else {})
            small = []
            with ThreadPoolExecutor(READ_THREADS) as pool:
                for path in paths:
                    if sizes.get(path, 0) < rows:
                        small.append(path)
                        if len(small) == 32:
                            yield from pool.map(read, small)
                            small = []
                        continue
                    yield from pool.map(read, small)
                    small = []
                    for b in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=cols, use_threads=False):
                        t = pa.Table.from_batches([b])
                        yield t.filter(filter) if filter is not None else t
                yield from pool.map(read, small)

        pending, count = [], 0
        for t in tables():
            if t.num_rows:
                pending.append(t)
                count += t.num_rows
            if count >= rows:
                yield pa.concat_tables(pending).combine_chunks()
                pending, count = [], 0
        if pending:
            yield pa.concat_tables(pending).combine_chunks()

    def table(self, columns: Sequence[str] | None = None, filter=None, images: Iterable[str] | None = None):
        """All rows (of ``images`` only, if given) as one table."""

        cols = list(columns) if columns else [c.name for c in self.columns]
        parts = self.parts_of(images) if images is not None else None
        chunks = list(self.batches(cols, filter, parts=parts))
        return pa.concat_tables(chunks) if chunks else schema(self.columns).empty_table().select(cols)

    # -- writing ------------------------------------------------------------------------------
    def write(self, columns: dict[str, list], keys: Sequence[str], images: dict[str, list], task: int | None = None) -> str:
        """Write one task's rows as a new part, atomically; returns its path."""

        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise os_error("create", self.dir, exc) from None
        table = columns_table(columns, self.columns)
        meta = {"format": STORE_FORMAT, "keys": list(keys), "images": images, "task": task}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta, separators=(",", ":")).encode("utf-8")})
        path = os.path.join(self.dir, f"part-{uuid.uuid4().hex}.parquet")
        with atomic_open(path) as fh:
            pq.write_table(table, fh, compression="zstd")
        if self.scan_result is not None:
            self.scan_result.parts.append(path)
            self.scan_result.rows += table.num_rows
            for k in keys:
                self.scan_result.keys[k] = path
            for img, v in images.items():
                self.scan_result.images.setdefault(img, v)
        return path

    def holds(self, keys: Iterable[str]) -> bool:
        """Whether a finished part already holds any of ``keys`` (a late duplicate result is never written)."""
        known = (self.scan_result or self.scan()).keys
        return any(k in known for k in keys)

    def write_output(self, output) -> str:
        """A finished job's :class:`~faithmap.evaluation.worker.Output` as one part: its columns, keys, the
        fingerprints of its images and its task's index."""
        meta = {n: [v["digest"], *(v["stat"] or [None, None])] for n, v in output.images.items()}
        return self.write(output.columns, output.keys, meta, output.task.index)

    def write_table(self, table, keys: Sequence[str], images: dict[str, list]) -> str:
        """A part from an Arrow table with the store's columns (merge, migration)."""
        cols = {c.name: table.column(c.name).to_pylist() for c in self.columns} if table.num_rows else {}
        return self.write(cols, keys, images)

    def _drop_keys(self, path: str, keys: set[str]) -> None:

        meta = part_meta(path)
        t = pq.read_table(path)
        t = t.filter(pc.invert(pc.is_in(t.column("key"), value_set=pa.array(sorted(keys)))))
        meta["keys"] = [k for k in meta["keys"] if k not in keys]
        t = t.replace_schema_metadata({META_KEY: json.dumps(meta).encode("utf-8")})
        with atomic_open(path) as fh:
            pq.write_table(t, fh, compression="zstd")

    def clear(self) -> None:

        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        self.scan_result = Scan()


def run_locked(out: str, run: Callable[[], T], columns: Sequence[Column] = COLUMNS) -> T:
    """``run()`` with the folder ``out`` made (:func:`faithmap.core.io.output_dir`) and locked
    (:class:`OutputLock`). When ``run`` fails, the finished parts stay for the next run (and so does the
    folder); a folder it made and left without a part is removed again. A folder that another process
    holds is left alone (one line)."""
    pending: BaseException | None = None
    result = None
    with output_dir(out):
        try:
            lock = OutputLock(out).acquire()
        except FaithmapError as exc:  # another process owns this folder: leave it (and its folder) alone
            pending = exc
        else:
            try:
                result = run()
            except BaseException as exc:
                if Store(out, columns).scan().keys:  # finished tasks stay for the next run; the folder stays
                    pending = exc
                else:
                    raise
            finally:
                lock.release()
    if pending is not None:
        raise pending
    return result


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error("remove", path, exc) from None


# ----------------------------------------------------------------------------------------------
# order, comparison, export
# ----------------------------------------------------------------------------------------------
def order_table(table, run: dict):
    """Rows sorted by (image, method, resolution) in run order, each task's rows in their own order."""

    if table.num_rows == 0:
        return table

    def index(col, values):
        idx = pc.index_in(table.column(col), value_set=pa.array([str(v) for v in values], pa.string()))
        return pc.fill_null(idx, len(values)).to_numpy(zero_copy_only=False)

    i_idx = index("image", run.get("images", []))
    m_idx = index("method", run.get("methods", []))
    r_idx = index("resolution", list(run.get("resolutions", [])) + ["native"])
    pos = table.column("task_row").to_numpy(zero_copy_only=False)
    order = np.lexsort((pos, r_idx, m_idx, i_idx))
    return table.take(pa.array(order))


def comparable(rows: Sequence[dict], drop: Sequence[str] = TIME_COLUMNS) -> list[dict]:
    """Rows without their wall-clock columns (what must match between runs); ``drop=COST_COLUMNS`` also
    leaves out the model-image counts (what must match between runs that batch differently)."""
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def rows_close(a: Sequence[dict], b: Sequence[dict], rel: float = 1e-4, abs_: float = 1e-6) -> str | None:
    """None when the rows agree (floats within ``rel``/``abs_``; the rest exactly); else what differs first."""

    if len(a) != len(b):
        return f"{len(a)} rows against {len(b)}"
    for ra, rb in zip(a, b):
        for k in ra:
            if k in TIME_COLUMNS:
                continue
            x, y = ra[k], rb.get(k)
            if isinstance(x, float) and isinstance(y, float):
                if math.isnan(x) and math.isnan(y):
                    continue
                if not math.isclose(x, y, rel_tol=rel, abs_tol=abs_):
                    return f"{k} {x!r} against {y!r}"
            elif isinstance(x, list) and isinstance(y, list) and x and isinstance(x[0], float):
                if len(x) != len(y) or any(not math.isclose(u, v, rel_tol=rel, abs_tol=abs_) for u, v in zip(x, y)):
                    return f"{k} differs"
            elif x != y:
                return f"{k} {x!r} against {y!r}"
    return None


def export_csv(store: Store, run: dict, path: str) -> int:
    """Write every row (the curves aside) to ``path`` as CSV, in run order; returns the number of rows."""

    t = order_table(store.table(ROW_COLUMNS), run)
    with atomic_open(path) as fh:
        pacsv.write_csv(t, fh)
    return t.num_rows


def iter_parts(paths: Iterable[str]):
    """(path, metadata, table) of each part file."""

    for p in paths:
        yield p, part_meta(p), pq.read_table(p)


class TableSource:
    """An in-memory table with a store's reading interface (runs of the earlier CSV store)."""

    def __init__(self, table):
        self._t = table

    @property
    def parts(self) -> list[str]:
        return []

    def table(self, columns: Sequence[str] | None = None, filter=None, images=None):
        t = self._t if filter is None else self._t.filter(filter)
        return t.select(list(columns)) if columns else t

    def batches(self, columns: Sequence[str], filter=None, rows: int = 65536) -> Iterator:
        t = self.table(columns, filter)
        for start in range(0, t.num_rows, rows):
            yield t.slice(start, rows)


def load_images_info(out: str) -> dict:
    p = os.path.join(out, "images.json")
    if not os.path.exists(p):
        return {}
    return read_json(p, "; rerun the evaluation to rewrite it")
