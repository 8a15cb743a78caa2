"""A fast reader of regions of local Zarr v3 arrays, for the stacking read path.

zarr-python 3 spends 1-2 ms of Python and event-loop overhead per chunk on top of the codec,
which dominates a stack of many visits (measured on the project machine: 7.6 s to read a
64 x 2048 x 2048 warp cube through zarr, 1.5 s by reading the chunk files and decoding them
with numcodecs, which releases the GIL, so dask threads decode in parallel). This reader
handles the layouts coaddx itself writes — a local directory store, regular chunk grid,
default "/" chunk keys, ``bytes`` (little endian) optionally followed by ``blosc`` — and
:func:`region_reader` returns ``None`` for anything else, so callers fall back to zarr.
Missing chunk files read as the fill value, as in zarr, unless the array's visits have chunk
manifests (:mod:`coaddx.io.zarr.manifest`): then every chunk file is checked against its
CRC-32C as it is read, and a missing, extra, altered or unreadable chunk raises
:class:`~coaddx.errors.StoreError` naming the store, array, visit and chunk. Paths are
resolved before each read, write or delete and refused when they leave the store's root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import sys
import threading
from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

import dask
import numcodecs
import numpy as np

from coaddx.errors import StoreError
from coaddx.io.zarr.manifest import UNCHECKED, ManifestIndex, chunk_crc, inside_root
from coaddx.io.zarr.pool import READ_BLOCKS, BlockPool

#: ``coaddx.verify-chunks``: check each chunk's CRC-32C as it is read (default True; False
#: skips the CRC, not the checks of missing or foreign chunk files). A per-process setting:
#: set ``DASK_COADDX__VERIFY_CHUNKS=false`` in the environment for worker processes.
dask.config.update_defaults({"coaddx": {"verify-chunks": True}})

__all__ = [
    "READ_BLOCKS",
    "BlockPool",
    "LocalChunkArray",
    "LocalChunkWriter",
    "clear_slot",
    "move_slot",
    "region_reader",
    "region_writer",
]


def _fill(meta: dict[str, Any], dtype: np.dtype) -> Any:
    value = meta.get("fill_value", 0)
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity"
        return float(value.replace("Infinity", "inf"))
    return dtype.type(value if value is not None else 0)


#: blosc's shuffle names in Zarr metadata, as numcodecs numbers them.
_SHUFFLES = {
    "noshuffle": numcodecs.blosc.NOSHUFFLE,
    "shuffle": numcodecs.blosc.SHUFFLE,
    "bitshuffle": numcodecs.blosc.BITSHUFFLE,
}
#: Per-thread decode buffers for chunks read into another dtype (a 16-bit mask as int32).
_SCRATCH = threading.local()


def _blosc(codec: dict[str, Any]) -> tuple[str, int, int] | None:
    """(cname, clevel, shuffle) of a blosc codec's metadata, None when not one we write."""
    conf = codec.get("configuration", {})
    shuffle = _SHUFFLES.get(str(conf.get("shuffle", "shuffle")))
    cname = str(conf.get("cname", "lz4"))
    if shuffle is None or cname not in numcodecs.blosc.list_compressors():
        return None
    return cname, int(conf.get("clevel", 1)), shuffle


def region_reader(
    array_path: str | Path,
    *,
    root: str | Path | None = None,
    manifests: ManifestIndex | None = None,
    dtype: Any = None,
) -> LocalChunkArray | None:
    """A :class:`LocalChunkArray` for the array at ``array_path``, or None if its layout is not
    one this reader handles (the caller then uses zarr). ``root``: the store it belongs to
    (no read leaves it; default the array itself); ``manifests``: the expected CRC of each
    chunk of a (visit, y, x) array, checked as chunks are read; ``dtype``: the dtype reads
    return (default the stored one; a wider integer type widens each chunk as it is
    decoded, so a 16-bit mask reads as int32 without a pass over the whole block)."""
    path = Path(array_path)
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("zarr_format") != 3 or meta.get("chunk_grid", {}).get("name") != "regular":
        return None
    keys = meta.get("chunk_key_encoding", {})
    if keys.get("name") != "default" or keys.get("configuration", {}).get("separator", "/") != "/":
        return None
    codecs = meta.get("codecs", [])
    if not codecs or codecs[0].get("name") != "bytes":
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if endian != sys.byteorder and np.dtype(meta["data_type"]).itemsize > 1:
        return None
    if len(codecs) > 2 or (len(codecs) == 2 and codecs[1].get("name") != "blosc"):
        return None
    blosc = _blosc(codecs[1]) if len(codecs) == 2 else None
    try:
        stored = np.dtype(meta["data_type"])
        out = stored if dtype is None else np.dtype(dtype)
    except TypeError:
        return None
    if out != stored and not (out.kind in "iu" and np.can_cast(stored, out, "safe")):
        return None
    if len(codecs) == 2 and blosc is None:
        return None
    return LocalChunkArray(
        path,
        tuple(meta["shape"]),
        tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
        out,
        _fill(meta, stored),
        len(codecs) == 2,
        root=Path(root) if root is not None else path,
        manifests=manifests,
        stored=stored,
        blosc=blosc,
    )


class LocalChunkArray:
    """Array-like view of a local Zarr v3 array whose ``__getitem__`` reads chunk files directly.

    Only basic slicing with steps of 1 is supported (what ``dask.array.from_array`` uses).
    ``dtype`` is what reads return, ``stored`` the chunks' dtype (the same unless widened) and
    ``blosc`` the (cname, clevel, shuffle) of compressed chunks (what the writer encodes with).
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: np.dtype,
        fill: Any,
        compressed: bool,
        *,
        root: Path | None = None,
        manifests: ManifestIndex | None = None,
        stored: np.dtype | None = None,
        blosc: tuple[str, int, int] | None = None,
    ) -> None:
        self.path = str(path)
        self.root = str(root if root is not None else path)
        self.manifests = manifests
        self._safe_dirs: set[str] = set()
        self.shape = shape
        self.chunks = chunks
        self.dtype = dtype
        self.ndim = len(shape)
        self.fill = fill
        self.compressed = compressed
        self.stored = np.dtype(stored) if stored is not None else np.dtype(dtype)
        self.blosc = blosc if blosc is not None else ("lz4", 1, numcodecs.blosc.SHUFFLE)
        self._n_items = int(np.prod(chunks))  # values per chunk (per-chunk Python adds up)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            LocalChunkArray,
            (Path(self.path), self.shape, self.chunks, self.dtype, self.fill, self.compressed),
            {
                "root": self.root,
                "manifests": self.manifests,
                "stored": self.stored,
                "blosc": self.blosc,
            },
        )

    def _slices(self, key: Any) -> tuple[list[slice], tuple[int | slice, ...]]:
        """Unit-step slices per dimension, and the index that drops integer-indexed ones."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-d array")
        out: list[Any] = []
        squeeze: list[int | slice] = []
        for dim, k in zip(self.shape, key + (slice(None),) * (self.ndim - len(key)), strict=True):
            if isinstance(k, int | np.integer):
                i = int(k) + dim if k < 0 else int(k)
                if not 0 <= i < dim:
                    raise IndexError(f"index {k} is out of bounds for size {dim}")
                out.append(slice(i, i + 1))
                squeeze.append(0)
                continue
            if not isinstance(k, slice):
                raise TypeError("LocalChunkArray supports integers and slices only")
            start, stop, step = k.indices(dim)
            if step != 1:
                raise TypeError("LocalChunkArray supports unit-step slices only")
            out.append(slice(start, max(start, stop)))
            squeeze.append(slice(None))
        return out, tuple(squeeze)

    def _scratch(self, n_items: int) -> np.ndarray:
        """This thread's decode buffer of ``n_items`` stored values (reused: a fresh buffer
        per chunk would cost page faults and evict the cache)."""
        key = (self.stored.str, n_items)
        buf = getattr(_SCRATCH, "buffers", {}).get(key)
        if buf is None:
            buf = np.empty(n_items, dtype=self.stored)
            _SCRATCH.buffers = {key: buf}
        return buf

    def _decode(self, buf: bytes, n_items: int, dest: np.ndarray | None) -> np.ndarray:
        """The chunk's stored values (in ``dest`` when given: a buffer of the stored dtype)."""
        if not self.compressed:
            return np.frombuffer(buf, dtype=self.stored)
        if dest is not None:
            numcodecs.blosc.decompress(buf, dest)
            return dest
        return np.frombuffer(numcodecs.blosc.decompress(buf), dtype=self.stored)

    def _where(self, index: Sequence[int]) -> str:
        """The store, array, visit and chunk of chunk ``index``, for error messages."""
        name = Path(self.path).name
        if self.ndim == 3 and self.manifests is not None:
            slot = int(index[0])
            entry = self.manifests.slots[slot] if slot < len(self.manifests.slots) else None
            visit = f"visit {entry[0]}" if entry else f"slot {slot}"
            return f"{self.manifests.store}: array {name!r}: {visit}, chunk {tuple(index[1:])}"
        return f"{self.path}: chunk {tuple(index)}"

    def _expected(self, index: Sequence[int]) -> int | None:
        if self.manifests is None or self.ndim != 3:
            return UNCHECKED
        return self.manifests.expected(os.path.basename(self.path), int(index[0]), index[1:])

    def _key(self, index: Sequence[int]) -> str:
        """The path of chunk ``index``'s file (a string: pathlib costs ~20 us a chunk)."""
        return os.path.join(self.path, "c", *[str(int(i)) for i in index])

    def _open(self, key: str, index: Sequence[int]) -> tuple[int, int] | None:
        """A descriptor of chunk file ``key`` and its size (None when absent), opened only
        inside the root."""
        parent = os.path.dirname(key)
        if parent not in self._safe_dirs:
            inside_root(self.root, parent)
            self._safe_dirs.add(parent)
        try:
            fd = os.open(key, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # a symbolic link: followed only inside the root
                raise StoreError(f"{self._where(index)}: cannot read {key}: {exc}") from exc
            inside_root(self.root, key)
            fd = os.open(key, os.O_RDONLY)
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise StoreError(f"{self._where(index)}: {key} is a directory, not a chunk file")
        return fd, info.st_size

    def _absent(self, index: Sequence[int], key: str, expected: int | None) -> None:
        if expected is not None and expected != UNCHECKED:
            raise StoreError(
                f"{self._where(index)}: chunk file {key} is missing (deleted?); the visit "
                "is damaged: rewrite it (make_warps(reuse=True) or 'coaddx check')"
            )

    def _verify(
        self, index: Sequence[int], key: str, data: Any, expected: int | None, force: bool = False
    ) -> None:
        if expected == UNCHECKED:
            return
        if expected is None:
            raise StoreError(
                f"{self._where(index)}: chunk file {key} exists where the visit wrote none"
            )
        if not force and not dask.config.get("coaddx.verify-chunks"):
            return
        got = chunk_crc(data)
        if got != expected:
            raise StoreError(
                f"{self._where(index)}: chunk file {key} fails its checksum (crc32c "
                f"{got:08x}, written {expected:08x}): the visit is damaged, rewrite it"
            )

    def _read_chunk(self, index: Sequence[int], dest: np.ndarray | None) -> np.ndarray | None:
        """Decode chunk ``index``; into ``dest`` (a whole-chunk contiguous view) when given.
        Returns the chunk array, or None when the chunk file does not exist (fill value)."""
        key = self._key(index)
        n_items = self._n_items
        expected = self._expected(index)
        opened = self._open(key, index)
        if opened is None:
            self._absent(index, key, expected)
            return None
        fd, size = opened
        same = self.stored == self.dtype
        if dest is not None and not self.compressed and same:
            return self._read_into(fd, size, key, index, dest, expected)
        with os.fdopen(fd, "rb") as fh:
            buf = fh.read()
        self._verify(index, key, buf, expected)
        into = None  # decode straight into dest, or into this thread's buffer to widen
        if dest is not None and self.compressed and len(buf) >= 16:
            into = dest.reshape(-1) if same else self._scratch(n_items)
            if int.from_bytes(buf[4:8], "little") != into.nbytes:  # blosc's decoded size
                into = None  # a corrupt or foreign chunk: decoded and refused below
        try:
            flat = self._decode(buf, n_items, into)
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError on corrupt data
            raise StoreError(f"corrupt chunk {key} ({self._where(index)}): {exc}") from exc
        if flat.size != n_items:
            raise StoreError(f"corrupt chunk {key}: {flat.size} values, expected {n_items}")
        chunk = flat.reshape(self.chunks)
        if dest is not None and not (same and into is not None):
            np.copyto(dest, chunk)  # widened in place (the chunk is in this core's cache)
            return dest
        return chunk

    def _read_into(
        self,
        fd: int,
        size: int,
        key: str,
        index: Sequence[int],
        dest: np.ndarray,
        expected: int | None,
    ) -> np.ndarray:
        """Read an uncompressed chunk file of ``size`` bytes straight into ``dest`` (no
        intermediate copy; one read call, as a file object's ``readinto`` makes)."""
        view = memoryview(dest).cast("B")  # type: ignore[arg-type]
        try:
            got = os.readv(fd, [view]) if size == dest.nbytes else 0
        finally:
            os.close(fd)
        if got != dest.nbytes or size != dest.nbytes:
            raise StoreError(
                f"corrupt chunk {key} ({self._where(index)}): {size} bytes, expected {dest.nbytes}"
            )
        self._verify(index, key, dest, expected)
        return dest

    def check_chunk(self, index: Sequence[int], *, read: bool) -> str | None:
        """What is wrong with chunk ``index`` (None: nothing): its file is present where the
        visit wrote it and absent where it did not, a file inside the store, and with
        ``read`` its bytes match the manifest's CRC."""
        key = self._key(index)
        try:
            expected = self._expected(index)
            opened = self._open(key, index)
            if opened is None:
                self._absent(index, key, expected)
                return None
            with os.fdopen(opened[0], "rb") as fh:
                buf = fh.read() if read or expected is None else b""
            if read or expected is None:
                self._verify(index, key, buf, expected, force=True)
        except StoreError as exc:
            text, where = str(exc), self._where(index) + ": "
            return text[len(where) :] if text.startswith(where) else text
        return None

    def _pieces(self, sl: list[slice]) -> list[list[tuple[int, slice, slice, bool]]]:
        """Per dimension, the chunks a region covers: (chunk index, slice within the chunk,
        slice within the region, whether the region holds the chunk's whole extent)."""
        out = []
        for s, c, dim in zip(sl, self.chunks, self.shape, strict=True):
            row = []
            for i in range(s.start // c, -(-s.stop // c)):
                a = i * c
                b0, b1 = max(s.start, a), min(s.stop, a + c, dim)
                row.append(
                    (i, slice(b0 - a, b1 - a), slice(b0 - s.start, b1 - s.start), b1 - b0 == c)
                )
            out.append(row)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        sl, squeeze = self._slices(key)
        out = READ_BLOCKS.empty([s.stop - s.start for s in sl], self.dtype)
        for parts in product(*self._pieces(sl)):
            index = tuple(p[0] for p in parts)
            src = tuple(p[1] for p in parts)
            dst = tuple(p[2] for p in parts)
            whole = all(p[3] for p in parts)
            target = out[dst]
            direct = whole and target.flags.c_contiguous
            chunk = self._read_chunk(index, target if direct else None)
            if chunk is None:
                target[...] = self.fill
            elif not direct:
                target[...] = chunk[src]
        if all(isinstance(q, slice) for q in squeeze):
            return out  # the pooled block itself: its memory is reused once it is dropped
        return out[squeeze]


# -- writing ---------------------------------------------------------------------------------


def region_writer(
    array_path: str | Path, *, root: str | Path | None = None
) -> LocalChunkWriter | None:
    """A :class:`LocalChunkWriter` for a (visit, y, x) array with chunks (1, cy, cx) in the
    layout :func:`region_reader` handles, or None (the caller then writes through zarr).
    ``root``: the store it belongs to (no write leaves it)."""
    reader = region_reader(array_path, root=root)
    if reader is None or reader.ndim != 3 or reader.chunks[0] != 1:
        return None
    return LocalChunkWriter(reader)


def clear_slot(array_path: str | Path, index: int, root: str | Path) -> None:
    """Delete the chunk files of slot ``index`` of a (visit, y, x) array (after checking that
    the slot's folder lies inside the store ``root``)."""
    slot = Path(array_path, "c", str(int(index)))
    if not os.path.lexists(slot):
        return
    inside_root(root, slot.parent)
    if slot.is_symlink():  # a link itself is removed, never what it points to
        slot.unlink()
        return
    inside_root(root, slot)
    shutil.rmtree(slot)


def move_slot(array_path: str | Path, src: int, dst: int, root: str | Path) -> None:
    """Move the chunk files of slot ``src`` to slot ``dst`` (whose files are deleted first),
    byte for byte: the chunks keep the checksums they were written with."""
    clear_slot(array_path, dst, root)
    source = Path(array_path, "c", str(int(src)))
    if os.path.lexists(source):
        inside_root(root, source)
        os.replace(source, Path(array_path, "c", str(int(dst))))


class LocalChunkWriter:
    """Writes one visit slot of a local Zarr v3 array chunk file by chunk, from a box of data.

    Chunks are encoded as zarr would (``bytes``, then blosc with the array's cname, clevel
    and shuffle when it is compressed), written to a temporary file and renamed into place,
    so each is whole or absent; chunks equal to the fill value are not stored (zarr's
    ``write_empty_chunks=False``).
    Pixels outside the box take ``outside``; chunks entirely outside are encoded once.
    :meth:`write_box` returns the CRC-32C of every chunk file written (None: not written).
    """

    def __init__(self, reader: LocalChunkArray) -> None:
        self.array = reader

    def _encode(self, chunk: np.ndarray) -> bytes | np.ndarray:
        """A chunk file's bytes: the chunk itself (C-contiguous, the stored dtype) when the
        array is not compressed (written and checksummed without a copy), else blosc's."""
        chunk = np.ascontiguousarray(chunk, dtype=self.array.stored)
        if not self.array.compressed:
            return chunk
        cname, clevel, shuffle = self.array.blosc
        return numcodecs.blosc.compress(chunk, cname.encode(), clevel, shuffle)

    def _is_fill(self, chunk: np.ndarray) -> bool:
        fill = self.array.fill
        first, last = chunk.flat[0], chunk.flat[-1]  # a chunk with data usually shows it here
        if isinstance(fill, float | np.floating) and np.isnan(fill):
            return bool(np.isnan(first) and np.isnan(last) and np.isnan(chunk).all())
        return bool(first == fill and last == fill and (chunk == fill).all())

    def _put(self, key: Path, payload: bytes | np.ndarray | None, checked: set[Path]) -> None:
        """Write (or, for None, delete) one chunk file; ``checked``: the folders of this
        write already found inside the store (each is resolved once a write, not per chunk)."""
        if os.path.lexists(key) and (key.is_symlink() or key.is_dir()):
            inside_root(self.array.root, key)
            if key.is_dir() and not key.is_symlink():
                shutil.rmtree(key)
            else:
                key.unlink()
        if payload is None:
            key.unlink(missing_ok=True)
            return
        tmp = key.with_name(f".{key.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            if key.parent not in checked:
                key.parent.mkdir(parents=True, exist_ok=True)
                inside_root(self.array.root, key.parent)
                checked.add(key.parent)
            with tmp.open("wb") as fh:
                fh.write(payload if isinstance(payload, bytes) else payload.data.cast("B"))
            os.replace(tmp, key)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            reason = {
                errno.ENOSPC: "the disk is full",
                errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied",
            }.get(exc.errno or 0, str(exc))
            raise StoreError(
                f"cannot write chunk {key}: {reason}; the visit is not committed (the store "
                "reads as before)"
            ) from exc

    def write_box(
        self, index: int, box: tuple[int, int, int, int], data: np.ndarray, outside: Any
    ) -> list[list[int | None]]:
        """Write slot ``index``: ``data`` over ``box`` = (x0, y0, x1, y1) (array pixels, inside
        the plane), ``outside`` everywhere else. Returns the chunk CRCs, row by row."""
        _, ny, nx = self.array.shape
        _, cy, cx = self.array.chunks
        x0, y0, x1, y1 = box
        if data.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"data of shape {data.shape} does not fill box {box}")
        if not (0 <= x0 <= x1 <= nx and 0 <= y0 <= y1 <= ny):
            raise ValueError(f"box {box} is outside the {ny} x {nx} plane")
        blank = np.full((cy, cx), outside, dtype=self.array.stored)
        chunk = np.empty_like(blank)  # each chunk is assembled here in turn (written before reuse)
        blank_payload = None if self._is_fill(blank) else self._encode(blank)
        blank_crc = None if blank_payload is None else chunk_crc(blank_payload)
        base = Path(self.array.path, "c", str(int(index)))
        inside_root(self.array.root, base)
        checked: set[Path] = set()
        crcs: list[list[int | None]] = []
        for j in range(-(-ny // cy)):
            row: list[int | None] = []
            for i in range(-(-nx // cx)):
                key = base / str(j) / str(i)
                a0, b0 = j * cy, i * cx
                r0, r1 = max(y0, a0), min(y1, a0 + cy)
                c0, c1 = max(x0, b0), min(x1, b0 + cx)
                if r0 >= r1 or c0 >= c1:
                    self._put(key, blank_payload, checked)
                    row.append(blank_crc)
                    continue
                if (r1 - r0, c1 - c0) != (cy, cx):  # partly outside the box
                    np.copyto(chunk, blank)
                chunk[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0] = data[
                    r0 - y0 : r1 - y0, c0 - x0 : c1 - x0
                ]
                payload = None if self._is_fill(chunk) else self._encode(chunk)
                self._put(key, payload, checked)
                row.append(None if payload is None else chunk_crc(payload))
            crcs.append(row)
        return crcs
