"""Repair: fix what can be fixed without losing acknowledged data, and say what was done.

Order of work (each step is crash-safe and the whole repair can simply be run again):
1. Open with normal recovery (allocator.HeapFile.open): a torn or stale header copy is
   restored from the good one (H3/H4) and sealed lanes are replayed (L1, the one apply
   function). Files whose trusted header is unusable (H1, H2, H5, H6) are not touched.
2. Check the recovered image with the independent checker (recovery/check.py).
3. Quarantine: every index entry that leads to an invalid record (I2, I4, dangling P4,
   out of order I1) is copied, with the bytes of its blocks, into `<heap>.quarantine/`
   (one JSON description and the raw bytes each, fsynced) before anything changes.
4. Relink the skip list (redo commits of SETs): level 0 holds the valid records in key
   order; when level 0 was broken, valid records that became unreachable past the break
   are found again among the allocated blocks (the newest of two with one key wins; the
   other is quarantined). Each record keeps its height.
5. Free leaked blocks (ANDNOT of their bitmap bit, or a span's descriptor SET to 0),
   after dumping those that look like records into the quarantine too; clear bitmap
   bits beyond a run's capacity (P2).
Nothing is deleted without a file in the quarantine directory and a line in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

from recovery import check_store
from recovery import format as fmt
from recovery.check import Report, check_heap, check_image

_OP_SET, _OP_ANDNOT = 0, 2          # FORMAT.md 4.3 redo ops


class UnrepairableError(Exception):
    """The file cannot be repaired safely (foreign, or its trusted header is unusable)."""


@dataclasses.dataclass
class RepairReport:
    path: str
    actions: list[str] = dataclasses.field(default_factory=list)
    quarantined: list[dict] = dataclasses.field(default_factory=list)
    quarantine_dir: str | None = None
    before: list = dataclasses.field(default_factory=list)     # findings before
    after: list = dataclasses.field(default_factory=list)      # findings that remain


def repair(path, *, quarantine_dir=None, backend: str = "auto") -> RepairReport:
    """Repair the heap at path in place (it must not be open elsewhere: the flock is taken)."""
    from allocator import HeapFile, PmstoreError
    path = Path(path)
    pre = check_heap(path, at_rest=False)
    fatal = [f for f in pre.findings if f.invariant in ("H1", "H2", "H5", "H6")]
    if pre.header is None or fatal:
        raise UnrepairableError("; ".join(map(str, (fatal or pre.findings)[:3])) or "no valid header copy")
    rep = RepairReport(str(path), before=check_heap(path).findings)
    try:
        hf = HeapFile.open(path, backend=backend)
    except PmstoreError as e:
        raise UnrepairableError(f"normal recovery refuses the file: {e}") from None
    try:
        o = hf.report
        if o.header_copy_restored:
            rep.actions.append(f"H3/H4: restored the stale header copy {o.header_copy_restored} from the good one")
        if o.lanes_replayed:
            rep.actions.append(f"L1: replayed {o.lanes_replayed} sealed redo lanes (normal recovery)")
        repair_open(hf, rep, Path(quarantine_dir) if quarantine_dir else path.with_name(path.name + ".quarantine"))
    finally:
        hf.close()
    rep.after = check_heap(path).findings
    return rep


def repair_open(hf, rep: RepairReport, qdir: Path) -> None:
    """Steps 2-5 on a recovered, open HeapFile (tests call this with a traced one)."""
    m = hf.mapping
    view = m.view(0, m.size)
    try:
        chk = check_image(view, name=rep.path, records=True)
        plan = _plan(view, chk, rep)
        if plan.dumps:
            _quarantine(view, plan.dumps, plan.sizes, qdir, rep)
    finally:
        view.release()
    _commit(hf, plan.links, "I1: relinked the skip list", rep, chunked=False)
    _commit(hf, plan.frees, "I3/P2: freed blocks and cleared bits", rep, chunked=True)
    for line in plan.notes:
        rep.actions.append(line)


@dataclasses.dataclass
class _Plan:
    links: list = dataclasses.field(default_factory=list)    # redo entries (op, off, value)
    frees: list = dataclasses.field(default_factory=list)
    dumps: list = dataclasses.field(default_factory=list)    # (invariant, reason, off, record|None)
    notes: list = dataclasses.field(default_factory=list)
    sizes: dict = dataclasses.field(default_factory=dict)    # allocated block -> bytes


def _plan(buf, chk: Report, rep: RepairReport) -> _Plan:
    plan = _Plan()
    h = chk.header
    for f in chk.findings:
        if f.invariant in ("P1", "P3"):
            plan.notes.append(f"not repaired (needs an operator): {f}")
        elif f.invariant == "P2":
            plan.frees.extend(_clear_beyond_capacity(buf, h, f.off))
    w = chk.store
    if w is None:
        return plan
    if w.bad and not w.head_off:
        plan.notes.append("not repaired: the superblock or head record is unusable (I5)")
        return plan
    live = list(w.records)
    if w.bad or w.level_errors:
        live = _gather(buf, chk, w, plan)
        plan.links = _relink(buf, w.head_off, live)
    reachable = {w.super_off, w.head_off}
    for rec in live:
        reachable.add(rec.off)
        if rec.value_block:
            reachable.add(rec.value_block)
    dumped = {d[2] for d in plan.dumps} | {d[3].value_block for d in plan.dumps if d[3] is not None}
    for blk in sorted(set(chk.blocks) - reachable):
        if blk not in dumped:
            rec, _, _ = check_store._record(buf, blk, chk.blocks)
            plan.dumps.append(("I3", "leaked block (allocated, unreachable from the index)", blk, rec))
        plan.frees.append(_free_entry(buf, h, blk))
    plan.sizes = chk.blocks
    return plan


def _gather(buf, chk: Report, w, plan: _Plan) -> list:
    """The valid records to keep, in key order, when the index is broken."""
    found = {rec.off: rec for rec in w.records}
    for b in w.bad:
        what = b.record or None
        plan.dumps.append((b.invariant, b.message, b.target_off, what))
    bad_offs = {b.target_off for b in w.bad}
    if w.bad:   # records past a level-0 break: look for them among the allocated blocks
        for blk in chk.blocks:
            if blk in found or blk in bad_offs or blk in (w.super_off, w.head_off):
                continue
            rec, _, _ = check_store._record(buf, blk, chk.blocks)
            if rec is not None and _value_ok(buf, rec):
                found[blk] = rec
    by_key: dict[bytes, check_store.Record] = {}
    for rec in sorted(found.values(), key=lambda r: r.hdr["mtime_ns"], reverse=True):
        if rec.key in by_key:
            plan.dumps.append(("I1", f"older duplicate of key {rec.key[:60]!r}", rec.off, rec))
        else:
            by_key[rec.key] = rec
    return [by_key[k] for k in sorted(by_key)]


def _value_ok(buf, rec) -> bool:
    """I4: the value matches its value_crc32c (a small inline value's is computed from its
    bytes and passed the record CRC)."""
    return fmt.crc32c(buf[rec.value_off:rec.value_off + rec.value_size]) == rec.hdr["value_crc32c"]


def _relink(buf, head_off: int, live: list) -> list:
    """SET entries making level l the ordered list of the live records taller than l."""
    entries = []
    for level in range(fmt.OBJ_MAX_HEIGHT):
        chain = [head_off] + [r.off for r in live if r.height > level]
        for a, b in zip(chain, [*chain[1:], 0], strict=True):
            word = a + fmt.OBJ_HDR_SIZE + 8 * level     # next[level] (FORMAT.md 4.7)
            if struct.unpack_from("<Q", buf, word)[0] != b:
                entries.append((_OP_SET, word, b))
    return entries


def _free_entry(buf, h: dict, blk: int) -> tuple[int, int, int]:
    """The redo entry that frees an allocated block: clear its bitmap bit, or a span's descriptor."""
    page = (blk - h["data_off"]) // fmt.PAGE_SIZE
    desc_off = h["meta_off"] + 8 * page
    kind, cls, _, _ = fmt.decode_desc(struct.unpack_from("<Q", buf, desc_off)[0])
    if kind == fmt.DESC_SPAN:
        return (_OP_SET, desc_off, 0)
    page_off = h["data_off"] + page * fmt.PAGE_SIZE
    idx = (blk - page_off - fmt.RUN_BITMAP_SIZE) // fmt.class_table()[cls][0]
    return (_OP_ANDNOT, page_off + 8 * (idx // 64), 1 << (idx % 64))


def _clear_beyond_capacity(buf, h: dict, word_off: int) -> list:
    page = (word_off - h["data_off"]) // fmt.PAGE_SIZE
    kind, cls, _, _ = fmt.decode_desc(struct.unpack_from("<Q", buf, h["meta_off"] + 8 * page)[0])
    capacity = fmt.class_table()[cls][2]
    first = (word_off - h["data_off"] - page * fmt.PAGE_SIZE) // 8 * 64
    mask = sum(1 << b for b in range(64) if first + b >= capacity)
    return [(_OP_ANDNOT, word_off, mask)] if kind == fmt.DESC_RUN and mask else []


def _quarantine(buf, dumps: list, sizes: dict, qdir: Path, rep: RepairReport) -> None:
    """Copy each entry's blocks and description into qdir, durably, before any change."""
    qdir.mkdir(exist_ok=True)
    rep.quarantine_dir = str(qdir)
    base = len(list(qdir.glob("*.json")))
    for n, (inv, reason, off, rec) in enumerate(dumps, start=base):
        stem = f"{n:05d}-{off}"
        desc = {"invariant": inv, "reason": reason, "block_off": off, "files": [f"{stem}.block"]}
        extent = sizes.get(off) or _record_extent(buf, rec, off)
        _write_durable(qdir / f"{stem}.block", bytes(buf[off:off + extent]))
        if rec is not None:
            desc.update(key=rec.key.decode("utf-8", "replace"), key_hex=rec.key.hex(), value_size=rec.value_size,
                        mtime_ns=rec.hdr["mtime_ns"], etag=_etag_hex(buf, rec),
                        value_crc32c=rec.hdr["value_crc32c"])
            if 0 < rec.value_off + rec.value_size <= len(buf):
                _write_durable(qdir / f"{stem}.value", bytes(buf[rec.value_off:rec.value_off + rec.value_size]))
                desc["files"].append(f"{stem}.value")
        _write_durable(qdir / f"{stem}.json", json.dumps(desc, indent=1).encode())
        rep.quarantined.append(desc)
        rep.actions.append(f"{inv}: quarantined block {off} ({reason}) as {qdir / stem}.*")
    fd = os.open(qdir, os.O_RDONLY)
    try:
        os.fsync(fd)    # durable: the quarantine entries' names
    finally:
        os.close(fd)


def _etag_hex(buf, rec) -> str:
    """The record's ETag: as stored, or the MD5 of its small value (MD5_DERIVED, FORMAT.md 4.7)."""
    if rec.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED and 0 < rec.value_off + rec.value_size <= len(buf):
        return hashlib.md5(bytes(buf[rec.value_off:rec.value_off + rec.value_size])).hexdigest()
    return rec.hdr["etag"].hex()


def _record_extent(buf, rec, off: int) -> int:
    """Bytes to keep of a record that is not an allocated block (a dangling pointer's target)."""
    if rec is not None:
        return fmt.obj_record_size(rec.height, len(rec.key), rec.hdr["ctype_size"],
                                   None if rec.value_block else rec.value_size,
                                   bool(rec.hdr["height_flags"] & fmt.OBJ_FLAG_MD5_DERIVED))
    largest = fmt.obj_record_size(fmt.OBJ_MAX_HEIGHT, fmt.OBJ_KEY_MAX, fmt.OBJ_CTYPE_MAX, fmt.OBJ_INLINE_MAX)
    return min(largest, len(buf) - off)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _commit(hf, entries: list, what: str, rep: RepairReport, *, chunked: bool) -> None:
    """Apply entries through the redo log: one commit (atomic) or, for independent
    entries such as frees, as many as the lane capacity needs."""
    if not entries:
        return
    cap = hf.redo_capacity
    if not chunked and len(entries) > cap:
        raise UnrepairableError(f"{what}: {len(entries)} pointer changes exceed one redo lane ({cap}); "
                                "nothing was changed")
    for i in range(0, len(entries), cap):
        hf.commit(entries[i:i + cap])
    rep.actions.append(f"{what} ({len(entries)} words)")
