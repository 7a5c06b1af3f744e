def test_set_get_roundtrip(r):
    assert r.set("foo", "bar") is True
    assert r.get("foo") == b"bar"
    assert r.get("missing") is None


def test_keys_on_both_shards_pipeline_in_order(r):
    keys = [f"key:{i}" for i in range(200)]
    pipe = r.pipeline(transaction=False)
    for i, k in enumerate(keys):
        pipe.set(k, i)
        pipe.get(k)
    replies = pipe.execute()
    assert replies[1::2] == [str(i).encode() for i in range(200)]
    assert r.dbsize() == 200
    assert r.mget(keys) == [str(i).encode() for i in range(200)]
    assert r.delete(*keys) == 200
