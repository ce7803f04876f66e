"""Red team: a careless trusted tool changes, in place, what its warm worker hands the
next call of it: the settings of its call (a value kept in the dict the policy gave),
or `sys.stdout`'s `write` on the stream object itself. The next call must find its
policy's settings and the worker's own stream, in the same warm worker or a new one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared

from sandbox import Limits, Pool
from tools import Registry

pytestmark = pytest.mark.attack

TOOLS = str(Path(__file__).with_name("warm_context_tools.py"))
TRUSTED = Limits(reuse_worker=True, timeout_s=20)


@pytest.fixture(scope="module")
def warm() -> Iterator[Pool]:
    registry = Registry.default()
    registry.load(TOOLS)
    with Pool(registry=registry, size=1) as pool:
        yield shared(pool)


def test_a_call_never_finds_the_settings_an_earlier_call_changed(warm: Pool) -> None:
    settings = {"today": "2025-05-11"}
    first = warm.call("careless_settings", {"day": "1999-01-01"}, limits=TRUSTED, settings=settings)
    second = warm.call(
        "careless_settings", {"day": "1999-01-01"}, limits=TRUSTED, settings=settings
    )
    assert first.ok and second.ok, (first, second)
    assert (first.output, second.output) == ("2025-05-11", "2025-05-11")
    assert settings == {"today": "2025-05-11"}  # nor the caller's own dict


def test_a_call_never_finds_the_stream_an_earlier_call_patched(warm: Pool) -> None:
    first = warm.call("careless_capture", {"marker": "one"}, limits=TRUSTED)
    second = warm.call("careless_capture", {"marker": "two"}, limits=TRUSTED)
    assert first.ok and second.ok, (first, second)
    assert (first.output, second.output) == ("clean", "clean")


def test_a_call_never_gets_its_answer_written_by_an_encoder_an_earlier_call_patched(
    warm: Pool,
) -> None:
    # The worker writes each answer with json.dumps, whose encoder class is
    # json.JSONEncoder: patched there (to leave its own call's answer alone), the
    # next call's answer was the patch's.
    first = warm.call("careless_encoder", {"marker": "one"}, limits=TRUSTED)
    second = warm.call("careless_encoder", {"marker": "two"}, limits=TRUSTED)
    assert first.ok and second.ok, (first, second)
    assert (first.output, second.output) == ("one", "two")
