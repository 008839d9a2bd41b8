# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# distutils: language = c++
"""Entity feature state compiled to C++: the same plan, numbers and snapshots as `state.EntityState`.

`EntityState` (pure Python) stays the reference: tests/unit/test_native_state.py checks this engine leaves the
same state (`dump()`, bit for bit) and values after every event. Tile rows live in C++ vectors in insertion
order, so window sums add the same floats in the same order as the reference's dicts; distinct sets and
sessions stay Python dicts (their keys are whatever the events carry). `freeze()` packs a state into bytes
without pickle: it runs for every entity a micro-batch changed. An event reaches a state as a `View`, filled from a
record (`fold_events`) or from a row of columns (`fold_block`), so both fold the same way. Also here, as the flow's
one compiled module: its routing, the Redis writer's commands and the object allocator's arena cache.
"""

cimport cython
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint32_t
from cpython.object cimport PyObject
from libc.string cimport memcpy, memset
from libcpp.string cimport string
from libcpp.vector cimport vector

import pickle


cdef extern from "Python.h":
    dict PyDict_Copy(object template)
    void PyObject_GC_UnTrack(object op)


cdef inline tuple _untracked(tuple t):
    """`t`, out of the cyclic GC's view: for tuples of scalars, strings and plain records or values, which can
    be in no reference cycle. The GC would untrack them itself, but only after walking them in a collection:
    the ones the flow keeps (sessions, log entries, rows in flight) were most of what its collections walked."""
    PyObject_GC_UnTrack(t)
    return t

cdef enum:
    MAGIC = 0x4E  # first byte of a frozen native state ("N"); a pickle starts with 0x80
    VERSION = 1
    MAX_WINDOWS = 32
    MAX_COLUMNS = 256
    MAX_DISTINCT = 32

cdef enum Kind:
    COL = 0
    MEAN = 1
    DISTINCT = 2
    SESSION = 3
    MAX = 4
    ATTRIBUTE = 5
    AGE_DAYS = 6
    RATIO = 7


cdef struct View:
    # One event as `NativeState._apply_view` reads it: per plan column, whether its filter passes and what it adds
    # (`has`: a value to add, 1 for a count); the distinct values and the session id, borrowed (NULL: None).
    unsigned char passes[MAX_COLUMNS]
    unsigned char has[MAX_COLUMNS]
    double add[MAX_COLUMNS]
    PyObject* distinct[MAX_DISTINCT]
    PyObject* session


cdef class NativePlan:
    """An `EntityPlan` laid out for C: windows, columns grouped by event type, outputs in order."""

    cdef readonly object source  # the EntityPlan
    cdef int nwin
    cdef vector[int64_t] tile_ms, tiles
    cdef vector[int] width, base  # accumulators per tile; where each window's totals start in one flat array
    cdef int ncols
    cdef vector[int] col_slot, col_col
    cdef list col_tests  # per column: ((field, expected, must-be-not-null), ...)
    cdef list col_value  # per column: value field, or None to count
    cdef dict type_group  # event_type value -> index into groups (0: every other type)
    cdef vector[vector[int]] groups
    cdef int ndist
    cdef vector[int64_t] d_tile_ms, d_tiles
    cdef list d_field
    cdef object session_field
    cdef int nout
    cdef vector[int] out_kind, out_a, out_b, out_c  # per output, see `__init__`
    cdef tuple out_name, out_arg
    cdef dict template  # every output name in the order `values` fills them (None each): what it copies
    cdef bint has_ratio
    cdef dict attribute_fields
    cdef int64_t day_ms

    def __init__(self, plan, not_null, int64_t day_ms):
        self.source = plan
        self.day_ms = day_ms
        self.nwin = len(plan.tile_windows)
        if self.nwin > MAX_WINDOWS:
            raise ValueError(f"the native engine takes at most {MAX_WINDOWS} windows per entity, not {self.nwin}")
        cdef int total = 0
        for w in plan.tile_windows:
            self.tile_ms.push_back(w.tile_ms)
            self.tiles.push_back(w.tiles)
            self.width.push_back(w.width)
            self.base.push_back(total)
            total += w.width
        if total > MAX_COLUMNS:
            raise ValueError(f"the native engine takes at most {MAX_COLUMNS} window columns per entity, not {total}")
        self.col_tests, self.col_value = [], []
        self.ncols = total
        for c in plan.columns:
            self.col_slot.push_back(c.slot)
            self.col_col.push_back(c.col)
            self.col_tests.append(tuple((name, expected, expected is not_null) for name, expected in c.where))
            self.col_value.append(c.value_field)
        # The reference's column subsets per event type a filter names, plus one for all others, in plan order.
        self.type_group = {}
        self.groups.push_back(self._indices(plan, plan.columns_for(None)))
        for t in plan.filtered_types:
            self.type_group[t] = self.groups.size()
            self.groups.push_back(self._indices(plan, plan.columns_for(t)))
        self.ndist = len(plan.distinct_windows)
        if self.ndist > MAX_DISTINCT:
            raise ValueError(f"the native engine takes at most {MAX_DISTINCT} distinct features per entity")
        self.d_field = []
        for (f, _), w in zip(plan.distinct, plan.distinct_windows):
            self.d_tile_ms.push_back(w.tile_ms)
            self.d_tiles.push_back(w.tiles)
            self.d_field.append(f.value_field)
        self.session_field = plan.session_field
        self.attribute_fields = {topic: list(fields) for topic, fields in plan.attribute_fields.items()}
        # Outputs in the reference's order: (kind, a, b, c, arg). a, b, c: COL: slot, column, int dtype;
        # MEAN: slot, sum column, count column (arg: default); DISTINCT: a = which set; ATTRIBUTE and
        # AGE_DAYS: arg = the field; RATIO: arg = (numerator, denominator), evaluated after all others.
        names, args = [], []
        self.has_ratio = False
        for f, how in plan.outputs:
            kind, a, b, c, arg = how[0], 0, 0, 0, None
            if kind == "col":
                code, a, b, c = COL, how[1], how[2], f.dtype == "int"
            elif kind == "mean":
                code, a, b, c, arg = MEAN, how[1], how[2], how[3], f.default
            elif kind == "distinct":
                code, a = DISTINCT, how[1]
            elif kind == "session_count":
                code = SESSION
            elif kind == "max":
                code = MAX
            elif kind in ("attribute", "age_days"):
                code, arg = (ATTRIBUTE if kind == "attribute" else AGE_DAYS), f.value_field
            elif kind == "ratio":
                code, arg = RATIO, tuple(f.inputs)
                self.has_ratio = True
            else:
                raise ValueError(f"the native engine has no {kind!r} aggregation; run the Python one "
                                 f"(STREAMML_FEATURES_ENGINE=python) or add it to native_state.pyx")
            if code in (COL, MEAN):
                a = self.base[a]  # the window's first column in the flat totals
            self.out_kind.push_back(code)
            self.out_a.push_back(a)
            self.out_b.push_back(b)
            self.out_c.push_back(c)
            names.append(f.name)
            args.append(arg)
        self.nout, self.out_name, self.out_arg = len(names), tuple(names), tuple(args)
        ratios = [n for n, kind in zip(names, self.out_kind) if kind == RATIO]
        self.template = dict.fromkeys([n for n in names if n not in ratios] + ratios)

    @staticmethod
    def _indices(plan, columns) -> list:
        return [plan.columns.index(c) for c in columns]

    def new_state(self) -> NativeState:
        return NativeState(self)

    def thaw(self, data) -> NativeState:
        """A state from `NativeState.freeze()` bytes, or from the reference's `dump()` tuple (earlier snapshots)."""
        cdef NativeState state = NativeState(self)
        if isinstance(data, tuple):
            state._load_tuple(data)
        else:
            state._unpack(data)
        return state


cdef inline int64_t _tile(int64_t ts, int64_t tile_ms):
    return ts // tile_ms  # Cython keeps Python's floor division for C integers (cdivision off)


@cython.no_gc  # holds no object that could lead back to it: the cyclic GC need never walk millions of these
cdef class NativeState:
    """Everything needed to compute one entity's features (see `state.EntityState`, whose fields these mirror)."""

    cdef NativePlan plan
    cdef public int64_t t, cdc_ts
    cdef vector[vector[int64_t]] idx  # per window: tile indexes, in insertion order
    cdef vector[vector[double]] vals  # per window: `width` accumulators per tile, same order
    # Per window, the sums of its first `summed` tiles, added in order: the reference adds every tile at every
    # evaluation, the same floats in the same order, so the sums of tiles no event changed since are reused and
    # only the newer ones added (a tile that leaves the window, or an event in a summed tile, starts them over).
    cdef vector[vector[double]] sums
    cdef vector[Py_ssize_t] summed
    cdef tuple seen  # per distinct feature: {value: latest tile} (untracked, as the sessions' tuples)
    cdef dict sessions  # session id -> (events, max ts): tuples, which the GC stops tracking, unlike lists
    # At most the oldest tile in each distinct set, and the oldest max ts among the sessions (INT64_MIN: unknown):
    # an evaluation below them has nothing to prune and skips the walk. Not in snapshots (unknown after a thaw:
    # `_forget_floors`).
    cdef vector[int64_t] seen_floor
    cdef int64_t session_floor
    cdef public object session
    cdef public object attrs
    # The entity id string `fold_events` keys this state by (not in snapshots): later dict operations on the batch's
    # ids (touched, the log windows, the dirty order) then find their keys by identity, without reading the stored
    # key's string, a cache miss per operation on 100k entities.
    cdef object key

    def __cinit__(self, NativePlan plan):
        self.plan = plan
        self.t = 0
        self.cdc_ts = 0
        self.idx.resize(plan.nwin)
        self.vals.resize(plan.nwin)
        self.sums.resize(plan.nwin)
        self.summed.assign(plan.nwin, 0)
        self.seen = _untracked(tuple([{} for _ in range(plan.ndist)]))
        self.sessions = {}
        self.seen_floor.assign(plan.ndist, INT64_MAX)  # empty: nothing to prune
        self.session_floor = INT64_MAX
        self.session = None
        self.attrs = None
        self.key = None

    @property
    def ts(self) -> int:
        return self._ts()

    cdef inline int64_t _ts(self):
        """Event time this state reflects (what Redis `_ts` carries)."""
        return self.t if self.t > self.cdc_ts else self.cdc_ts

    cdef Py_ssize_t _row_for(self, int slot, int64_t ts, int64_t t):
        """Offset of `ts`'s tile row in `vals[slot]`, created if needed; -1 when the tile is out of the window."""
        cdef NativePlan p = self.plan
        cdef int64_t tile_ms = p.tile_ms[slot]
        cdef int64_t i = _tile(ts, tile_ms)
        if i <= _tile(t, tile_ms) - p.tiles[slot]:
            return -1
        cdef vector[int64_t]* idx = &self.idx[slot]
        cdef Py_ssize_t n = idx.size(), k = n - 1
        while k >= 0:
            if idx[0][k] == i:
                return k * p.width[slot]
            k -= 1
        idx.push_back(i)
        self.vals[slot].resize((n + 1) * p.width[slot], 0.0)
        return n * p.width[slot]

    def apply_event(self, plan, dict event, int64_t ts) -> None:
        """Fold one accepted clickstream-like event (`plan` is ignored: the state keeps its own)."""
        self._apply(event, ts)

    cdef int _apply(self, dict event, int64_t ts) except -1:
        cdef View view
        _view_of_record(self.plan, event, &view)
        return self._apply_view(&view, ts)

    cdef int _apply_view(self, View* e, int64_t ts) except -1:
        """Fold one event as `View` gives it (from a record or from a row of an `EventBlock`)."""
        cdef NativePlan p = self.plan
        cdef int64_t t
        cdef Py_ssize_t pos, c, k, slot
        cdef int64_t i
        cdef Py_ssize_t rows[MAX_WINDOWS]
        if ts >= self.t:
            self.t = ts
            if p.session_field is not None:
                self.session = None if e.session == NULL else <object>e.session
        t = self.t
        for slot in range(p.nwin):
            rows[slot] = -2  # not looked up yet (-1: out of the window)
        for c in range(p.ncols):  # in plan order: each accumulator adds the same floats in the same order
            if not e.passes[c]:
                continue
            slot = p.col_slot[c]
            if rows[slot] == -2:
                rows[slot] = self._row_for(slot, ts, t)
                if rows[slot] >= 0 and rows[slot] // p.width[slot] < self.summed[slot]:
                    self.summed[slot] = 0  # an event in a tile already summed: start over
            pos = rows[slot]
            if pos >= 0 and e.has[c]:
                self.vals[slot][pos + p.col_col[c]] += e.add[c]
        for k in range(p.ndist):
            if e.distinct[k] == NULL:
                continue
            v = <object>e.distinct[k]
            i = _tile(ts, p.d_tile_ms[k])
            if i <= _tile(t, p.d_tile_ms[k]) - p.d_tiles[k]:
                continue
            seen = <dict>self.seen[k]
            prev = seen.get(v)
            if prev is None or <int64_t>prev < i:
                seen[v] = i
                if prev is None and i < self.seen_floor[k]:
                    self.seen_floor[k] = i
        if p.session_field is not None and e.session != NULL:
            sid = <object>e.session
            entry = self.sessions.get(sid)
            if entry is None:
                self.sessions[sid] = _untracked((1, ts))
                if ts < self.session_floor:
                    self.session_floor = ts
            else:
                self.sessions[sid] = _untracked((entry[0] + 1, ts if ts > entry[1] else entry[1]))
        return 0

    def apply_change(self, plan, str topic, op, after, int64_t ts) -> None:
        """Fold one CDC change: create/update/snapshot sets the attributes, delete removes them."""
        if ts > self.cdc_ts:
            self.cdc_ts = ts
        if op == "d" or after is None:
            self.attrs = None
            return
        fields = self.plan.attribute_fields.get(topic, ())
        self.attrs = {name: after.get(name) for name in fields}

    def values(self, plan=None) -> dict:
        """Feature name -> value as of `ts`; attributes absent when unknown or deleted (prunes as the reference)."""
        cdef NativePlan p = self.plan
        cdef int64_t t = self.t, lo, i
        cdef Py_ssize_t slot, n, k, keep, c, w, base
        cdef double totals[MAX_COLUMNS]
        cdef double count
        cdef int kind
        cdef vector[int64_t]* idx
        cdef vector[double]* vals
        cdef vector[double]* sums
        self._prune_sessions()
        for slot in range(p.nwin):
            w, base = p.width[slot], p.base[slot]
            lo = _tile(t, p.tile_ms[slot]) - p.tiles[slot]
            idx, vals, sums = &self.idx[slot], &self.vals[slot], &self.sums[slot]
            n, keep = idx.size(), 0
            for k in range(n):  # drop the tiles that left the window, keeping the order of the rest
                i = idx[0][k]
                if i <= lo:
                    continue
                if keep != k:
                    idx[0][keep] = i
                    for c in range(w):
                        vals[0][keep * w + c] = vals[0][k * w + c]
                keep += 1
            if keep != n:
                idx.resize(keep)
                vals.resize(keep * w)
                n = keep
                self.summed[slot] = 0
            if self.summed[slot] == 0:
                sums.assign(w, 0.0)
            for k in range(self.summed[slot], n - 1):  # every tile but the last, the likeliest to change
                for c in range(w):
                    sums[0][c] += vals[0][k * w + c]
            if n - 1 > self.summed[slot]:
                self.summed[slot] = n - 1
            for c in range(w):
                totals[base + c] = sums[0][c] + vals[0][(n - 1) * w + c] if n else 0.0
        # A copy of the template: one small allocation, the keys already in place. (A presized dict took a
        # general, non-string key table too large for Python's allocator: malloc was 6% of the flow, py-spy.)
        out = PyDict_Copy(p.template)
        attrs = None
        for k in range(p.nout):
            kind = p.out_kind[k]
            name = p.out_name[k]
            if kind == COL:
                if p.out_c[k]:
                    out[name] = <int64_t>totals[p.out_a[k] + p.out_b[k]]
                else:
                    out[name] = totals[p.out_a[k] + p.out_b[k]]
            elif kind == MEAN:
                count = totals[p.out_a[k] + p.out_c[k]]
                out[name] = totals[p.out_a[k] + p.out_b[k]] / count if count else p.out_arg[k]
            elif kind == DISTINCT:
                out[name] = self._distinct(p.out_a[k], t)
            elif kind == SESSION:
                entry = self.sessions.get(self.session) if self.session is not None else None
                out[name] = entry[0] if entry else 0
            elif kind == MAX:
                out[name] = t
            elif kind == ATTRIBUTE or kind == AGE_DAYS:
                if attrs is None:
                    attrs = self.attrs if self.attrs else {}
                v = attrs.get(p.out_arg[k])
                if v is not None:
                    out[name] = v if kind == ATTRIBUTE else (self.ts - v) // p.day_ms
                else:
                    del out[name]
        if p.has_ratio:
            for k in range(p.nout):
                if p.out_kind[k] == RATIO:
                    num, den_name = p.out_arg[k]
                    den = out.get(den_name)  # absent, or a ratio not evaluated yet (None): 0, as the reference
                    num = out.get(num)
                    out[p.out_name[k]] = (num or 0) / den if den else 0.0
        return out

    cdef Py_ssize_t _distinct(self, Py_ssize_t k, int64_t t) except -1:
        cdef int64_t lo = _tile(t, self.plan.d_tile_ms[k]) - self.plan.d_tiles[k]
        cdef int64_t floor = INT64_MAX
        seen = <dict>self.seen[k]
        if self.seen_floor[k] > lo:  # no tile in the set is that old
            return len(seen)
        stale = []
        for v, i in seen.items():
            if <int64_t>i <= lo:
                stale.append(v)
            elif <int64_t>i < floor:
                floor = i
        for v in stale:
            del seen[v]
        self.seen_floor[k] = floor
        return len(seen)

    cdef _prune_sessions(self):
        cdef int64_t horizon, floor = INT64_MAX
        if len(self.sessions) > 1:
            horizon = self.t - self.plan.day_ms
            if self.session_floor >= horizon:  # no session ended that long ago
                return
            stale = []
            for sid, entry in self.sessions.items():
                if <int64_t>(<tuple>entry)[1] < horizon and sid != self.session:
                    stale.append(sid)
                elif <int64_t>(<tuple>entry)[1] < floor:
                    floor = (<tuple>entry)[1]
            for sid in stale:
                del self.sessions[sid]
            self.session_floor = floor

    def dump(self) -> tuple:
        """The reference's `EntityState.dump()` layout (t, cdc_ts, rows, seen, sessions, session, attrs): what the
        equivalence tests compare. Snapshots use `freeze()`."""
        cdef Py_ssize_t slot, k, w
        rows = []
        for slot in range(self.plan.nwin):
            w = self.plan.width[slot]
            rows.append({self.idx[slot][k]: [self.vals[slot][k * w + c] for c in range(w)]
                         for k in range(<Py_ssize_t>self.idx[slot].size())})
        return (self.t, self.cdc_ts, rows, [dict(s) for s in self.seen],
                {sid: list(entry) for sid, entry in self.sessions.items()}, self.session, self.attrs)

    cdef void _forget_floors(self) noexcept:
        """After a thaw: the first evaluation walks the sets and sessions and finds the floors again."""
        self.seen_floor.assign(self.plan.ndist, INT64_MIN)
        self.session_floor = INT64_MIN

    cdef _load_tuple(self, tuple data):
        cdef Py_ssize_t slot
        self._forget_floors()
        t, cdc_ts, rows, seen, sessions, session, attrs = data
        self.t, self.cdc_ts = t, cdc_ts
        for slot in range(self.plan.nwin):
            for i, row in rows[slot].items():
                self.idx[slot].push_back(i)
                for v in row:
                    self.vals[slot].push_back(v)
        self.seen = _untracked(tuple([dict(s) for s in seen]))
        self.sessions = {sid: tuple(entry) for sid, entry in sessions.items()}
        self.session, self.attrs = session, attrs

    def freeze(self) -> bytes:
        """The state as bytes (no pickle for the tiles, times and string-keyed sets that make up almost all)."""
        cdef string buf
        cdef Py_ssize_t slot, n
        cdef unsigned char header[2]
        buf.reserve(512)
        header[0], header[1] = MAGIC, VERSION
        buf.append(<char*>header, 2)
        _put_i64(buf, self.t)
        _put_i64(buf, self.cdc_ts)
        for slot in range(self.plan.nwin):
            n = self.idx[slot].size()
            _put_u32(buf, <uint32_t>n)
            if n:
                buf.append(<char*>self.idx[slot].data(), n * sizeof(int64_t))
                buf.append(<char*>self.vals[slot].data(), n * self.plan.width[slot] * sizeof(double))
        cdef size_t mark = buf.size()
        buf.push_back(0)
        if not self._pack_tail(buf):  # a key that is not a string: these parts are pickled instead
            buf.resize(mark)
            buf.push_back(1)
            _put_bytes(buf, pickle.dumps((self.seen, self.sessions, self.session), pickle.HIGHEST_PROTOCOL))
        if self.attrs is None:
            buf.push_back(0)
        else:
            buf.push_back(1)
            _put_bytes(buf, pickle.dumps(self.attrs, pickle.HIGHEST_PROTOCOL))
        return buf

    cdef bint _pack_tail(self, string& buf) except -1:
        """Append the distinct sets, sessions and current session; False (buffer half written) if one holds a
        key that is not a string."""
        for seen in self.seen:
            _put_u32(buf, <uint32_t>len(<dict>seen))
            for v, i in (<dict>seen).items():
                if type(v) is not str:
                    return False
                _put_str(buf, v)
                _put_i64(buf, i)
        _put_u32(buf, <uint32_t>len(self.sessions))
        for sid, entry in self.sessions.items():
            if type(sid) is not str:
                return False
            _put_str(buf, sid)
            _put_i64(buf, (<tuple>entry)[0])
            _put_i64(buf, (<tuple>entry)[1])
        if self.session is None:
            buf.push_back(0)
        elif type(self.session) is str:
            buf.push_back(1)
            _put_str(buf, self.session)
        else:
            return False
        return True

    cdef _unpack(self, const unsigned char[:] data):
        cdef _Reader r = _Reader(data)
        cdef Py_ssize_t slot, n, k, w
        self._forget_floors()
        if data.shape[0] < 2 or data[0] != MAGIC or data[1] != VERSION:
            raise ValueError("not a frozen native entity state (or a newer version of it)")
        r.pos = 2
        self.t = r.i64()
        self.cdc_ts = r.i64()
        for slot in range(self.plan.nwin):
            n, w = r.u32(), self.plan.width[slot]
            self.idx[slot].resize(n)
            self.vals[slot].resize(n * w)
            if n:
                r.copy(<char*>self.idx[slot].data(), n * sizeof(int64_t))
                r.copy(<char*>self.vals[slot].data(), n * w * sizeof(double))
        if r.byte():
            seen, self.sessions, self.session = pickle.loads(r.blob())
            self.seen = _untracked(tuple(seen))
        else:
            sets = []
            for k in range(self.plan.ndist):
                seen = {}
                for _ in range(r.u32()):
                    v = r.text()
                    seen[v] = r.i64()
                sets.append(seen)
            self.seen = _untracked(tuple(sets))
            self.sessions = {}
            for _ in range(r.u32()):
                sid = r.text()
                count = r.i64()
                self.sessions[sid] = _untracked((count, r.i64()))
            self.session = r.text() if r.byte() else None
        self.attrs = pickle.loads(r.blob()) if r.byte() else None
        if r.pos != data.shape[0]:
            raise ValueError("frozen native entity state has trailing bytes")


cdef int _view_of_record(NativePlan p, dict event, View* v) except -1:
    """Fill `v` from a record: the columns of its event type's group whose every test passes (the others
    do not pass: their event-type test fails), and the fields they add; the record keeps what `v` borrows."""
    cdef vector[int]* group = &p.groups[p.type_group.get(event.get("event_type"), 0)]
    cdef Py_ssize_t k, c
    cdef tuple tests, test
    cdef bint ok
    memset(v.passes, 0, p.ncols)
    for k in range(<Py_ssize_t>group.size()):
        c = group[0][k]
        tests = <tuple>p.col_tests[c]
        ok = True
        for test in tests:
            x = event.get(test[0])
            if test[2]:
                if x is None:
                    ok = False
                    break
            elif not (x == test[1]):
                ok = False
                break
        if not ok:
            continue
        v.passes[c] = 1
        field = p.col_value[c]
        if field is None:
            v.has[c], v.add[c] = 1, 1.0
        else:
            x = event.get(field)
            v.has[c] = x is not None
            if v.has[c]:
                v.add[c] = <double>x
    for k in range(p.ndist):
        x = event.get(p.d_field[k])
        v.distinct[k] = <PyObject*>NULL if x is None else <PyObject*>x
    if p.session_field is not None:
        x = event.get(p.session_field)
        v.session = <PyObject*>NULL if x is None else <PyObject*>x
    return 0


cdef inline void _put_i64(string& buf, int64_t v):
    buf.append(<char*>&v, sizeof(int64_t))


cdef inline void _put_u32(string& buf, uint32_t v):
    buf.append(<char*>&v, sizeof(uint32_t))


cdef inline void _put_bytes(string& buf, bytes b):
    _put_u32(buf, <uint32_t>len(b))
    buf.append(<char*>b, len(b))


cdef inline int _put_str(string& buf, str s) except -1:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    _put_u32(buf, <uint32_t>n)
    buf.append(p, n)
    return 0


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


cdef class _Reader:
    cdef const unsigned char[:] data
    cdef Py_ssize_t pos

    def __cinit__(self, const unsigned char[:] data):
        self.data = data
        self.pos = 0

    cdef inline int _need(self, Py_ssize_t n) except -1:
        if self.pos + n > self.data.shape[0]:
            raise ValueError("frozen native entity state is truncated")
        return 0

    cdef int copy(self, char* dest, Py_ssize_t n) except -1:
        self._need(n)
        memcpy(dest, &self.data[self.pos], n)
        self.pos += n
        return 0

    cdef int64_t i64(self) except? -1:
        cdef int64_t v
        self.copy(<char*>&v, sizeof(int64_t))
        return v

    cdef Py_ssize_t u32(self) except -1:
        cdef uint32_t v
        self.copy(<char*>&v, sizeof(uint32_t))
        return v

    cdef int byte(self) except -1:
        self._need(1)
        self.pos += 1
        return self.data[self.pos - 1]

    cdef object text(self):
        cdef Py_ssize_t n = self.u32()
        self._need(n)
        s = PyUnicode_DecodeUTF8(<const char*>&self.data[self.pos], n, NULL)
        self.pos += n
        return s

    cdef object blob(self):
        cdef Py_ssize_t n = self.u32()
        self._need(n)
        b = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return b


def fold_events(NativePlan plan, dict states, list rows, str time_field, int64_t period, dict touched, dict pending,
                dict moved, dict live, object cap, int64_t high) -> int:
    """`ShardState.apply`'s loop over one windowed-source input, compiled: the same steps as its reference loop
    in shard.py (which the Python engine runs, and tests/unit/test_native_state.py holds this to). Returns the
    shard's new high (`ShardState._log`'s, for entities moving on to a later log window inside the batch)."""
    cdef View view
    for eid, record in rows:
        _view_of_record(plan, <dict>record, &view)
        high = _fold_one(plan, states, eid, (<dict>record)[time_field], &view, period, touched, pending, moved, live,
                         cap, high)
    return high


def fold_block(NativePlan plan, dict states, list eids, const int64_t[::1] ts, const unsigned char[:, ::1] passes,
               const unsigned char[:, ::1] has, const double[:, ::1] add, list distinct, object session,
               int64_t period, dict touched, dict pending, dict moved, dict live, object cap, int64_t high) -> int:
    """`fold_events` over an `EventBlock` (shard.py): the same events as columns, each row read into the same
    `View` a record gives, so that no record is made. Returns the shard's new high."""
    cdef View view
    cdef Py_ssize_t i, k, n = len(eids), ncols = plan.ncols
    if ts.shape[0] != n or passes.shape[0] != n or passes.shape[1] != ncols or has.shape[1] != ncols \
            or add.shape[1] != ncols or len(distinct) != plan.ndist:
        raise ValueError("an event block that does not fit its plan")
    for i in range(n):
        memcpy(view.passes, &passes[i, 0], ncols)
        memcpy(view.has, &has[i, 0], ncols)
        memcpy(view.add, &add[i, 0], ncols * sizeof(double))
        for k in range(plan.ndist):
            x = (<list>distinct[k])[i]
            view.distinct[k] = <PyObject*>NULL if x is None else <PyObject*>x
        if session is not None:
            x = (<list>session)[i]
            view.session = <PyObject*>NULL if x is None else <PyObject*>x
        else:
            view.session = <PyObject*>NULL
        high = _fold_one(plan, states, eids[i], ts[i], &view, period, touched, pending, moved, live, cap, high)
    return high


cdef int64_t _fold_one(NativePlan plan, dict states, object eid, int64_t ts, View* view, int64_t period, dict touched,
                       dict pending, dict moved, dict live, object cap, int64_t high) except? -1:
    """One event of `fold_events` or `fold_block`; returns the shard's new high."""
    cdef NativeState state
    cdef int64_t before, now
    found = states.get(eid)
    if found is None:
        state = NativeState(plan)
        states[eid] = state
        state.key = eid
    else:
        state = <NativeState>found
        if state.key is None:  # thawed, or made by a CDC change: keyed by this batch's string from now on
            state.key = eid
        else:
            eid = state.key
    now = state._ts()
    before = now // period
    if ts // period > before:
        if eid in touched:  # moves on to a later log window inside this batch (see shard.py)
            high = _log_one(pending, live, period, cap, high, eid, now, state.values())
        window = pending.get(before)  # `ShardState._seal`
        if window is not None and eid in <dict>window:
            found = moved.get(before)
            if found is None:
                moved[before] = [eid]
            else:
                (<list>found).append(eid)
    state._apply_view(view, ts)
    touched[eid] = state
    return high


def evaluate(dict touched) -> list:
    """(entity id, event time, values) of each state in `touched`, in order."""
    cdef NativeState state
    out = []
    for eid, found in touched.items():
        state = <NativeState>found
        out.append(_untracked((eid, state._ts(), state.values())))
    return out


cdef int64_t _log_one(dict pending, dict live, int64_t period, object cap, int64_t high, object eid, int64_t ts,
                      object values) except? -1:
    """`ShardState._log` of one entry, compiled; returns the shard's new high."""
    cdef int64_t moved = ts if cap is None or ts < <int64_t>cap else <int64_t>cap
    cdef int64_t k = ts // period
    window = pending.get(k)
    if window is None:
        window = pending[k] = {}
        live[k] = {}
    (<dict>window)[eid] = _untracked((ts, values))
    (<dict>live[k])[eid] = None
    return moved if moved > high else high


def log_rows(list rows, dict pending, dict live, int64_t period, object cap, int64_t high) -> int:
    """`ShardState._log` of each (entity id, event time, values) row, compiled; returns the shard's new high."""
    cdef int64_t ts, k, moved, last = -1
    cdef bint first = True
    cdef int64_t limit = 0 if cap is None else cap
    cdef dict window = None, names = None
    for row in rows:
        eid, ts = (<tuple>row)[0], (<tuple>row)[1]
        moved = ts if cap is None or ts < limit else limit
        if moved > high:
            high = moved
        k = ts // period  # Python's floor division (cdivision is off)
        if first or k != last:
            first, last = False, k
            found = pending.get(k)
            if found is None:
                window, names = {}, {}
                pending[k], live[k] = window, names
            else:
                window, names = <dict>found, <dict>live[k]
        window[eid] = _untracked((ts, (<tuple>row)[2]))
        names[eid] = None
    return high


def mark_dirty(dict touched, dict dirty, stamp) -> None:
    """Move each entity of `touched` to the back of `dirty`, stamped (`ShardState.apply`'s last loop, compiled)."""
    for eid in touched:
        if eid in dirty:
            del dirty[eid]
        dirty[eid] = stamp


cdef uint32_t _CRC[256]


cdef void _crc_table() noexcept:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = i
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320u if c & 1 else c >> 1
        _CRC[i] = c


_crc_table()


cdef inline uint32_t _crc32(const unsigned char* p, Py_ssize_t n) noexcept:
    """zlib's CRC-32 (what `shard.shard_of` uses)."""
    cdef uint32_t c = 0xFFFFFFFFu
    cdef Py_ssize_t k
    for k in range(n):
        c = _CRC[(c ^ p[k]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFu


def crc32(str text) -> int:
    """CRC-32 of `text` in UTF-8, as `zlib.crc32(text.encode())` (exposed for tests)."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
    return _crc32(<const unsigned char*>p, n)


cdef inline int _shard(str eid, int shards) except -1:
    """`shard_of(eid, shards)`: the crc32 of its UTF-8 bytes, modulo."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(eid, &n)
    return _crc32(<const unsigned char*>p, n) % shards


def group_by_shard(list records, str field, bint cdc, int shards) -> list:
    """`route`'s split of one batch for one entity, compiled: [(shard, [(entity id, record), ...]), ...], shards in
    the order of their first record; records without the id field are left out."""
    cdef list buckets = [None] * shards
    cdef list order = []
    cdef int k
    for _, record in records:
        if cdc:
            row = record.get("after") or record.get("before") or {}
            value = row.get(field)
        else:
            value = (<dict>record).get(field)
        if value is None:
            continue
        eid = value if isinstance(value, str) else str(value)
        k = _shard(eid, shards)
        bucket = buckets[k]
        if bucket is None:
            bucket = buckets[k] = []
            order.append(k)
        (<list>bucket).append(_untracked((eid, record)))
    return [(k, buckets[k]) for k in order]


def shard_rows(list ids, int shards) -> list:
    """`group_by_shard` for ids read from a column: [(shard, [entity id, ...], [row, ...]), ...], shards in the
    order of their first row; rows without an id are left out."""
    cdef list buckets = [None] * shards
    cdef list order = []
    cdef Py_ssize_t row = -1
    cdef int k
    for value in ids:
        row += 1
        if value is None:
            continue
        eid = value if isinstance(value, str) else str(value)
        k = _shard(eid, shards)
        bucket = buckets[k]
        if bucket is None:
            bucket = buckets[k] = ([], [])
            order.append(k)
        (<list>(<tuple>bucket)[0]).append(eid)
        (<list>(<tuple>bucket)[1]).append(row)
    return [(k, *buckets[k]) for k in order]


def pick(list values, list rows) -> list:
    """`[values[row] for row in rows]`, compiled."""
    cdef Py_ssize_t i, n = len(rows)
    out = [None] * n
    for i in range(n):
        out[i] = values[<Py_ssize_t>rows[i]]
    return out


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object v, int* overflow) except? -1


cdef extern from *:
    """
    #include <charconv>
    #include <cmath>
    #include <cstdio>
    #include <cstring>
    /* repr(v) of a Python float into out (at least 32 bytes), its length: the shortest digits that read back
       as v (std::to_chars, as Python's dtoa mode 0), in fixed notation for 1e-4 <= |v| < 1e16, else with an
       exponent of at least two digits (format_float_short's 'r' rules, Py_DTSF_ADD_DOT_0). */
    static int streamml_float_repr(double v, char* out) {
        if (std::isnan(v)) { std::memcpy(out, "nan", 3); return 3; }
        if (std::isinf(v)) {
            if (v < 0) { std::memcpy(out, "-inf", 4); return 4; }
            std::memcpy(out, "inf", 3); return 3;
        }
        char sci[48];
        char* end = std::to_chars(sci, sci + sizeof(sci) - 1, v, std::chars_format::scientific).ptr;
        *end = '\\0';  /* for atoi below: to_chars writes no terminator */
        int len = 0, k = 0, nd = 0;
        char digits[24];
        if (sci[0] == '-') { out[len++] = '-'; k = 1; }
        for (; sci + k < end && sci[k] != 'e'; k++)
            if (sci[k] != '.') digits[nd++] = sci[k];
        int decpt = std::atoi(sci + k + 1) + 1;  /* digits[0] is in front of the point at decpt = 1 */
        if (decpt > -4 && decpt <= 16) {
            if (decpt <= 0) {
                out[len++] = '0'; out[len++] = '.';
                for (int z = 0; z < -decpt; z++) out[len++] = '0';
                std::memcpy(out + len, digits, nd); len += nd;
            } else if (decpt >= nd) {
                std::memcpy(out + len, digits, nd); len += nd;
                for (int z = nd; z < decpt; z++) out[len++] = '0';
                out[len++] = '.'; out[len++] = '0';
            } else {
                std::memcpy(out + len, digits, decpt); len += decpt;
                out[len++] = '.';
                std::memcpy(out + len, digits + decpt, nd - decpt); len += nd - decpt;
            }
        } else {
            out[len++] = digits[0];
            if (nd > 1) { out[len++] = '.'; std::memcpy(out + len, digits + 1, nd - 1); len += nd - 1; }
            int e = decpt - 1;
            out[len++] = 'e'; out[len++] = e < 0 ? '-' : '+';
            len += std::snprintf(out + len, 8, "%02d", e < 0 ? -e : e);
        }
        return len;
    }
    /* str(v) of an int into out (at least 21 bytes), its length (to_chars: several times snprintf's speed). */
    static int streamml_int_text(long long v, char* out) {
        return (int)(std::to_chars(out, out + 21, v).ptr - out);
    }
    """
    int streamml_float_repr(double v, char* out) noexcept
    int streamml_int_text(long long v, char* out) noexcept


def float_repr(double value) -> str:
    """`repr(value)` by the compiled formatter (exposed for tests)."""
    cdef char text[32]
    cdef int n = streamml_float_repr(value, text)
    return text[:n].decode()


cdef const char* _HEX = b"0123456789abcdef"


cdef int _json_str(string& buf, str s) except -1:
    """`s` as a JSON string, escaped as orjson escapes it (UTF-8 kept, control characters escaped)."""
    cdef Py_ssize_t n, k
    cdef const unsigned char* p = <const unsigned char*>PyUnicode_AsUTF8AndSize(s, &n)
    cdef unsigned char c
    buf.push_back(b'"')
    for k in range(n):
        c = p[k]
        if c == b'"' or c == b'\\':
            buf.push_back(b'\\')
            buf.push_back(c)
        elif c >= 0x20:
            buf.push_back(c)
        elif c == 0x08:
            buf.append(b"\\b", 2)
        elif c == 0x09:
            buf.append(b"\\t", 2)
        elif c == 0x0A:
            buf.append(b"\\n", 2)
        elif c == 0x0C:
            buf.append(b"\\f", 2)
        elif c == 0x0D:
            buf.append(b"\\r", 2)
        else:
            buf.append(b"\\u00", 4)
            buf.push_back(_HEX[c >> 4])
            buf.push_back(_HEX[c & 15])
    buf.push_back(b'"')
    return 0


cdef int _json_value(string& buf, object value) except -1:
    """A feature value as Redis stores it (`keys.encode_value`: floats by repr, the rest by str), as a JSON string."""
    cdef char text[32]
    cdef long long whole
    cdef int overflow
    if type(value) is int:
        whole = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow:
            buf.push_back(b'"')
            _put_decimal(buf, whole)
            buf.push_back(b'"')
            return 0
    if type(value) is float:
        buf.push_back(b'"')
        buf.append(text, streamml_float_repr(<double>value, text))
        buf.push_back(b'"')
    elif type(value) is str:
        _json_str(buf, value)
    else:
        _json_str(buf, repr(value) if isinstance(value, float) else str(value))
    return 0


cdef inline void _put_decimal(string& buf, int64_t v):
    cdef char digits[24]
    buf.append(digits, streamml_int_text(v, digits))


def encode_payload(list rows, list names, int64_t ttl_ms) -> bytes:
    """The Redis writer's script argument for (entity id, event time, values) rows, compiled: the bytes
    `orjson.dumps(redis._encode_rows(rows, names, ttl_ms))` gives, built without the per-value strings and lists."""
    cdef string buf
    cdef dict values
    cdef Py_ssize_t i, k
    cdef bint first
    buf.reserve(256 * len(rows) + 2)
    buf.push_back(b'[')
    for i in range(len(rows)):
        row = <tuple>rows[i]
        values = <dict>row[2]
        if i:
            buf.push_back(b',')
        buf.push_back(b'[')
        _json_value(buf, row[1])  # str(event time), as a JSON string
        buf.push_back(b',')
        _put_decimal(buf, ttl_ms)
        buf.append(b",[", 2)
        first = True
        for name, value in values.items():
            if not first:
                buf.push_back(b',')
            first = False
            _json_str(buf, name)
            buf.push_back(b',')
            _json_value(buf, value)
        buf.append(b"],[", 3)
        if len(values) < len(names):
            first = True
            for k in range(len(names)):
                if names[k] not in values:
                    if not first:
                        buf.push_back(b',')
                    first = False
                    _json_str(buf, names[k])
        buf.append(b"]]", 2)
    buf.push_back(b']')
    return buf


cdef inline void _put_bulk(string& buf, const char* p, Py_ssize_t n):
    buf.push_back(b'$')
    _put_decimal(buf, n)
    buf.append(b"\r\n", 2)
    buf.append(p, n)
    buf.append(b"\r\n", 2)


def pack_cas_call(bytes sha, list rows, str prefix, bytes payload) -> bytes:
    """One EVALSHA command in RESP for (entity id, ...) rows, keys `prefix` + id, compiled: the bytes
    `hiredis.pack_command((b"EVALSHA", sha, str(len(rows)), *keys, payload))` gives."""
    cdef string buf, count
    cdef Py_ssize_t n, m
    cdef const char* p = PyUnicode_AsUTF8AndSize(prefix, &n)
    cdef const char* q
    cdef string key_prefix = string(p, n)
    cdef string key
    _put_decimal(count, len(rows))
    buf.reserve(len(payload) + 64 * len(rows) + 128)
    buf.push_back(b'*')
    _put_decimal(buf, 4 + len(rows))
    buf.append(b"\r\n$7\r\nEVALSHA\r\n", 15)
    _put_bulk(buf, <const char*>sha, len(sha))
    _put_bulk(buf, count.c_str(), count.size())
    for row in rows:
        q = PyUnicode_AsUTF8AndSize(<str>(<tuple>row)[0], &m)
        key = key_prefix
        key.append(q, m)
        _put_bulk(buf, key.c_str(), key.size())
    _put_bulk(buf, <const char*>payload, len(payload))
    return buf


cdef extern from *:
    """
    /* Python's small-object allocator takes memory in arenas (1 MiB on 3.11) and hands an arena back to the system
       as soon as it is empty; the next one is mapped anew and every page of it faults and is zeroed by the kernel.
       The flow frees and makes a poll's worth of objects at a time, so arenas come and go: page faults (the kernel
       clearing pages) were ~20% of its CPU (perf). This keeps up to a set number of freed arenas for reuse. */
    static PyObjectArenaAllocator streamml_arena_base;
    static void** streamml_arena_kept = NULL;
    static Py_ssize_t streamml_arena_n = 0, streamml_arena_max = 0;
    static size_t streamml_arena_size = 0;

    static void* streamml_arena_alloc(void* ctx, size_t size) {
        if (streamml_arena_n > 0 && size == streamml_arena_size) return streamml_arena_kept[--streamml_arena_n];
        return streamml_arena_base.alloc(streamml_arena_base.ctx, size);
    }

    static void streamml_arena_free(void* ctx, void* ptr, size_t size) {
        if (streamml_arena_n < streamml_arena_max && (streamml_arena_n == 0 || size == streamml_arena_size)) {
            streamml_arena_size = size;
            streamml_arena_kept[streamml_arena_n++] = ptr;
            return;
        }
        streamml_arena_base.free(streamml_arena_base.ctx, ptr, size);
    }

    static int streamml_keep_arenas(Py_ssize_t count) {
        if (streamml_arena_kept != NULL || count <= 0) return 0;
        streamml_arena_kept = (void**)PyMem_RawMalloc(sizeof(void*) * (size_t)count);
        if (streamml_arena_kept == NULL) return 0;
        PyObject_GetArenaAllocator(&streamml_arena_base);
        PyObjectArenaAllocator mine = {NULL, streamml_arena_alloc, streamml_arena_free};
        streamml_arena_max = count;
        PyObject_SetArenaAllocator(&mine);
        return 1;
    }
    """
    int streamml_keep_arenas(Py_ssize_t count)


def keep_arenas(Py_ssize_t count) -> bool:
    """Keep up to `count` emptied arenas of Python's object allocator mapped for reuse instead of returning them to
    the system (see above); False when already set or `count` <= 0. Process-wide: call it once, at startup."""
    return bool(streamml_keep_arenas(count))
