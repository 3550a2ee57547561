"""The measured path choice (path_plan.decide): the fastest timed candidate wins, and a candidate whose
warm-up run is already hopeless is not run again (a 9× slower factorised path costs seconds per run)."""

import pytest

from njetify.layers import path_plan


@pytest.fixture(autouse=True)
def _fresh_plans():
    path_plan.clear_plans()
    yield
    path_plan.clear_plans()


def _fake(monkeypatch, seconds: dict[str, float]):
    """Runs that record their calls; time_call answers each run's fixed seconds."""
    calls = {p: 0 for p in seconds}

    def make(p):
        def run():
            calls[p] += 1
            return seconds[p]
        return run

    monkeypatch.setattr(path_plan, "time_call", lambda run, device: run())
    return {p: make(p) for p in seconds}, calls


def test_a_hopeless_candidate_is_run_once_and_the_fastest_wins(monkeypatch):
    runs, calls = _fake(monkeypatch, {"dense": 0.1, "basis_first": 0.9, "mix_first": 0.2})
    predicted = {"dense": 1.0, "basis_first": 1.0, "mix_first": 1.0}  # the cost model cannot tell them apart
    assert path_plan.decide(("k", 1), runs, predicted, "cpu") == "dense"
    assert calls == {"dense": 1 + path_plan.REPS, "basis_first": 1, "mix_first": 1 + path_plan.REPS}
    entry = path_plan.plans()[0]
    assert entry["seconds"]["basis_first"] == pytest.approx(0.9)  # its warm-up time is on record
    assert path_plan.decide(("k", 1), runs, predicted, "cpu") == "dense"  # cached: nothing runs again
    assert calls["dense"] == 1 + path_plan.REPS


def test_close_candidates_are_all_timed(monkeypatch):
    runs, calls = _fake(monkeypatch, {"dense": 0.10, "basis_first": 0.09})
    assert path_plan.decide(("k", 2), runs, {"dense": 1.0, "basis_first": 1.0}, "cpu") == "basis_first"
    assert set(calls.values()) == {1 + path_plan.REPS}
