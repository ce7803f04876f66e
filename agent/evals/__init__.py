"""`sandboxed-agent eval SUITE`: run a suite of cases, check the answer and the path."""

from .checks import RunFacts, check_outcome, check_path
from .runner import SuiteReport, live_model, render_report, run_suite, scripted_model
from .suite import Case, Suite, SuiteError, load_suite

__all__ = [
    "Case",
    "RunFacts",
    "Suite",
    "SuiteError",
    "SuiteReport",
    "check_outcome",
    "check_path",
    "live_model",
    "load_suite",
    "render_report",
    "run_suite",
    "scripted_model",
]
