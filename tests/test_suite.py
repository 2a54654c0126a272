"""The suite's own machinery: what makes it fast must not fail silently."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("suite_grouping_probe")
def test_xdist_keeps_grouped_tests_together(request):
    """Under ``--dist loadgroup`` (setup.cfg) a test marked ``xdist_group`` must carry its
    group in its node id, which is what sends the group to one worker; without it (a pytest
    that pytest-xdist cannot rename, pytest-dev/pytest-xdist#1386) the shared fixtures of a
    group are built once per worker and the suite runs minutes longer, passing."""
    if not getattr(request.config.option, "loadgroup", False):  # not an xdist worker
        pytest.skip("runs under pytest-xdist with --dist loadgroup (the README's command)")
    assert request.node.nodeid.endswith("@suite_grouping_probe"), request.node.nodeid
