"""Independent heap checker: re-derives the heap's invariants from raw bytes.

Reads the file through recovery/format.py (a transcription of FORMAT.md) and never
calls allocator code, so an allocator bug cannot hide itself (STYLE.md principle 7).
Checks H1-H6 (header copies), J1-J3 (barrier journal), L1-L3 (redo lanes), R1 (root word) and P1-P5 (page
descriptors and run bitmaps), then, when the root names a store superblock, the index
and objects (I1-I5, recovery/check_store.py); returns every finding with its invariant
ID, offset and a message, plus the set of allocated blocks.

A heap "at rest" (closed cleanly, or opened and recovered) has empty lanes and two
equal header copies; `at_rest=False` accepts what a crash may leave (sealed lanes, one
stale or torn header copy), replays the lanes recovery would replay into a private copy
(an independent transcription of FORMAT.md 7.2, L5 included) and checks the result.
"""

from __future__ import annotations

import dataclasses
import itertools
import mmap
import os
import struct
from pathlib import Path

from recovery import check_store
from recovery import format as fmt


@dataclasses.dataclass(frozen=True)
class Finding:
    invariant: str
    off: int
    message: str

    def __str__(self) -> str:
        return f"{self.invariant} at {self.off}: {self.message}"


@dataclasses.dataclass
class Report:
    path: str
    findings: list[Finding] = dataclasses.field(default_factory=list)
    header: dict | None = None
    blocks: dict[int, int] = dataclasses.field(default_factory=dict)  # block offset -> usable bytes
    runs: int = 0
    spans: int = 0
    objects: int = 0
    value_bytes: int = 0
    journal_records: int = 0    # not at rest: journal records replayed (in a private copy) first
    lanes_replayed: int = 0     # not at rest: lanes replayed (in a private copy) before the checks
    store: object = None    # check_store.StoreWalk of a store heap, else None
    file_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, inv: str, off: int, msg: str) -> None:
        self.findings.append(Finding(inv, off, msg))


def _header_copy(buf, off: int) -> tuple[dict, bool]:
    raw = bytes(buf[off:off + fmt.HEADER_SIZE])
    f = dict(zip((n for n, _ in fmt.HEADER_FIELDS), fmt.HEADER_STRUCT.unpack(raw)))
    return f, f["crc32c"] == fmt.crc32c(raw[:fmt.HEADER_CRC_COVERS])


def check_heap(path, *, at_rest: bool = True, verify_values: bool = True, records: bool = False) -> Report:
    """Check the heap file at `path`; the file is only read. records=True keeps every
    object record in rep.store.records (the checker's own reading, for tests and tools)."""
    size = os.path.getsize(path)
    if size < fmt.HEADER_COPIES["B"] + fmt.HEADER_SIZE:
        rep = Report(str(path))
        rep.add("H5", 0, f"file is {size} bytes, too short for two header copies")
        return rep
    # not at rest, sealed lanes are replayed into a copy-on-write mapping: the file is only read
    access = mmap.ACCESS_READ if at_rest else mmap.ACCESS_COPY
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=access) as m:
        view = memoryview(m)    # zero-copy slices for the CRCs
        try:
            return check_image(view, at_rest=at_rest, verify_values=verify_values, name=str(path), records=records)
        finally:
            view.release()


def check_image(buf, *, at_rest: bool = True, verify_values: bool = True, name: str = "<image>",
                records: bool = False) -> Report:
    """Check a heap image held in memory (a bytes-like object: a file's mapping, or the
    live mapping of an open heap, which is at rest once recovery has run)."""
    rep = Report(name, file_size=len(buf))
    if len(buf) < fmt.HEADER_COPIES["B"] + fmt.HEADER_SIZE:
        rep.add("H5", 0, f"file is {len(buf)} bytes, too short for two header copies")
        return rep
    _check(buf, len(buf), rep, at_rest, verify_values, records)
    return rep


def _check(buf, size: int, rep: Report, at_rest: bool, verify_values: bool = True, records: bool = False) -> None:
    copies = {name: _header_copy(buf, off) for name, off in fmt.HEADER_COPIES.items()}
    good = {n: c for n, (c, ok) in copies.items() if ok and c["magic"] == fmt.MAGIC}
    for n, (c, ok) in copies.items():
        if c["magic"] != fmt.MAGIC:
            rep.add("H1", fmt.HEADER_COPIES[n], f"header copy {n}: magic is {c['magic']!r}")
        elif not ok and (at_rest or not good):
            rep.add("H3", fmt.HEADER_COPIES[n], f"header copy {n} fails its CRC32C")
    if not good:
        return
    h = max(good.values(), key=lambda c: c["generation"])
    rep.header = h
    if at_rest and len(good) == 2 and good["A"] != good["B"]:
        rep.add("H4", 0, f"header copies differ at rest (generations {good['A']['generation']} "
                         f"and {good['B']['generation']})")
    _check_header_fields(h, size, rep)
    if rep.findings and any(f.invariant in ("H2", "H5", "H6") for f in rep.findings):
        return  # the rest of the layout cannot be trusted
    if not _check_journal(buf, h, rep, at_rest):
        return  # J2: recovery refuses the file, so the heap it would leave is undefined
    _check_lanes(buf, h, rep, at_rest)
    _check_pages(buf, h, rep)
    root = struct.unpack_from("<Q", buf, fmt.ROOT_OFF)[0]
    if root and not h["data_off"] <= root < h["file_size"]:
        rep.add("R1", fmt.ROOT_OFF, f"root word {root} is outside the data area")
    elif check_store.is_store(buf, root):
        pages_ok = not any(f.invariant[0] == "P" for f in rep.findings)   # the C walker trusts the pages
        rep.store = check_store.check_store(buf, root, rep.blocks, rep, verify_values=verify_values,
                                            header=h if pages_ok else None, keep_records=records)


def _check_header_fields(h: dict, size: int, rep: Report) -> None:
    def bad(field, msg, inv="H2"):
        rep.add(inv, 0, f"{field}: {msg}")
    if h["format_version"] != fmt.FORMAT_VERSION:
        bad("format_version", f"{h['format_version']}, expected {fmt.FORMAT_VERSION}", "H6")
    if h["header_size"] != fmt.HEADER_SIZE:
        bad("header_size", str(h["header_size"]))
    if h["page_size"] != fmt.PAGE_SIZE:
        bad("page_size", str(h["page_size"]))
    if not 1 <= h["lane_count"] <= 4096 or h["lane_size"] < 4096 or h["lane_size"] % 4096:
        bad("lane_count/lane_size", f"{h['lane_count']} x {h['lane_size']}")
    if h["root_off"] != fmt.ROOT_OFF or h["redo_off"] != fmt.REDO_OFF:
        bad("root_off/redo_off", f"{h['root_off']}, {h['redo_off']}")
    js = h["journal_size"]
    if js and (js < 2 * fmt.JNL_HDR_SIZE or js % fmt.OS_PAGE_SIZE):
        bad("journal_size", str(js))
    if h["meta_off"] != fmt.journal_off(h["lane_count"], h["lane_size"]) + js:
        bad("meta_off", str(h["meta_off"]))
    if h["data_off"] % fmt.PAGE_SIZE or h["data_off"] < h["meta_off"]:
        bad("data_off", str(h["data_off"]))
    if h["file_size"] < h["data_off"] or h["file_size"] % fmt.OS_PAGE_SIZE or h["max_size"] < h["file_size"]:
        bad("file_size/max_size", f"{h['file_size']}, {h['max_size']}")
    if size < h["file_size"]:
        rep.add("H5", 0, f"file_size: header says {h['file_size']}, the file has {size} bytes")
    if h["class_table_id"] not in (0, fmt.CLASS_TABLE_ID):
        bad("class_table_id", f"{h['class_table_id']}, this checker knows {fmt.CLASS_TABLE_ID}", "H6")
    if h["class_table_id"] and h["meta_off"] + 8 * -(-h["max_size"] // fmt.PAGE_SIZE) > h["data_off"]:
        rep.add("P5", h["meta_off"], "the descriptor table does not cover max_size below data_off")


def _check_journal(buf, h: dict, rep: Report, at_rest: bool) -> bool:
    """J1-J3 (FORMAT.md 4.8). The records of the current epoch are those from the first,
    with seq 0, 1, 2, ..., up to the first whose size, seq or CRC fails. At rest there is
    none (J3). Not at rest they are replayed into buf, in order, before the lanes are
    read -- unless one names an impossible range (J2): then False, nothing replayed."""
    size = h["journal_size"]
    if not size:
        return True
    lo = fmt.journal_off(h["lane_count"], h["lane_size"])
    end = lo + size
    epoch = struct.unpack_from("<Q", buf, lo)[0]
    records, pos = [], lo + fmt.JNL_HDR_SIZE
    while pos + fmt.JNL_REC_STRUCT.size <= end:
        crc, rsize, seq, count, reserved = fmt.JNL_REC_STRUCT.unpack_from(buf, pos)
        if rsize < fmt.JNL_REC_STRUCT.size or rsize % 8 or rsize > end - pos or seq != len(records):
            break
        raw = bytes(buf[pos:pos + rsize])
        if fmt.jnl_record_crc32c(epoch, raw) != crc:
            break
        records.append((pos, raw, count, reserved))
        pos += rsize
    if at_rest:
        if records:
            rep.add("J3", lo, f"the journal holds {len(records)} record(s) of epoch {epoch} at rest")
        return True
    ranges_of = []
    for pos, raw, count, reserved in records:
        body = len(raw) - fmt.JNL_REC_STRUCT.size
        ok = count >= 1 and reserved == 0 and 16 * count <= body
        data_at, ranges, prev_end = fmt.JNL_REC_STRUCT.size + 16 * count, [], fmt.ROOT_OFF
        for i in range(count if ok else 0):
            off, n = struct.unpack_from("<QQ", raw, fmt.JNL_REC_STRUCT.size + 16 * i)
            if off % 8 or n % 8 or not n or off < prev_end or off + n > h["file_size"] \
                    or (off < end and off + n > lo):
                ok = False
                break
            ranges.append((off, data_at, n))
            data_at += n
            prev_end = off + n
        if not ok or data_at != len(raw):
            rep.add("J2", pos, f"journal record {len(ranges_of)} passes its CRC but its ranges are impossible")
            return False
        ranges_of.append((raw, ranges))
    for raw, ranges in ranges_of:
        for off, at, n in ranges:
            buf[off:off + n] = raw[at:at + n]
    rep.journal_records = len(ranges_of)
    return True


def _check_lanes(buf, h: dict, rep: Report, at_rest: bool) -> None:
    """L1-L3 (and L5) on every lane. Not at rest: the lanes recovery would replay are
    replayed into buf (a private copy), in seq order, so the checks that follow see the
    heap as recovery will leave it; buf must then be writable."""
    cap = (h["lane_size"] - fmt.LANE_HDR_SIZE) // fmt.REDO_ENTRY_SIZE
    lanes_end = fmt.REDO_OFF + h["lane_count"] * h["lane_size"]
    replay = []
    for i in range(h["lane_count"]):
        lo = fmt.REDO_OFF + i * h["lane_size"]
        seal, seq = struct.unpack_from("<QQ", buf, lo)
        if not seal:
            continue
        if at_rest:
            rep.add("L1", lo, f"lane {i} is sealed at rest (seq {seq})")
            continue
        count, crc = seal & 0xFFFF_FFFF, seal >> 32
        if not 1 <= count <= cap:
            continue  # torn: recovery discards it
        entries = bytes(buf[lo + fmt.LANE_HDR_SIZE: lo + fmt.LANE_HDR_SIZE + count * fmt.REDO_ENTRY_SIZE])
        if fmt.crc32c(entries, fmt.crc32c(struct.pack("<QQ", (count << 32) | i, seq))) != crc:
            continue  # torn: discarded
        decoded, data_ok, valid = [], True, True
        for k in range(count):
            off_op, value = struct.unpack_from("<QQ", entries, k * 16)
            off, op = off_op & ~7, off_op & 7
            size = 8
            if op == 3:
                off, size = off + (value >> 61), (value >> 32) & ((1 << 29) - 1)
            if op not in fmt.REDO_OPS or off < fmt.ROOT_OFF or fmt.REDO_OFF <= off < lanes_end \
                    or off + size > h["file_size"]:
                rep.add("L2", lo + fmt.LANE_HDR_SIZE + 16 * k, f"lane {i} entry {k}: op {op} at {off}")
                valid = False
            elif op == 3 and fmt.crc32c(buf[off:off + size]) != value & 0xFFFF_FFFF:
                data_ok = False     # L5: its data never all reached the media; recovery discards it
            decoded.append((op, off, value))
        if valid and data_ok:
            replay.append((seq, lo, decoded))
    for _, lo, decoded in sorted(replay):   # FORMAT.md 7.2: seq order, each lane emptied after its replay
        for op, off, value in decoded:
            if op == 0:
                struct.pack_into("<Q", buf, off, value)
            elif op in (1, 2):
                old = struct.unpack_from("<Q", buf, off)[0]
                struct.pack_into("<Q", buf, off, old | value if op == 1 else old & ~value & (2**64 - 1))
        struct.pack_into("<Q", buf, lo, 0)
    rep.lanes_replayed = len(replay)


def _check_pages(buf, h: dict, rep: Report) -> None:
    if not h["class_table_id"]:
        return
    table = fmt.class_table()
    meta, data = h["meta_off"], h["data_off"]
    pages = (h["file_size"] - data) // fmt.PAGE_SIZE
    descs = struct.unpack_from(f"<{pages}Q", buf, meta)
    blocks = rep.blocks
    fast_out = check_store._cffi.new("uint64_t[]", 8192) if check_store.FAST else None
    base = check_store._cffi.from_buffer(buf) if fast_out is not None else None
    p = 0
    while p < pages:
        d = descs[p]
        kind, cls, n, high = decode_desc(d)
        doff = meta + 8 * p
        if kind == fmt.DESC_FREE:
            if d:
                rep.add("P1", doff, f"page {p}: free descriptor with nonzero bits {d:#x}")
            p += 1
            continue
        if high or kind not in (fmt.DESC_RUN, fmt.DESC_SPAN) or n < 1 or p + n > pages or \
                (kind == fmt.DESC_RUN and (cls >= len(table) or n != table[cls][1])) or \
                (kind == fmt.DESC_SPAN and cls):
            rep.add("P1", doff, f"page {p}: impossible descriptor {d:#x}")
            p += 1
            continue
        for t in range(p + 1, p + n):  # P3: a run or span owns its pages alone
            if descs[t]:
                rep.add("P3", meta + 8 * t, f"page {t} lies inside the allocation at page {p} but has "
                                            f"descriptor {descs[t]:#x}")
        page_off = data + p * fmt.PAGE_SIZE
        if kind == fmt.DESC_SPAN:
            rep.spans += 1
            rep.blocks[page_off] = n * fmt.PAGE_SIZE
        else:
            rep.runs += 1
            size, _, capacity = table[cls]
            if fast_out is not None:
                k = check_store._clib.pmc_run_blocks(base, page_off, size, capacity, fast_out, len(fast_out))
                if k >= 0:      # the common case in C; a P2 finding goes through the loop below
                    blocks.update(zip(check_store._cffi.unpack(fast_out, k), itertools.repeat(size, k)))
                    p += n
                    continue
            first = page_off + fmt.RUN_BITMAP_SIZE
            for w, word in enumerate(struct.unpack_from("<64Q", buf, page_off)):
                while word:     # each set bit, lowest first (the scan's hot loop: no generator)
                    low = word & -word
                    word ^= low
                    idx = w * 64 + low.bit_length() - 1
                    if idx >= capacity:
                        rep.add("P2", page_off + 8 * w, f"run at page {p}: bit {idx} set beyond capacity {capacity}")
                    else:
                        blocks[first + idx * size] = size
        p += n


def _bits(word: int):
    while word:
        low = word & -word
        yield low.bit_length() - 1
        word ^= low


decode_desc = fmt.decode_desc


def format_report(rep: Report) -> str:
    """Stable text: one line per finding, then a summary line."""
    lines = [str(f) for f in rep.findings]
    store = f", store of {rep.objects} objects ({rep.value_bytes} value bytes)" if rep.store else ""
    lines.append(f"{rep.path}: {len(rep.findings)} findings, {len(rep.blocks)} allocated blocks "
                 f"({rep.runs} runs, {rep.spans} spans){store}")
    return "\n".join(lines)


__all__ = ["Finding", "Path", "Report", "check_heap", "check_image", "format_report"]
