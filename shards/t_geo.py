"""Geo commands (Redis' geo.c) on top of the sorted set.

A geo set is a sorted set whose scores are 52-bit geohashes (shards/geohash.py).
GEOADD is ZADD of the computed scores, and logs ZADD effects through
`zadd_generic`. Searches walk the centre cell and its 8 neighbours as score
ranges of the zset, then filter by exact distance, in Redis' order, so replies
(including unsorted ones and COUNT ANY) match redis-server's. The STORE forms
(GEORADIUS STORE/STOREDIST, GEOSEARCHSTORE) write a computed sorted set through
`store_result`, logged as sent: a pure function of the keyspace, like
ZUNIONSTORE.
"""

from __future__ import annotations

from fractions import Fraction
import math
from operator import itemgetter

from durakv.shards import geohash
from durakv.shards.args import ERR_SYNTAX, float_arg, int_arg
from durakv.shards.context import Ctx
from durakv.shards.numbers import format_long_double
from durakv.shards.resp import NULL_ARRAY, Raw, ReplyError, fixed_error
from durakv.shards.table import KeySpec, command
from durakv.shards.t_zset import ZSetValue, get_zset, score_span, store_result, zadd_generic

ERR_UNIT = fixed_error(b"ERR unsupported unit provided. please use M, KM, FT, MI")
ERR_MEMBER = fixed_error(b"ERR could not decode requested zset member")
ERR_COUNT = fixed_error(b"ERR COUNT must be > 0")

UNITS = {b"m": 1.0, b"km": 1000.0, b"ft": 0.3048, b"mi": 1609.34}  # meters per unit


def _lon_lat(lon_arg: bytes, lat_arg: bytes) -> tuple[float, float]:
    """extractLongLatOrReply."""
    lon = float_arg(lon_arg)
    lat = float_arg(lat_arg)
    if not (geohash.GEO_LONG_MIN <= lon <= geohash.GEO_LONG_MAX
            and geohash.GEO_LAT_MIN <= lat <= geohash.GEO_LAT_MAX):
        raise ReplyError(b"ERR invalid longitude,latitude pair %f,%f" % (lon, lat))
    return lon, lat


def _unit(arg: bytes) -> float:
    conversion = UNITS.get(arg.lower())
    if conversion is None:
        raise ERR_UNIT
    return conversion


def _distance_arg(radius_arg: bytes, unit_arg: bytes) -> tuple[float, float]:
    """extractDistanceOrReply: (radius, meters per unit)."""
    radius = float_arg(radius_arg, fixed_error(b"ERR need numeric radius"))
    if radius < 0:
        raise ReplyError(b"ERR radius cannot be negative")
    return radius, _unit(unit_arg)


def _box_arg(width_arg: bytes, height_arg: bytes, unit_arg: bytes) -> tuple[float, float, float]:
    """extractBoxOrReply: (width, height, meters per unit)."""
    width = float_arg(width_arg, fixed_error(b"ERR need numeric width"))
    height = float_arg(height_arg, fixed_error(b"ERR need numeric height"))
    if height < 0 or width < 0:
        raise ReplyError(b"ERR height or width cannot be negative")
    return width, height, _unit(unit_arg)


def distance_text(d: float) -> bytes:
    """fixedpoint_d2string(d, 4): llrint(d * 10^4) (ties to even) with 4 decimals."""
    scaled = round(d * 10000.0)
    sign = b"-" if scaled < 0 else b""
    whole, frac = divmod(abs(scaled), 10000)
    return b"%s%d.%04d" % (sign, whole, frac)


def _human_double(ctx: Ctx, d: float):
    """addReplyHumanLongDouble: "%.17Lf" trimmed; a bulk in RESP2, a double in RESP3."""
    text = format_long_double(Fraction(d))
    return text if ctx.proto == 2 else Raw(b",%b\r\n" % text)


def _member_position(zs: ZSetValue, member: bytes) -> tuple[float, float] | None:
    score = zs.scores.get(member)
    return None if score is None else geohash.decode_score(score)


# --- GEOADD ---------------------------------------------------------------------------


@command("geoadd", -5, "write denyoom", (1, 1, 1), "geo")
def geoadd(ctx: Ctx, argv: list[bytes]):
    """ZADD of the geohash scores (its effects logged as ZADD)."""
    longidx = 2
    nx = xx = False
    while longidx < len(argv):
        opt = argv[longidx].lower()
        if opt == b"nx":
            nx = True
        elif opt == b"xx":
            xx = True
        elif opt != b"ch":
            break
        longidx += 1
    if (len(argv) - longidx) % 3 or (xx and nx):
        raise ERR_SYNTAX
    zargv = [b"zadd", *argv[1:longidx]]
    for i in range(longidx, len(argv), 3):
        lon, lat = _lon_lat(argv[i], argv[i + 1])
        h = geohash.encode(lon, lat, geohash.GEO_STEP_MAX)
        assert h is not None, "validated coordinates encode"
        zargv += [b"%d" % geohash.align52(h), argv[i + 2]]
    return zadd_generic(ctx, zargv, False)


# --- GEODIST / GEOHASH / GEOPOS --------------------------------------------------------


@command("geodist", -4, "readonly", (1, 1, 1), "geo")
def geodist(ctx: Ctx, argv: list[bytes]):
    to_meter = 1.0
    if len(argv) == 5:
        to_meter = _unit(argv[4])
    elif len(argv) > 5:
        raise ERR_SYNTAX
    zs = get_zset(ctx.db, argv[1])
    if zs is None:
        return None
    a = _member_position(zs, argv[2])
    b = _member_position(zs, argv[3])
    if a is None or b is None:
        return None
    return distance_text(geohash.distance(a[0], a[1], b[0], b[1]) / to_meter)


@command("geohash", -2, "readonly", (1, 1, 1), "geo")
def geohash_(ctx: Ctx, argv: list[bytes]):
    zs = get_zset(ctx.db, argv[1])
    out: list = []
    for member in argv[2:]:
        score = zs.scores.get(member) if zs is not None else None
        out.append(None if score is None else geohash.standard_geohash(score))
    return out


@command("geopos", -2, "readonly", (1, 1, 1), "geo")
def geopos(ctx: Ctx, argv: list[bytes]):
    zs = get_zset(ctx.db, argv[1])
    out: list = []
    for member in argv[2:]:
        pos = _member_position(zs, member) if zs is not None else None
        out.append(NULL_ARRAY if pos is None else [_human_double(ctx, pos[0]), _human_double(ctx, pos[1])])
    return out


# --- GEORADIUS / GEOSEARCH ---------------------------------------------------------------

_RADIUS_COORDS, _RADIUS_MEMBER, _NOSTORE, _SEARCH, _SEARCHSTORE = 1, 2, 4, 8, 16
_SORT_NONE, _SORT_ASC, _SORT_DESC = 0, 1, 2


# A point found by a search: (distance in meters, score, member, longitude, latitude).
# Plain tuples: a search may build one per member of a large set.
_Point = tuple[float, float, bytes, float, float]


def _points_in_cell(zs: ZSetValue, h: geohash.HashBits, shape: geohash.Shape, found: list[_Point],
                    limit: int) -> None:
    """membersOfGeoHashBox / geoGetPointsInRange: the cell's score range in zset
    order, each point kept when the exact distance test passes."""
    lo, hi = geohash.score_range(h)
    start, end = score_span(zs, float(lo), False, float(hi), True)
    decode_score = geohash.decode_score
    append = found.append
    if shape.is_box:
        within = geohash.within
        for score, member in zs.order.islice(start, end):
            lon, lat = decode_score(score)
            d = within(shape, lon, lat)
            if d is not None:
                append((d, score, member, lon, lat))
                if limit and len(found) >= limit:
                    break
        return
    # The circle test of geohash.within, inlined: the same operations in the same order.
    sin, cos, asin, sqrt = math.sin, math.cos, math.asin, math.sqrt
    d_r = geohash.D_R
    earth = geohash.EARTH_RADIUS_IN_METERS
    radius_m = shape.radius * shape.conversion
    lon1r = shape.lon * d_r
    lat1r = shape.lat * d_r
    cos_lat1 = cos(lat1r)
    for score, member in zs.order.islice(start, end):
        lon, lat = decode_score(score)
        v = sin((lon * d_r - lon1r) / 2)
        if v == 0.0:
            d = earth * abs(lat * d_r - lat1r)
        else:
            lat2r = lat * d_r
            u = sin((lat2r - lat1r) / 2)
            d = 2.0 * earth * asin(sqrt(u * u + cos_lat1 * cos(lat2r) * v * v))
        if d <= radius_m:
            append((d, score, member, lon, lat))
            if limit and len(found) >= limit:
                break


def _points_in_shape(zs: ZSetValue, shape: geohash.Shape, limit: int) -> list[_Point]:
    """membersOfAllNeighbors: the 9 cells in Redis' order, a cell equal to the one
    processed just before skipped (large radii make neighbours coincide)."""
    cells = geohash.search_areas(shape)
    found: list[_Point] = []
    last = 0
    for i, h in enumerate(cells):
        if h == geohash.ZERO_HASH:
            continue
        if last and h == cells[last]:
            continue
        if found and limit and len(found) >= limit:
            break
        _points_in_cell(zs, h, shape, found, limit)
        last = i
    return found


def _partial_sort(keys: list[float], v: list, lrange: int, rrange: int) -> None:
    """Redis' pqsort (Bentley-McIlroy quicksort that only recurses into parts
    overlapping [lrange, rrange]) of v by keys (moved together), step for step:
    with COUNT, the order of points at equal distances is the one this unstable
    sort leaves."""

    def med3(a: int, b: int, c: int) -> int:
        ka, kb, kc = keys[a], keys[b], keys[c]
        if ka < kb:
            return b if kb < kc else (c if ka < kc else a)
        return b if kb > kc else (a if ka < kc else c)

    def swap(a: int, b: int) -> None:
        keys[a], keys[b] = keys[b], keys[a]
        v[a], v[b] = v[b], v[a]

    def vecswap(a: int, b: int, n: int) -> None:
        for k in range(n):
            swap(a + k, b + k)

    def overlaps(lo: int, n: int) -> bool:
        return not ((lrange < lo and rrange < lo) or (lrange >= lo + n and rrange >= lo + n))

    stack = [(0, len(v))]  # disjoint parts: the order they are sorted in does not matter
    while stack:
        base, n = stack.pop()
        if n < 7:
            for pm in range(base + 1, base + n):
                pl = pm
                while pl > base and keys[pl - 1] > keys[pl]:
                    swap(pl, pl - 1)
                    pl -= 1
            continue
        pm = base + n // 2
        if n > 7:
            pl, pn = base, base + n - 1
            if n > 40:
                d = n // 8
                pl = med3(pl, pl + d, pl + 2 * d)
                pm = med3(pm - d, pm, pm + d)
                pn = med3(pn - 2 * d, pn - d, pn)
            pm = med3(pl, pm, pn)
        swap(base, pm)
        pivot = keys[base]
        pa = pb = base + 1
        pc = pd = base + n - 1
        while True:
            while pb <= pc:
                k = keys[pb]
                if k > pivot:
                    break
                if k == pivot:
                    swap(pa, pb)
                    pa += 1
                pb += 1
            while pb <= pc:
                k = keys[pc]
                if k < pivot:
                    break
                if k == pivot:
                    swap(pc, pd)
                    pd -= 1
                pc -= 1
            if pb > pc:
                break
            swap(pb, pc)
            pb += 1
            pc -= 1
        pn = base + n
        r = min(pa - base, pb - pa)
        vecswap(base, pb - r, r)
        r = min(pd - pc, pn - pd - 1)
        vecswap(pb, pn - r, r)
        left = pb - pa
        right = pd - pc
        if left > 1 and overlaps(base, left):
            stack.append((base, left))
        if right > 1 and overlaps(pn - right, right):
            stack.append((pn - right, right))


def georadius_generic(ctx: Ctx, argv: list[bytes], src_index: int, flags: int):
    """georadiusGeneric: every search command, with Redis' parse order and errors."""
    db = ctx.db
    zs = get_zset(db, argv[src_index])
    store_key: bytes | None = None
    storedist = False
    lon = lat = radius = width = height = 0.0
    conversion = 0.0
    is_box = False
    if flags & _RADIUS_COORDS:
        base = 6
        lon, lat = _lon_lat(argv[2], argv[3])
        radius, conversion = _distance_arg(argv[4], argv[5])
    elif flags & _RADIUS_MEMBER:
        base = 5
        if zs is not None:
            pos = _member_position(zs, argv[2])
            if pos is None:
                raise ERR_MEMBER
            lon, lat = pos
            radius, conversion = _distance_arg(argv[3], argv[4])
    else:
        base = 2
        if flags & _SEARCHSTORE:
            base = 3
            store_key = argv[1]
    withdist = withhash = withcoord = any_ = False
    frommember = fromloc = byradius = bybox = False
    sort = _SORT_NONE
    count = 0
    n = len(argv)
    i = base
    while i < n:
        arg = argv[i].lower()
        left = n - i - 1
        if arg == b"withdist":
            withdist = True
        elif arg == b"withhash":
            withhash = True
        elif arg == b"withcoord":
            withcoord = True
        elif arg == b"any":
            any_ = True
        elif arg == b"asc":
            sort = _SORT_ASC
        elif arg == b"desc":
            sort = _SORT_DESC
        elif arg == b"count" and left >= 1:
            count = int_arg(argv[i + 1])
            if count <= 0:
                raise ERR_COUNT
            i += 1
        elif arg in (b"store", b"storedist") and left >= 1 and not flags & (_NOSTORE | _SEARCH):
            store_key = argv[i + 1]
            storedist = arg == b"storedist"
            i += 1
        elif arg == b"storedist" and flags & _SEARCH and flags & _SEARCHSTORE:
            storedist = True
        elif arg == b"frommember" and left >= 1 and flags & _SEARCH and not fromloc:
            if zs is not None:
                pos = _member_position(zs, argv[i + 1])
                if pos is None:
                    raise ERR_MEMBER
                lon, lat = pos
            frommember = True
            i += 1
        elif arg == b"fromlonlat" and left >= 2 and flags & _SEARCH and not frommember:
            lon, lat = _lon_lat(argv[i + 1], argv[i + 2])
            fromloc = True
            i += 2
        elif arg == b"byradius" and left >= 2 and flags & _SEARCH and not bybox:
            radius, conversion = _distance_arg(argv[i + 1], argv[i + 2])
            byradius = True
            is_box = False
            i += 2
        elif arg == b"bybox" and left >= 3 and flags & _SEARCH and not byradius:
            width, height, conversion = _box_arg(argv[i + 1], argv[i + 2], argv[i + 3])
            bybox = True
            is_box = True
            i += 3
        else:
            raise ERR_SYNTAX
        i += 1
    if store_key is not None and (withdist or withhash or withcoord):
        what = b"GEOSEARCHSTORE" if flags & _SEARCHSTORE else b"STORE option in GEORADIUS"
        raise ReplyError(b"ERR %s is not compatible with WITHDIST, WITHHASH and WITHCOORD options" % what)
    if flags & _SEARCH and not (frommember or fromloc):
        raise ReplyError(b"ERR exactly one of FROMMEMBER or FROMLONLAT can be specified for %s" % argv[0])
    if flags & _SEARCH and not (byradius or bybox):
        raise ReplyError(b"ERR exactly one of BYRADIUS and BYBOX can be specified for %s" % argv[0])
    if any_ and not count:
        raise ReplyError(b"ERR the ANY argument requires COUNT argument")
    if zs is None:
        if store_key is not None:
            if db.delete(store_key):
                db.effect(argv, store_key)
            return 0
        return []
    if count and sort == _SORT_NONE and not any_:
        sort = _SORT_ASC
    shape = geohash.Shape(lon, lat, conversion, radius, width, height, is_box)
    found = _points_in_shape(zs, shape, count if any_ else 0)
    if not found and store_key is None:
        return []
    returned_count = min(count, len(found)) if count else len(found)
    if sort != _SORT_NONE:
        if returned_count == len(found):
            # glibc's qsort is a merge sort: stable, as list.sort
            found.sort(key=itemgetter(0), reverse=sort == _SORT_DESC)
        else:
            # DESC compares as ASC on negated distances (Redis negates the comparison).
            keys = [p[0] for p in found] if sort == _SORT_ASC else [-p[0] for p in found]
            _partial_sort(keys, found, 0, returned_count - 1)
    returned = found[:returned_count]
    if store_key is not None:
        scores = {p[2]: (p[0] / conversion if storedist else p[1]) for p in returned}
        event = b"geosearchstore" if flags & _SEARCHSTORE else b"georadiusstore"
        return store_result(ctx, argv, store_key, scores, event)
    options = withdist + withhash + withcoord
    out: list = []
    for dist, score, member, lon, lat in returned:
        if not options:
            out.append(member)
            continue
        item: list = [member]
        if withdist:
            item.append(distance_text(dist / conversion))
        if withhash:
            item.append(int(score))
        if withcoord:
            item.append([_human_double(ctx, lon), _human_double(ctx, lat)])
        out.append(item)
    return out


def _store_keys(src_end: int):
    """keys_fn for GEORADIUS[BYMEMBER]: the source, and the STORE/STOREDIST key
    (the last one given wins, as Redis' georadiusGetKeys)."""

    def keys_fn(argv: list[bytes]) -> list[int]:
        store = 0
        i = src_end
        while i < len(argv) - 1:
            if argv[i].lower() in (b"store", b"storedist"):
                store = i + 1
                i += 1
            i += 1
        return [1, store] if store else [1]

    return keys_fn


def _radius_specs(startfrom: int) -> tuple[KeySpec, ...]:
    return (
        KeySpec("RO access", 1, 0, 1),
        KeySpec("OW update", startfrom, 0, 1, keyword="STORE"),
        KeySpec("OW update", startfrom, 0, 1, keyword="STOREDIST"),
    )


@command("georadius", -6, "write denyoom", (1, 1, 1), "geo", keys_fn=_store_keys(6),
         key_specs=_radius_specs(6))
def georadius(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 1, _RADIUS_COORDS)


@command("georadiusbymember", -5, "write denyoom", (1, 1, 1), "geo", keys_fn=_store_keys(5),
         key_specs=_radius_specs(5))
def georadiusbymember(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 1, _RADIUS_MEMBER)


@command("georadius_ro", -6, "readonly", (1, 1, 1), "geo", key_specs=(KeySpec("RO access", 1, 0, 1),))
def georadius_ro(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 1, _RADIUS_COORDS | _NOSTORE)


@command("georadiusbymember_ro", -5, "readonly", (1, 1, 1), "geo", key_specs=(KeySpec("RO access", 1, 0, 1),))
def georadiusbymember_ro(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 1, _RADIUS_MEMBER | _NOSTORE)


@command("geosearch", -7, "readonly", (1, 1, 1), "geo", key_specs=(KeySpec("RO access", 1, 0, 1),))
def geosearch(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 1, _SEARCH)


@command("geosearchstore", -8, "write denyoom", (1, 2, 1), "geo",
         key_specs=(KeySpec("OW update", 1, 0, 1), KeySpec("RO access", 2, 0, 1)))
def geosearchstore(ctx: Ctx, argv: list[bytes]):
    return georadius_generic(ctx, argv, 2, _SEARCH | _SEARCHSTORE)
