"""Fuzzing the reader entry points with Hypothesis, seeded with real files (see fuzz_harness).

Asserts, for every mutated file: each entry point ends in a value or a ckpt.errors exception, the
seed pickles' canary never runs, and peak RSS growth stays under 100 MB. The CI run is bounded
(``CKPT_FUZZ_EXAMPLES``, default 300 per test); ``tox -e fuzz`` runs a long one.
"""

from __future__ import annotations

import os
import random

from fuzz_harness import CANARY, check_file, mutate, pickle_canary_is_live, seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import RSS_LIMIT, peak_rss_growth

EXAMPLES = int(os.environ.get("CKPT_FUZZ_EXAMPLES", "300"))
SEEDS = seeds()


def test_seeds_are_real_files_that_load(tmp_path):
    assert pickle_canary_is_live()
    for seed in SEEDS:
        outcomes = check_file(seed, str(tmp_path))
        assert outcomes["ckpt.load"] == "ok" and outcomes["ZipReader"] == "ok", outcomes
    assert not CANARY


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(range(len(SEEDS))), rnd=st.randoms(use_true_random=False))
def test_mutated_files_end_in_a_value_or_a_ckpt_error(tmp_path, seed, rnd):
    data = mutate(SEEDS[seed], rnd)
    result, growth = peak_rss_growth(lambda: check_file(data, str(tmp_path), cli=False))
    if isinstance(result, Exception):
        raise result
    assert growth < RSS_LIMIT, f"peak RSS grew {growth / 2**20:.0f} MiB"


@settings(max_examples=max(10, EXAMPLES // 5), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(range(len(SEEDS))), rnd=st.randoms(use_true_random=False))
def test_mutated_files_never_crash_the_cli(tmp_path, seed, rnd, capsys):
    data = mutate(SEEDS[seed], rnd)
    check_file(data, str(tmp_path))
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "\x1b" not in out + err


def test_fuzzing_finds_nothing_in_a_fixed_long_sequence(tmp_path):
    """A deterministic sweep (no shrinking) over many mutations of every seed."""
    r = random.Random(14)
    for i in range(EXAMPLES):
        check_file(mutate(SEEDS[i % len(SEEDS)], r), str(tmp_path), cli=False)
    assert not CANARY
