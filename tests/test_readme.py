"""The docs' pyfunc snippet (docs/serving.md) runs as written against a real champion, so it cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from emotion_exp import registry
from emotion_exp.config import REGISTERED_MODEL
from tests.conftest import REPO_ROOT
from tests.pyfunc_models import LABELS


def pyfunc_snippet(page: Path) -> str:
    """The first ```python block under a heading that mentions pyfunc."""
    heading = ""
    lines = iter(page.read_text().splitlines())
    for line in lines:
        if re.match(r"#+ ", line):
            heading = line
        elif line.strip() == "```python" and "pyfunc" in heading.lower():
            block = []
            for code in lines:
                if code.strip() == "```":
                    return "\n".join(block) + "\n"
                block.append(code)
    pytest.fail(f"{page} has no ```python block under a heading that mentions pyfunc")


@pytest.mark.slow
def test_the_docs_pyfunc_snippet_predicts_with_the_champion(finetuned_champion, capsys) -> None:
    snippet = pyfunc_snippet(REPO_ROOT / "docs/serving.md")
    assert f"models:/{REGISTERED_MODEL}@champion" in snippet
    client = MlflowClient()
    for model in client.search_registered_models(f"name = '{REGISTERED_MODEL}'"):
        client.delete_registered_model(model.name)  # the session's store: start from no champion
    # The session's fine-tuned model as the snippet's emotion-classifier@champion (as finetune + promote leave it).
    _, run_id = finetuned_champion
    version = registry.register(registry.model_of_run(run_id), REGISTERED_MODEL, LABELS)
    registry.set_champion(REGISTERED_MODEL, version)
    capsys.readouterr()

    exec(compile(snippet, "docs/serving.md", "exec"), {})  # noqa: S102 - the documented code, run as a user would

    printed = capsys.readouterr().out
    assert "label" in printed and "prob_joy" in printed
    assert re.search(r"^1\s", printed, re.MULTILINE), printed
