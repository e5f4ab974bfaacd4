"""ckpt.find, the index cache, Selector semantics (a property test against a brute-force filter), ckpt find."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ckpt
from ckpt import index as _index
from ckpt.cli import main
from ckpt._packfile import PackReader
from ckpt.errors import SelectorError

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from recipe_models import plain  # noqa: E402


def _tree(root) -> dict[str, ckpt.Checkpoint]:
    """Three runs: Linear (3 steps), Wide (a Linear subclass, 2 steps), Stack of Linears (1 step, no metrics)."""
    runs = {}
    ck = runs["lin"] = ckpt.Checkpoint(os.path.join(root, "lin"), keep_ckpts=None)
    for step, loss in ((100, 0.9), (200, float("nan")), (300, 0.3)):
        m = plain.Linear(4, 2, seed=step)
        ck.save(m.state(), idx=step, recipe=m, metrics={"loss": loss, "acc": step / 1000})
    ck.alias("best", 300)
    ck = runs["wide"] = ckpt.Checkpoint(os.path.join(root, "group", "wide"), keep_ckpts=None)
    for step, loss in ((1, 0.5), (2, 0.1)):
        w = plain.Wide(4, factor=step + 1)
        ck.save(w.state(), idx=step, recipe=w, metrics={"loss": loss})
    ck.alias("best", 2)
    ck = runs["stack"] = ckpt.Checkpoint(os.path.join(root, "stack"))
    s = plain.Stack([plain.Linear(2, 2), plain.Linear(2, 3)], activation="relu", shape=(20, 20))
    ck.save({"x": np.zeros(1)}, idx=5, recipe=s)
    return runs


@pytest.fixture
def tree(tmp_path):
    _tree(str(tmp_path))
    return str(tmp_path)


def _steps(entries):
    return [(os.path.basename(e.run), e.idx) for e in entries]


# -- find ---------------------------------------------------------------------------
def test_find_lists_every_checkpoint_with_light_entries(tree):
    entries = ckpt.find(tree)
    assert _steps(entries) == [("wide", 1), ("wide", 2), ("lin", 100), ("lin", 200), ("lin", 300), ("stack", 5)]
    e = entries[-2]
    assert e.path == os.path.join(tree, "lin", "ckpt", "0000000300.npz") and e.run == os.path.join(tree, "lin")
    assert e.metrics == {"loss": 0.3, "acc": 0.3} and e.aliases == ("best",)
    assert e.recipe.cls == "recipe_models.plain.Linear" and e.recipe.kwargs["seed"] == 300
    assert e.id == e.recipe.id and e.hash == e.recipe.hash and e.parent is None
    with ckpt.varfile.open_reader(e.path) as reader:
        main = reader.slots["main"]
        assert e.digest == main.digest and len(e.digest) == 64 and e.algorithm == main.algorithm
        assert e.sha256 == main.sha256 and e.created_at == reader.created_at
    assert e.size == os.path.getsize(e.path)


def test_selector_cls_matches_subclasses_through_the_recorded_mro(tree):
    assert _steps(ckpt.find(tree, ckpt.Selector(cls="Wide"))) == [("wide", 1), ("wide", 2)]
    assert len(ckpt.find(tree, ckpt.Selector(cls="Linear"))) == 5  # Wide is a Linear
    assert len(ckpt.find(tree, ckpt.Selector(cls=plain.Linear))) == 5
    assert len(ckpt.find(tree, ckpt.Selector(cls="recipe_models.plain.Linear"))) == 5
    assert len(ckpt.find(tree, ckpt.Selector(cls=["Stack", "Wide"]))) == 3
    assert ckpt.find(tree, ckpt.Selector(cls="plain.Linear")) == []  # a dotted name must be the full path


def test_selector_kwargs_subset_nested_and_tuples(tree):
    assert _steps(ckpt.find(tree, ckpt.Selector(kwargs={"factor": 3}))) == [("wide", 2)]
    assert _steps(ckpt.find(tree, ckpt.Selector(kwargs={"shape": (20, 20)}))) == [("stack", 5)]
    assert _steps(ckpt.find(tree, ckpt.Selector(kwargs={"shape": [20, 20]}))) == [("stack", 5)]  # list == tuple
    inner = ckpt.Selector(cls="Linear", kwargs={"n_out": 3})
    assert _steps(ckpt.find(tree, ckpt.Selector(kwargs={"layers": [lambda r: True, inner]}))) == [("stack", 5)]
    assert ckpt.find(tree, ckpt.Selector(kwargs={"layers": [inner, inner]})) == []
    assert len(ckpt.find(tree, ckpt.Selector(kwargs={"dtype": "float32"}))) == 3  # a dtype equals its name
    assert ckpt.find(tree, ckpt.Selector(kwargs={"missing": None})) == []


def test_where_comparisons_boolean_logic_and_callables(tree):
    assert _steps(ckpt.find(tree, ckpt.Selector(where="loss < 0.4"))) == [("wide", 2), ("lin", 300)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="loss < 0.2 or acc >= 0.3"))) == [("wide", 2), ("lin", 300)]
    # NaN and missing values fail every comparison, so `not` keeps them
    assert _steps(ckpt.find(tree, ckpt.Selector(where="not loss < 0.4"))) == [
        ("wide", 1), ("lin", 100), ("lin", 200), ("stack", 5)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="loss != 0.5"))) == [
        ("wide", 2), ("lin", 100), ("lin", 200), ("lin", 300)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="seed in [100, 300] and idx > 100"))) == [("lin", 300)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="kwargs.layers[1].n_out == 3"))) == [("stack", 5)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="name == 'Wide' and metrics.loss > 0.2"))) == [("wide", 1)]
    sel = ckpt.Selector(cls="Linear") & ~ckpt.Selector(cls="Wide") | (lambda e: e.idx == 5)
    assert _steps(ckpt.find(tree, sel)) == [("lin", 100), ("lin", 200), ("lin", 300), ("stack", 5)]
    assert _steps(ckpt.find(tree, lambda e: "best" in e.aliases)) == [("wide", 2), ("lin", 300)]
    assert _steps(ckpt.find(tree, "loss < 0.4")) == _steps(ckpt.find(tree, {"where": "loss < 0.4"})) == [
        ("wide", 2), ("lin", 300)]
    with pytest.raises(SelectorError):
        ckpt.find(tree, 42)
    assert _steps(ckpt.find(tree, ckpt.Selector(metrics={"loss": lambda v: v > 0.8}))) == [("lin", 100)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where=["loss > 0.2", lambda e: e.idx > 1]))) == [("lin", 100),
                                                                                             ("lin", 300)]


def test_selector_args_match_as_a_prefix_and_fields_are_names():
    r = ckpt.Recipe.of(plain.Stack, [], "relu", (1, 2))
    positional = ckpt.Recipe.from_dict({**r.to_dict(), "args": [1, "x", {"$ckpt": "tuple", "v": [2, 3]}],
                                        "kwargs": {}})
    assert ckpt.Selector(args=[1])(positional) and ckpt.Selector(args=[1, "x", [2, 3]])(positional)
    assert not ckpt.Selector(args=[1, "y"])(positional) and not ckpt.Selector(args=[1, "x", (2, 3), 4])(positional)
    entry = ckpt.Entry(path="/r/ckpt/0000000001.npz", run="/r", idx=1, recipe=positional, aliases=("best",),
                       created_at="2026-12-01T00:00:00.000000Z")
    assert ckpt.Selector(where="'best' in aliases and created_at > '2026-11' and args[1] == 'x'")(entry)
    assert ckpt.Selector(where="cls == 'recipe_models.plain.Stack' and name == 'Stack' and run == '/r'")(entry)
    assert not ckpt.Selector(where="'worst' in aliases")(entry)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from([0.0, 1.0, -1.0, 2.5, float("nan"), float("inf")]),
                          st.integers(-2, 2), st.just("str")), max_size=12), st.booleans())
def test_order_by_property_nan_and_missing_last(values, descending):
    entries = [ckpt.Entry(path=f"/r/{i}", run="/r", idx=i, recipe=None,
                          metrics={} if v is None else {"loss": v}) for i, v in enumerate(values)]
    got = ckpt.index._ordered(entries, "-loss" if descending else "loss")
    ranked = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)
              and not (isinstance(v, float) and math.isnan(v))]
    ranked.sort(key=lambda vi: (-vi[0] if descending else vi[0], vi[1]))
    rest = [i for i in range(len(values)) if i not in {i for _, i in ranked}]
    assert [e.idx for e in got] == [i for _, i in ranked] + rest


def test_where_accepts_sql_and_mlflow_spellings(tree):
    assert _steps(ckpt.find(tree, ckpt.Selector(where="metrics.loss < 0.4 AND params.n = 4"))) == [("wide", 2)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="NOT loss >= 0 OR idx IN [5]"))) == [("lin", 200), ("stack", 5)]
    assert _steps(ckpt.find(tree, ckpt.Selector(where="activation = 'relu' and name != 'AND = OR'"))) == [("stack", 5)]


def test_order_by_puts_nan_and_missing_last_both_ways_and_limit(tree):
    asc = ckpt.find(tree, order_by="loss")
    assert _steps(asc) == [("wide", 2), ("lin", 300), ("wide", 1), ("lin", 100), ("lin", 200), ("stack", 5)]
    desc = ckpt.find(tree, order_by="-loss")
    assert _steps(desc) == [("lin", 100), ("wide", 1), ("lin", 300), ("wide", 2), ("lin", 200), ("stack", 5)]
    assert _steps(ckpt.find(tree, order_by="loss", limit=2)) == [("wide", 2), ("lin", 300)]
    assert ckpt.find(tree, limit=0) == []
    assert [e.idx for e in ckpt.find(tree, order_by="-idx", limit=2)] == [300, 200]
    with pytest.raises(SelectorError):
        ckpt.find(tree, limit=-1)
    with pytest.raises(SelectorError):
        ckpt.find(tree, order_by="-")


def test_alias_resolution_in_find(tree):
    assert _steps(ckpt.find(tree, alias="best")) == [("wide", 2), ("lin", 300)]
    assert _steps(ckpt.find(tree, ckpt.Selector(cls="Wide"), alias="best")) == [("wide", 2)]
    assert ckpt.find(tree, alias="nope") == []
    with pytest.raises(ValueError):
        ckpt.find(tree, alias="../x")


def test_find_on_one_logdir_one_file_and_a_bare_directory(tree):
    assert _steps(ckpt.find(os.path.join(tree, "lin"))) == [("lin", 100), ("lin", 200), ("lin", 300)]
    one = ckpt.find(os.path.join(tree, "lin", "ckpt", "0000000300.npz"))
    assert _steps(one) == [("lin", 300)] and one[0].aliases == ("best",)
    assert len(ckpt.find(os.path.join(tree, "lin", "ckpt"))) == 3
    with pytest.raises(FileNotFoundError):
        ckpt.find(os.path.join(tree, "absent"))


def test_damaged_and_plain_files_are_skipped_not_fatal(tree, caplog):
    np.savez(os.path.join(tree, "lin", "plain.npz"), a=np.zeros(2))
    bad = os.path.join(tree, "lin", "ckpt", "0000000400.npz")
    with open(os.path.join(tree, "lin", "ckpt", "0000000300.npz"), "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="ckpt"):
        entries = ckpt.find(tree)
    assert len(entries) == 6 and bad not in [e.path for e in entries]
    assert any("0000000400.npz" in r.getMessage() for r in caplog.records)


# -- the index cache -------------------------------------------------------------------------
def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = _index._record_of

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(_index, "_record_of", counting)
    return reads


def test_cache_warm_find_reads_no_manifest_and_a_new_checkpoint_costs_one(tree, monkeypatch):
    cold = ckpt.find(tree)
    assert os.path.isfile(os.path.join(tree, ".ckpt-index.json"))
    reads = _count_reads(monkeypatch)
    assert ckpt.find(tree) == cold and reads == []
    ck = ckpt.Checkpoint(os.path.join(tree, "lin"), keep_ckpts=None)
    ck.save({"w": np.zeros(1 << 16)}, idx=400, metrics={"loss": 0.05})

    def boom(*a, **k):
        raise AssertionError("find read array data")

    monkeypatch.setattr(PackReader, "read_member", boom)
    monkeypatch.setattr(PackReader, "arrays", boom)
    found = ckpt.find(tree, order_by="loss", limit=1)
    assert reads == [ck.path(400)] and found[0].idx == 400  # one manifest read, no array data


def test_indexing_reads_only_manifests_never_arrays(tree, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("find read array data")

    monkeypatch.setattr(PackReader, "read_member", boom)
    monkeypatch.setattr(PackReader, "arrays", boom)
    monkeypatch.setattr(PackReader, "load", boom)
    assert len(ckpt.find(tree, cache=False)) == 6


def test_cache_is_never_trusted_over_the_files(tree, monkeypatch):
    ckpt.find(tree)
    ck = ckpt.Checkpoint(os.path.join(tree, "lin"), keep_ckpts=None)
    ck.save({"w": np.ones(3)}, idx=100, metrics={"loss": 123.0})  # rewritten in place: new size/mtime/inode
    os.remove(ck.path(200))
    entries = ckpt.find(os.path.join(tree))
    by_step = {(os.path.basename(e.run), e.idx): e for e in entries}
    assert by_step[("lin", 100)].metrics == {"loss": 123.0} and by_step[("lin", 100)].recipe is None
    assert ("lin", 200) not in by_step
    with open(os.path.join(tree, ".ckpt-index.json")) as f:
        doc = json.load(f)
    assert "lin/ckpt/0000000200.npz" not in doc["entries"]


def test_cache_forged_record_with_a_stale_key_is_ignored(tree):
    ckpt.find(tree)
    path = os.path.join(tree, ".ckpt-index.json")
    with open(path) as f:
        doc = json.load(f)
    rel = "lin/ckpt/0000000100.npz"
    doc["entries"][rel][1] += 1  # the key no longer matches the file
    doc["entries"][rel][3]["metrics"] = {"loss": -1.0}
    with open(path, "w") as f:
        json.dump(doc, f)
    e = [x for x in ckpt.find(tree) if x.idx == 100][0]
    assert e.metrics["loss"] == 0.9


def test_cache_recipe_table_is_shared_and_a_dangling_reference_rereads_the_file(tree, monkeypatch):
    ckpt.find(tree)
    path = os.path.join(tree, ".ckpt-index.json")
    with open(path) as f:
        doc = json.load(f)
    assert len(doc["recipes"]) == 6  # one per distinct recipe (the Wide run's two differ in factor)
    rel = "stack/ckpt/0000000005.npz"
    ref = doc["entries"][rel][3]["recipe"]
    del doc["recipes"][ref]
    with open(path, "w") as f:
        json.dump(doc, f)
    reads = _count_reads(monkeypatch)
    e = [x for x in ckpt.find(tree) if x.idx == 5][0]
    assert reads == [os.path.join(tree, rel)] and e.recipe.cls == "recipe_models.plain.Stack"


def test_a_malformed_cached_recipe_makes_its_file_be_read_again(tree, monkeypatch):
    ckpt.find(tree)
    path = os.path.join(tree, ".ckpt-index.json")
    with open(path) as f:
        doc = json.load(f)
    rel = "stack/ckpt/0000000005.npz"
    doc["recipes"][doc["entries"][rel][3]["recipe"]]["class"] = 42
    with open(path, "w") as f:
        json.dump(doc, f)
    reads = _count_reads(monkeypatch)
    e = [x for x in ckpt.find(tree) if x.idx == 5][0]
    assert reads == [os.path.join(tree, rel)] and e.recipe.cls == "recipe_models.plain.Stack"


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[]", b'{"format": "ckpt.index", "version": 1}',
                                     b'{"format": "ckpt.index", "version": 1, "entries": {"a": [1, 2]}}',
                                     b'{"format": "ckpt.index", "version": 99, "entries": {}}', b"\xff\xfe"])
def test_a_malformed_or_deleted_cache_is_rebuilt(tree, garbage):
    expected = ckpt.find(tree)
    path = os.path.join(tree, ".ckpt-index.json")
    with open(path, "wb") as f:
        f.write(garbage)
    assert ckpt.find(tree) == expected
    os.remove(path)
    assert ckpt.find(tree) == expected and os.path.isfile(path)


def test_find_works_on_a_read_only_tree(tree):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    expected = ckpt.find(tree, cache=False)
    os.chmod(tree, 0o555)
    try:
        assert ckpt.find(tree) == expected
    finally:
        os.chmod(tree, 0o755)


def test_index_ignores_hidden_files_and_temp_files(tree):
    ck = ckpt.Checkpoint(os.path.join(tree, "lin"))
    src = ck.path(100)
    with open(src, "rb") as f:
        data = f.read()
    with open(os.path.join(ck.directory, ".0000000500.npz.123.abcdef01.tmp"), "wb") as f:
        f.write(data)
    os.makedirs(os.path.join(tree, ".hidden"))
    with open(os.path.join(tree, ".hidden", "0000000001.npz"), "wb") as f:
        f.write(data)
    assert len(ckpt.find(tree)) == 6


# -- selector errors -----------------------------------------------------------------------
@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "loss.__class__", "f(x)", "loss <",
                                  "[x for x in y]", "a[b]", "lambda: 1", "x if y else z", "", "a + 1"])
def test_where_expressions_outside_the_whitelist_are_refused(expr):
    with pytest.raises(SelectorError) as info:
        ckpt.Selector(where=expr)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("expr", ["not " * 5000 + "x", "(" * 150 + "x" + ")" * 150, "x == " + "-" * 3000 + "1",
                                  " or ".join(["a < 1"] * 2000)])
def test_hostile_where_expressions_fail_cleanly(expr):
    try:
        sel = ckpt.Selector(where=expr)
    except SelectorError:
        return
    assert sel(ckpt.Entry(path="p", run="r", idx=1, recipe=None, metrics={"a": 5})) in (True, False)


@pytest.mark.parametrize("kwargs", [{"cls": 5}, {"args": "abc"}, {"kwargs": {1: 2}}, {"metrics": [1]}])
def test_malformed_selectors_are_refused(kwargs):
    with pytest.raises(SelectorError):
        ckpt.Selector(**kwargs)


def test_selector_matches_recipes_and_recorded_objects_too():
    m = plain.Wide(3)
    assert ckpt.Selector(cls="Linear", kwargs={"n": 3})(m)
    assert ckpt.Selector(where="factor == 2")(ckpt.recipe_of(m))
    assert not ckpt.Selector(metrics={"loss": 1})(m)


# -- property test: Selector against a brute-force filter -------------------------------------------
HIERARCHY = {"A": ["m.A", "builtins.object"], "B": ["m.B", "m.A", "builtins.object"], "C": ["n.C", "builtins.object"]}
MISSING = object()

values = st.one_of(st.integers(0, 3), st.sampled_from(["x", "y"]), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                   st.fixed_dictionaries({"d": st.integers(0, 2)}))
metric_values = st.one_of(st.sampled_from([0.0, 0.5, 1.0, float("nan")]), st.integers(0, 2))
entries_st = st.fixed_dictionaries({
    "cls": st.sampled_from([None, "A", "B", "C"]),
    "kwargs": st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3),
    "metrics": st.dictionaries(st.sampled_from(["loss", "acc"]), metric_values, max_size=2),
    "idx": st.integers(0, 5),
})
consts = st.sampled_from([0, 1, 2, 0.5, "x", "y"])
leaves = st.one_of(
    st.tuples(st.sampled_from(["loss", "acc", "a", "b", "idx", "zzz"]),
              st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), consts),
    st.tuples(st.sampled_from(["loss", "a", "b"]), st.sampled_from(["in", "not in"]), st.lists(consts, max_size=3)),
)
exprs = st.recursive(leaves, lambda sub: st.one_of(st.tuples(st.just("and"), sub, sub),
                                                   st.tuples(st.just("or"), sub, sub), st.tuples(st.just("not"), sub)),
                     max_leaves=6)
specs = st.one_of(values, st.fixed_dictionaries({}, optional={"d": st.integers(0, 2)}))
selectors_st = st.fixed_dictionaries({
    "cls": st.sampled_from([None, "A", "m.A", "B", "n.C", "object", "Z"]),
    "kwargs": st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c"]), specs, max_size=2)),
    "where": st.one_of(st.none(), exprs),
})


def _tagged(v):
    if isinstance(v, tuple):
        return {"$ckpt": "tuple", "v": [_tagged(x) for x in v]}
    if isinstance(v, dict):
        return {k: _tagged(x) for k, x in v.items()}
    return v


def _entry(data) -> ckpt.Entry:
    recipe = None
    if data["cls"] is not None:
        mro = HIERARCHY[data["cls"]]
        recipe = ckpt.Recipe.from_dict({"class": mro[0], "mro": mro, "args": [],
                                        "kwargs": {k: _tagged(v) for k, v in data["kwargs"].items()}})
    return ckpt.Entry(path=f"/r/{data['idx']}.npz", run="/r", idx=data["idx"], recipe=recipe,
                      metrics=dict(data["metrics"]))


def _render(e) -> str:
    if e[0] == "and" or e[0] == "or":
        return f"({_render(e[1])}) {e[0]} ({_render(e[2])})"
    if e[0] == "not":
        return f"not ({_render(e[1])})"
    return f"{e[0]} {e[1]} {e[2]!r}"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(a, b) -> bool:
    if _num(a) and _num(b):
        return (math.isnan(a) and math.isnan(b)) if (math.isnan(a) or math.isnan(b)) else a == b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _brute_where(e, data) -> bool:
    if e[0] == "and":
        return _brute_where(e[1], data) and _brute_where(e[2], data)
    if e[0] == "or":
        return _brute_where(e[1], data) or _brute_where(e[2], data)
    if e[0] == "not":
        return not _brute_where(e[1], data)
    name, op, const = e
    kwargs = data["kwargs"] if data["cls"] is not None else {}
    value = (data["metrics"][name] if name in data["metrics"] else kwargs[name] if name in kwargs
             else data["idx"] if name == "idx" else MISSING)
    if value is MISSING:
        return False
    if op == "==":
        return _eq(value, const)
    if op == "!=":
        return not _eq(value, const)
    if op in ("in", "not in"):
        found = any(_eq(value, c) for c in const)
        return found if op == "in" else not found
    if not ((_num(value) and _num(const)) or (isinstance(value, str) and isinstance(const, str))):
        return False
    return {"<": value < const, "<=": value <= const, ">": value > const, ">=": value >= const}[op]


def _brute_spec(spec, value) -> bool:
    if isinstance(spec, dict):
        return isinstance(value, dict) and all(k in value and _brute_spec(s, value[k]) for k, s in spec.items())
    return _eq(spec, value)


def _brute(sel, data) -> bool:
    if sel["cls"] is not None or sel["kwargs"] is not None:
        if data["cls"] is None:
            return False
        mro = HIERARCHY[data["cls"]]
        name = sel["cls"]
        if name is not None and not (name in mro if "." in name else any(m.split(".")[-1] == name for m in mro)):
            return False
        if sel["kwargs"] is not None and not all(k in data["kwargs"] and _brute_spec(s, data["kwargs"][k])
                                                 for k, s in sel["kwargs"].items()):
            return False
    return sel["where"] is None or _brute_where(sel["where"], data)


def _selector(sel) -> ckpt.Selector:
    return ckpt.Selector(cls=sel["cls"], kwargs=sel["kwargs"],
                         where=None if sel["where"] is None else _render(sel["where"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(entries_st, max_size=8), selectors_st, selectors_st, st.sampled_from(["one", "and", "or", "not"]))
def test_selector_semantics_match_a_brute_force_filter(datas, s1, s2, how):
    entries = [_entry(d) for d in datas]
    a, b = _selector(s1), _selector(s2)
    sel = {"one": a, "and": a & b, "or": a | b, "not": ~a}[how]

    def expected(d):
        x, y = _brute(s1, d), _brute(s2, d)
        return {"one": x, "and": x and y, "or": x or y, "not": not x}[how]

    assert [sel(e) for e in entries] == [expected(d) for d in datas]


def test_find_over_files_agrees_with_filtering_the_full_listing(tree):
    everything = ckpt.find(tree)
    for sel in (ckpt.Selector(cls="Linear", where="loss < 0.5 or acc > 0.15"), ckpt.Selector(kwargs={"seed": 100}),
                ~ckpt.Selector(where="idx >= 100")):
        assert ckpt.find(tree, sel) == [e for e in everything if sel(e)]


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_find_table_and_json(tree, capsys):
    assert main(["find", tree, "--cls", "Linear", "--where", "loss < 0.6", "--order-by", "loss"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["checkpoint", "step", "class", "recipe"]
    assert [line.split()[0] for line in out[1:]] == ["group/wide/ckpt/0000000002.npz", "lin/ckpt/0000000300.npz",
                                                     "group/wide/ckpt/0000000001.npz"]
    assert "best" in out[1] and "Wide" in out[1]
    assert main(["find", tree, "--kw", "shape=[20,20]", "--kw", "activation=relu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["count"] == 1 and doc["checkpoints"][0]["idx"] == 5
    assert doc["checkpoints"][0]["recipe"]["class"] == "recipe_models.plain.Stack"
    assert main(["find", tree, "--order-by=-loss", "--desc", "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"][0]["idx"] == 100
    assert main(["find", tree, "--alias", "best", "--cls", "Wide", "--json"]) == 0
    assert [c["idx"] for c in json.loads(capsys.readouterr().out)["checkpoints"]] == [2]
    assert main(["find", tree, "--kw", "layers=[]"]) == 0
    assert "matches" in capsys.readouterr().out


def test_cli_find_kw_nested_and_string_fallback(tree, capsys):
    assert main(["find", tree, "--kw", "factor=3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert main(["find", tree, "--kw", "activation=relu", "--kw", "shape=[20, 20]", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert main(["find", tree, "--kw", "seed=100", "--kw", "dtype=float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1


@pytest.mark.parametrize("argv", [["--where", "loss <"], ["--where", "__import__('os')"], ["--order-by=-"],
                                  ["--alias", "../x"], ["--limit", "-3"]])
def test_cli_find_errors_are_one_line(tree, capsys, argv):
    assert main(["find", tree, *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ckpt find: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_find_reports_damaged_files_and_still_lists_the_others(tree, capsys):
    bad = os.path.join(tree, "lin", "ckpt", "0000000400.npz")
    with open(bad, "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 100)
    for _ in range(2):  # also when the damage is remembered by the cache
        assert main(["find", tree, "--cls", "Wide", "--json"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out)["count"] == 2
        assert captured.err.count("\n") == 1 and captured.err.startswith(f"ckpt find: error: {bad}")


def test_cli_find_usage_errors_exit_2(tree, capsys):
    for argv in (["--kw", "novalue"], ["--kw", "a..b=1"], ["--desc"], ["--limit", "x"]):
        with pytest.raises(SystemExit) as info:
            main(["find", tree, *argv])
        assert info.value.code == 2
    assert main(["find", os.path.join(tree, "absent")]) == 1
    assert "no such file" in capsys.readouterr().err.lower()


# -- searching never imports model code or unpickles -----------------------------------------------
POISON = """
    import importlib.abc, pickle, sys

    class Poison(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith("recipe_models"):
                raise ImportError(f"the search imported {name}")
            return None

    def boom(*args, **kwargs):
        raise RuntimeError("the search unpickled something")

    class BoomUnpickler:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the search created an unpickler")

    sys.meta_path.insert(0, Poison())
    pickle.loads = pickle.load = boom
    pickle.Unpickler = BoomUnpickler
    import ckpt, cloudpickle
    cloudpickle.loads = cloudpickle.load = boom
    from ckpt.cli import main
    root, logdir, file = sys.argv[1:4]
    found = ckpt.find(root, ckpt.Selector(cls="Model", kwargs={"width": 8}, where="loss < 1"), order_by="loss")
    assert [e.idx for e in found] == [1], found
    assert found[0].recipe.kwargs["inner"].cls == "recipe_models.poison.Inner"
    assert ckpt.find(root, cache=False) == ckpt.find(root)
    for argv in (["find", root, "--cls", "Model", "--json"], ["ls", logdir], ["info", file], ["info", file, "--json"],
                 ["verify", file]):
        assert main(argv) == 0, argv
    try:
        ckpt.build(file)
    except ckpt.errors.UntrustedClassError:
        pass
    try:
        ckpt.Checkpoint(logdir).load_module(1)
    except ckpt.errors.UntrustedPickleError:
        pass
    try:  # the traps are armed
        import recipe_models.plain
    except ImportError as e:
        assert "the search imported" in str(e)
    else:
        raise AssertionError("the import trap did not fire")
    print("IMPORTED", sorted(m for m in sys.modules if m.startswith("recipe_models")))
"""


def test_search_ls_info_never_import_model_code_or_unpickle(tmp_path):
    inner = {"$ckpt": "recipe", "v": {"class": "recipe_models.poison.Inner", "module": "recipe_models.poison",
                                      "mro": ["recipe_models.poison.Inner"], "args": [], "kwargs": {}}}
    recipe = ckpt.Recipe.from_dict({"class": "recipe_models.poison.Model", "module": "recipe_models.poison",
                                    "mro": ["recipe_models.poison.Model", "recipe_models.poison.Base"],
                                    "args": [], "kwargs": {"width": 8, "inner": inner}})
    ck = ckpt.Checkpoint(str(tmp_path / "run"))
    ck.save({"w": np.zeros(3)}, idx=1, recipe=recipe, metrics={"loss": 0.5}, module=plain.Linear(2, 2),
            extras={"state": plain.Linear(1, 1)})
    ck.save({"w": np.zeros(3)}, idx=2, recipe=recipe, metrics={"loss": 2.0})
    env = {**os.environ, "PYTHONPATH": TESTS, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(POISON), str(tmp_path), str(tmp_path / "run"),
                           ck.path(1)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED []"
    assert "recipe_models.poison.Model" in proc.stdout  # `ckpt info` showed the recipe


def test_a_stale_cache_temp_file_from_a_killed_search_is_removed(tree):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = os.path.join(tree, f"..ckpt-index.json.{int(dead.stdout)}.0123abcd.tmp")  # as _io names it
    with open(stale, "w") as f:
        f.write("{partial")
    ckpt.find(tree)
    assert not os.path.exists(stale) and os.path.isfile(os.path.join(tree, ".ckpt-index.json"))
