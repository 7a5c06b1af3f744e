"""Geo commands: byte-for-byte against a real redis-server 7.0 in RESP2 and RESP3
(fixed cases, the edges of the geohash ranges, seeded random points for the
searches), and effects that replay to the live state."""

from __future__ import annotations

import random

import pytest
from refserver import Pair, same_all

from durakv.shards import commands  # noqa: F401
from durakv.shards import geohash
from durakv.shards.t_geo import _partial_sort, distance_text
from engine_util import run_and_replay

RANDOM_POINTS = 300
RANDOM_QUERIES = 40


@pytest.fixture(params=["pair", "pair3"])
def anyproto(request) -> Pair:
    """The same test in RESP2 and in RESP3."""
    return request.getfixturevalue(request.param)


def same_geo(p: Pair, commands: list[tuple]) -> None:
    """same_all with float arguments sent as their shortest text."""
    same_all(p, [tuple(repr(a) if isinstance(a, float) else a for a in c) for c in commands])


SICILY = ("GEOADD", "Sicily", 13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania")
POINTS = ("GEOADD", "pts", 13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania",
          12.758489, 38.788135, "edge1", 17.241510, 38.788135, "edge2", 13.5, 38.0, "near")


def test_geoadd_options_and_errors(anyproto):
    same_geo(anyproto, [
        SICILY,
        ("GEOADD", "Sicily", "NX", 13.0, 38.0, "Palermo", 14.0, 37.0, "new"),
        ("GEOADD", "Sicily", "XX", "CH", 13.0, 38.0, "Palermo", 14.0, 37.0, "absent"),
        ("GEOADD", "Sicily", "CH", 13.0, 38.0, "Palermo", 1, 2, "x"),
        ("GEOADD", "Sicily", "NX", "XX", 1, 2, "x"),
        ("GEOADD", "Sicily", 1, 2),
        ("GEOADD", "Sicily", "GT", 1, 2, "x"),
        ("GEOADD", "Sicily", "abc", 2, "x"),
        ("GEOADD", "Sicily", 1, "abc", "x"),
        ("GEOADD", "Sicily", 200, 100, "x"),
        ("GEOADD", "Sicily", -180.0000001, 0, "x"),
        ("GEOADD", "Sicily", 0, 85.06, "x"),
        ("GEOADD", "Sicily", 0, -85.0511288, "x"),
        ("GEOADD", "Sicily", "nan", 0, "x"),
        ("GEOADD", "Sicily", "inf", 0, "x"),
        ("GEOADD", "Sicily", 1, 2, "ok", 500, 2, "bad"),
        ("GEOADD", "Sicily", "CH", "NX", "CH"),
        ("GEOADD", "Sicily"),
        ("ZRANGE", "Sicily", 0, -1, "WITHSCORES"),
        ("SET", "str", "v"),
        ("GEOADD", "str", 1, 2, "x"),
        ("GEOPOS", "str", "x"),
        ("GEOHASH", "str", "x"),
        ("GEODIST", "str", "a", "b"),
        ("GEOSEARCH", "str", "FROMLONLAT", 0, 0, "BYRADIUS", 1, "km"),
    ])


def test_edges_poles_and_antimeridian(anyproto):
    same_geo(anyproto, [
        ("GEOADD", "e", 180, 85.05112878, "ne", -180, -85.05112878, "sw", 180, 0, "east", -180, 0, "west",
         0, 0, "origin", 179.9999, 85, "n1", -179.9999, -85, "s1", 0, 85.05112878, "top"),
        ("GEOPOS", "e", "ne", "sw", "east", "west", "origin", "n1", "s1", "top", "missing"),
        ("GEOHASH", "e", "ne", "sw", "east", "west", "origin", "n1", "s1", "top", "missing"),
        ("GEODIST", "e", "east", "west"),
        ("GEODIST", "e", "ne", "sw", "km"),
        ("GEODIST", "e", "n1", "s1", "mi"),
        ("GEOSEARCH", "e", "FROMLONLAT", 179.5, 0, "BYRADIUS", 200, "km", "ASC", "WITHDIST", "WITHCOORD"),
        ("GEOSEARCH", "e", "FROMLONLAT", -179.5, 0, "BYRADIUS", 200, "km", "ASC", "WITHDIST"),
        ("GEOSEARCH", "e", "FROMLONLAT", 0, 84.9, "BYBOX", 30000, 300, "km", "DESC", "WITHCOORD"),
        ("GEOSEARCH", "e", "FROMMEMBER", "ne", "BYRADIUS", 5000, "km", "ASC", "WITHHASH"),
        ("GEOSEARCH", "e", "FROMLONLAT", 0, 0, "BYRADIUS", 20000, "km", "ASC"),
        ("GEORADIUS", "e", 180, 0, 1, "m", "WITHDIST"),
        ("GEORADIUS", "e", 0, -85.05112878, 10, "km", "WITHCOORD"),
        ("GEOSEARCH", "e", "FROMLONLAT", 0, 0, "BYRADIUS", 0, "m", "WITHDIST"),
    ])


def test_geodist_geopos_geohash(anyproto):
    same_geo(anyproto, [
        SICILY,
        ("GEODIST", "Sicily", "Palermo", "Catania"),
        ("GEODIST", "Sicily", "Palermo", "Catania", "km"),
        ("GEODIST", "Sicily", "Palermo", "Catania", "MI"),
        ("GEODIST", "Sicily", "Palermo", "Catania", "ft"),
        ("GEODIST", "Sicily", "Palermo", "Palermo"),
        ("GEODIST", "Sicily", "Palermo", "nosuch"),
        ("GEODIST", "nokey", "a", "b"),
        ("GEODIST", "Sicily", "Palermo", "Catania", "yards"),
        ("GEODIST", "Sicily", "Palermo", "Catania", "km", "x"),
        ("GEOPOS", "Sicily", "Palermo", "Catania", "nosuch"),
        ("GEOPOS", "nokey", "a", "b"),
        ("GEOPOS", "Sicily"),
        ("GEOHASH", "Sicily", "Palermo", "Catania", "nosuch"),
        ("GEOHASH", "nokey", "a"),
        ("GEOHASH", "Sicily"),
        # Scores no GEOADD makes: decoded as C's (uint64_t) conversion leaves them.
        ("ZADD", "Sicily", 0, "zero", 4503599627370495, "max52", 9007199254740992, "big", -1.5, "neg",
         "-inf", "ninf", "inf", "pinf", "1e19", "e19", "1e30", "e30", "-1e30", "ne30"),
        ("GEOPOS", "Sicily", "zero", "max52", "big", "neg", "ninf", "pinf", "e19", "e30", "ne30"),
        ("GEOHASH", "Sicily", "zero", "max52", "big", "neg", "ninf", "pinf", "e19", "e30", "ne30"),
        ("GEODIST", "Sicily", "neg", "ninf"),
        ("GEOSEARCH", "Sicily", "FROMLONLAT", 0, 0, "BYRADIUS", 30000, "km", "WITHHASH", "WITHCOORD", "ASC"),
    ])


def test_georadius_and_bymember(anyproto):
    same_geo(anyproto, [
        POINTS,
        ("GEORADIUS", "pts", 15, 37, 200, "km"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "ASC"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "DESC", "WITHDIST", "WITHCOORD", "WITHHASH"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", 2),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", 2, "DESC", "WITHDIST"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", 1, "ANY"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "ANY"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", 0),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", -1),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT", "x"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "COUNT"),
        ("GEORADIUS", "pts", 15, 37, 200, "lightyears"),
        ("GEORADIUS", "pts", 15, 37, -1, "km"),
        ("GEORADIUS", "pts", 15, 37, "far", "km"),
        ("GEORADIUS", "pts", 15, 137, 1, "km"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "BOGUS"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "STORE"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "STORE", "{pts}dst", "WITHDIST"),
        ("GEORADIUS", "pts", 15, 37, 1, "m"),
        ("GEORADIUS", "nokey", 15, 37, 200, "km"),
        ("GEORADIUS_RO", "pts", 15, 37, 200, "km", "WITHDIST", "ASC"),
        ("GEORADIUS_RO", "pts", 15, 37, 200, "km", "STORE", "dst"),
        ("GEORADIUSBYMEMBER", "pts", "Palermo", 100, "km", "WITHDIST", "ASC"),
        ("GEORADIUSBYMEMBER", "pts", "Palermo", 100, "km", "WITHCOORD", "WITHHASH", "DESC"),
        ("GEORADIUSBYMEMBER", "pts", "nosuch", 100, "km"),
        ("GEORADIUSBYMEMBER", "nokey", "nosuch", "bad", "bad"),
        ("GEORADIUSBYMEMBER", "nokey", "nosuch", "bad", "bad", "BOGUS"),
        ("GEORADIUSBYMEMBER_RO", "pts", "Catania", 200, "km", "ASC"),
        ("GEORADIUSBYMEMBER_RO", "pts", "Catania", 200, "km", "STOREDIST", "dst"),
    ])


def test_geosearch_options_and_errors(anyproto):
    same_geo(anyproto, [
        POINTS,
        ("GEOSEARCH", "pts", "FROMMEMBER", "Palermo", "BYRADIUS", 200, "km", "ASC", "WITHDIST"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", 400, 400, "km", "ASC", "WITHCOORD", "WITHDIST"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", 400, 100, "km", "DESC", "WITHHASH"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 200, "km", "COUNT", 2, "ANY", "WITHDIST"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 200, "km", "COUNT", 2, "ANY", "DESC"),
        ("geosearch", "pts", "BYRADIUS", 200, "km"),
        ("GeoSearch", "pts", "FROMLONLAT", 15, 37),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "FROMMEMBER", "Palermo", "BYRADIUS", 1, "km"),
        ("GEOSEARCH", "pts", "FROMMEMBER", "Palermo", "FROMLONLAT", 15, 37, "BYRADIUS", 1, "km"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 1, "km", "BYBOX", 1, 1, "km"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", -1, 1, "km"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", "w", 1, "km"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", 1, "h", "km"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYBOX", 1, 1, "parsec"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 200, "km", "ANY"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 200, "km", "STORE", "dst"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 200, "km", "STOREDIST"),
        ("GEOSEARCH", "pts", "FROMMEMBER", "nosuch", "BYRADIUS", 200, "km"),
        ("GEOSEARCH", "nokey", "FROMMEMBER", "nosuch", "BYRADIUS", 200, "km"),
        ("GEOSEARCH", "nokey", "FROMMEMBER", "nosuch"),
        ("GEOSEARCH", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 0.001, "m"),
    ])


def test_store_forms(anyproto):
    p = anyproto
    same_geo(p, [
        POINTS,
        ("SET", "{pts}dst", "old"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "STORE", "{pts}dst"),
        ("ZRANGE", "{pts}dst", 0, -1, "WITHSCORES"),
        ("GEORADIUS", "pts", 15, 37, 200, "km", "STOREDIST", "{pts}dst", "COUNT", 2),
        ("ZRANGE", "{pts}dst", 0, -1, "WITHSCORES"),
        ("OBJECT", "ENCODING", "{pts}dst"),
        ("GEORADIUSBYMEMBER", "pts", "Palermo", 50, "km", "STORE", "{pts}dst"),
        ("ZRANGE", "{pts}dst", 0, -1, "WITHSCORES"),
        ("GEORADIUS", "pts", 0, 0, 1, "km", "STORE", "{pts}dst"),
        ("EXISTS", "{pts}dst"),
        ("GEOSEARCHSTORE", "{pts}dst", "pts", "FROMLONLAT", 15, 37, "BYBOX", 400, 400, "km", "STOREDIST"),
        ("ZRANGE", "{pts}dst", 0, -1, "WITHSCORES"),
        ("GEOSEARCHSTORE", "{pts}dst", "pts", "FROMMEMBER", "Catania", "BYRADIUS", 100, "km", "COUNT", 1),
        ("ZRANGE", "{pts}dst", 0, -1, "WITHSCORES"),
        ("GEOSEARCHSTORE", "{pts}dst", "pts", "FROMLONLAT", 15, 37, "BYRADIUS", 1, "km", "WITHDIST"),
        ("GEOSEARCHSTORE", "{pts}dst", "{pts}none", "FROMLONLAT", 15, 37, "BYRADIUS", 1, "km"),
        ("EXISTS", "{pts}dst"),
        ("GEOSEARCHSTORE", "{pts}dst", "{pts}none", "FROMLONLAT", 15, 37, "BYRADIUS", 1, "km"),
        ("GEORADIUS", "{pts}none", 15, 37, 1, "km", "STORE", "pts"),
        ("EXISTS", "pts"),
    ])


def _random_points(rng: random.Random) -> list:
    args: list = ["GEOADD", "rnd"]
    for i in range(RANDOM_POINTS):
        # Clustered around a few centres so the searches find many points,
        # plus a sprinkle over the whole map.
        if i % 5 == 0:
            lon, lat = rng.uniform(-180, 180), rng.uniform(-85, 85)
        else:
            lon = rng.choice((-179.5, -73.9, 2.35, 139.7)) + rng.uniform(-3, 3)
            lat = rng.choice((-33.9, 40.7, 48.8, 35.7)) + rng.uniform(-3, 3)
            lon = max(min(lon, 180), -180)
        args += [f"{lon:.6f}", f"{lat:.6f}", f"m{i}"]
    return args


@pytest.mark.parametrize("seed", [1, 2])
def test_random_searches_match_redis(anyproto, seed):
    rng = random.Random(seed)
    p = anyproto
    same_geo(p, [tuple(_random_points(rng))])
    for _ in range(RANDOM_QUERIES):
        lon = rng.choice((-179.5, -73.9, 2.35, 139.7, rng.uniform(-180, 180)))
        lat = rng.choice((-33.9, 40.7, 48.8, 35.7, rng.uniform(-85, 85)))
        unit = rng.choice(("m", "km", "mi", "ft"))
        scale = {"m": 1000, "km": 1, "mi": 0.62, "ft": 3280}[unit]
        size = rng.choice((10, 100, 400, 2000)) * scale
        order = rng.choice(("ASC", "DESC"))
        if rng.random() < 0.5:
            by = ["BYRADIUS", f"{size:.3f}", unit]
        else:
            by = ["BYBOX", f"{size:.3f}", f"{size * rng.uniform(0.2, 2):.3f}", unit]
        count = ["COUNT", rng.randint(1, 20)] if rng.random() < 0.3 else []
        p.same("GEOSEARCH", "rnd", "FROMLONLAT", f"{lon:.5f}", f"{lat:.5f}", *by, order, *count,
               "WITHDIST", "WITHCOORD")
        p.same("GEOSEARCH", "rnd", "FROMMEMBER", f"m{rng.randrange(RANDOM_POINTS)}", *by, order,
               "WITHDIST", "WITHHASH")
        p.same("GEORADIUS_RO", "rnd", f"{lon:.5f}", f"{lat:.5f}", f"{size:.3f}", unit, "WITHDIST", order)
    members = [f"m{i}" for i in range(0, RANDOM_POINTS, 7)]
    p.same("GEOPOS", "rnd", *members)
    p.same("GEOHASH", "rnd", *members)
    for _ in range(20):
        p.same("GEODIST", "rnd", f"m{rng.randrange(RANDOM_POINTS)}", f"m{rng.randrange(RANDOM_POINTS)}", "km")


def test_geo_effects_replay_to_the_live_state():
    """GEOADD logs ZADD of the computed scores; the store forms replay to the same set."""
    run_and_replay([
        [b"GEOADD", b"g", b"13.361389", b"38.115556", b"Palermo", b"15.087269", b"37.502669", b"Catania"],
        [b"GEOADD", b"g", b"XX", b"CH", b"13.5", b"38", b"Palermo", b"1", b"1", b"skipped"],
        [b"GEORADIUS", b"g", b"15", b"37", b"200", b"km", b"STOREDIST", b"d1"],
        [b"GEOSEARCHSTORE", b"d2", b"g", b"FROMMEMBER", b"Catania", b"BYRADIUS", b"300", b"km"],
        [b"GEOSEARCHSTORE", b"d2", b"none", b"FROMLONLAT", b"0", b"0", b"BYRADIUS", b"1", b"km"],
    ])


def test_geohash_arithmetic_units():
    """Redis' documented examples, and the 4-decimal distance rounding (llrint: ties to even)."""
    h = geohash.encode(13.361389, 38.115556, geohash.GEO_STEP_MAX)
    assert h is not None
    assert geohash.align52(h) == 3479099956230698
    assert geohash.standard_geohash(float(geohash.align52(h))) == b"sqc8b49rny0"
    assert distance_text(0.00025) == b"0.0002" and distance_text(0.00035) == b"0.0004"
    assert distance_text(166274.15156960033) == b"166274.1516"


def test_count_keeps_redis_order_among_equal_distances(anyproto):
    """COUNT below the number of matches sorts with Redis' partial quicksort
    (unstable): points at the same distance come back in its order; without
    COUNT glibc's stable merge sort keeps the search order."""
    rng = random.Random(3)
    args: list = ["GEOADD", "ties"]
    for i in range(120):
        lon, lat = rng.choice(((0.0, 0.0), (0.5, 0.5), (-0.5, 0.25), (1.0, -1.0)))
        args += [lon, lat, f"t{i}"]
    same_geo(anyproto, [tuple(args)])
    for count in (1, 5, 7, 8, 41, 60, 119):
        for order in ("ASC", "DESC"):
            same_geo(anyproto, [
                ("GEOSEARCH", "ties", "FROMLONLAT", 0.1, 0.1, "BYRADIUS", 500, "km", order, "COUNT", count),
                ("GEORADIUS", "ties", 0.1, 0.1, 500, "km", order, "COUNT", count, "WITHDIST"),
            ])
    same_geo(anyproto, [("GEOSEARCH", "ties", "FROMLONLAT", 0.1, 0.1, "BYRADIUS", 500, "km", "DESC")])


def test_partial_sort_orders_the_requested_prefix():
    rng = random.Random(5)
    for n in (1, 6, 7, 8, 40, 41, 200):
        for k in (1, n // 2 or 1, n):
            values = [float(rng.randrange(10)) for _ in range(n)]
            keys = list(values)
            items = [(x, i) for i, x in enumerate(values)]
            _partial_sort(keys, items, 0, k - 1)
            assert keys[:k] == sorted(values)[:k] and sorted(keys) == sorted(values)
            assert [x for x, _ in items] == keys  # items moved with their keys
            assert sorted(i for _, i in items) == list(range(n))
