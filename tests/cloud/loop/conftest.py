from __future__ import annotations

import pytest

from tests.cloud.loop import eval_kit


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> eval_kit.EvalKit:
    return eval_kit.build(tmp_path_factory.mktemp("offline-eval"))
