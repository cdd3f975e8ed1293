"""How values are written to and read from Redis: the only place a stored value is decoded.

Arrays are ``MAGIC | dtype tag | ndim | shape | little-endian float64 bytes`` and every field is checked on
read; a symmetric matrix (the covariance written every bar) is stored as its packed upper triangle
(:func:`encode_symmetric`, half the bytes) and :func:`decode_symmetric` reads either form; history rows are
fixed-size packed floats (:class:`RowLayout`, shared with the Lua scripts); everything else is JSON or plain
hash fields; money is a decimal string. No pickle: a value that does not decode raises
:class:`~engine.errors.CorruptDataError` and is never executed; a missing one raises
:class:`~engine.errors.StoreEmptyError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from engine.errors import CorruptDataError, StoreEmptyError
from engine.math_logic import observed_mask
from engine.records import Float64Array, Position, TradingState, TradingStatus

TRADING_STATES = tuple(TradingState)
"""Every trading state name, in escalating order."""

# -- arrays ------------------------------------------------------------------------------------------------------

_ARRAY_MAGIC = b"RDA1"
_F64_TAG = b"<f8\x00"
_HEADER = struct.Struct("<4s4sI")  # magic, dtype tag, ndim; then ndim x uint64 shape
_MAX_NDIM = 2


def encode_array(array: npt.ArrayLike) -> bytes:
    """Serialise a 1-D or 2-D float64 array: header with dtype and shape, then little-endian raw bytes."""
    arr = np.asarray(array, dtype="<f8")
    if arr.ndim == 0 or arr.ndim > _MAX_NDIM:
        raise ValueError(f"only 1-D and 2-D arrays are stored, got ndim={arr.ndim}")
    header = _HEADER.pack(_ARRAY_MAGIC, _F64_TAG, arr.ndim) + struct.pack(f"<{arr.ndim}Q", *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def encode_array_header(shape: tuple[int, ...]) -> bytes:
    """The bytes :func:`encode_array` writes before the data of an array of ``shape``."""
    if not 1 <= len(shape) <= _MAX_NDIM:
        raise ValueError(f"only 1-D and 2-D arrays are stored, got shape {shape}")
    return _HEADER.pack(_ARRAY_MAGIC, _F64_TAG, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)


def array_row_offset(shape: tuple[int, int], row: int) -> int:
    """Byte offset of row ``row`` in :func:`encode_array` of a 2-D array of ``shape``: a stored array's row is
    rewritten in place with SETRANGE at this offset (``np.float64`` little-endian bytes of the row)."""
    rows, cols = shape
    if not 0 <= row < rows:
        raise ValueError(f"row {row} is out of range for {rows} rows")
    return _HEADER.size + 8 * 2 + 8 * cols * row


def decode_array(blob: bytes | None, *, key: str = "?", shape: tuple[int, ...] | None = None) -> Float64Array:
    """Decode :func:`encode_array` output, checking magic, dtype, shape and exact length.

    Returns a fresh, writeable, C-contiguous native float64 array (safe to update in place).
    """
    if blob is None:
        raise StoreEmptyError(f"{key} is missing")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptDataError(f"{key}: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise CorruptDataError(f"{key}: array payload truncated ({len(blob)} bytes)")
    magic, tag, ndim = _HEADER.unpack_from(blob)
    if magic != _ARRAY_MAGIC:
        raise CorruptDataError(f"{key}: not a Riskdesk array (bad magic {magic!r})")
    if tag != _F64_TAG:
        raise CorruptDataError(f"{key}: unsupported dtype tag {tag!r}, expected float64")
    if not 1 <= ndim <= _MAX_NDIM:
        raise CorruptDataError(f"{key}: bad ndim {ndim}")
    shape_end = _HEADER.size + 8 * ndim
    if len(blob) < shape_end:
        raise CorruptDataError(f"{key}: array header truncated")
    found = struct.unpack_from(f"<{ndim}Q", blob, _HEADER.size)
    expected_bytes = 8 * math.prod(found)
    if len(blob) - shape_end != expected_bytes:
        raise CorruptDataError(f"{key}: payload is {len(blob) - shape_end} bytes, shape {found} needs {expected_bytes}")
    if shape is not None and tuple(found) != tuple(shape):
        raise CorruptDataError(f"{key}: shape {found} does not match expected {shape}")
    return np.frombuffer(blob, dtype="<f8", offset=shape_end).reshape(found).astype(np.float64, copy=True)


def encode_print_gaps(version: int, since: npt.ArrayLike) -> bytes:
    """``<version>:`` then :func:`encode_array` of each ticker's bars since its last accepted price (0: it printed
    in the bar of ``version``). The version ties the counts to the snapshot they were written with: a writer of
    the snapshot that does not know them (a re-seed, a split) leaves a stale field that :func:`decode_print_gaps`
    reads as no gaps."""
    counts = np.asarray(since, dtype=np.float64)
    if counts.ndim != 1 or not np.isfinite(counts).all() or (counts < 0.0).any() or (counts != np.floor(counts)).any():
        raise ValueError("bars since the last print must be a 1-D array of whole numbers >= 0")
    return b"%d:" % int(version) + encode_array(counts)


def decode_print_gaps(raw: bytes | None, *, key: str = "?", version: int, n: int) -> Float64Array:
    """The counts of :func:`encode_print_gaps` written with the snapshot of ``version`` (``n`` tickers).

    No field (a store written before the counts were kept) or one written with another version (the snapshot
    was rewritten by a writer that does not keep them) reads as zeros: every next return spans one bar, the
    behaviour before the counts. A field of this version that does not decode to whole numbers >= 0, one per
    ticker, raises :class:`~engine.errors.CorruptDataError`."""
    zeros: Float64Array = np.zeros(n)
    if raw is None:
        return zeros
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise CorruptDataError(f"{key}: expected bytes, got {type(raw).__name__}")
    head, sep, blob = bytes(raw).partition(b":")
    if not sep or not head.isdigit():
        raise CorruptDataError(f"{key}: no version before the counts")
    if int(head) != int(version):
        return zeros
    counts = decode_array(blob, key=key, shape=(n,))
    if not np.isfinite(counts).all() or (counts < 0.0).any() or (counts != np.floor(counts)).any():
        raise CorruptDataError(f"{key}: bars since the last print must be whole numbers >= 0")
    return counts


_SYMMETRIC_MAGIC = b"RDU1"
"""A symmetric float64 matrix as its upper triangle, row by row: ``MAGIC | dtype tag | ndim=2 | N | N | the
N(N+1)/2 entries a_00..a_0N, a_11..a_1N, ...`` (little-endian float64)."""


@functools.lru_cache(maxsize=4)
def _upper_mask(n: int) -> npt.NDArray[np.bool_]:
    """True on and above the diagonal of an N x N matrix; boolean indexing walks it in row-major order, which
    is the packed order (the same mask on the transposed view walks the mirror images in the same order)."""
    mask = np.triu(np.ones((n, n), dtype=bool))
    mask.flags.writeable = False  # shared by every caller through the cache
    return mask


def universe_rev(tickers_json: str) -> str:
    """The content hash naming a ticker list (its :func:`encode_json` text): a tick event carries it instead of
    the list (4 KB at N = 500), and ``mkt:{m}:universes`` maps it back. Equal lists, equal revs, anywhere."""
    return hashlib.blake2b(tickers_json.encode(), digest_size=8).hexdigest()


def encode_symmetric(matrix: npt.ArrayLike) -> bytes:
    """Serialise a bitwise-symmetric N x N float64 matrix as its packed upper triangle (float64, exact).

    Raises ``ValueError`` for a matrix that is not square or not exactly symmetric (``a_ij == a_ji`` bit for bit,
    NaN never equal): the lower triangle is not stored, so it must be the mirror of the upper one. The EWMA
    update keeps the covariance so (engine/math_logic.py).

    The stream daemon encodes its 500 x 500 matrix every bar: the entries are gathered straight into the
    output buffer (flat indices cached per N), which is then copied once into the returned bytes.
    """
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"a symmetric matrix is square, got shape {arr.shape}")
    n = arr.shape[0]
    upper, mirror = _upper_indices(n)
    flat = np.ascontiguousarray(arr).reshape(-1)
    header = _HEADER.pack(_SYMMETRIC_MAGIC, _F64_TAG, 2) + struct.pack("<2Q", n, n)
    out = np.empty(len(header) + 8 * upper.size, dtype=np.uint8)
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    packed = out[len(header) :].view("<f8")
    np.take(flat, upper, out=packed)
    if not np.array_equal(packed, flat.take(mirror)):
        raise ValueError("the matrix is not exactly symmetric: its packed upper triangle would lose the lower one")
    return out.tobytes()


@functools.lru_cache(maxsize=4)
def _upper_indices(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Flat indices of the upper triangle of an N x N matrix in packed (row-major) order, and of their mirror
    images in the lower triangle, in the same order."""
    rows, cols = np.triu_indices(n)
    upper, mirror = rows * n + cols, cols * n + rows
    upper.flags.writeable = mirror.flags.writeable = False  # shared by every caller through the cache
    return upper, mirror


def decode_symmetric(blob: bytes | None, *, key: str = "?", n: int) -> Float64Array:
    """An N x N matrix written by :func:`encode_symmetric` (mirrored back) or, as before, by :func:`encode_array`.

    Returns a fresh, writeable, C-contiguous float64 array; every header field and the length are checked.
    """
    if blob is None:
        raise StoreEmptyError(f"{key} is missing")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptDataError(f"{key}: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:4] != _SYMMETRIC_MAGIC:
        return decode_array(blob, key=key, shape=(n, n))  # a full matrix: older stores, other writers
    shape_end = _HEADER.size + 16
    if len(blob) < shape_end:
        raise CorruptDataError(f"{key}: packed matrix header truncated ({len(blob)} bytes)")
    _, tag, ndim = _HEADER.unpack_from(blob)
    if tag != _F64_TAG:
        raise CorruptDataError(f"{key}: unsupported dtype tag {tag!r}, expected float64")
    found = struct.unpack_from("<2Q", blob, _HEADER.size)
    if ndim != 2 or found[0] != found[1]:
        raise CorruptDataError(f"{key}: a packed symmetric matrix must be square, header says {found}")
    if found[0] != n:
        raise CorruptDataError(f"{key}: shape {found} does not match expected {(n, n)}")
    expected_bytes = 8 * (n * (n + 1) // 2)
    if len(blob) - shape_end != expected_bytes:
        found_bytes = len(blob) - shape_end
        raise CorruptDataError(f"{key}: payload is {found_bytes} bytes, a packed {n}x{n} needs {expected_bytes}")
    packed = np.frombuffer(blob, dtype="<f8", offset=shape_end)
    out = np.empty((n, n), dtype=np.float64)
    mask = _upper_mask(n)
    out[mask] = packed
    out.T[mask] = packed  # the mirror images, in the same order
    return out


def encode_window_row(version: int, values: npt.ArrayLike, observed: npt.ArrayLike | None = None) -> bytes:
    """One row of the standardized-return window: the array ``[version, z_1, ..., z_N]`` (:func:`encode_array`).

    The market version rides in the row (exact as a float64 up to 2**53) so a reader can drop rows newer than
    the market snapshot it measures with.

    ``observed`` (bool, shape (N,); None: all): the entries that are observations. A missing one (a ticker
    with no new price in that bar, its ``z`` the stand-in 0) is stored as NaN, the window's one marker of a
    missing entry; ``values`` themselves must be finite (a NaN there is a bug, not a gap) and 0 where missing.
    A row with nothing missing is byte for byte the row written before missing entries were marked.
    """
    row = np.asarray(values, dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"a window row is 1-D, got shape {row.shape}")
    if not np.isfinite(row).all():
        raise ValueError("a window row must be finite")
    if not 0 <= int(version) < 2**53:
        raise ValueError(f"market version {version} out of range for a window row")
    if observed is not None:
        mask = observed_mask(observed, row.shape)
        if not mask.all():
            if (row[~mask] != 0.0).any():
                raise ValueError("a missing entry of a window row must be the stand-in 0")
            row = np.where(mask, row, np.nan)
    return encode_array(np.concatenate(([float(int(version))], row)))


def decode_window_rows(raws: list[bytes], n: int, *, key: str = "?") -> tuple[npt.NDArray[np.int64], Float64Array]:
    """Rows of :func:`encode_window_row` (oldest first) -> (versions, shape (T, n) standardized returns), a
    missing entry as its stand-in 0 (:func:`decode_window` also says which are missing)."""
    versions, values, _ = decode_window(raws, n, key=key)
    return versions, values


def decode_window(
    raws: list[bytes], n: int, *, key: str = "?"
) -> tuple[npt.NDArray[np.int64], Float64Array, npt.NDArray[np.bool_]]:
    """Rows of :func:`encode_window_row` (oldest first) -> (versions, values, observed).

    ``values`` (T, n) are finite: a missing entry (stored NaN) is its stand-in 0 and False in ``observed``
    (T, n). A window stored before missing entries were marked has no NaN: every entry is observed. Raises
    :class:`~engine.errors.CorruptDataError` for a row of another length, an infinite value, or a version
    that is not a non-negative integer (NaN included: NaN marks a missing return, never a version).
    """
    if not raws:
        return np.zeros(0, dtype=np.int64), np.zeros((0, n)), np.zeros((0, n), dtype=bool)
    rows = np.empty((len(raws), n + 1))
    for i, raw in enumerate(raws):
        rows[i] = decode_array(raw, key=f"{key}[{i}]", shape=(n + 1,))
    if np.isinf(rows).any():
        raise CorruptDataError(f"{key}: a window row holds an infinite value")
    versions = rows[:, 0]
    if not np.isfinite(versions).all() or (versions < 0).any() or (versions != np.floor(versions)).any():
        raise CorruptDataError(f"{key}: a window row's version is not a non-negative integer")
    values = np.ascontiguousarray(rows[:, 1:])
    observed = ~np.isnan(values)
    if not observed.all():
        values[~observed] = 0.0
    return versions.astype(np.int64), values, observed


# -- JSON --------------------------------------------------------------------------------------------------------


def hash_from_flat(flat: list[Any] | None) -> dict[Any, Any]:
    """An HGETALL reply as a Lua script returns it (a flat ``[field, value, ...]`` array; None or empty: no hash)
    as a dict."""
    if not flat:
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def encode_json(value: Any) -> str:
    """JSON with Decimals as strings (exact) and no NaN (not valid JSON)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default, allow_nan=False)


def encode_json_fast(value: Any) -> bytes:
    """:func:`encode_json` through orjson, for the monitor's per-tick writes (a snapshot, a backtest's state and
    summary: three per portfolio per tick, about ten times faster). The text is compact JSON that decodes to the
    same values (floats in their shortest round-trip form; non-ASCII as UTF-8, not escaped); a value orjson
    refuses (an integer beyond 64 bits, a non-string key) goes through :func:`encode_json`.

    A float that is not finite is written as ``null`` rather than refused: callers pass finite floats only
    (every float of a snapshot is, logic/snapshot.py); a ``null`` where a backtest's state needs a number fails
    its ``from_dict`` when read back (the monitor then starts that backtest again)."""
    try:
        return orjson.dumps(value, default=_json_default)
    except TypeError:
        return encode_json(value).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PositionRows):
        return value.rows()
    if isinstance(value, ComponentShares):
        return value.as_dict()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def decode_json(raw: bytes | str | None, *, key: str = "?") -> Any:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptDataError(f"{key}: not valid JSON ({exc})") from exc


def decode_json_fast(raw: bytes | str | None, *, key: str = "?") -> Any:
    """:func:`decode_json` through orjson, for the per-tick reads of records holding no integer beyond 64 bits
    (orjson reads one as a float): the alert states of every portfolio. NaN and Infinity are refused as by
    :func:`decode_json`, whose verdict and message any refused text gets."""
    if raw is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return decode_json(raw, key=key)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_object(raw: bytes | str, key: str) -> dict[str, Any]:
    """A JSON object (a record, a snapshot); anything else is corrupt."""
    value = decode_json(raw, key=key)
    if not isinstance(value, dict):
        raise CorruptDataError(f"{key}: expected a JSON object")
    return value


# -- snapshots ---------------------------------------------------------------------------------------------------
#
# A snapshot (logic/snapshot.py) is stored as its JSON without ``positions`` and ``component_var``, then, when it
# has positions of the full schema and component VaR of held tickers, NUL, the JSON ``[tickers, quantities,
# component tickers]`` (the last as indices into the first, in the snapshot's order), NUL, every position's
# floats (:data:`POSITION_FLOATS`, position after position) and then the component VaR, all little-endian
# float64, NaN for null. Compact JSON holds no raw NUL byte, so the first NUL ends the head and the second the
# tickers. The floats are most of a snapshot (ten figures for each of twenty positions and twenty components:
# 5.3 of its 6.3 KB as JSON), and the monitor writes a thousand snapshots a tick: as bytes they cost nothing to
# format or parse. The head is what Lua reads (``"version"``, ``"ts"``, engine/store/history.py,
# engine/store/monitoring.py). Any other snapshot (no positions, or not of the schema) is stored as plain JSON,
# which every reader also reads.

POSITION_FLOATS = ("avg_price", "last", "market_value", "weight", "unrealized_pnl", "realized_pnl", "mfe", "mae")
"""The float fields of a snapshot position, in stored order (after ``ticker`` and ``qty``)."""
_POSITION_KEYS = frozenset(("ticker", "qty", *POSITION_FLOATS))
_POSITION_ROW_BYTES = 8 * len(POSITION_FLOATS)


class PositionRows(Sequence[dict[str, Any]]):
    """A snapshot's ``positions`` (a list of :class:`engine.records.SnapshotPosition` dicts) held as its stored
    form: tickers, quantities and the packed floats. The dicts are built on first use (most snapshots a monitor
    writes are never read back as positions in its own process); it compares equal to the list it stands for."""

    __slots__ = ("tickers", "qty", "block", "_meta", "_rows")

    def __init__(self, tickers: Sequence[str], qty: Sequence[int], block: bytes, meta: bytes | None = None) -> None:
        if len(block) != len(tickers) * _POSITION_ROW_BYTES or len(qty) != len(tickers):
            raise ValueError(f"{len(tickers)} tickers, {len(qty)} quantities and {len(block)} bytes of floats")
        self.tickers, self.qty, self.block = tickers, qty, block
        self._meta = meta
        self._rows: list[dict[str, Any]] | None = None

    @classmethod
    def from_dicts(cls, positions: Sequence[Mapping[str, Any]]) -> PositionRows | None:
        """The rows of a list of position dicts, or None when one is not exactly of the schema (its fields, an
        integer quantity, a float or null figure that float64 holds exactly): that snapshot stays plain JSON."""
        if isinstance(positions, PositionRows):
            return positions
        tickers, qty, floats = [], [], []
        for p in positions:
            if not isinstance(p, Mapping) or p.keys() != _POSITION_KEYS:
                return None
            t, q = p["ticker"], p["qty"]
            if not isinstance(t, str) or type(q) is not int:
                return None
            for name in POSITION_FLOATS:
                v = p[name]
                if v is None:
                    v = math.nan
                elif type(v) is not float and not (type(v) is int and float(v) == v):
                    return None
                floats.append(v)
            tickers.append(t)
            qty.append(q)
        block = np.array(floats, dtype="<f8")
        block[~np.isfinite(block)] = np.nan  # as JSON writes it: null
        return cls(tickers, qty, block.tobytes())

    @property
    def meta(self) -> bytes:
        """``tickers, quantities`` as JSON, without the brackets around both (the stored form's first two)."""
        if self._meta is None:
            self._meta = encode_json_fast([list(self.tickers), list(self.qty)])[1:-1]
        return self._meta

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            values = np.frombuffer(self.block, dtype="<f8").reshape(len(self.tickers), len(POSITION_FLOATS))
            nulls = np.isnan(values).tolist()
            out = []
            for t, q, row, null in zip(self.tickers, self.qty, values.tolist(), nulls, strict=True):
                d: dict[str, Any] = {"ticker": t, "qty": q}
                for name, v, n in zip(POSITION_FLOATS, row, null, strict=True):
                    d[name] = None if n else v
                out.append(d)
            self._rows = out
        return self._rows

    def __len__(self) -> int:
        return len(self.tickers)

    def __getitem__(self, index: Any) -> Any:
        return self.rows()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PositionRows):
            return self.rows() == other.rows()
        if isinstance(other, list):
            return self.rows() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PositionRows({self.rows()!r})"


class ComponentShares(Mapping[str, float]):
    """A snapshot's ``component_var`` (ticker -> dollars, in the snapshot's order) held as its stored form: the
    tickers, their indices among the snapshot's positions (None: not known) and the packed floats. The dict is
    built on first use; it compares equal to the dict it stands for."""

    __slots__ = ("names", "index", "block", "_dict")

    def __init__(self, names: Sequence[str], index: Sequence[int] | None, block: bytes) -> None:
        if len(block) != 8 * len(names) or (index is not None and len(index) != len(names)):
            raise ValueError(f"{len(names)} component tickers and {len(block)} bytes of floats")
        self.names, self.index, self.block = names, index, block
        self._dict: dict[str, float] | None = None

    def as_dict(self) -> dict[str, float]:
        if self._dict is None:
            self._dict = dict(zip(self.names, np.frombuffer(self.block, dtype="<f8").tolist(), strict=True))
        return self._dict

    def __getitem__(self, key: str) -> float:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ComponentShares({self.as_dict()!r})"


def _stored_components(value: Any, rows: PositionRows) -> tuple[Sequence[int], bytes] | None:
    """A snapshot's ``component_var`` as (indices into ``rows``, float64 bytes), or None when it is not a mapping
    of held tickers to finite floats (the snapshot stays plain JSON)."""
    if isinstance(value, ComponentShares) and value.index is not None:
        return value.index, value.block
    if not isinstance(value, Mapping):
        return None
    at = {t: i for i, t in enumerate(rows.tickers)}
    index = [at.get(t, -1) for t in value]
    floats = list(value.values())
    if -1 in index or not all(type(v) is float or (type(v) is int and float(v) == v) for v in floats):
        return None
    block = np.array(floats, dtype="<f8")
    return (index, block.tobytes()) if np.isfinite(block).all() else None


def encode_snapshot(snapshot: Mapping[str, Any]) -> bytes:
    """A snapshot's stored form (above); ``positions`` a list of dicts or :class:`PositionRows`, ``component_var``
    a dict or :class:`ComponentShares`."""
    positions = snapshot.get("positions")
    rows = PositionRows.from_dicts(positions) if isinstance(positions, Sequence) else None
    components = _stored_components(snapshot.get("component_var"), rows) if rows else None
    if rows is None or components is None:
        plain = snapshot if type(snapshot) is dict else dict(snapshot)
        if isinstance(positions, PositionRows):
            plain = {**plain, "positions": positions.rows()}
        if isinstance(plain.get("component_var"), ComponentShares):
            plain = {**plain, "component_var": plain["component_var"].as_dict()}
        return encode_json_fast(plain)
    head = {k: v for k, v in snapshot.items() if k != "positions" and k != "component_var"}
    return encode_snapshot_parts(head, rows, *components)


def encode_snapshot_parts(head: Mapping[str, Any], rows: PositionRows, index: Sequence[int], values: bytes) -> bytes:
    """The stored form of a snapshot of positions ``rows`` and component VaR ``index`` / ``values`` (indices
    into ``rows``, float64 bytes), ``head`` the rest of it (:func:`encode_snapshot` checks the parts)."""
    meta = b"[%s,%s]" % (rows.meta, encode_json_fast(list(index)))
    return b"".join((encode_json_fast(head), b"\0", meta, b"\0", rows.block, values))


def decode_snapshot(raw: bytes, key: str) -> dict[str, Any]:
    """A stored snapshot (either form, :func:`encode_snapshot`) as its dict; positions as a list of dicts."""
    end = raw.find(b"\0")
    if end < 0:
        return decode_object(raw, key)
    head = decode_object(raw[:end], key)
    meta_end = raw.find(b"\0", end + 1)
    if meta_end < 0 or "positions" in head or "component_var" in head:
        raise CorruptDataError(f"{key}: malformed positions")
    meta = decode_json(raw[end + 1 : meta_end], key=f"{key}.positions")
    block = raw[meta_end + 1 :]
    if not (
        isinstance(meta, list) and len(meta) == 3 and all(isinstance(m, list) for m in meta)
        and all(isinstance(t, str) for t in meta[0]) and all(type(q) is int for q in meta[1])
        and all(type(i) is int and 0 <= i < len(meta[0]) for i in meta[2]) and len(set(meta[2])) == len(meta[2])
    ):  # fmt: skip
        raise CorruptDataError(f"{key}: malformed position tickers, quantities and component tickers")
    split = len(block) - 8 * len(meta[2])
    try:
        rows = PositionRows(meta[0], meta[1], block[: max(split, 0)])
        components = ComponentShares([meta[0][i] for i in meta[2]], meta[2], block[max(split, 0) :])
    except ValueError as exc:
        raise CorruptDataError(f"{key}: positions: {exc}") from exc
    head["positions"] = rows.rows()
    head["component_var"] = components.as_dict()
    return head


# -- position excursions -----------------------------------------------------------------------------------------
#
# A position's excursion (pf:{id}:marks, one field per ticker) is 17 bytes: its side (int8, +1 long / -1 short),
# MFE and MAE (little-endian float64): the monitor rewrites thousands a tick, and formatting two floats as JSON
# for each cost more than the rest of its write. Written before 2026-12 as JSON ``{"side", "mfe", "mae"}``,
# which is still read (a JSON record is never 17 bytes long and starts with ``{``).

EXCURSION_DTYPE = np.dtype([("side", "i1"), ("mfe", "<f8"), ("mae", "<f8")])
"""One stored excursion record, packed (no padding); also Lua's ``struct`` format ``<bdd``."""


def encode_excursion(side: int, mfe: float, mae: float) -> bytes:
    return struct.pack("<bdd", side, mfe, mae)


def decode_excursion(raw: bytes, key: str) -> tuple[int, float, float]:
    """``(side, mfe, mae)`` of a stored excursion record (either form): a side of +1 or -1, a finite MFE >= 0
    and a finite MAE <= 0, or the record is corrupt."""
    if len(raw) == EXCURSION_DTYPE.itemsize and raw[:1] != b"{":
        side, mfe, mae = struct.unpack("<bdd", raw)
    else:
        data = decode_object(raw, key)
        try:
            side, mfe, mae = int(data["side"]), float(data["mfe"]), float(data["mae"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{key}: bad excursion record ({exc})") from exc
    if side not in (1, -1) or not (math.isfinite(mfe) and math.isfinite(mae) and mfe >= 0.0 >= mae):
        raise CorruptDataError(f"{key}: bad excursion record (side {side}, MFE {mfe}, MAE {mae})")
    return int(side), float(mfe), float(mae)


# -- scalars -----------------------------------------------------------------------------------------------------


def decode_decimal(raw: bytes | str | None, *, key: str = "?") -> Decimal:
    """Exact money: a finite decimal string."""
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes | bytearray) else str(raw)
        value = Decimal(text)
    except (UnicodeDecodeError, InvalidOperation) as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not a decimal") from exc
    if not value.is_finite():
        raise CorruptDataError(f"{key}: {raw!r} is not finite")
    return value


def decode_int(raw: bytes | str | None, *, key: str = "?") -> int:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        return int(raw)
    except ValueError as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not an integer") from exc


def decode_float(raw: bytes | str | None, *, key: str = "?") -> float:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        value = float(raw)
    except ValueError as exc:
        raise CorruptDataError(f"{key}: {raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise CorruptDataError(f"{key}: {raw!r} is not finite")
    return value


def decode_str(raw: bytes | str | None, *, key: str = "?") -> str:
    if raw is None:
        raise StoreEmptyError(f"{key} is missing")
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else str(raw)
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"{key}: not UTF-8 text") from exc


def decode_tickers(raw: bytes | None, key: str) -> tuple[str, ...]:
    """The ``tickers`` field of ``key``: a JSON list of distinct strings."""
    tickers = decode_json(raw, key=f"{key}.tickers")
    if not isinstance(tickers, list) or not all(isinstance(t, str) for t in tickers):
        raise CorruptDataError(f"{key}.tickers: expected a JSON list of strings")
    if len(set(tickers)) != len(tickers):
        raise CorruptDataError(f"{key}.tickers: duplicate tickers")
    return tuple(tickers)


# -- value objects (defined in engine.records) -------------------------------------------------------------------


def encode_position(position: Position) -> str:
    return encode_json(position.to_dict())


def decode_position(raw: bytes | str, key: str) -> Position:
    data = decode_json(raw, key=key)
    if not isinstance(data, dict):
        raise CorruptDataError(f"{key}: expected an object")
    qty = data.get("qty")
    if not isinstance(qty, int) or isinstance(qty, bool):
        raise CorruptDataError(f"{key}: qty must be an integer")
    return Position(
        qty=qty,
        avg_price=decode_decimal(data.get("avg_price"), key=f"{key}.avg_price"),
        realized_pnl=decode_decimal(data.get("realized_pnl", "0"), key=f"{key}.realized_pnl"),
    )


def encode_trading_status(status: TradingStatus) -> dict[str, Any]:
    """The fields of ``pf:{id}:trading_state``; refuses a state that is not a :class:`TradingState`."""
    if status.state not in TRADING_STATES:
        raise ValueError(f"unknown trading state {status.state!r}")
    return {"state": status.state, "reason": status.reason, "actor": status.actor, "ts": repr(float(status.ts))}


def decode_trading_status(key: str, raw: Mapping[bytes, bytes]) -> TradingStatus:
    """The hash ``key`` as read (HGETALL, or the fields an HMGET found); an unknown state is corrupt."""
    if not raw:
        raise StoreEmptyError(f"{key} is missing")
    state = decode_str(raw.get(b"state"), key=f"{key}.state")
    if state not in TRADING_STATES:
        raise CorruptDataError(f"{key}.state: unknown trading state {state!r}")
    return TradingStatus(
        state=TradingState(state),
        reason=decode_str(raw.get(b"reason", b""), key=f"{key}.reason"),
        actor=decode_str(raw.get(b"actor", b""), key=f"{key}.actor"),
        ts=decode_float(raw.get(b"ts", b"0"), key=f"{key}.ts"),
    )


# -- packed rows (history) ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowLayout:
    """A fixed-size row of little-endian floats, one per named column: float64 where ``wide`` is true,
    float32 otherwise, no padding. A missing value (``None``, NaN, inf) is stored as NaN.

    The same layout is the Lua ``struct`` format (:attr:`struct_format`, which Redis scripts pack and
    unpack with) and the numpy dtype (:attr:`dtype`, which readers decode whole blocks of rows with).
    """

    names: tuple[str, ...]
    wide: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.wide) or len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError("a row layout needs distinct names, one width each")

    @cached_property
    def struct_format(self) -> str:
        return "<" + "".join("d" if w else "f" for w in self.wide)

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype([(n, "<f8" if w else "<f4") for n, w in zip(self.names, self.wide, strict=True)])

    @cached_property
    def size(self) -> int:
        return struct.calcsize(self.struct_format)

    @cached_property
    def packer(self) -> struct.Struct:
        return struct.Struct(self.struct_format)


def encode_row(layout: RowLayout, values: Mapping[str, float | int | None]) -> bytes:
    """Pack ``values`` (by column name; absent, ``None`` or non-finite -> NaN) as one row of ``layout``.

    Integers are exact in a float64 column up to 2**53; a float32 column keeps about 7 significant digits.
    """
    out = [math.nan if (v := values.get(name)) is None or isinstance(v, bool) else float(v) for name in layout.names]
    return layout.packer.pack(*[x if math.isfinite(x) else math.nan for x in out])


def decode_rows(layout: RowLayout, blob: bytes | None, *, key: str = "?") -> npt.NDArray[np.void]:
    """Rows of ``layout`` packed back to back -> a structured array (NaN: no value); a blob that is not a whole
    number of rows is corrupt."""
    if blob is None:
        raise StoreEmptyError(f"{key} is missing")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CorruptDataError(f"{key}: expected bytes, got {type(blob).__name__}")
    if len(blob) % layout.size:
        raise CorruptDataError(f"{key}: {len(blob)} bytes is not a whole number of {layout.size}-byte rows")
    return np.frombuffer(bytes(blob), dtype=layout.dtype)


def row_points(
    layout: RowLayout, rows: npt.NDArray[np.void], integers: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Decoded rows as flat dicts (column -> float, ``int`` for the ``integers`` columns, ``None`` for NaN)."""
    columns = [(n, rows[n].astype(np.float64).tolist()) for n in layout.names]
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        point: dict[str, Any] = {}
        for name, values in columns:
            v = values[i]
            point[name] = None if v != v else (int(v) if name in integers else v)
        out.append(point)
    return out
