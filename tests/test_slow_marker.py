"""The `slow` marker's policy (tests/conftest.py): a local run skips slow tests and says
so; CI=true or --run-slow runs them; durations are printed."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
# In-process runs (cheap: conftest's imports are already loaded); the snapshot plugin's
# session hooks belong to the outer run only.
NO_SNAPSHOTS = ("-p", "no:textual-snapshot", "-p", "no:cacheprovider")

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


@pytest.fixture
def example(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\naddopts = -ra --durations=5\n")
    pytester.makepyfile(test_example="import pytest\n\n@pytest.mark.slow\ndef test_slow():\n"
                        "    pass\n\ndef test_fast():\n    pass\n")
    return pytester


def test_a_local_run_skips_slow_tests_and_says_how_to_run_them(example):
    result = example.runpytest(*NO_SNAPSHOTS)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*slow tests: skipped (CI=true or --run-slow runs them)*",
                                 "*slowest 5 durations*",
                                 "SKIPPED*slow: CI=true or --run-slow runs it*"])


@pytest.mark.parametrize("args,ci", [((), "true"), (("--run-slow",), None)])
def test_ci_or_asking_runs_them(example, monkeypatch, args, ci):
    if ci:
        monkeypatch.setenv("CI", ci)
    example.runpytest(*NO_SNAPSHOTS, *args).assert_outcomes(passed=2)

