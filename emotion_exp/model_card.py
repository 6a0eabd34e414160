"""Model cards: the markdown a registered version carries as its description (and finetune's README.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emotion_exp import contract, data, models

if TYPE_CHECKING:
    from emotion_exp.config import FinetuneConfig
    from emotion_exp.data import DatasetSplits
    from emotion_exp.finetune import FinetuneResult
    from emotion_exp.metrics import Evaluation


def _header(model: str, splits: DatasetSplits) -> str:
    """The title and what the model does, in the words of its data: its name and its labels."""
    rows = " / ".join(f"{len(splits.split(s)):,}" for s in data.SPLITS)
    return f"""# {splits.name} classifier: {model}

Classifies a text into one of {len(splits.label_names)} labels: {", ".join(splits.label_names)}.
Input: a DataFrame with a `text` column, or a list of strings. Output: `label` and one
`{contract.probability_column("<label>")}` column per label.

## Data
- Dataset: {splits.name} (source: {splits.source}); digest `{splits.digest}`
- Rows train / validation / test: {rows}
"""


def _scores_and_use(evaluations: dict[str, Evaluation], registered_model: str, splits: DatasetSplits) -> str:
    example = str(splits.validation["text"].iloc[0])[:80]  # a text of the data, whatever its labels
    scores = "\n".join(
        f"| {split} | {e.shown('accuracy')} | {e.shown('f1_weighted')} | {e.shown('f1_macro')} |"
        for split, e in evaluations.items()
    )
    return f"""
## Scores
Each score with its 95% bootstrap interval over the split's texts.

| split | accuracy | weighted F1 | macro F1 |
|---|---|---|---|
{scores}

## Use
```python
import mlflow
model = mlflow.pyfunc.load_model("models:/{registered_model or "<name>"}/<version>")
model.predict([{example!r}])
```
"""


def summary(stage: str, splits: DatasetSplits, evaluations: dict[str, Evaluation], registered_model: str) -> str:
    """The card of a baseline stage's model: what it classifies, on which data, how well."""
    return _header(stage, splits) + _scores_and_use(evaluations, registered_model, splits)


def finetuned(
    config: FinetuneConfig,
    splits: DatasetSplits,
    resolved: models.ResolvedModel,
    result: FinetuneResult,
    evaluations: dict[str, Evaluation],
) -> str:
    """The card of a fine-tuned model: the summary plus how it was trained."""
    training = f"""
## Training
- Base model: {resolved.spec} ({resolved.source}: {resolved.location})
- Epochs {config.epochs:g}, batch size {config.batch_size}, learning rate {config.learning_rate:g} (AdamW,
  {config.warmup:g} of the steps linear warm-up, then linear decay), weight decay {config.weight_decay:g},
  max length {config.max_length}, seed {config.seed}, precision {result.precision}
- Dynamic padding with length-grouped batches; {result.global_step} optimizer steps,
  {result.train_seconds:.0f} s of training at {result.train_samples_per_second:.1f} texts/s on
  {models.cpu_description()}
"""
    return (
        _header(f"fine-tuned {resolved.spec}", splits)
        + training
        + _scores_and_use(evaluations, config.registered_model, splits)
    )
