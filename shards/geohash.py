"""Redis' geohash arithmetic (geohash.c, geohash_helper.c), bit for bit.

A geo point is stored as a sorted-set score: the 52-bit interleaving of its
latitude and longitude cells at step 26 (26 bits each) over Redis' ranges
(longitude -180..180, latitude -85.05112878..85.05112878, the Web Mercator
limits). The float operations here are written in the order the C code does
them, so encodings, decoded cell centres, search areas and distances are the
same doubles redis-server computes (Python's math is the platform libm).
"""

from __future__ import annotations

import math
from array import array
from typing import NamedTuple

GEO_STEP_MAX = 26  # 26 * 2 = 52 bits: a score holds the hash exactly
GEO_LAT_MIN = -85.05112878
GEO_LAT_MAX = 85.05112878
GEO_LONG_MIN = -180.0
GEO_LONG_MAX = 180.0

D_R = math.pi / 180.0
EARTH_RADIUS_IN_METERS = 6372797.560856
MERCATOR_MAX = 20037726.37

U64_MASK = 2**64 - 1
_EVEN_BITS = 0x5555555555555555
_ODD_BITS = 0xAAAAAAAAAAAAAAAA


class HashBits(NamedTuple):
    bits: int
    step: int


ZERO_HASH = HashBits(0, 0)  # Redis' GZERO: a neighbour excluded from the search


class Area(NamedTuple):
    """A geohash cell: its hash and its longitude/latitude bounds."""

    hash: HashBits
    lon_min: float
    lon_max: float
    lat_min: float
    lat_max: float


def _spread(v: int) -> int:
    """The bits of a 32-bit value moved to the even positions of 64."""
    v &= 0xFFFFFFFF
    v = (v | (v << 16)) & 0x0000FFFF0000FFFF
    v = (v | (v << 8)) & 0x00FF00FF00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v << 2)) & 0x3333333333333333
    return (v | (v << 1)) & _EVEN_BITS


def _squash(v: int) -> int:
    """The inverse of _spread: the even bits of v packed into 32."""
    v &= _EVEN_BITS
    v = (v | (v >> 1)) & 0x3333333333333333
    v = (v | (v >> 2)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v >> 4)) & 0x00FF00FF00FF00FF
    v = (v | (v >> 8)) & 0x0000FFFF0000FFFF
    return (v | (v >> 16)) & 0xFFFFFFFF


def encode(lon: float, lat: float, step: int, lon_min: float = GEO_LONG_MIN, lon_max: float = GEO_LONG_MAX,
           lat_min: float = GEO_LAT_MIN, lat_max: float = GEO_LAT_MAX) -> HashBits | None:
    """geohashEncode: None outside Redis' (or the given) ranges."""
    assert 0 < step <= 32, step
    if lon > GEO_LONG_MAX or lon < GEO_LONG_MIN or lat > GEO_LAT_MAX or lat < GEO_LAT_MIN:
        return None
    if lat < lat_min or lat > lat_max or lon < lon_min or lon > lon_max:
        return None
    lat_offset = (lat - lat_min) / (lat_max - lat_min) * float(1 << step)
    lon_offset = (lon - lon_min) / (lon_max - lon_min) * float(1 << step)
    # C converts the doubles to uint32_t (truncation) before interleaving.
    return HashBits(_spread(int(lat_offset)) | (_spread(int(lon_offset)) << 1), step)


def decode(h: HashBits, lon_min: float = GEO_LONG_MIN, lon_max: float = GEO_LONG_MAX,
           lat_min: float = GEO_LAT_MIN, lat_max: float = GEO_LAT_MAX) -> Area:
    """geohashDecode: the cell's bounds."""
    ilat = _squash(h.bits)
    ilon = _squash(h.bits >> 1)
    cells = float(1 << h.step)
    lat_scale = lat_max - lat_min
    lon_scale = lon_max - lon_min
    return Area(h,
                lon_min + (ilon * 1.0 / cells) * lon_scale,
                lon_min + ((ilon + 1) * 1.0 / cells) * lon_scale,
                lat_min + (ilat * 1.0 / cells) * lat_scale,
                lat_min + ((ilat + 1) * 1.0 / cells) * lat_scale)


_TWO63 = 2.0**63
_INT64_INDEFINITE = 1 << 63  # what x86-64's cvttsd2si gives for a value out of int64 range


def _double_to_u64(x: float) -> int:
    """C's `(uint64_t)x` as gcc compiles it on x86-64, out-of-range values included
    (any sorted-set score can reach the geo commands): below 2**63 a signed
    conversion, above it a signed conversion of x - 2**63 with the top bit flipped."""
    if x < _TWO63:
        return int(x) & U64_MASK if x >= -_TWO63 else _INT64_INDEFINITE
    y = x - _TWO63
    return (int(y) if y < _TWO63 else _INT64_INDEFINITE) ^ _INT64_INDEFINITE


def score_to_hash(score: float) -> HashBits:
    """Redis' `(uint64_t)score` at step 26 (decodeGeohash)."""
    return HashBits(_double_to_u64(score), GEO_STEP_MAX)


def _unzip_table() -> array:
    """For each 16-bit piece of a hash: its even bits (latitude) at 0-7 and its odd
    bits (longitude) at 32-39, so four lookups deinterleave a whole 64-bit hash.
    An array of 64-bit cells (512 KiB), not a list: 65536 int objects cost ~3 MB in
    the supervisor's preload, and so in the RSS of every process of a tree."""
    byte = [_squash(c) | (_squash(c >> 1) << 32) for c in range(256)]  # 4 + 4 bits
    return array("Q", (byte[c & 0xFF] | (byte[c >> 8] << 4) for c in range(1 << 16)))


_UNZIP = _unzip_table()
_CELLS = float(1 << GEO_STEP_MAX)
_LAT_SCALE = GEO_LAT_MAX - GEO_LAT_MIN
_LON_SCALE = GEO_LONG_MAX - GEO_LONG_MIN


def decode_score(score: float) -> tuple[float, float]:
    """decodeGeohash: a score's cell centre (longitude, latitude), clamped to the
    ranges; `decode` and the centre computation inlined (searches call it per point)."""
    bits = int(score) if 0.0 <= score < _TWO63 else _double_to_u64(score)
    u = _UNZIP
    packed = (u[bits & 0xFFFF] | (u[(bits >> 16) & 0xFFFF] << 8) | (u[(bits >> 32) & 0xFFFF] << 16)
              | (u[bits >> 48] << 24))
    ilat = packed & 0xFFFFFFFF
    ilon = packed >> 32
    lon = ((GEO_LONG_MIN + (ilon * 1.0 / _CELLS) * _LON_SCALE)
           + (GEO_LONG_MIN + ((ilon + 1) * 1.0 / _CELLS) * _LON_SCALE)) / 2
    lat = ((GEO_LAT_MIN + (ilat * 1.0 / _CELLS) * _LAT_SCALE)
           + (GEO_LAT_MIN + ((ilat + 1) * 1.0 / _CELLS) * _LAT_SCALE)) / 2
    if lon > GEO_LONG_MAX:
        lon = GEO_LONG_MAX
    elif lon < GEO_LONG_MIN:
        lon = GEO_LONG_MIN
    if lat > GEO_LAT_MAX:
        lat = GEO_LAT_MAX
    elif lat < GEO_LAT_MIN:
        lat = GEO_LAT_MIN
    return lon, lat


def align52(h: HashBits) -> int:
    """geohashAlign52Bits: the hash as a 52-bit score prefix."""
    return (h.bits << (52 - h.step * 2)) & U64_MASK


def _move_x(h: HashBits, d: int) -> HashBits:
    x = h.bits & _ODD_BITS
    y = h.bits & _EVEN_BITS
    zz = _EVEN_BITS >> (64 - h.step * 2)
    if d > 0:
        x = x + (zz + 1)
    else:
        x = (x | zz) - (zz + 1)
    x &= _ODD_BITS >> (64 - h.step * 2)
    return HashBits((x | y) & U64_MASK, h.step)


def _move_y(h: HashBits, d: int) -> HashBits:
    x = h.bits & _ODD_BITS
    y = h.bits & _EVEN_BITS
    zz = _ODD_BITS >> (64 - h.step * 2)
    if d > 0:
        y = y + (zz + 1)
    else:
        y = (y | zz) - (zz + 1)
    y &= _EVEN_BITS >> (64 - h.step * 2)
    return HashBits((x | y) & U64_MASK, h.step)


class Neighbors(NamedTuple):
    north: HashBits
    south: HashBits
    east: HashBits
    west: HashBits
    north_east: HashBits
    north_west: HashBits
    south_east: HashBits
    south_west: HashBits


def neighbors(h: HashBits) -> Neighbors:
    """geohashNeighbors (wrapping around at the edges, as Redis does)."""
    east, west = _move_x(h, 1), _move_x(h, -1)
    return Neighbors(
        north=_move_y(h, 1), south=_move_y(h, -1), east=east, west=west,
        north_east=_move_y(east, 1), north_west=_move_y(west, 1),
        south_east=_move_y(east, -1), south_west=_move_y(west, -1),
    )


def deg_rad(ang: float) -> float:
    return ang * D_R


def rad_deg(ang: float) -> float:
    return ang / D_R


def lat_distance(lat1: float, lat2: float) -> float:
    """geohashGetLatDistance."""
    return EARTH_RADIUS_IN_METERS * abs(deg_rad(lat2) - deg_rad(lat1))


def distance(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """geohashGetDistance: haversine on Redis' earth radius, in meters."""
    lon1r = deg_rad(lon1)
    lon2r = deg_rad(lon2)
    v = math.sin((lon2r - lon1r) / 2)
    if v == 0.0:
        return lat_distance(lat1, lat2)
    lat1r = deg_rad(lat1)
    lat2r = deg_rad(lat2)
    u = math.sin((lat2r - lat1r) / 2)
    a = u * u + math.cos(lat1r) * math.cos(lat2r) * v * v
    return 2.0 * EARTH_RADIUS_IN_METERS * math.asin(math.sqrt(a))


class Shape(NamedTuple):
    """GeoShape: a circle (radius) or an axis-aligned box (width, height) around
    (lon, lat); the sizes in the request's unit, `conversion` its meters per unit."""

    lon: float
    lat: float
    conversion: float
    radius: float = 0.0
    width: float = 0.0
    height: float = 0.0
    is_box: bool = False


def within(shape: Shape, lon: float, lat: float) -> float | None:
    """geoWithinShape: the distance in meters from the centre, or None when outside."""
    if not shape.is_box:
        d = distance(shape.lon, shape.lat, lon, lat)
        return None if d > shape.radius * shape.conversion else d
    width_m = shape.width * shape.conversion
    height_m = shape.height * shape.conversion
    if lat_distance(lat, shape.lat) > height_m / 2:
        return None
    if distance(lon, lat, shape.lon, lat) > width_m / 2:
        return None
    return distance(shape.lon, shape.lat, lon, lat)


def estimate_steps(range_meters: float, lat: float) -> int:
    """geohashEstimateStepsByRadius."""
    if range_meters == 0:
        return 26
    step = 1
    while range_meters < MERCATOR_MAX:
        range_meters *= 2
        step += 1
    step -= 2
    if lat > 66 or lat < -66:
        step -= 1
        if lat > 80 or lat < -80:
            step -= 1
    return min(max(step, 1), 26)


def bounding_box(shape: Shape) -> tuple[float, float, float, float]:
    """geohashBoundingBox: (min lon, min lat, max lon, max lat)."""
    half_h = shape.conversion * (shape.height / 2 if shape.is_box else shape.radius)
    half_w = shape.conversion * (shape.width / 2 if shape.is_box else shape.radius)
    lat_delta = rad_deg(half_h / EARTH_RADIUS_IN_METERS)
    long_delta_top = rad_deg(half_w / EARTH_RADIUS_IN_METERS / math.cos(deg_rad(shape.lat + lat_delta)))
    long_delta_bottom = rad_deg(half_w / EARTH_RADIUS_IN_METERS / math.cos(deg_rad(shape.lat - lat_delta)))
    long_delta = long_delta_bottom if shape.lat < 0 else long_delta_top
    return shape.lon - long_delta, shape.lat - lat_delta, shape.lon + long_delta, shape.lat + lat_delta


def search_areas(shape: Shape) -> list[HashBits]:
    """geohashCalculateAreasByShapeWGS84: the centre cell and its 8 neighbours
    (ZERO_HASH for the ones that cannot hold a match), in Redis' visiting order
    (centre, N, S, E, W, NE, NW, SE, SW)."""
    min_lon, min_lat, max_lon, max_lat = bounding_box(shape)
    if shape.is_box:
        half_w, half_h = shape.width / 2, shape.height / 2
        radius_meters = math.sqrt(half_w * half_w + half_h * half_h)
    else:
        radius_meters = shape.radius
    radius_meters *= shape.conversion
    steps = estimate_steps(radius_meters, shape.lat)
    h = encode(shape.lon, shape.lat, steps)
    assert h is not None, "the centre of a search is validated before"
    near = neighbors(h)
    if steps > 1 and (decode(near.north).lat_max < max_lat or decode(near.south).lat_min > min_lat
                      or decode(near.east).lon_max < max_lon or decode(near.west).lon_min > min_lon):
        steps -= 1
        h = encode(shape.lon, shape.lat, steps)
        assert h is not None
        near = neighbors(h)
    area = decode(h)
    n = near._asdict()
    if steps >= 2:
        if area.lat_min < min_lat:
            n["south"] = n["south_west"] = n["south_east"] = ZERO_HASH
        if area.lat_max > max_lat:
            n["north"] = n["north_east"] = n["north_west"] = ZERO_HASH
        if area.lon_min < min_lon:
            n["west"] = n["south_west"] = n["north_west"] = ZERO_HASH
        if area.lon_max > max_lon:
            n["east"] = n["south_east"] = n["north_east"] = ZERO_HASH
    return [h, n["north"], n["south"], n["east"], n["west"],
            n["north_east"], n["north_west"], n["south_east"], n["south_west"]]


def score_range(h: HashBits) -> tuple[int, int]:
    """scoresOfGeoHashBox: the scores [min, max) of the points inside cell h."""
    return align52(h), align52(HashBits(h.bits + 1, h.step))


_GEOALPHABET = b"0123456789bcdefghjkmnpqrstuvwxyz"


def standard_geohash(score: float) -> bytes:
    """GEOHASH's 11-character string: the cell centre re-encoded over the standard
    -90..90 latitude range (the 11th character is always '0')."""
    lon, lat = decode_score(score)
    h = encode(lon, lat, GEO_STEP_MAX, -180.0, 180.0, -90.0, 90.0)
    bits = h.bits if h is not None else 0
    return bytes(_GEOALPHABET[(bits >> (52 - (i + 1) * 5)) & 0x1F] for i in range(10)) + b"0"
